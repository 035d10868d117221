"""`sentinel-cp demo`: a live fleet, two compiled bundles and a finished rollout, checked
through the API of the server it started (not through what the demo says about itself)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
from conftest import ROOT, free_port, wait_for


def test_the_demo_brings_up_a_live_fleet_with_a_finished_rollout(tmp_path: Path) -> None:
    port = free_port()
    data_dir = tmp_path / "demo"
    demo = subprocess.Popen(
        [sys.executable, "-m", "sentinel_cp.cli", "demo", "--nodes", "6", "--port", str(port),
         "--data-dir", str(data_dir), "--heartbeat-interval", "2"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(demo.stdout or ()), daemon=True)
        reader.start()

        def summary() -> dict[str, object] | None:
            ready = [line for line in list(lines) if line.startswith("{")]
            if ready:
                return dict(json.loads(ready[0]))
            if demo.poll() is not None:
                raise AssertionError(f"demo exited {demo.returncode}: {demo.stderr.read()}")  # type: ignore[union-attr]
            return None

        found = wait_for(summary, timeout=180, what="the demo to be ready", tolerate_errors=False)
        password = re.search(r"with password (\S+)", "".join(lines))
        assert password is not None
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as api:
            login = api.post(
                "/api/v1/session", json={"email": "admin@localhost", "password": password[1]}
            )
            assert login.status_code == 200, login.text
            api.headers["Cookie"] = "; ".join(
                c.split(";", 1)[0] for c in login.headers.get_list("set-cookie")
            )
            base = "/api/v1/projects/default"
            nodes = api.get(f"{base}/nodes", params={"limit": 100}).json()["items"]
            bundles = api.get(f"{base}/bundles").json()["items"]
            rollout = api.get(f"{base}/rollouts/{found['rollout_id']}").json()
        assert {n["status"] for n in nodes} == {"online"} and len(nodes) == 6
        assert {n["labels"]["zone"] for n in nodes} == {"zone-a", "zone-b"}
        assert sorted(b["version"] for b in bundles if b["status"] == "compiled") == [
            "demo-v1",
            "demo-v2",
        ]
        assert rollout["state"] == "completed"
        assert rollout["progress"]["verified"] == 6
        assert {n["active_bundle_id"] for n in nodes} == {rollout["bundle_id"]}
    finally:
        if demo.poll() is None:
            demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=60) == 0
