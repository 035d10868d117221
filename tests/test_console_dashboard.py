"""The dashboard: nodes by status and by active bundle, rollouts under way with their progress,
what needs attention, recent activity — and that it follows the fleet live."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from bundle_helpers import CONFIG
from nicegui import ui
from nicegui.testing import User

if TYPE_CHECKING:
    from console_support import Console

pytest_plugins = ["console_support"]


def compiled_bundle(console: Console, version: str) -> str:
    from sentinel_cp import projects
    from sentinel_cp.audit import Actor
    from sentinel_cp.bundles import compiler

    def submit() -> str:
        project = projects.get_project(console.project)
        config = CONFIG.replace('"api"', f'"api-{version}"')
        bundle, _ = compiler.submit(
            Actor.system("test"), project, {"sentinel.kdl": config}, version=version
        )
        return str(bundle.id)

    bundle_id = console.run(submit)
    assert console.run(compiler.compile_bundle, bundle_id) == "compiled"
    return bundle_id


def start_rollout(console: Console, bundle_id: str) -> str:
    from sentinel_cp import projects
    from sentinel_cp.audit import Actor
    from sentinel_cp.rollouts import engine

    def create() -> str:
        project = projects.get_project(console.project)
        request = {"bundle_id": bundle_id, "start": True, "config": {"strategy": "all_at_once"}}
        return str(engine.create(Actor.system("test"), project, request, user_id=None).id)

    rollout_id = console.run(create)
    console.run(engine.tick, uuid.UUID(rollout_id))
    return rollout_id


async def test_the_dashboard_shows_nodes_by_active_bundle(user: User, console: Console) -> None:
    v1 = console.add_bundle("v1")
    console.add_nodes(3, prefix="edge", active_bundle_id=v1)
    console.add_nodes(1, prefix="new")
    await user.open("/")
    await user.should_see(marker="nodes-online", content="4")
    rows = {row["version"]: row["nodes"] for row in console.table_rows(user, "nodes-by-bundle")}
    assert rows == {"v1": 3, "none": 1}


async def test_a_running_rollout_shows_with_its_progress_and_links_to_it(
    user: User, console: Console
) -> None:
    console.add_nodes(2, prefix="edge")
    bundle_id = compiled_bundle(console, "v2")
    rollout_id = start_rollout(console, bundle_id)
    await user.open("/")
    await user.should_see(marker=f"rollout-{rollout_id}", content="v2 · all_at_once")
    await user.should_see("0/2")


async def test_failed_compiles_and_paused_rollouts_need_attention(
    user: User, console: Console
) -> None:
    from sentinel_cp.audit import Actor
    from sentinel_cp.rollouts import engine

    console.add_bundle("broken", status="failed")
    console.add_nodes(2, prefix="edge")
    rollout_id = start_rollout(console, compiled_bundle(console, "v3"))
    console.run(lambda: engine.pause(Actor.system("test"), uuid.UUID(rollout_id), reason="lunch"))
    await user.open("/")
    await user.should_see("Bundle broken failed to compile")
    await user.should_see("Rollout of v3 paused")


async def test_nothing_needs_attention_in_a_calm_project(user: User, console: Console) -> None:
    await user.open("/")
    await user.should_see("Nothing needs attention.")
    await user.should_see("No rollout under way.")
    await user.should_see(marker="next-steps")


async def test_the_dashboard_follows_node_events_live(user: User, console: Console) -> None:
    from sentinel_cp import events

    console.add_nodes(1, prefix="edge")
    await user.open("/")
    await user.should_see(marker="nodes-online", content="1")
    await console.listener_ready()
    console.add_nodes(2, prefix="late")
    console.run(
        lambda: events.publish_now(
            events.event_payload(uuid.UUID(console.project_id), "node", uuid.uuid4(), "online")
        )
    )
    labels = [e for e in user.find(marker="nodes-online").elements if isinstance(e, ui.label)]
    await console.eventually(lambda: labels[0].text == "3", what="the online count to follow")


async def test_the_first_change_refreshes_at_once_and_a_burst_within_the_interval_once_more(
    console: Console,
) -> None:
    """Leading edge: no second of delay before the first refresh; the rest coalesce."""
    from console.live import Coalescer

    now = [100.0]
    runs: list[float] = []

    async def refresh() -> None:
        runs.append(now[0])

    coalesced = Coalescer(refresh, 1.0, clock=lambda: now[0])
    coalesced()
    await console.eventually(lambda: len(runs) == 1, what="the leading refresh")
    assert runs == [100.0]  # at once: the clock did not move
    for _ in range(20):
        coalesced()
    assert len(runs) == 1 and coalesced.pending  # folded into one refresh still to come
    now[0] = 100.5  # the coalescer waits out the rest of the interval (a real 1 s wait)
    await console.eventually(lambda: len(runs) == 2, what="the trailing refresh", timeout=5)
