"""HTTP adapters: one blueprint per resource, registered in one visible place."""

from __future__ import annotations

from flask import Flask


def register_blueprints(app: Flask) -> None:
    from blueprints import (
        api_keys,
        audit,
        bundles,
        drift,
        health,
        node_api,
        node_bundles,
        nodes,
        notifications,
        openapi,
        projects,
        rollouts,
        session,
        users,
        webhooks,
    )

    for module in (
        health,
        openapi,
        session,
        users,
        api_keys,
        projects,
        audit,
        node_api,
        node_bundles,
        nodes,
        drift,
        bundles,
        rollouts,
        notifications,
        webhooks,
    ):
        app.register_blueprint(module.bp)
