"""GitOps: the signed GitHub webhook builds `git-<sha8>` bundles from a repository directory,
fetched from a fake GitHub API served on 127.0.0.1 (never the internet); the per-project
configuration is admin-only, audited and never shows its secrets. Both backends."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
from bundle_helpers import CONFIG, run_jobs
from conftest import bearer, free_port, login, make_key, make_project, make_user
from sqlalchemy import func, select

from sentinel_cp import gitops
from sentinel_cp.audit import AuditLog
from sentinel_cp.bundles.models import Bundle
from sentinel_cp.bundles.sources import SourceLimits
from sentinel_cp.db import db

SECRET = "webhook-secret-0123456789"
REPOSITORY = "Acme/Proxy-Config"
MAIN = CONFIG.split("upstreams {")[0] + 'include "routes/*.kdl"\n'
UPSTREAMS = 'upstreams {\n    upstream "backend" {\n        target "127.0.0.1:9000"\n    }\n}\n'
FILES = {
    "sentinel/sentinel.kdl": MAIN,
    "sentinel/routes/up.kdl": UPSTREAMS,
    "sentinel/NOTES.md": "not part of the bundle",
    "other/sentinel.kdl": "not under the configured path",
    "README.md": "# proxy config",
}


def commit_sha(name: str) -> str:
    return hashlib.sha1(name.encode(), usedforsecurity=False).hexdigest()


def blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\x00" % len(data) + data, usedforsecurity=False).hexdigest()


COMMIT = commit_sha("first")


# --- a fake GitHub REST API on a local port -----------------------------------------------------


@dataclass
class FakeGitHub:
    """Serves the Git Data API (trees, blobs) for the commits it was given."""

    url: str = ""
    commits: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)

    def add_commit(self, repository: str, sha: str, files: dict[str, str]) -> None:
        self.commits[(repository.lower(), sha)] = files

    def respond(self, path: str) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        if len(parts) != 6 or parts[0] != "repos" or parts[3] != "git":
            return 404, {"message": "Not Found"}
        repository = f"{parts[1]}/{parts[2]}".lower()
        kind, sha = parts[4], parts[5]
        if kind == "trees" and (repository, sha) in self.commits:
            files = self.commits[(repository, sha)]
            directories = sorted({p.rsplit("/", 1)[0] for p in files if "/" in p})
            tree = [{"path": d, "mode": "040000", "type": "tree", "sha": sha} for d in directories]
            for name, text in sorted(files.items()):
                data = text.encode()
                tree.append(
                    {
                        "path": name,
                        "mode": "100644",
                        "type": "blob",
                        "sha": blob_sha(data),
                        "size": len(data),
                    }
                )
            return 200, {"sha": sha, "tree": tree, "truncated": False}
        if kind == "blobs":
            for (repo, _), files in self.commits.items():
                for text in files.values():
                    data = text.encode()
                    if repo == repository and blob_sha(data) == sha:
                        content = base64.encodebytes(data).decode()  # GitHub wraps lines too
                        return 200, {
                            "sha": sha,
                            "size": len(data),
                            "content": content,
                            "encoding": "base64",
                        }
        return 404, {"message": "Not Found"}


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    fake = FakeGitHub()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            fake.requests.append((path, self.headers.get("Authorization")))
            status, body = fake.respond(path)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    fake.add_commit(REPOSITORY, COMMIT, FILES)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


# --- builders -----------------------------------------------------------------------------------


@pytest.fixture
def admin_key(app: Any) -> str:
    make_project(app, "alpha")
    make_user(app, "admin@example.com", "admin")
    return make_key(app, "admin@example.com", ["projects:admin", "bundles:read", "audit:read"])


def configure(client: Any, key: str, slug: str = "alpha", **fields: Any) -> Any:
    body = {"repository": REPOSITORY, "path": "sentinel", "secret": SECRET, **fields}
    return client.put(f"/api/v1/projects/{slug}/gitops", json=body, headers=bearer(key))


@pytest.fixture
def configured(client: Any, admin_key: str, github: FakeGitHub) -> str:
    response = configure(client, admin_key, api_base_url=github.url)
    assert response.status_code == 201, response.get_json()
    return admin_key


def push_payload(
    after: str = COMMIT,
    *,
    ref: str = "refs/heads/main",
    changed: tuple[str, ...] = ("sentinel/routes/up.kdl",),
) -> dict[str, Any]:
    return {
        "ref": ref,
        "before": commit_sha("parent"),
        "after": after,
        "created": False,
        "deleted": False,
        "repository": {"full_name": REPOSITORY, "name": "Proxy-Config"},
        "commits": [{"id": after, "added": [], "modified": list(changed), "removed": []}],
        "head_commit": {"id": after, "added": [], "modified": list(changed), "removed": []},
        "pusher": {"name": "octocat"},
    }


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def deliver(
    client: Any,
    payload: dict[str, Any] | bytes,
    *,
    event: str = "push",
    secret: str | None = SECRET,
    delivery: str = "72d3162e-cc78-11e3-81ab-4c9367dc0958",
    content_type: str = "application/json",
) -> Any:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery}
    if secret is not None:
        headers["X-Hub-Signature-256"] = sign(body, secret)
    return client.post(
        "/api/v1/webhooks/github", data=body, headers=headers, content_type=content_type
    )


def bundle_count(app: Any) -> int:
    with app.app_context():
        count = db.session.scalar(select(func.count()).select_from(Bundle)) or 0
        db.session.commit()
        return count


def audit_rows(app: Any, prefix: str) -> list[AuditLog]:
    with app.app_context():
        rows = list(
            db.session.scalars(
                select(AuditLog).where(AuditLog.action.startswith(prefix)).order_by(AuditLog.seq)
            )
        )
        db.session.commit()
        return rows


# --- the webhook --------------------------------------------------------------------------------


def test_signed_push_compiles_a_git_sha8_bundle(
    client: Any, app: Any, backend: Any, configured: str
) -> None:
    response = deliver(client, push_payload())
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert body["status"] == "accepted"
    (result,) = body["results"]
    assert result["project"] == "alpha" and result["status"] == "accepted"
    assert result["bundle"]["version"] == f"git-{COMMIT[:8]}"
    assert result["bundle"]["status"] == "pending" and result["bundle"]["existing"] is False

    run_jobs(app, backend.redis_url)
    bundle = client.get(
        f"/api/v1/projects/alpha/bundles/{result['bundle']['id']}", headers=bearer(configured)
    ).get_json()
    assert bundle["status"] == "compiled", bundle["errors"]
    assert bundle["files"] == ["routes/up.kdl", "sentinel.kdl"]
    assert bundle["source_type"] == "gitops" and bundle["source_ref"] == COMMIT
    assert bundle["created_by"] == f"github:{REPOSITORY}"


def test_wrong_signature_is_401(client: Any, app: Any, configured: str) -> None:
    response = deliver(client, push_payload(), secret="some-other-secret-value")
    assert response.status_code == 401
    assert response.get_json()["code"] == "invalid_signature"
    assert bundle_count(app) == 0


def test_unsigned_delivery_is_401(client: Any, app: Any, configured: str) -> None:
    response = deliver(client, push_payload(), secret=None)
    assert response.status_code == 401
    assert response.get_json()["code"] == "invalid_signature"
    assert bundle_count(app) == 0


def test_unknown_repository_answers_exactly_like_a_wrong_signature(
    client: Any, configured: str
) -> None:
    unknown = {**push_payload(), "repository": {"full_name": "someone/else"}}
    wrong = deliver(client, push_payload(), secret="some-other-secret-value")
    missing = deliver(client, unknown)
    assert missing.status_code == wrong.status_code == 401
    assert missing.get_json() == wrong.get_json()


def test_signed_ping_answers_pong(client: Any, configured: str) -> None:
    ping = {
        "zen": "Keep it logically awesome.",
        "hook_id": 1,
        "repository": push_payload()["repository"],
    }
    response = deliver(client, ping, event="ping")
    assert response.status_code == 200
    assert response.get_json()["status"] == "pong"
    assert response.get_json()["results"][0]["project"] == "alpha"


def test_form_encoded_delivery_is_verified_over_the_raw_body(client: Any, configured: str) -> None:
    ping = {"zen": "Design for failure.", "repository": push_payload()["repository"]}
    body = urlencode({"payload": json.dumps(ping)}).encode()
    response = deliver(client, body, event="ping", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["status"] == "pong"


def test_push_to_another_branch_is_ignored(
    client: Any, app: Any, configured: str, github: FakeGitHub
) -> None:
    response = deliver(client, push_payload(ref="refs/heads/feature"))
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ignored"
    assert "refs/heads/feature" in body["reason"] and "refs/heads/main" in body["reason"]
    assert github.requests == [] and bundle_count(app) == 0


def test_push_not_touching_the_path_is_ignored(
    client: Any, app: Any, configured: str, github: FakeGitHub
) -> None:
    response = deliver(
        client, push_payload(changed=("README.md", "other/sentinel.kdl", "sentinel/NOTES.md"))
    )
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ignored" and "sentinel/" in body["reason"]
    assert github.requests == [] and bundle_count(app) == 0


def test_unhandled_event_is_ignored(client: Any, configured: str) -> None:
    response = deliver(client, {"repository": push_payload()["repository"]}, event="issues")
    assert response.status_code == 200
    assert response.get_json()["status"] == "ignored"


def test_repeat_delivery_returns_the_existing_bundle(
    client: Any, app: Any, configured: str
) -> None:
    first = deliver(client, push_payload()).get_json()["results"][0]["bundle"]
    again = deliver(client, push_payload())
    assert again.status_code == 202
    repeated = again.get_json()["results"][0]["bundle"]
    assert repeated["id"] == first["id"] and repeated["existing"] is True
    assert bundle_count(app) == 1


def test_fetch_failure_is_502_and_creates_no_bundle(client: Any, app: Any, configured: str) -> None:
    response = deliver(client, push_payload(after=commit_sha("never pushed")))
    assert response.status_code == 502
    body = response.get_json()
    assert body["code"] == "fetch_failed" and "404" in body["error"]
    assert body["project"] == "alpha"
    assert bundle_count(app) == 0


def test_unreachable_github_is_502(client: Any, app: Any, admin_key: str) -> None:
    configure(client, admin_key, api_base_url=f"http://127.0.0.1:{free_port()}")
    response = deliver(client, push_payload())
    assert response.status_code == 502
    assert response.get_json()["code"] == "fetch_failed"
    assert bundle_count(app) == 0


def test_source_over_the_limit_is_502_from_the_listing(
    client: Any, app: Any, configured: str, github: FakeGitHub
) -> None:
    app.extensions["sentinel_gitops_fetcher"] = lambda base_url, token: gitops.GitHubTreeFetcher(
        base_url, token, limits=SourceLimits(max_total_bytes=100)
    )
    response = deliver(client, push_payload())
    assert response.status_code == 502
    assert "exceed 100 bytes" in response.get_json()["error"]
    assert not any("/blobs/" in path for path, _ in github.requests)
    assert bundle_count(app) == 0


def test_access_token_is_sent_to_the_api_as_a_bearer_token(
    client: Any, configured: str, github: FakeGitHub
) -> None:
    configure(client, configured, api_base_url=github.url, access_token="ghp_local_test_token")
    assert deliver(client, push_payload()).status_code == 202
    assert github.requests and all(
        auth == "Bearer ghp_local_test_token" for _, auth in github.requests
    )


def test_malformed_json_is_400(client: Any, configured: str) -> None:
    response = deliver(client, b'{"ref": "refs/heads/main", ')
    assert response.status_code == 400
    assert response.get_json()["code"] == "malformed_json"


def test_push_with_wrong_types_is_422_naming_the_field(client: Any, configured: str) -> None:
    response = deliver(client, {**push_payload(), "commits": "everything", "after": 42})
    assert response.status_code == 422
    assert {"commits", "after"} <= set(response.get_json()["fields"])


def test_payload_without_a_repository_is_422(client: Any, configured: str) -> None:
    response = deliver(client, {"ref": "refs/heads/main"})
    assert response.status_code == 422
    assert "repository.full_name" in response.get_json()["fields"]


def test_body_over_one_mebibyte_is_413(client: Any, configured: str) -> None:
    payload = {**push_payload(), "padding": "x" * (1024 * 1024)}
    response = deliver(client, payload)
    assert response.status_code == 413
    assert response.get_json()["code"] == "body_too_large"


def test_two_projects_following_one_repository_each_get_their_directory(
    client: Any, app: Any, configured: str, github: FakeGitHub
) -> None:
    make_project(app, "beta")
    github.add_commit(
        REPOSITORY, COMMIT, {**FILES, "prod/sentinel.kdl": CONFIG, "prod/x.kdl": "// comment\n"}
    )
    configure(client, configured, "beta", path="prod", api_base_url=github.url)
    response = deliver(client, push_payload(changed=("sentinel/routes/up.kdl", "prod/x.kdl")))
    assert response.status_code == 202
    results = response.get_json()["results"]
    assert [r["project"] for r in results] == ["alpha", "beta"]
    assert all(r["status"] == "accepted" for r in results)
    assert results[0]["bundle"]["id"] != results[1]["bundle"]["id"]


# --- configuration ------------------------------------------------------------------------------


def test_config_get_never_shows_the_secret(
    client: Any, configured: str, github: FakeGitHub
) -> None:
    configure(client, configured, api_base_url=github.url, access_token="ghp_local_test_token")
    response = client.get("/api/v1/projects/alpha/gitops", headers=bearer(configured))
    assert response.status_code == 200
    body = response.get_json()
    assert body["secret_set"] is True and body["access_token_set"] is True
    assert body["repository"] == REPOSITORY.lower()
    assert body["branch"] == "main" and body["path"] == "sentinel"
    text = response.get_data(as_text=True)
    assert SECRET not in text and "ghp_local_test_token" not in text


def test_secret_is_stored_encrypted(app: Any, configured: str) -> None:
    with app.app_context():
        row = db.session.scalars(select(gitops.GitOpsConfig)).one()
        assert SECRET not in row.secret_encrypted
        db.session.commit()


def test_config_without_gitops_is_404(client: Any, admin_key: str) -> None:
    response = client.get("/api/v1/projects/alpha/gitops", headers=bearer(admin_key))
    assert response.status_code == 404
    assert response.get_json()["code"] == "gitops_not_configured"


def test_first_configuration_requires_a_secret(client: Any, admin_key: str) -> None:
    response = client.put(
        "/api/v1/projects/alpha/gitops",
        json={"repository": REPOSITORY},
        headers=bearer(admin_key),
    )
    assert response.status_code == 422
    assert "secret" in response.get_json()["fields"]


def test_put_without_secret_keeps_the_stored_one(
    client: Any, configured: str, github: FakeGitHub
) -> None:
    response = client.put(
        "/api/v1/projects/alpha/gitops",
        json={"repository": REPOSITORY, "path": "sentinel", "api_base_url": github.url},
        headers=bearer(configured),
    )
    assert response.status_code == 200
    assert deliver(client, push_payload()).status_code == 202


def test_plain_http_api_base_url_is_refused_for_remote_hosts(client: Any, admin_key: str) -> None:
    response = configure(client, admin_key, api_base_url="http://github.example.com/api/v3")
    assert response.status_code == 422
    assert "api_base_url" in response.get_json()["fields"]


def test_path_escaping_the_repository_is_refused(client: Any, admin_key: str) -> None:
    response = configure(client, admin_key, path="../etc")
    assert response.status_code == 422
    assert "path" in response.get_json()["fields"]


def test_config_changes_are_audited_without_secrets(client: Any, app: Any, configured: str) -> None:
    configure(client, configured, secret="a-new-secret-0123456789", branch="release")
    client.delete("/api/v1/projects/alpha/gitops", headers=bearer(configured))
    rows = audit_rows(app, "gitops.")
    assert [row.action for row in rows] == ["gitops.configured", "gitops.updated", "gitops.removed"]
    assert rows[1].changes["secret"] == "changed"
    assert rows[1].changes["branch"] == ["main", "release"]
    logged = json.dumps([row.changes for row in rows])
    assert SECRET not in logged and "a-new-secret-0123456789" not in logged


def test_deleted_config_stops_the_webhook(client: Any, configured: str) -> None:
    assert client.delete(
        "/api/v1/projects/alpha/gitops", headers=bearer(configured)
    ).get_json() == {"status": "deleted"}
    assert deliver(client, push_payload()).status_code == 401


@pytest.mark.parametrize("role", ["reader", "operator"])
def test_a_reader_or_operator_cannot_configure(client: Any, app: Any, role: str) -> None:
    make_project(app, "alpha")
    make_user(app, f"{role}@example.com", role)
    login(client, f"{role}@example.com")
    response = client.put(
        "/api/v1/projects/alpha/gitops",
        json={"repository": REPOSITORY, "secret": SECRET},
    )
    assert response.status_code == 403
    assert response.get_json()["required"] == "projects:admin"
    assert client.delete("/api/v1/projects/alpha/gitops").status_code == 403


def test_config_of_another_project_is_404_for_a_project_bound_key(
    client: Any, app: Any, admin_key: str
) -> None:
    make_project(app, "beta")
    bound = make_key(app, "admin@example.com", ["projects:admin"], project="alpha")
    assert configure(client, bound, "beta").status_code == 404
    assert client.get("/api/v1/projects/beta/gitops", headers=bearer(bound)).status_code == 404
    assert configure(client, bound, "alpha").status_code == 201


# --- the pure rules -----------------------------------------------------------------------------


def test_only_kdl_files_under_the_directory_touch_it() -> None:
    assert gitops.touches("sentinel/routes/a.kdl", "sentinel")
    assert not gitops.touches("sentinel-old/a.kdl", "sentinel")
    assert not gitops.touches("sentinel/README.md", "sentinel")
    assert gitops.touches("a.kdl", "")


def test_a_deleted_branch_is_ignored() -> None:
    target = gitops.Target(
        project_id=None,  # type: ignore[arg-type]
        project_slug="alpha",
        repository="acme/proxy-config",
        branch="main",
        path="",
        api_base_url=gitops.DEFAULT_API_BASE_URL,
        access_token=None,
    )
    event = gitops.parse_push({**push_payload(after="0" * 40), "deleted": True})
    assert gitops.ignore_reason(target, event) == "the push deleted refs/heads/main"


def test_deleting_the_project_removes_its_gitops_config(
    client: Any, app: Any, configured: str
) -> None:
    assert client.delete("/api/v1/projects/alpha", headers=bearer(configured)).status_code == 200
    with app.app_context():
        assert db.session.scalars(select(gitops.GitOpsConfig)).all() == []
        db.session.commit()


def test_fetcher_keeps_the_enterprise_base_path() -> None:
    import httpx

    data = MAIN.encode()
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if "/git/trees/" in request.url.path:
            entry = {"path": "sentinel.kdl", "mode": "100644", "type": "blob"}
            tree = [{**entry, "sha": blob_sha(data), "size": len(data)}]
            return httpx.Response(200, json={"tree": tree, "truncated": False})
        content = base64.b64encode(data).decode()
        return httpx.Response(200, json={"content": content, "encoding": "base64"})

    fetcher = gitops.GitHubTreeFetcher(
        "https://ghe.example.com/api/v3", transport=httpx.MockTransport(answer)
    )
    assert fetcher.fetch_tree("acme/proxy", COMMIT, "") == {"sentinel.kdl": MAIN}
    assert seen == [
        f"/api/v3/repos/acme/proxy/git/trees/{COMMIT}",
        f"/api/v3/repos/acme/proxy/git/blobs/{blob_sha(data)}",
    ]
