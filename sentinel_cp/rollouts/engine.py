"""The effectful half of the rollout engine: create, tick and operator actions.

A tick locks the rollout (an `UPDATE` of its row first: the row lock on PostgreSQL, the write
lock on SQLite), reads a `RolloutView`, asks the pure `decide` for one action, applies it in
the same transaction with its audit row and event, and commits — then repeats until `decide`
has nothing to do. A worker killed between two transactions leaves a consistent rollout that
the next tick continues; a tick replayed on unchanged state finds `Nothing` and writes nothing
(a baking step only refreshes its stored gate verdict, once per tick).
Ticks are requested with a deterministic job id when a node report can advance a step, when an
operator acts, and by the cron sweep for every running rollout.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Uuid, and_, any_, func, literal, or_, select, update
from sqlalchemy.dialects.postgresql import ARRAY

from sentinel_cp import audit, events, jobqueue, notifications
from sentinel_cp.audit import Actor
from sentinel_cp.bundles import catalog, distribution
from sentinel_cp.bundles.models import Bundle, NodeBundleStatus
from sentinel_cp.db import db, utcnow
from sentinel_cp.errors import Conflict, Invalid, NotFound
from sentinel_cp.pagination import Page, decode_position, encode_cursor
from sentinel_cp.projects import Project
from sentinel_cp.rollouts import freeze, planner
from sentinel_cp.rollouts.decide import decide
from sentinel_cp.rollouts.models import (
    ACTIVE_STATES,
    FreezeWindowRow,
    Rollout,
    RolloutStep,
)
from sentinel_cp.rollouts.types import (
    Action,
    AwaitPromotion,
    Complete,
    CompleteStep,
    Fail,
    FailStep,
    NodeView,
    Nothing,
    Pause,
    PlannedStep,
    PlanNode,
    RecordGates,
    RolloutConfig,
    RolloutView,
    StartBaking,
    StartStep,
    StepView,
    merge_with_template,
)

MAX_ACTIONS_PER_TICK = 64
ENGINE = Actor.system("rollout-engine")


def request_tick(rollout_id: uuid.UUID) -> None:
    """Ask for a tick once the current transaction commits (duplicates collapse)."""
    jobqueue.tick_rollout(rollout_id)


# --- planning -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    bundle: Bundle
    config: RolloutConfig
    selector: dict[str, Any]
    steps: list[PlannedStep]
    names: dict[uuid.UUID, str]
    skipped_busy: list[uuid.UUID]
    conflicting: list[uuid.UUID]

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle_id": self.bundle.id,
            "strategy": self.config.strategy,
            "config": self.config.to_dict(),
            "target_selector": self.selector,
            "total": sum(len(step.node_ids) for step in self.steps),
            "steps": [
                {
                    **step.to_dict(),
                    "nodes": [
                        {"node_id": str(n), "name": self.names.get(n)} for n in step.node_ids
                    ],
                }
                for step in self.steps
            ],
            "skipped_busy": [str(n) for n in self.skipped_busy],
            "conflicts": [str(r) for r in self.conflicting],
        }


def _project_nodes(project_id: uuid.UUID) -> list[PlanNode]:
    from sentinel_cp.nodes import Node

    rows = db.session.execute(
        select(Node.id, Node.name, Node.labels, Node.status).where(Node.project_id == project_id)
    ).all()
    return [PlanNode(r.id, r.name, dict(r.labels or {}), r.status) for r in rows]


def _busy_nodes(project_id: uuid.UUID) -> dict[uuid.UUID, uuid.UUID]:
    """Every node held by a non-terminal rollout of the project → that rollout."""
    rows = db.session.execute(
        select(RolloutStep.rollout_id, RolloutStep.node_ids)
        .join(Rollout, Rollout.id == RolloutStep.rollout_id)
        .where(Rollout.project_id == project_id, Rollout.state.in_(ACTIVE_STATES))
    ).all()
    return {uuid.UUID(node): rollout_id for rollout_id, node_ids in rows for node in node_ids}


def _resolve_selector(project_id: uuid.UUID, selector: Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(selector.get("group"), str):
        from sentinel_cp.nodes import get_group

        group = get_group(project_id, selector["group"])
        found: Any = group.selector.get("labels") or {}
        labels: dict[str, str] = dict(found)
        return {"group": {"labels": labels}}
    return dict(selector)


def plan(project: Project, request: Mapping[str, Any]) -> Plan:
    """What `create` would build from `request` (no writes): 404/409/422 as `create`."""
    bundle = catalog.get_bundle(project.id, str(request.get("bundle_id", "")))
    distribution.require_distributable(bundle)
    settings = project.config
    given = dict(request.get("config") or {})
    selector_given = request.get("target_selector")
    if request.get("template"):
        from sentinel_cp.rollouts.catalog import get_template

        template = get_template(project.id, str(request["template"]))
        given = merge_with_template(template.config, given)
        selector_given = selector_given or template.target_selector
    config = RolloutConfig.from_dict(given, standby_slot=settings.standby_slot)
    selector = dict(selector_given or {"all": True})
    nodes = _project_nodes(project.id)
    targets = planner.select_targets(nodes, _resolve_selector(project.id, selector))
    found = planner.conflicts(
        [n.id for n in targets], _busy_nodes(project.id), bool(request.get("skip_busy_nodes"))
    )
    kept = set(found.kept_ids)
    targets = [n for n in targets if n.id in kept]
    steps = planner.plan_steps(targets, config) if targets else []
    return Plan(
        bundle=bundle,
        config=config,
        selector=selector,
        steps=steps,
        names={n.id: n.name for n in nodes},
        skipped_busy=found.skipped_busy,
        conflicting=found.conflicting_rollout_ids,
    )


def create(
    actor: Actor,
    project: Project,
    request: Mapping[str, Any],
    *,
    user_id: uuid.UUID | None = None,
    now: datetime | None = None,
) -> Rollout:
    """Plan and store a rollout; start it unless it is scheduled or `start` is false."""
    now = now or utcnow()
    planned = plan(project, request)
    if planned.conflicting and not request.get("skip_busy_nodes"):
        ids = ", ".join(str(r) for r in planned.conflicting)
        raise Conflict(
            f"Targets are already part of rollout {ids} (or pass skip_busy_nodes)",
            code="nodes_busy",
        )
    if not planned.steps:
        raise Invalid(
            "No nodes to roll out to", fields={"target_selector": ["matches no available node"]}
        )
    scheduled_at = request.get("scheduled_at")
    settings = project.config
    required = settings.approvals_required
    if planned.bundle.risk_level == "high":
        required = max(required, settings.approvals_required_high_risk)
    rollout = Rollout(
        id=uuid.uuid4(),
        project_id=project.id,
        bundle_id=planned.bundle.id,
        state="pending",
        approval_state="pending_approval" if required else "not_required",
        approvals_required=required,
        strategy=planned.config.strategy,
        target_selector=planned.selector,
        config=planned.config.to_dict(),
        details={},
        created_by=actor.label,
        created_by_user_id=user_id,
        created_at=now,
        scheduled_at=scheduled_at,
        updated_at=now,
    )
    override = request.get("override_freeze")
    if override:
        rollout.freeze_override = str(override)
    db.session.add(rollout)
    for step in planned.steps:
        db.session.add(
            RolloutStep(
                rollout_id=rollout.id,
                index=step.index,
                kind=step.kind,
                state="pending",
                node_ids=[str(n) for n in step.node_ids],
                skipped_node_ids=[],
            )
        )
    db.session.flush()
    audit.record(
        actor,
        "rollout.created",
        resource_type="rollout",
        resource_id=rollout.id,
        project_id=project.id,
        metadata={
            "bundle_id": planned.bundle.id,
            "strategy": rollout.strategy,
            "steps": len(planned.steps),
            "nodes": sum(len(s.node_ids) for s in planned.steps),
            "skipped_busy": len(planned.skipped_busy),
            "template": request.get("template"),
            "freeze_override": override or None,
        },
        now=now,
    )
    if (
        request.get("start", True)
        and not required
        and (scheduled_at is None or scheduled_at <= now)
    ):
        _start(actor, rollout, now)
    events.publish_after_commit(project.id, "rollout", rollout.id, rollout.state)
    return rollout


def _start(actor: Actor, rollout: Rollout, now: datetime) -> None:
    rollout.state = "running"
    rollout.started_at = now
    rollout.updated_at = now
    audit.record(
        actor,
        "rollout.started",
        resource_type="rollout",
        resource_id=rollout.id,
        project_id=rollout.project_id,
        changes={"state": ["pending", "running"]},
        now=now,
    )
    request_tick(rollout.id)


# --- reading --------------------------------------------------------------------------------


def get_rollout(project_id: uuid.UUID, rollout_id: uuid.UUID) -> Rollout:
    rollout = db.session.get(Rollout, rollout_id)
    if rollout is None or rollout.project_id != project_id:
        raise NotFound("Rollout not found", code="rollout_not_found")
    return rollout


def _steps(rollout_id: uuid.UUID) -> list[RolloutStep]:
    return list(
        db.session.scalars(
            select(RolloutStep)
            .where(RolloutStep.rollout_id == rollout_id)
            .order_by(RolloutStep.index)
            .execution_options(populate_existing=True)
        )
    )


def _deliveries(rollout_id: uuid.UUID, *, rows: bool = False) -> dict[uuid.UUID, Any]:
    """The newest delivery per node of this rollout: ORM objects for the paths that change
    them, or (`rows=True`) plain rows of what a tick reads (node_id, state, activated_at,
    reason). An ORM object per node, and the garbage collections that many objects set off,
    made a 10,000-node tick cost more per node than a 1,000-node one (bench/tick_cost.py)."""
    query: Any
    if rows:
        query = select(
            NodeBundleStatus.node_id,
            NodeBundleStatus.state,
            NodeBundleStatus.activated_at,
            NodeBundleStatus.reason,
        )
    else:
        query = select(NodeBundleStatus).execution_options(populate_existing=True)
    query = query.where(NodeBundleStatus.rollout_id == rollout_id).order_by(NodeBundleStatus.id)
    found = db.session.execute(query).all() if rows else db.session.scalars(query)
    return {row.node_id: row for row in found}


def _node_rows(node_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Any]:
    from sentinel_cp.nodes import Node

    if not node_ids:
        return {}
    rows = db.session.execute(
        select(
            Node.id,
            Node.name,
            Node.status,
            Node.active_bundle_id,
            Node.last_heartbeat_at,
            Node.health,
            Node.metrics,
        ).where(_among(Node.id, node_ids))
    ).all()
    return {row.id: row for row in rows}


def _among(column: Any, ids: Sequence[uuid.UUID]) -> Any:
    """`column IN ids`; on PostgreSQL one array parameter (`= ANY(…)`), not a bind parameter
    per node: the statement stays the same text for any fleet, and its per-node cost flat
    (reading 10,000 ids: 16 µs of CPU per node with the list, 3.4 with the array)."""
    if db.session.get_bind().dialect.name == "postgresql":
        return column == any_(literal(list(ids), ARRAY(Uuid())))
    return column.in_(ids)


def _freeze_active(project_id: uuid.UUID, now: datetime) -> bool:
    rows = db.session.scalars(
        select(FreezeWindowRow.definition).where(FreezeWindowRow.project_id == project_id)
    ).all()
    windows = [freeze.FreezeWindow.from_dict(definition) for definition in rows]
    return bool(freeze.active_windows(windows, now))


def build_view(rollout: Rollout, steps: list[RolloutStep], now: datetime) -> RolloutView:
    """Read everything `decide` needs (a fixed handful of set-based queries)."""
    bundle_status = db.session.scalar(select(Bundle.status).where(Bundle.id == rollout.bundle_id))
    all_ids = [uuid.UUID(n) for step in steps for n in step.node_ids]
    rows = _node_rows(all_ids)
    deliveries = _deliveries(rollout.id, rows=True)
    project = db.session.get(Project, rollout.project_id)
    assert project is not None

    targets = {k: v for step in steps for k, v in (step.node_targets or {}).items()}

    def node_view(node_id: uuid.UUID) -> NodeView:
        row = rows.get(node_id)
        delivery = deliveries.get(node_id)
        return NodeView(
            node_id=node_id,
            name=row.name if row else str(node_id),
            online=bool(row and row.status == "online"),
            state=delivery.state if delivery else "pending",
            active_bundle_id=row.active_bundle_id if row else None,
            activated_at=delivery.activated_at if delivery else None,
            last_heartbeat_at=row.last_heartbeat_at if row else None,
            health_status=(row.health or {}).get("status") if row else None,
            metrics=dict(row.metrics or {}) if row else {},
            reason=delivery.reason if delivery else None,
            target_bundle_id=targets.get(str(node_id)),
        )

    step_views = tuple(
        StepView(
            index=step.index,
            kind=step.kind,  # type: ignore[arg-type]
            state=step.state,  # type: ignore[arg-type]
            nodes=tuple(node_view(uuid.UUID(n)) for n in step.node_ids),
            started_at=step.started_at,
            baking_since=step.baking_since,
            gates_passing_since=step.gates_passing_since,
            gates_failing_since=step.gates_failing_since,
            resumed_at=step.resumed_at,
            skip_unavailable=step.skip_unavailable,
        )
        for step in steps
    )
    return RolloutView(
        id=rollout.id,
        state=rollout.state,  # type: ignore[arg-type]
        bundle_id=rollout.bundle_id,
        bundle_status=bundle_status or "missing",
        config=RolloutConfig.from_dict(rollout.config),
        steps=step_views,
        freeze_active=_freeze_active(rollout.project_id, now),
        freeze_overridden=rollout.freeze_override is not None,
        promoted=rollout.promoted,
        heartbeat_interval_s=project.config.heartbeat_interval_s,
    )


# --- the tick -------------------------------------------------------------------------------


def _lock(rollout_id: uuid.UUID, now: datetime) -> Rollout | None:
    """Serialize ticks and actions on one rollout: write its row first, then read it."""
    touched = db.session.execute(
        update(Rollout)
        .where(Rollout.id == rollout_id)
        .values(updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if touched != 1:
        return None
    return db.session.get(Rollout, rollout_id, populate_existing=True)


def tick(rollout_id: uuid.UUID, *, now: datetime | None = None) -> list[Action]:
    """Advance one rollout as far as it can go now; returns the actions applied."""
    applied: list[Action] = []
    for _ in range(MAX_ACTIONS_PER_TICK):
        rollout = _lock(rollout_id, now or utcnow())
        if rollout is None or rollout.state != "running":
            db.session.rollback()
            break
        # The clock is read once the lock is held: a tick that waited for another acts after
        # it, never at an instant before the changes it now reads (nor leaves `updated_at`
        # older than that tick's).
        moment = now or utcnow()
        rollout.updated_at = moment
        steps = _steps(rollout.id)
        view = build_view(rollout, steps, moment)
        action = decide(view, moment)
        if isinstance(action, Nothing):
            db.session.rollback()  # nothing changed: not even updated_at
            break
        _apply(rollout, steps, action, moment)
        db.session.commit()
        applied.append(action)
        if isinstance(action, RecordGates) and not action.changed:
            break  # the step bakes on: the refreshed verdict is stored, time must pass
    return applied


def _apply(rollout: Rollout, steps: list[RolloutStep], action: Action, now: datetime) -> None:
    by_index = {step.index: step for step in steps}
    bundle = db.session.get(Bundle, rollout.bundle_id)
    assert bundle is not None
    before = rollout.state
    created: Rollout | None = None
    if isinstance(action, StartStep):
        step = by_index[action.index]
        step.state, step.started_at, step.finished_at = "running", now, None
        step.baking_since = step.gates_passing_since = step.gates_failing_since = None
        step.resumed_at, step.reason = None, None
        _assign(rollout, step, bundle, action.assign_node_ids, action.index, now)
        _skip(rollout, bundle, action.index, action.skip_node_ids, now)
    elif isinstance(action, StartBaking):
        step = by_index[action.index]
        step.state, step.baking_since = "baking", now
        step.gates_passing_since = step.gates_failing_since = None
        _mark_verified(rollout, action.mark_verified_node_ids, now)
        _skip(rollout, bundle, action.index, action.skip_node_ids, now)
    elif isinstance(action, RecordGates):
        step = by_index[action.index]
        step.gate_verdict = action.verdict.to_dict()
        step.gates_passing_since = action.passing_since
        step.gates_failing_since = action.failing_since
    elif isinstance(action, CompleteStep):
        step = by_index[action.index]
        step.state, step.finished_at, step.reason = "completed", now, action.reason
        if action.verdict is not None:
            step.gate_verdict = action.verdict.to_dict()
        _skip(rollout, bundle, action.index, action.skip_node_ids, now)
    elif isinstance(action, FailStep):
        step = by_index[action.index]
        step.state, step.finished_at, step.reason = "failed", now, action.reason
        if action.verdict is not None:
            step.gate_verdict = action.verdict.to_dict()
        meta = {**_plain(action.metadata), "step_index": action.index}
        if action.then == "rollback":
            # one audit row (the step failure) carries the rollout's running → rolling_back
            _set_state(rollout, "rolling_back", action.reason, action.details, now, meta)
            created = _create_rollback(ENGINE, rollout, now)
        else:
            _set_state(rollout, "paused", action.reason, action.details, now, meta)
    elif isinstance(action, Pause | AwaitPromotion):
        _set_state(rollout, "paused", action.reason, action.details, now, _plain(action.metadata))
    elif isinstance(action, Fail):
        if action.step_index is not None:
            step = by_index[action.step_index]
            step.state, step.finished_at, step.reason = "failed", now, action.reason
        _set_state(rollout, "failed", action.reason, action.details, now, _plain(action.metadata))
        rollout.finished_at = now
    elif isinstance(action, Complete):
        _set_state(rollout, "completed", action.reason, action.details, now)
        rollout.finished_at = now
        _expect(rollout, steps, action.verified_node_ids)
        if rollout.rollback_of is not None:
            _finish_rolled_back(rollout, now)
    _audit_and_publish(rollout, action, before, now)
    if created is not None and created.state == "completed":
        _finish_rolled_back(created, now)  # nothing to return: after the step_failed row


def _audit_and_publish(rollout: Rollout, action: Action, before: str, now: datetime) -> None:
    if action.audit_action is not None:
        changes = {"state": [before, rollout.state]} if before != rollout.state else None
        audit.record(
            ENGINE,
            action.audit_action,
            resource_type="rollout",
            resource_id=rollout.id,
            project_id=rollout.project_id,
            changes=changes,
            metadata=_audit_metadata(action),
            now=now,
        )
        events.publish_after_commit(rollout.project_id, "rollout", rollout.id, rollout.state)


def _plain(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Action metadata as JSON-ready values (ids and times as strings)."""
    data = Nothing(reason="", details="", metadata=metadata).to_dict()["metadata"]
    return dict(data)


def _audit_metadata(action: Action) -> dict[str, Any]:
    data = action.to_dict()
    verdict = data.pop("verdict", None)
    if isinstance(verdict, dict):
        data["gates"] = {k: verdict[k] for k in ("state", "summary") if k in verdict}
    for key in ("assign_node_ids", "skip_node_ids", "mark_verified_node_ids", "verified_node_ids"):
        if key in data:
            data[key] = len(data[key])
    return data


def _set_state(
    rollout: Rollout,
    state: str,
    reason: str,
    details: str,
    now: datetime,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    rollout.state, rollout.reason = state, reason
    rollout.details = {"message": details, **(metadata or {})}
    rollout.updated_at = now
    notifications.rollout_changed(rollout, now)


def _skip(
    rollout: Rollout,
    bundle: Bundle,
    index: int,
    node_ids: Sequence[uuid.UUID],
    now: datetime,
) -> None:
    """Mark nodes skipped for this rollout and take back their assignment."""
    from sentinel_cp.nodes import Node

    if not node_ids:
        return
    deliveries = _deliveries(rollout.id)
    active = {row.id: row.active_bundle_id for row in _node_rows(node_ids).values()}
    for node_id in node_ids:
        row = deliveries.get(node_id)
        if row is not None:
            row.state, row.updated_at, row.reason = "skipped", now, "unavailable"
        else:
            db.session.add(
                NodeBundleStatus(
                    project_id=rollout.project_id,
                    node_id=node_id,
                    bundle_id=bundle.id,
                    rollout_id=rollout.id,
                    step_index=index,
                    previous_bundle_id=active.get(node_id),
                    state="skipped",
                    reason="unavailable",
                    created_at=now,
                    updated_at=now,
                )
            )
    db.session.execute(
        update(Node)
        .where(
            _among(Node.id, node_ids),
            Node.assigned_bundle_id == bundle.id,
            Node.assigned_rollout_id == rollout.id,
        )
        .values(assigned_bundle_id=None, assigned_rollout_id=None)
        .execution_options(synchronize_session=False)
    )
    distribution.publish_taken_back(rollout.project_id, node_ids)


def _mark_verified(rollout: Rollout, node_ids: Sequence[uuid.UUID], now: datetime) -> None:
    if not node_ids:
        return
    deliveries = _deliveries(rollout.id)
    for node_id in node_ids:
        row = deliveries.get(node_id)
        if row is not None:
            row.state, row.updated_at, row.verified_at = "verified", now, now
            row.activated_at = row.activated_at or now


def _expect(rollout: Rollout, steps: list[RolloutStep], node_ids: Sequence[uuid.UUID]) -> None:
    """Completed: each verified node is expected to run its target from now on (drift)."""
    from sentinel_cp.nodes import Node

    targets = {k: v for step in steps for k, v in (step.node_targets or {}).items()}
    by_target: dict[str, list[uuid.UUID]] = {}
    for node_id in node_ids:
        by_target.setdefault(targets.get(str(node_id), rollout.bundle_id), []).append(node_id)
    for target, ids in by_target.items():
        db.session.execute(
            update(Node)
            .where(_among(Node.id, ids))
            .values(expected_bundle_id=target)
            .execution_options(synchronize_session=False)
        )


def _assign(
    rollout: Rollout,
    step: RolloutStep,
    bundle: Bundle,
    node_ids: Sequence[uuid.UUID],
    index: int,
    now: datetime,
) -> None:
    """Assign each node its target: the rollout's bundle, or (rollback) its own previous one."""
    by_target: dict[str, list[uuid.UUID]] = {}
    for node_id in node_ids:
        target = (step.node_targets or {}).get(str(node_id), bundle.id)
        by_target.setdefault(target, []).append(node_id)
    for target, ids in by_target.items():
        target_bundle = bundle if target == bundle.id else db.session.get(Bundle, target)
        assert target_bundle is not None
        distribution.assign(target_bundle, ids, rollout_id=rollout.id, step_index=index, now=now)


# --- operator actions -----------------------------------------------------------------------


def _act(
    actor: Actor,
    rollout_id: uuid.UUID,
    action: str,
    allowed: tuple[str, ...],
    now: datetime,
) -> Rollout:
    rollout = _lock(rollout_id, now)
    if rollout is None:
        raise NotFound("Rollout not found", code="rollout_not_found")
    if rollout.state not in allowed:
        raise Conflict(
            f"Cannot {action} a rollout that is {rollout.state}", code=f"rollout_{rollout.state}"
        )
    return rollout


def pause(
    actor: Actor, rollout_id: uuid.UUID, *, reason: str | None, now: datetime | None = None
) -> Rollout:
    now = now or utcnow()
    rollout = _act(actor, rollout_id, "pause", ("running",), now)
    _set_state(rollout, "paused", "operator_paused", reason or "paused by an operator", now)
    _operator_audit(actor, rollout, "rollout.paused", "running", reason, now)
    return rollout


def resume(
    actor: Actor,
    rollout_id: uuid.UUID,
    *,
    reason: str | None,
    skip_unavailable: bool = False,
    now: datetime | None = None,
) -> Rollout:
    now = now or utcnow()
    rollout = _act(actor, rollout_id, "resume", ("paused", "pending"), now)
    if rollout.state == "pending":
        if rollout.approval_state not in ("not_required", "approved"):
            raise Conflict(
                f"Approval is {rollout.approval_state}", code=f"approval_{rollout.approval_state}"
            )
        _start(actor, rollout, now)
        events.publish_after_commit(rollout.project_id, "rollout", rollout.id, "running")
        return rollout
    if rollout.reason == "awaiting_promotion":
        raise Conflict(
            "This blue-green rollout waits for promotion, not a resume", code="awaiting_promotion"
        )
    steps = _steps(rollout.id)
    for step in steps:
        if step.state in ("running", "baking"):
            step.resumed_at = now  # paused time neither bakes nor fails a step
    if skip_unavailable:
        # the step the pause was about: the first one not completed (decide retries a failed
        # step itself, so failed steps are left as they are)
        waiting = next((s for s in steps if s.state != "completed"), None)
        if waiting is not None:
            waiting.skip_unavailable = True
    _set_state(rollout, "running", "operator_resumed", reason or "resumed by an operator", now)
    _operator_audit(actor, rollout, "rollout.resumed", "paused", reason, now)
    request_tick(rollout.id)
    return rollout


def cancel(
    actor: Actor, rollout_id: uuid.UUID, *, reason: str | None, now: datetime | None = None
) -> Rollout:
    """Stop for good: nodes stay where they are; assignments not yet delivered are cleared."""
    from sentinel_cp.nodes import Node

    now = now or utcnow()
    rollout = _act(actor, rollout_id, "cancel", ("pending", "running", "paused"), now)
    before = rollout.state
    undelivered = [
        row.node_id
        for row in _deliveries(rollout.id).values()
        if row.state in ("assigned", "downloaded", "staged")
    ]
    if undelivered:
        db.session.execute(
            update(Node)
            .where(Node.id.in_(undelivered), Node.assigned_rollout_id == rollout.id)
            .values(assigned_bundle_id=Node.active_bundle_id, assigned_rollout_id=None)
            .execution_options(synchronize_session=False)
        )
        distribution.publish_taken_back(rollout.project_id, undelivered)
    _set_state(rollout, "cancelled", "operator_cancelled", reason or "cancelled", now)
    rollout.finished_at = now
    _operator_audit(actor, rollout, "rollout.cancelled", before, reason, now)
    return rollout


def _operator_audit(
    actor: Actor, rollout: Rollout, action: str, before: str, reason: str | None, now: datetime
) -> None:
    audit.record(
        actor,
        action,
        resource_type="rollout",
        resource_id=rollout.id,
        project_id=rollout.project_id,
        changes={"state": [before, rollout.state]},
        metadata={"reason": reason} if reason else None,
        now=now,
    )
    events.publish_after_commit(rollout.project_id, "rollout", rollout.id, rollout.state)


# --- rollback, approvals, promotion ---------------------------------------------------------


def rollback(
    actor: Actor, rollout_id: uuid.UUID, *, reason: str | None, now: datetime | None = None
) -> Rollout:
    """Send every node this rollout assigned back to its own previous bundle, all at once."""
    now = now or utcnow()
    rollout = _act(
        actor, rollout_id, "roll back", ("running", "paused", "failed", "completed"), now
    )
    if rollout.rollback_of is not None:
        raise Conflict("A rollback cannot itself be rolled back", code="rollout_is_rollback")
    held = {
        node_id: holder
        for node_id, holder in _busy_nodes(rollout.project_id).items()
        if holder != rollout.id
    }
    taken = sorted({str(held[row.node_id]) for row in _returnable(rollout) if row.node_id in held})
    if taken:
        raise Conflict(
            f"Its nodes are now part of rollout {', '.join(taken)}; finish or cancel that first",
            code="nodes_busy",
        )
    before = rollout.state
    for step in _steps(rollout.id):
        if step.state in ("running", "baking"):
            step.state, step.finished_at, step.reason = "failed", now, "rolled_back"
    _set_state(rollout, "rolling_back", "operator_rollback", reason or "rolled back", now)
    created = _create_rollback(actor, rollout, now)
    _operator_audit(actor, rollout, "rollout.rolling_back", before, reason, now)
    rollout.details = {**rollout.details, "rollback_rollout_id": str(created.id)}
    if created.state == "completed":
        _finish_rolled_back(created, now)  # nothing to return: after the rolling_back row
    return rollout


def _returnable(rollout: Rollout) -> list[NodeBundleStatus]:
    """The deliveries a rollback returns: nodes that got (part of) the rollout's bundle."""
    return [
        row
        for row in _deliveries(rollout.id).values()
        if row.state not in ("pending", "skipped") and row.bundle_id == rollout.bundle_id
    ]


def _create_rollback(actor: Actor, original: Rollout, now: datetime) -> Rollout:
    """The linked all-at-once rollback rollout (started at once, no bake)."""
    from sentinel_cp.nodes import Node

    deliveries = _returnable(original)
    targets: dict[str, str] = {}
    unassigned: list[str] = []
    for row in sorted(deliveries, key=lambda r: str(r.node_id)):
        previous = (
            db.session.get(Bundle, row.previous_bundle_id) if row.previous_bundle_id else None
        )
        # The previous id is what the node reported running: a node may name any bundle,
        # even another project's, and a rollback must never go there.
        if (
            previous is not None
            and previous.project_id == original.project_id
            and previous.distributable
        ):
            targets[str(row.node_id)] = previous.id
        else:
            unassigned.append(str(row.node_id))
    if unassigned:
        # nothing to go back to (or it was revoked/collected): stop offering the bad bundle
        db.session.execute(
            update(Node)
            .where(Node.id.in_([uuid.UUID(n) for n in unassigned]))
            .values(assigned_bundle_id=None, assigned_rollout_id=None)
            .execution_options(synchronize_session=False)
        )
        distribution.publish_taken_back(original.project_id, [uuid.UUID(n) for n in unassigned])
    counts: dict[str, int] = {}
    for target in targets.values():
        counts[target] = counts.get(target, 0) + 1
    rollback = Rollout(
        id=uuid.uuid4(),
        project_id=original.project_id,
        # the most common target names the rollback; each node still gets its own
        bundle_id=max(counts, key=lambda b: counts[b]) if counts else original.bundle_id,
        state="running" if targets else "completed",
        approval_state="not_required",
        strategy="all_at_once",
        target_selector={"node_ids": sorted(targets)},
        config=RolloutConfig.from_dict(
            {"strategy": "all_at_once", "bake_s": 0, "max_failures": len(targets)}
        ).to_dict(),
        reason="rollback",
        details={"rollback_of": str(original.id), "unassigned_node_ids": unassigned},
        rollback_of=original.id,
        created_by=actor.label,
        created_at=now,
        started_at=now,
        finished_at=None if targets else now,
        updated_at=now,
    )
    db.session.add(rollback)
    db.session.flush()
    if targets:
        db.session.add(
            RolloutStep(
                rollout_id=rollback.id,
                index=0,
                kind="deploy",
                state="pending",
                node_ids=sorted(targets, key=lambda n: n),
                node_targets=targets,
                skipped_node_ids=[],
            )
        )
    audit.record(
        actor,
        "rollout.created",
        resource_type="rollout",
        resource_id=rollback.id,
        project_id=original.project_id,
        metadata={
            "rollback_of": str(original.id),
            "nodes": len(targets),
            "unassigned_node_ids": unassigned,
        },
        now=now,
    )
    original.details = {**original.details, "rollback_rollout_id": str(rollback.id)}
    events.publish_after_commit(original.project_id, "rollout", rollback.id, rollback.state)
    if targets:
        request_tick(rollback.id)
    # With nothing to return the rollback is born completed; the caller audits the original's
    # running → rolling_back first, then `_finish_rolled_back` (its audit trail stays in order).
    return rollback


def _finish_rolled_back(rollback: Rollout, now: datetime) -> None:
    """The rollback completed: its original becomes `rolled_back`."""
    original = db.session.get(Rollout, rollback.rollback_of)
    if original is None or original.state != "rolling_back":
        return
    original.state, original.finished_at, original.updated_at = "rolled_back", now, now
    audit.record(
        ENGINE,
        "rollout.rolled_back",
        resource_type="rollout",
        resource_id=original.id,
        project_id=original.project_id,
        changes={"state": ["rolling_back", "rolled_back"]},
        metadata={"rollback_rollout_id": str(rollback.id)},
        now=now,
    )
    events.publish_after_commit(original.project_id, "rollout", original.id, "rolled_back")
    notifications.rollout_changed(original, now)


def approve(
    actor: Actor,
    rollout_id: uuid.UUID,
    *,
    user_id: uuid.UUID,
    comment: str | None,
    now: datetime | None = None,
) -> Rollout:
    """One approval; the rollout starts when enough are in (no self-approval, once each)."""
    from sentinel_cp.rollouts.models import RolloutApproval

    now = now or utcnow()
    rollout = _act(actor, rollout_id, "approve", ("pending",), now)
    if rollout.approval_state != "pending_approval":
        raise Conflict(
            f"Approval is {rollout.approval_state}", code=f"approval_{rollout.approval_state}"
        )
    if rollout.created_by_user_id == user_id:
        raise Conflict("The creator of a rollout cannot approve it", code="self_approval")
    if db.session.scalar(
        select(RolloutApproval.id).where(
            RolloutApproval.rollout_id == rollout.id, RolloutApproval.user_id == user_id
        )
    ):
        raise Conflict("You already approved this rollout", code="already_approved")
    db.session.add(
        RolloutApproval(
            rollout_id=rollout.id,
            user_id=user_id,
            decision="approve",
            comment=comment,
            created_at=now,
        )
    )
    db.session.flush()
    count = db.session.scalar(
        select(func.count())
        .select_from(RolloutApproval)
        .where(RolloutApproval.rollout_id == rollout.id, RolloutApproval.decision == "approve")
    )
    before = rollout.approval_state
    if (count or 0) >= rollout.approvals_required:
        rollout.approval_state = "approved"
    audit.record(
        actor,
        "rollout.approved",
        resource_type="rollout",
        resource_id=rollout.id,
        project_id=rollout.project_id,
        changes={"approval_state": [before, rollout.approval_state]},
        metadata={"approvals": count, "required": rollout.approvals_required, "comment": comment},
        now=now,
    )
    if rollout.approval_state == "approved" and (
        rollout.scheduled_at is None or rollout.scheduled_at <= now
    ):
        _start(ENGINE, rollout, now)
    events.publish_after_commit(rollout.project_id, "rollout", rollout.id, rollout.state)
    return rollout


def reject(
    actor: Actor,
    rollout_id: uuid.UUID,
    *,
    user_id: uuid.UUID,
    comment: str,
    now: datetime | None = None,
) -> Rollout:
    from sentinel_cp.rollouts.models import RolloutApproval

    now = now or utcnow()
    if not comment or not comment.strip():
        raise Invalid("A rejection needs a comment", fields={"comment": ["required"]})
    rollout = _act(actor, rollout_id, "reject", ("pending",), now)
    if rollout.approval_state != "pending_approval":
        raise Conflict(
            f"Approval is {rollout.approval_state}", code=f"approval_{rollout.approval_state}"
        )
    db.session.add(
        RolloutApproval(
            rollout_id=rollout.id,
            user_id=user_id,
            decision="reject",
            comment=comment,
            created_at=now,
        )
    )
    rollout.approval_state = "rejected"
    audit.record(
        actor,
        "rollout.rejected",
        resource_type="rollout",
        resource_id=rollout.id,
        project_id=rollout.project_id,
        changes={"approval_state": ["pending_approval", "rejected"]},
        metadata={"comment": comment},
        now=now,
    )
    events.publish_after_commit(rollout.project_id, "rollout", rollout.id, rollout.state)
    return rollout


def promote(
    actor: Actor, rollout_id: uuid.UUID, *, reason: str | None, now: datetime | None = None
) -> Rollout:
    """Blue-green: the standby set passed its gates; roll the rest."""
    now = now or utcnow()
    rollout = _act(actor, rollout_id, "promote", ("paused",), now)
    if rollout.reason != "awaiting_promotion":
        raise Conflict(
            "Only a blue-green rollout awaiting promotion can be promoted",
            code="not_awaiting_promotion",
        )
    rollout.promoted = True
    _set_state(rollout, "running", "promoted", reason or "promoted by an operator", now)
    _operator_audit(actor, rollout, "rollout.promoted", "paused", reason, now)
    request_tick(rollout.id)
    return rollout


# --- sweeps ---------------------------------------------------------------------------------


def sweep(*, now: datetime | None = None) -> dict[str, int]:
    """Cron: start due scheduled rollouts, and request a tick for every running one."""
    now = now or utcnow()
    due = db.session.scalars(
        select(Rollout.id).where(
            Rollout.state == "pending",
            Rollout.scheduled_at.is_not(None),
            Rollout.scheduled_at <= now,
            or_(Rollout.approval_state == "not_required", Rollout.approval_state == "approved"),
        )
    ).all()
    started = 0
    for rollout_id in due:
        rollout = _lock(rollout_id, now)
        if rollout is not None and rollout.state == "pending":
            _start(Actor.system("scheduler"), rollout, now)
            events.publish_after_commit(rollout.project_id, "rollout", rollout.id, "running")
            started += 1
        db.session.commit()
    running = db.session.scalars(select(Rollout.id).where(Rollout.state == "running")).all()
    for rollout_id in running:
        jobqueue.tick_rollout_now(rollout_id)
    return {"started": started, "ticked": len(running)}


# --- describing -----------------------------------------------------------------------------


def describe(rollout: Rollout) -> dict[str, Any]:
    """The rollout with its steps (each with its nodes), progress and the latest gates."""
    steps = _steps(rollout.id)
    deliveries = _deliveries(rollout.id, rows=True)
    rows = _node_rows([uuid.UUID(n) for step in steps for n in step.node_ids])
    progress = {"total": 0, "pending": 0, "in_progress": 0, "verified": 0, "failed": 0}
    progress["skipped"] = 0
    step_dicts = []
    for step in steps:
        nodes = []
        for raw in step.node_ids:
            node_id = uuid.UUID(raw)
            delivery = deliveries.get(node_id)
            state = delivery.state if delivery else "pending"
            nodes.append(
                {
                    "node_id": raw,
                    "name": rows[node_id].name if node_id in rows else None,
                    "state": state,
                    "reason": delivery.reason if delivery else None,
                }
            )
            progress["total"] += 1
            if state == "verified":
                progress["verified"] += 1
            elif state in ("failed", "rolled_back"):
                progress["failed"] += 1
            elif state == "skipped":
                progress["skipped"] += 1
            elif state == "pending":
                progress["pending"] += 1
            else:
                progress["in_progress"] += 1
        step_dicts.append(
            {
                "index": step.index,
                "kind": step.kind,
                "state": step.state,
                "reason": step.reason,
                "started_at": _iso(step.started_at),
                "baking_since": _iso(step.baking_since),
                "finished_at": _iso(step.finished_at),
                "gates": step.gate_verdict,
                "nodes": nodes,
            }
        )
    active = next((s for s in step_dicts if s["state"] in ("running", "baking")), None)
    return {
        "id": str(rollout.id),
        "state": rollout.state,
        "approval_state": rollout.approval_state,
        "strategy": rollout.strategy,
        "bundle_id": rollout.bundle_id,
        "target_selector": rollout.target_selector,
        "config": rollout.config,
        "reason": rollout.reason,
        "details": rollout.details,
        "rollback_of": str(rollout.rollback_of) if rollout.rollback_of else None,
        "approvals_required": rollout.approvals_required,
        "created_by": rollout.created_by,
        "created_at": _iso(rollout.created_at),
        "scheduled_at": _iso(rollout.scheduled_at),
        "started_at": _iso(rollout.started_at),
        "finished_at": _iso(rollout.finished_at),
        "steps": step_dicts,
        "progress": progress,
        "gates": active["gates"] if active else None,
    }


def list_rollouts(
    project_id: uuid.UUID, *, state: str | None, limit: int, cursor: str | None
) -> Page[Rollout]:
    """Newest first; the cursor is (created_at, id), stable under inserts."""
    where = [Rollout.project_id == project_id]
    if state is not None:
        where.append(Rollout.state == state)
    total = db.session.scalar(select(func.count()).select_from(Rollout).where(*where)) or 0
    query = select(Rollout).where(*where)
    if cursor is not None:
        at, after = decode_position(cursor)
        query = query.where(
            or_(
                Rollout.created_at < at,
                and_(Rollout.created_at == at, Rollout.id < after),
            )
        )
    rows = list(
        db.session.scalars(
            query.order_by(Rollout.created_at.desc(), Rollout.id.desc()).limit(limit + 1)
        )
    )
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor(last.created_at.isoformat(), str(last.id))
    return Page(rows[:limit], next_cursor, total)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
