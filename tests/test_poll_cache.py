"""The poll cache (`sentinel_cp.bundles.pollcache`): repeated polls answered 304 from memory,
and never an answer the database would not give.

The rules are checked on the cache itself (versions, projects, age, token expiry, a listener
that is not subscribed), then through the API on both backends with the cache turned on:
a 304 served without one SQL statement, and every change that must reach a node — an
assignment, a revoked key, a revoked bundle — reaching it on its next poll once the change's
event has arrived. Last, the listener against real Redis processes: a killed subscription
and a frozen server both make the cache forget everything and answer nothing until it has
subscribed again.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from bundle_helpers import CONFIG, operator_key, register_node, run_jobs, setup_project, submit
from conftest import Statements, bearer, drain_events, make_key, wait_for
from fault_support import RedisProcess

from sentinel_cp import heartbeat_buffer, metrics, nodes
from sentinel_cp.bundles import distribution, pollcache
from sentinel_cp.bundles.models import Bundle
from sentinel_cp.db import db

KEY = ("6a20800c-1922-48cf-a6d7-68dde91fb57d", "digest")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def subscribed_cache(clock: Clock | None = None) -> pollcache.PollCache:
    """A cache whose listener is taken as subscribed (no thread: the rules alone)."""
    cache = pollcache.PollCache("redis://unused", clock=clock or Clock())
    cache.subscribed.set()
    return cache


# --- the rules ------------------------------------------------------------------------------


def test_an_entry_is_answered_until_its_project_has_an_event() -> None:
    cache = subscribed_cache()
    cache.remember(KEY, '"e1"', "p1", cache.version)
    cache.remember(("other", "d"), '"e2"', "p2", cache.version)
    assert cache.etag_for(KEY) == '"e1"'
    cache.invalidate("p2")  # another project's change
    assert cache.etag_for(KEY) == '"e1"'
    assert cache.etag_for(("other", "d")) is None
    cache.invalidate("p1")
    assert cache.etag_for(KEY) is None


def published(project: str | None, kind: str, ident: str | None, state: str) -> dict[str, Any]:
    """The listener's view of one event on the channel."""
    payload = {"project": project, "kind": kind, "id": ident, "state": state}
    return {"type": "message", "data": json.dumps(payload)}


def test_a_node_event_makes_only_that_node_forget() -> None:
    cache = subscribed_cache()
    cache.remember(KEY, '"e1"', "p1", cache.version)
    cache.remember(("n2", "d"), '"e2"', "p1", cache.version)
    cache.handle(published("p1", "node", KEY[0], "bundle_verified"))
    assert cache.etag_for(KEY) is None
    assert cache.etag_for(("n2", "d")) == '"e2"'  # the same project's other node


def test_the_audit_echo_of_a_node_change_is_passed_over_and_other_events_forget_the_project() -> (
    None
):
    cache = subscribed_cache()
    cache.remember(KEY, '"e1"', "p1", cache.version)
    version = cache.version
    cache.handle(published("p1", "audit", "row-1", "node.bundle_verified"))
    assert cache.version == version and cache.etag_for(KEY) == '"e1"'
    cache.handle(published("p1", "audit", None, "audit.linked"))  # the audit linker's news
    cache.handle(published(None, "audit", None, "audit.linked"))  # ... of the global chain
    assert cache.version == version and cache.etag_for(KEY) == '"e1"'
    cache.handle(published("p1", "audit", "row-2", "project.settings_updated"))
    assert cache.etag_for(KEY) is None  # settings, signing keys, bundles: every node
    cache.remember(KEY, '"e3"', "p1", cache.version)
    cache.handle(published(None, "user", "u-1", "created"))  # about no project: everything
    assert cache.etag_for(KEY) is None
    cache.remember(KEY, '"e4"', "p1", cache.version)
    cache.handle({"type": "message", "data": "not json"})
    assert cache.etag_for(KEY) is None


def test_a_verified_report_is_noted_once_for_the_nodes_next_heartbeat(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The heartbeat buffer asks `take_verified` for the first heartbeat after a node's
    `verified` report (the fresh one a rollout's gates wait for): true once, then false; no
    other event is such a note; the notes are bounded (losing one leaves a tick to the sweep)."""
    cache = subscribed_cache()
    cache.handle(published("p1", "node", "n1", "bundle_activated"))
    cache.handle(published("p1", "audit", "row-1", "node.bundle_verified"))
    cache.handle(published("p1", "node", "n2", "bundle_verified"))
    assert not cache.take_verified("n1")
    assert cache.take_verified("n2") and not cache.take_verified("n2")
    monkeypatch.setattr(pollcache, "MAX_ENTRIES", 2)
    for node in ("a", "b", "c"):
        cache.handle(published("p1", "node", node, "bundle_verified"))
    assert [cache.take_verified(node) for node in ("a", "b", "c")] == [False, False, True]


def test_a_rollout_event_forgets_only_the_answers_that_depend_on_that_rollout() -> None:
    """A rollout's state decides the `poll_after_s` of the nodes it assigned a bundle they do
    not run yet, nothing else (its assignments publish `node` events): their entries, and only
    theirs, forget; the `audit` echo of a `rollout.*` action is passed over."""
    cache = subscribed_cache()
    waiting, other, done = KEY, ("n2", "d"), ("n3", "d")
    cache.remember(waiting, '"e1"', "p1", cache.version, rollout="r-1")
    cache.remember(other, '"e2"', "p1", cache.version, rollout="r-2")
    cache.remember(done, '"e3"', "p1", cache.version)  # runs its bundle, or never assigned
    version = cache.version
    cache.handle(published("p1", "audit", "row-1", "rollout.step_completed"))
    assert cache.version == version and cache.etag_for(waiting) == '"e1"'
    cache.handle(published("p1", "rollout", "r-1", "paused"))
    assert cache.etag_for(waiting) is None
    assert cache.etag_for(other) == '"e2"' and cache.etag_for(done) == '"e3"'
    cache.handle(published("p1", "bundle", "b-1", "revoked"))
    assert cache.etag_for(other) is None and cache.etag_for(done) is None


def test_who_a_credential_is_survives_the_nodes_progress_and_nothing_else() -> None:
    """Status reports ask who a credential is (`who_for`). The node's own progress through a
    bundle (assigned, taken back, its reports) forgets its poll answer but not who it is;
    every other event about the node (key revoked, deleted, online, labels, a state nobody
    knows yet) or its project forgets that too; so do another credential, a listener that is
    not subscribed, and time."""
    clock = Clock()
    cache = subscribed_cache(clock)
    who = object()

    def known() -> bool:
        return cache.who_for(KEY) is who

    cache.remember_who(KEY, who, "p1", cache.version)
    cache.remember(KEY, '"e1"', "p1", cache.version)
    for state in ("assigned", "bundle_downloaded", "bundle_verified", "unassigned"):
        cache.handle(published("p1", "node", KEY[0], state))
        assert known(), state
    assert cache.etag_for(KEY) is None  # the poll's answer did change
    cache.handle(published("p1", "node", "n2", "key_revoked"))  # another node
    assert known()
    for event in (
        ("p1", "node", KEY[0], "key_revoked"),
        ("p1", "node", KEY[0], "deleted"),
        ("p1", "node", KEY[0], "online"),
        ("p1", "node", KEY[0], "reassigned-somehow"),
        ("p1", "audit", "row-1", "signing_key.retired"),
        (None, "user", "u-1", "created"),
    ):
        cache.remember_who(KEY, who, "p1", cache.version)
        assert known()
        cache.handle(published(*event))
        assert not known(), event
    cache.remember_who(KEY, who, "p1", cache.version)
    assert cache.who_for((KEY[0], "another credential")) is None
    cache.remember_who(KEY, who, "p1", cache.version - 1)  # read before the last event
    assert not known()
    cache.remember_who(KEY, who, "p1", cache.version, valid_for_s=5)
    clock.now += 5
    assert not known()
    cache.remember_who(KEY, who, "p1", cache.version)
    cache.subscribed.clear()
    assert not known()


def test_node_versions_are_bounded_and_forgetting_them_forgets_what_was_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pollcache, "MAX_ENTRIES", 3)
    cache = subscribed_cache()
    cache.remember(KEY, '"e1"', "p1", cache.version)
    for i in range(3):
        cache.invalidate("p1", f"other-{i}")
    assert cache.etag_for(KEY) == '"e1"'  # other nodes' events
    cache.invalidate("p1", "other-3")  # one version too many: all go, and what was read
    assert cache.etag_for(KEY) is None and len(cache.node_invalidated_at) == 1


def test_a_read_that_raced_an_event_is_never_trusted() -> None:
    """The version is taken before the database read: an event that arrives between that
    moment and `remember` means the read may predate the change."""
    cache = subscribed_cache()
    before_read = cache.version
    cache.invalidate("p1")  # the change committed and its event arrived meanwhile
    cache.remember(KEY, '"stale"', "p1", before_read)
    assert cache.etag_for(KEY) is None
    cache.remember(KEY, '"fresh"', "p1", cache.version)
    assert cache.etag_for(KEY) == '"fresh"'


def test_an_event_about_no_project_forgets_every_entry() -> None:
    cache = subscribed_cache()
    cache.remember(KEY, '"e1"', "p1", cache.version)
    cache.handle({"type": "message", "data": '{"project": null, "kind": "audit"}'})
    assert cache.etag_for(KEY) is None
    cache.remember(KEY, '"e1"', "p1", cache.version)
    cache.handle({"type": "message", "data": "not json"})  # unreadable: assume the worst
    assert cache.etag_for(KEY) is None


def test_entries_expire_with_the_token_and_after_max_age() -> None:
    clock = Clock()
    cache = subscribed_cache(clock)
    cache.remember(KEY, '"token"', "p1", cache.version, valid_for_s=10)
    cache.remember(("n2", "d"), '"key"', "p1", cache.version)
    clock.now += 10
    assert cache.etag_for(KEY) is None  # the token expired
    assert cache.etag_for(("n2", "d")) == '"key"'
    clock.now += pollcache.MAX_AGE_S
    assert cache.etag_for(("n2", "d")) is None
    cache.remember(KEY, '"expired"', "p1", cache.version, valid_for_s=-1)
    assert KEY[0] not in cache.entries


def test_nothing_is_remembered_or_answered_while_not_subscribed() -> None:
    cache = subscribed_cache()
    cache.remember(KEY, '"e1"', "p1", cache.version)
    cache.subscribed.clear()
    assert cache.etag_for(KEY) is None
    cache.remember(("n2", "d"), '"e2"', "p1", cache.version)
    assert "n2" not in cache.entries


def test_the_cache_is_bounded_and_drops_its_oldest_entries_first() -> None:
    clock = Clock()
    cache = subscribed_cache(clock)
    cache.remember(("expiring", "d"), '"e"', "p1", cache.version, valid_for_s=1)
    for i in range(pollcache.MAX_ENTRIES - 1):
        cache.remember((str(i), "d"), '"e"', "p1", cache.version)
    clock.now += 1
    cache.remember(("new", "d"), '"e"', "p1", cache.version)  # room made by the expired one
    assert len(cache.entries) == pollcache.MAX_ENTRIES
    assert "expiring" not in cache.entries and cache.etag_for(("0", "d")) == '"e"'
    cache.remember(("newer", "d"), '"e"', "p1", cache.version)  # full: the older half goes
    assert len(cache.entries) <= pollcache.MAX_ENTRIES // 2 + 1
    assert "0" not in cache.entries
    assert cache.etag_for(("new", "d")) == '"e"' and cache.etag_for(("newer", "d")) == '"e"'


def test_one_entry_per_node_whatever_the_spelling_or_the_credential() -> None:
    """A node id in any form `uuid.UUID` reads, and the many spellings of one bearer header,
    are one entry; another credential of the same node replaces it rather than adding one."""
    cache = subscribed_cache()
    node = "6a20800c-1922-48cf-a6d7-68dde91fb57d"
    spellings = [node, node.upper(), "{" + node + "}", "urn:uuid:" + node, node.replace("-", "")]
    keys = {cache.credential_key(n, "Authorization", "Bearer tok") for n in spellings}
    keys |= {cache.credential_key(node, "Authorization", h) for h in ("bearer  tok", "BEARER tok")}
    assert len(keys) == 1
    assert cache.credential_key("not-a-uuid", "Authorization", "Bearer tok") is None
    by_key = cache.credential_key(node, "X-Sentinel-Node-Key", "nk_x")
    assert by_key == cache.credential_key(node, "X-Zentinel-Node-Key", "nk_x")
    [token_key] = keys
    assert by_key is not None and by_key != token_key
    cache.remember(token_key, '"t"', "p1", cache.version)
    cache.remember(by_key, '"k"', "p1", cache.version)
    assert list(cache.entries) == [node]
    assert cache.etag_for(by_key) == '"k"' and cache.etag_for(token_key) is None


# --- through the API, both backends ---------------------------------------------------------


@pytest.fixture
def cached(app: Any) -> Iterator[Any]:
    app.config["POLL_CACHE"] = True
    yield app
    buffer = app.extensions.get(heartbeat_buffer.EXTENSION)  # heartbeats ride on the cache
    if buffer is not None:
        buffer.stop()
    cache = app.extensions.get(pollcache.EXTENSION)
    if cache is not None:
        cache.stop()


@pytest.fixture
def fleet(cached: Any, client: Any, backend: Any) -> dict[str, Any]:
    """A project with a compiled bundle, two registered nodes and a subscribed cache."""
    project_id = setup_project(cached)
    key = operator_key(cached)
    submitted = submit(client, key, CONFIG, "v1")
    assert submitted.status_code == 201, submitted.get_json()
    run_jobs(cached, backend.redis_url)
    node_id, node_key = register_node(client, "edge-1")
    other_id, other_key = register_node(client, "edge-2")
    cache = pollcache.for_app(cached)
    assert cache is not None
    wait_for(cache.subscribed.is_set, timeout=10, what="the poll cache to subscribe")
    drain_events(cache, project_id)  # the set-up's own events must not land mid-test
    return {
        "project_id": project_id,
        "key": key,
        "bundle_id": submitted.get_json()["id"],
        "node": (node_id, node_key),
        "other": (other_id, other_key),
        "cache": cache,
    }


def poll(client: Any, node_id: str, key: str, etag: str | None = None) -> Any:
    headers = {"X-Sentinel-Node-Key": key, **({"If-None-Match": etag} if etag else {})}
    return client.get(f"/api/v1/nodes/{node_id}/bundles/latest", headers=headers)


def assert_answered_from_memory(client: Any, node_id: str, key: str, etag: str) -> None:
    with Statements() as statements:
        assert poll(client, node_id, key, etag).status_code == 304
    assert statements.count == 0


def assign(app: Any, bundle_id: str, node_id: str) -> None:
    with app.app_context():
        bundle = db.session.get(Bundle, bundle_id)
        distribution.assign(bundle, [uuid.UUID(node_id)])
        db.session.commit()


def wait_for_event(cache: pollcache.PollCache, project_id: str, node_id: str, since: int) -> None:
    """Until an event about the project, or about the node, reached the cache after `since`."""
    wait_for(
        lambda: (
            max(cache.invalidated_at.get(project_id, 0), cache.node_invalidated_at.get(node_id, 0))
            > since
        ),
        timeout=10,
        what="the change's event to reach the poll cache",
    )


def test_a_repeated_poll_is_answered_304_without_a_statement(
    client: Any, fleet: dict[str, Any]
) -> None:
    node_id, node_key = fleet["node"]
    first = poll(client, node_id, node_key)
    assert first.status_code == 200
    hits = metrics.POLL_CACHE_HITS._value.get()
    with Statements() as statements:
        again = poll(client, node_id, node_key, first.headers["ETag"])
    assert again.status_code == 304 and again.data == b""
    assert again.headers["ETag"] == first.headers["ETag"]
    assert again.headers["Cache-Control"] == "no-store"
    assert statements.count == 0
    assert metrics.POLL_CACHE_HITS._value.get() == hits + 1
    with Statements() as statements:  # a different ETag: the database answers
        assert poll(client, node_id, node_key, '"other"').status_code == 200
    assert statements.count > 0


def test_an_assignment_reaches_the_next_poll(
    client: Any, cached: Any, fleet: dict[str, Any]
) -> None:
    node_id, node_key = fleet["node"]
    cache = fleet["cache"]
    first = poll(client, node_id, node_key)
    assert first.get_json()["no_update"] is True
    etag = first.headers["ETag"]
    assert_answered_from_memory(client, node_id, node_key, etag)
    since = cache.version
    assign(cached, fleet["bundle_id"], node_id)
    wait_for_event(cache, fleet["project_id"], node_id, since)
    offer = poll(client, node_id, node_key, etag)
    assert offer.status_code == 200
    assert offer.get_json()["bundle_id"] == fleet["bundle_id"]
    assert offer.headers["ETag"] != etag


def test_a_rollout_pausing_reaches_the_nodes_still_waiting_for_its_bundle_only(
    client: Any, cached: Any, backend: Any, fleet: dict[str, Any]
) -> None:
    """A node a running rollout assigned a bundle it does not run yet is told to come back
    sooner; once the rollout pauses, its next poll is answered by the database with the
    project's interval. A node already running the bundle is still answered from memory: the
    rollout's events are not about it."""
    (node_id, node_key), (other_id, other_key) = fleet["node"], fleet["other"]
    bundle_id = fleet["bundle_id"]
    key = make_key(cached, "ops@example.com", ["rollouts:read", "rollouts:write"])
    base = "/api/v1/projects/default/rollouts"
    created = client.post(
        base, json={"bundle_id": bundle_id, "strategy": "all_at_once"}, headers=bearer(key)
    )
    assert created.status_code == 201, created.get_json()
    run_jobs(cached, backend.redis_url)  # the step starts: both nodes assigned
    for state in ("downloaded", "staged", "activated", "verified"):
        reply = client.post(
            f"/api/v1/nodes/{other_id}/bundles/{bundle_id}/{state}",
            json={},
            headers={"X-Sentinel-Node-Key": other_key},
        )
        assert reply.status_code == 200, reply.get_json()
    cache = fleet["cache"]
    drain_events(cache, fleet["project_id"])
    waiting, done = poll(client, node_id, node_key), poll(client, other_id, other_key)
    assert waiting.get_json()["bundle_id"] == bundle_id
    assert waiting.get_json()["poll_after_s"] == 5
    assert done.get_json()["no_update"] is True
    assert_answered_from_memory(client, node_id, node_key, waiting.headers["ETag"])
    assert_answered_from_memory(client, other_id, other_key, done.headers["ETag"])

    since, rollout_id = cache.version, created.get_json()["id"]
    paused = client.post(f"{base}/{rollout_id}/pause", json={}, headers=bearer(key))
    assert paused.status_code == 200, paused.get_json()
    wait_for(
        lambda: cache.rollout_invalidated_at.get(rollout_id, 0) > since,
        timeout=10,
        what="the rollout's event to reach the poll cache",
    )
    again = poll(client, node_id, node_key, waiting.headers["ETag"])
    assert again.status_code == 200
    assert again.get_json()["poll_after_s"] == done.get_json()["poll_after_s"] != 5
    assert_answered_from_memory(client, other_id, other_key, done.headers["ETag"])


def test_a_revoked_key_is_refused_on_its_next_poll(client: Any, fleet: dict[str, Any]) -> None:
    node_id, node_key = fleet["node"]
    etag = poll(client, node_id, node_key).headers["ETag"]
    assert_answered_from_memory(client, node_id, node_key, etag)
    revoke_key(client, fleet)
    assert poll(client, node_id, node_key, etag).status_code == 401


def revoke_key(client: Any, fleet: dict[str, Any]) -> None:
    """Revoke the node's key through the API; return once its event reached the cache."""
    node_id, cache = fleet["node"][0], fleet["cache"]
    since = cache.version
    revoked = client.post(
        f"/api/v1/projects/default/nodes/{node_id}/revoke-key",
        json={},
        headers=bearer(fleet["key"]),
    )
    assert revoked.status_code == 200, revoked.get_json()
    wait_for_event(cache, fleet["project_id"], node_id, since)


def test_a_revoked_bundle_is_no_longer_offered(
    client: Any, cached: Any, fleet: dict[str, Any]
) -> None:
    node_id, node_key = fleet["node"]
    cache = fleet["cache"]
    since = cache.version
    assign(cached, fleet["bundle_id"], node_id)
    wait_for_event(cache, fleet["project_id"], node_id, since)
    offer = poll(client, node_id, node_key)
    assert offer.get_json()["bundle_id"] == fleet["bundle_id"]
    etag = offer.headers["ETag"]
    assert_answered_from_memory(client, node_id, node_key, etag)
    since = cache.version
    revoked = client.post(
        f"/api/v1/projects/default/bundles/{fleet['bundle_id']}/revoke",
        json={"reason": "bad"},
        headers=bearer(fleet["key"]),
    )
    assert revoked.status_code == 200, revoked.get_json()
    wait_for_event(cache, fleet["project_id"], node_id, since)
    after = poll(client, node_id, node_key, etag)
    assert after.status_code == 200 and after.get_json()["no_update"] is True


def test_a_nodes_poll_and_reports_read_its_credential_once_and_a_revoked_key_is_refused_at_once(
    client: Any, cached: Any, fleet: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node working through a bundle polls, then sends its reports; its credential is read
    for the poll only (each report's own event is the node's progress, which leaves who it
    is alone). Revoking its key makes the next report 401 as soon as the event arrived."""
    node_id, node_key = fleet["node"]
    cache, bundle_id = fleet["cache"], fleet["bundle_id"]
    reads: list[str] = []
    real_authenticate_key = nodes.authenticate_key

    def counting(raw: str, connection: Any = None) -> Any:
        reads.append(raw)
        return real_authenticate_key(raw, connection)

    monkeypatch.setattr(nodes, "authenticate_key", counting)
    since = cache.version
    assign(cached, bundle_id, node_id)
    wait_for_event(cache, fleet["project_id"], node_id, since)

    def report(state: str) -> Any:
        return client.post(
            f"/api/v1/nodes/{node_id}/bundles/{bundle_id}/{state}",
            json={},
            headers={"X-Sentinel-Node-Key": node_key},
        )

    assert poll(client, node_id, node_key).get_json()["bundle_id"] == bundle_id
    assert len(reads) == 1
    for state in ("downloaded", "staged", "activated"):
        since = cache.version
        assert report(state).status_code == 200
        wait_for_event(cache, fleet["project_id"], node_id, since)  # its own progress event
    assert len(reads) == 1
    revoke_key(client, fleet)
    refused = report("verified")
    assert refused.status_code == 401 and refused.get_json()["code"] == "invalid_node_key"
    assert len(reads) == 2


def test_only_the_credential_that_was_answered_is_answered_from_memory(
    client: Any, fleet: dict[str, Any]
) -> None:
    node_id, node_key = fleet["node"]
    other_id, other_key = fleet["other"]
    etag = poll(client, node_id, node_key).headers["ETag"]
    assert_answered_from_memory(client, node_id, node_key, etag)
    # Another node's valid key, an unknown key, no key: all go to the normal path.
    assert poll(client, node_id, other_key, etag).status_code == 403
    assert poll(client, node_id, "nk_" + "x" * 43, etag).status_code == 401
    unauthenticated = client.get(
        f"/api/v1/nodes/{node_id}/bundles/latest", headers={"If-None-Match": etag}
    )
    assert unauthenticated.status_code == 401
    # The same key for another node's path is that node's business: refused.
    assert poll(client, other_id, node_key, etag).status_code == 403


def test_a_token_is_answered_from_memory_only_until_it_expires(
    client: Any, fleet: dict[str, Any]
) -> None:
    node_id, node_key = fleet["node"]
    cache = fleet["cache"]
    token = client.post(
        f"/api/v1/nodes/{node_id}/token", json={}, headers={"X-Sentinel-Node-Key": node_key}
    ).get_json()
    headers = {"Authorization": f"Bearer {token['token']}"}
    url = f"/api/v1/nodes/{node_id}/bundles/latest"
    etag = client.get(url, headers=headers).headers["ETag"]
    with Statements() as statements:
        cached_answer = client.get(url, headers={**headers, "If-None-Match": etag})
    assert cached_answer.status_code == 304 and statements.count == 0
    key = cache.credential_key(node_id, "Authorization", headers["Authorization"])
    assert key is not None
    entry = cache.entries[key[0]]
    assert entry.credential == key[1]
    remaining = entry.good_until - cache.clock()
    assert 0 < remaining <= min(token["expires_in"], pollcache.MAX_AGE_S)


# --- the listener against real Redis processes -----------------------------------------------


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    from conftest import require_service

    require_service(RedisProcess.available(), "redis-server is not installed")
    (tmp_path / "redis").mkdir()
    with RedisProcess(tmp_path / "redis") as server:
        yield server


def _listening(url: str) -> pollcache.PollCache:
    cache = pollcache.PollCache(url)
    cache.start()
    wait_for(cache.subscribed.is_set, timeout=10, what="the poll cache to subscribe")
    return cache


def test_a_published_event_reaches_the_cache_through_redis(private_redis: RedisProcess) -> None:
    from sentinel_cp import events

    cache = _listening(private_redis.url())
    try:
        cache.remember(KEY, '"e1"', "p1", cache.version)
        node_event = {"project": "p1", "kind": "node", "id": KEY[0], "state": "assigned"}
        redis.Redis.from_url(private_redis.url()).publish(events.CHANNEL, json.dumps(node_event))
        wait_for(lambda: cache.etag_for(KEY) is None, timeout=10, what="the entry to go")
    finally:
        cache.stop()


def test_a_killed_subscription_forgets_everything_until_subscribed_again(
    private_redis: RedisProcess,
) -> None:
    cache = _listening(private_redis.url())
    try:
        cache.remember(KEY, '"e1"', "p1", cache.version)
        assert cache.etag_for(KEY) == '"e1"'
        floor = cache.floor
        killed = redis.Redis.from_url(private_redis.url()).client_kill_filter(_type="pubsub")
        assert killed == 1
        wait_for(lambda: cache.floor > floor, timeout=10, what="the cache to forget")
        assert cache.etag_for(KEY) is None
        wait_for(cache.subscribed.is_set, timeout=10, what="the cache to subscribe again")
        cache.remember(KEY, '"e2"', "p1", cache.version)
        assert cache.etag_for(KEY) == '"e2"'
    finally:
        cache.stop()


def test_a_frozen_redis_turns_the_cache_off(private_redis: RedisProcess) -> None:
    """Frozen, Redis closes nothing: only the unanswered ping shows that events published
    meanwhile may never arrive."""
    cache = _listening(private_redis.url())
    try:
        cache.remember(KEY, '"e1"', "p1", cache.version)
        private_redis.freeze()
        try:
            wait_for(
                lambda: not cache.subscribed.is_set(),
                timeout=pollcache.HEALTH_CHECK_S + pollcache.PONG_TIMEOUT_S + 5,
                what="the listener to notice the frozen Redis",
            )
            assert cache.etag_for(KEY) is None and not cache.entries
        finally:
            private_redis.thaw()
        wait_for(cache.subscribed.is_set, timeout=15, what="the cache to subscribe again")
    finally:
        cache.stop()
