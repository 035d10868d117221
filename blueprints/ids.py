"""Path ids: a malformed one is 400, not a 404 or a 500."""

from __future__ import annotations

import uuid

from blueprints.api import BadRequest


def parse_uuid(value: str, name: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise BadRequest(f"{name} is not a valid id", code="malformed_id") from None
