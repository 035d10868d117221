"""Bundle distribution end to end, over real HTTP between real processes.

The control plane is `python app.py` (the embedded system: SQLite, fakeredis, and the RQ worker
child that compiles and signs submitted bundles). Nodes are the real node software: the fleet
simulator (`sentinel-cp simulate`, the agent's apply flow with a simulated proxy), the real
`sentinel-agent` CLI driving a fake proxy process through its config directory and SIGHUP, and
the agent's `NodeClient` following an S3 redirect to a moto server.

Nodes are pointed at a bundle with the domain function `distribution.assign`, run in this
process against the server's own SQLite database (the rollout engine, which assigns in real
life, has its own end-to-end tests). The server cannot see such a write behind its back: its
event bus is its own in-process Redis. So the heartbeat buffer, which answers steady heartbeats
from what the events keep true, is off here (`BEHIND_ITS_BACK`).
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from bundle_helpers import route_config
from conftest import require_service
from e2e_helpers import (
    SENTINEL_CP,
    Recorded,
    RecordingForwarder,
    ServerDatabase,
    admin_api,
    cli_flags,
    nodes_named,
    registration_token,
    server_database,
    start_agent,
    start_fake_proxy,
    stop_process,
    submit_and_compile,
)
from s3server import ACCESS_KEY_ID, SECRET_ACCESS_KEY, moto_installed, start_moto_server
from test_server import Server, start_server, wait_for

from agent.bundle import verify_archive
from agent.client import NODE_KEY_HEADER, BundleOffer, NodeClient, SigningKey

pytestmark = pytest.mark.slow
FLEET = 20
APPLY_TIMEOUT_S = 30
ORIGINAL_CONFIG = "original config\n"
BEHIND_ITS_BACK = {"SENTINEL_HEARTBEAT_BUFFER": "off"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`python app.py` with a port and a data directory (what `make run` does), and no
    heartbeat buffer (see the module docstring)."""
    running = start_server(BEHIND_ITS_BACK, tmp_path_factory.mktemp("e2e-server"))
    yield running
    assert running.stop() == 0


@pytest.fixture(scope="module")
def api(server: Server) -> Iterator[httpx.Client]:
    with admin_api(server) as client:
        yield client


@pytest.fixture(scope="module")
def token(api: httpx.Client) -> str:
    return registration_token(api)


@pytest.fixture
def database(server: Server, embedded_redis_url: str, tmp_path: Path) -> Iterator[ServerDatabase]:
    with server_database(server, embedded_redis_url, tmp_path) as found:
        yield found


def bundle_file(api: httpx.Client, bundle_id: str, path: str = "sentinel.kdl") -> str:
    response = api.get(f"/api/v1/projects/default/bundles/{bundle_id}/files/{path}")
    assert response.status_code == 200, response.text
    return response.text


def one_node(api: httpx.Client, name: str) -> str:
    found = wait_for(
        lambda: [n for n in nodes_named(api, name) if n["name"] == name],
        timeout=20,
        what=f"node {name} to register",
    )
    return str(found[0]["id"])


# --- 1. a simulated fleet -------------------------------------------------------------------


def test_a_simulated_fleet_verifies_an_assigned_bundle_on_every_node(
    server: Server, api: httpx.Client, token: str, database: ServerDatabase, tmp_path: Path
) -> None:
    bundle = submit_and_compile(api, route_config(3, tag="fleet"), "fleet-v1")
    assert bundle["signed"] is True
    prefix = "e2e-fleet"
    argv = cli_flags(
        url=server.url,
        project="default",
        registration_token=token,
        nodes=FLEET,
        heartbeat_interval=1,
        stagger=0.5,
        name_prefix=prefix,
        apply_time=0.2,
        seed=7,
    )
    progress = tmp_path / "simulate.stderr"
    with progress.open("wb") as stderr:
        simulator = subprocess.Popen(
            [SENTINEL_CP, "simulate", *argv], stdout=subprocess.PIPE, stderr=stderr, text=True
        )
    try:
        fleet = wait_for(
            lambda: len(nodes := nodes_named(api, prefix)) == FLEET and nodes,
            timeout=20,
            what=f"{FLEET} simulated nodes to register",
        )
        assert database.assign(bundle["id"], [n["id"] for n in fleet]) == FLEET

        wait_for(
            lambda: [s for s, _ in database.states(bundle["id"]).values()] == ["verified"] * FLEET,
            timeout=APPLY_TIMEOUT_S,
            what="every simulated node to report verified",
        )
        active = nodes_named(api, prefix, bundle=bundle["id"])
        assert sorted(n["name"] for n in active) == sorted(n["name"] for n in fleet)
    finally:
        simulator.send_signal(signal.SIGINT)  # it stops and prints its JSON summary
        output, _ = simulator.communicate(timeout=30)
    summary = json.loads(output)
    assert summary["registered"] == FLEET, progress.read_text()
    assert summary["bundles_applied"] == FLEET
    assert summary["bundles_failed"] == 0, summary["bundle_failures"]


# --- 2. the real agent with a proxy process -------------------------------------------------


def test_the_agent_installs_the_bundle_reloads_the_proxy_and_reports_it_active(
    server: Server, api: httpx.Client, token: str, database: ServerDatabase, tmp_path: Path
) -> None:
    config = route_config(2, tag="agent")
    bundle = submit_and_compile(api, config, "agent-v1")
    expected = bundle_file(api, bundle["id"])
    assert expected == config
    proxy = start_fake_proxy(tmp_path / "proxy", ORIGINAL_CONFIG)
    forwarder = RecordingForwarder(server.url)
    log = tmp_path / "agent.log"
    agent = start_agent(forwarder.url, token, "e2e-agent", proxy, tmp_path / "agent", log)
    try:
        node_id = one_node(api, "e2e-agent")
        assert database.assign(bundle["id"], [node_id]) == 1

        wait_for(
            lambda: database.states(bundle["id"]).get(node_id, ("",))[0] == "verified",
            timeout=APPLY_TIMEOUT_S,
            what="the agent to report verified",
        )
        assert (proxy.config_dir / "sentinel.kdl").read_text() == expected
        assert proxy.config_dir.is_symlink()  # swapped atomically, as a link to a release
        # Loaded at start, then once more on the agent's SIGHUP: the bundle's config.
        assert proxy.state() == {"config": expected, "reloads": 2}

        def heartbeat_with_bundle() -> list[Recorded]:
            return [
                r
                for r in forwarder.sent("POST", f"/api/v1/nodes/{node_id}/heartbeat")
                if (r.json() or {}).get("active_bundle_id") == bundle["id"]
            ]

        wait_for(heartbeat_with_bundle, timeout=10, what="a heartbeat naming the new bundle")
        shown = api.get(f"/api/v1/projects/default/nodes/{node_id}").json()
        assert shown["active_bundle_id"] == bundle["id"]
    finally:
        code = stop_process(agent, signal.SIGTERM)
        forwarder.close()
        proxy.stop()
    assert code == 0, log.read_text()


# --- 3. a tampered archive ------------------------------------------------------------------


def test_a_tampered_archive_is_reported_failed_for_its_checksum_and_the_config_is_untouched(
    server: Server, api: httpx.Client, token: str, database: ServerDatabase, tmp_path: Path
) -> None:
    bundle = submit_and_compile(api, route_config(4, tag="tampered"), "tampered-v1")
    # The filesystem store's root is <data dir>/bundles; keys are bundles/{project}/{id}.tar.zst.
    (stored,) = (server.data_dir / "bundles").rglob(f"{bundle['id']}.tar.zst")
    original = stored.read_bytes()
    stored.write_bytes(bytes(b ^ 0xFF for b in original))  # same size, other bytes
    proxy = start_fake_proxy(tmp_path / "proxy", ORIGINAL_CONFIG)
    log = tmp_path / "agent.log"
    agent = start_agent(server.url, token, "e2e-tampered", proxy, tmp_path / "agent", log)
    try:
        node_id = one_node(api, "e2e-tampered")
        assert database.assign(bundle["id"], [node_id]) == 1

        state, reason = wait_for(
            lambda: (
                (found := database.states(bundle["id"]).get(node_id))
                and found[0] not in ("assigned", "downloaded")
                and found
            ),
            timeout=APPLY_TIMEOUT_S,
            what="the agent to report on the tampered bundle",
        )
        assert state == "failed"
        assert reason is not None and "checksum" in reason
        assert not proxy.config_dir.is_symlink()
        assert (proxy.config_dir / "sentinel.kdl").read_text() == ORIGINAL_CONFIG
        assert proxy.state() == {"config": ORIGINAL_CONFIG, "reloads": 1}
        assert (
            api.get(f"/api/v1/projects/default/nodes/{node_id}").json()["active_bundle_id"] is None
        )
    finally:
        code = stop_process(agent, signal.SIGTERM)
        proxy.stop()
        stored.write_bytes(original)
    assert code == 0, log.read_text()


# --- 4. S3 storage --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str, str]]:
    """The embedded server storing bundles in a fresh bucket of a moto S3 server."""
    require_service(moto_installed(), "moto[s3] is not installed (dev dependency)")
    endpoint, stop_moto = start_moto_server()
    bucket = f"e2e-{uuid.uuid4().hex[:12]}"
    env = {
        **BEHIND_ITS_BACK,
        "S3_ENDPOINT": endpoint,
        "S3_BUCKET": bucket,
        "S3_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "S3_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
    }
    try:
        running = start_server(env, tmp_path_factory.mktemp("e2e-s3-server"))
        yield running, endpoint, bucket
        assert running.stop() == 0
    finally:
        stop_moto()


@dataclass(frozen=True)
class S3Node:
    server: Server
    endpoint: str
    bundle_id: str
    node_id: str
    node_key: str
    signing_keys: list[SigningKey]


@pytest.fixture(scope="module")
def s3_node(
    s3_server: tuple[Server, str, str],
    embedded_redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> S3Node:
    """A bundle compiled into the bucket, and a registered node it is assigned to."""
    server, endpoint, _ = s3_server
    with admin_api(server) as api:
        bundle = submit_and_compile(api, route_config(2, tag="s3"), "s3-v1")
        registered = httpx.post(
            f"{server.url}/api/v1/projects/default/nodes/register",
            json={"name": "e2e-s3"},
            headers={"X-Sentinel-Registration-Token": registration_token(api)},
        )
    assert registered.status_code == 201, registered.text
    body = registered.json()
    with server_database(server, embedded_redis_url, tmp_path_factory.mktemp("s3db")) as db:
        assert db.assign(bundle["id"], [body["node_id"]]) == 1
    return S3Node(
        server,
        endpoint,
        bundle["id"],
        body["node_id"],
        body["node_key"],
        [SigningKey.from_json(k) for k in body["signing_keys"]],
    )


@pytest.mark.s3
def test_an_s3_compiled_archive_lands_in_the_bucket_not_on_disk(
    s3_server: tuple[Server, str, str], s3_node: S3Node
) -> None:
    import boto3

    server, endpoint, bucket = s3_server
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
    )
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert [k for k in keys if k.endswith(f"/{s3_node.bundle_id}.tar.zst")] != []
    assert list(server.data_dir.rglob(f"{s3_node.bundle_id}.tar.zst")) == []


@pytest.mark.s3
def test_an_s3_download_answers_302_to_a_presigned_url_valid_at_most_five_minutes(
    s3_node: S3Node,
) -> None:
    answer = httpx.get(
        f"{s3_node.server.url}/api/v1/nodes/{s3_node.node_id}/bundles/{s3_node.bundle_id}/download",
        headers={NODE_KEY_HEADER: s3_node.node_key},
        follow_redirects=False,
    )
    assert answer.status_code == 302, answer.text
    location = urlsplit(answer.headers["Location"])
    assert f"{location.scheme}://{location.netloc}" == s3_node.endpoint
    assert location.path.endswith(f"/{s3_node.bundle_id}.tar.zst")
    query = parse_qs(location.query)
    expires = int(query["X-Amz-Expires"][0])
    assert 0 < expires <= 300
    signed_at = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert signed_at + timedelta(seconds=expires) <= datetime.now(UTC) + timedelta(minutes=5)
    assert s3_node.node_key not in answer.headers["Location"]


@pytest.mark.s3
async def test_the_agent_follows_the_s3_redirect_without_its_credentials_and_gets_the_bundle(
    s3_node: S3Node,
) -> None:
    sent: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        sent.append(request)

    async with httpx.AsyncClient(event_hooks={"request": [record]}, trust_env=False) as http:
        client = NodeClient(
            s3_node.server.url, http=http, node_id=s3_node.node_id, node_key=s3_node.node_key
        )
        offer = await client.poll_bundle()
        assert isinstance(offer, BundleOffer)
        data = await client.download_bundle(
            offer.bundle_id, url=offer.download_url, size_bytes=offer.size_bytes
        )

    assert hashlib.sha256(data).hexdigest() == s3_node.bundle_id
    assert offer.project_id is not None
    verify_archive(  # raises unless the project's pinned key signed exactly these bytes
        data,
        bundle_id=offer.bundle_id,
        checksum=offer.checksum,
        signature_b64=offer.signature,
        kid=offer.signing_key_id,
        project_id=offer.project_id,
        keys=s3_node.signing_keys,
    )
    storage = [r for r in sent if f"{r.url.scheme}://{r.url.netloc.decode()}" == s3_node.endpoint]
    assert len(storage) == 1
    assert NODE_KEY_HEADER.lower() not in {k.lower() for k in storage[0].headers}
    assert "authorization" not in {k.lower() for k in storage[0].headers}
    downloads = [r for r in sent if r.url.path.endswith("/download")]
    assert len(downloads) == 1
    assert {"authorization", NODE_KEY_HEADER.lower()} & {k.lower() for k in downloads[0].headers}
