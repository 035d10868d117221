"""Change events on Redis pub/sub, published only after the transaction that caused them commits.

`publish_after_commit` queues an event on the session; a listener publishes the queue when the
session commits and drops it on rollback, so no page ever hears about a change that did not
happen. Pub/sub is lossy by nature: readers load current state from the database and treat
events as "something changed, look again".
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis
from sqlalchemy import event
from sqlalchemy.orm import Session

from sentinel_cp import broker
from sentinel_cp.db import queue_for_commit, take_committed

CHANNEL = "sentinel:events"
_PENDING = "sentinel_pending_events"
log = logging.getLogger(__name__)


def event_payload(
    project_id: object, kind: str, ident: object, state: str | None
) -> dict[str, Any]:
    return {
        "project": str(project_id) if project_id else None,
        "kind": kind,
        "id": str(ident) if ident is not None else None,
        "state": state,
    }


def is_node_audit_echo(payload: dict[str, Any]) -> bool:
    """The `audit` event of a `node.*` action. Every such action (registered, online, offline,
    labels, deleted, key revoked, bundle reports) also publishes a `node` event naming the node,
    in the same commit and so in the same pipelined publish: a reader of the `node` event has
    nothing to learn from its echo. A new `node.*` action must keep that pairing."""
    return payload.get("kind") == "audit" and str(payload.get("state") or "").startswith("node.")


AUDIT_LINKED = "audit.linked"


def is_audit_linked(payload: dict[str, Any]) -> bool:
    """The background linker's word that a chain's newest rows are linked (`audit.Linker`):
    news for pages listing the audit log only; the changes themselves published their own
    events at their commits."""
    return payload.get("kind") == "audit" and payload.get("state") == AUDIT_LINKED


def is_rollout_audit_echo(payload: dict[str, Any]) -> bool:
    """The `audit` event of a `rollout.*` action. Every such action (created, started, each
    step and gate transition, operator actions, approvals, rollbacks) publishes a `rollout`
    event naming the rollout in the same commit; a new `rollout.*` action must keep that
    pairing too."""
    return payload.get("kind") == "audit" and str(payload.get("state") or "").startswith("rollout.")


def publish_after_commit(project_id: object, kind: str, ident: object, state: str | None) -> None:
    """Queue `{project, kind, id, state}` for publication when the current transaction commits."""
    queue_for_commit(_PENDING, event_payload(project_id, kind, ident, state))


def publish_now(payload: dict[str, Any]) -> None:
    send([payload])


def send(payloads: list[dict[str, Any]]) -> None:
    """Publish in one round trip (a pipeline): a tick that assigns 10,000 nodes commits 10,000
    events, which cost 10,000 round trips one by one."""
    if not payloads or not broker.is_configured():
        # One-shot commands (`sentinel-cp setup`, `create-user`) run without Redis; nobody is
        # listening to them, and the state they wrote is what every reader loads anyway.
        return
    try:
        if len(payloads) == 1:
            broker.connection().publish(CHANNEL, json.dumps(payloads[0]))
            return
        pipe = broker.connection().pipeline(transaction=False)
        for payload in payloads:
            pipe.publish(CHANNEL, json.dumps(payload))
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("%d event(s) not published: %s", len(payloads), exc.__class__.__name__)


@event.listens_for(Session, "after_commit")
def _publish_pending(session: Session) -> None:
    send(take_committed(session, _PENDING))
