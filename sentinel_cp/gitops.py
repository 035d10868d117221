"""GitOps: a project follows one directory of a GitHub repository.

An operator configures, per project, the repository (`owner/name`), the branch, the directory
holding `sentinel.kdl` and its includes, the webhook secret and, optionally, the API base URL
(GitHub Enterprise) and an access token (private repositories). Secrets are stored encrypted
with the cipher that protects signing keys and are never shown again.

GitHub calls `POST /api/v1/webhooks/github` with the raw payload signed by HMAC-SHA256
(`X-Hub-Signature-256`). The delivery is matched to the projects configured for its
`repository.full_name` whose secret produces the same signature; a push to the configured
branch that changes a `.kdl` file under the configured directory makes the control plane
fetch that directory at the pushed commit and submit it as bundle `git-<sha8>`.

Decisions:

- Every project whose secret verifies the delivery handles it (one repository may feed several
  projects, e.g. `staging/` and `production/`). A delivery is one unit: every fetch happens
  before any bundle is submitted, and a failure for one project (fetch, validation, version
  conflict) creates nothing for any of them and names the project. GitHub's redelivery then
  retries the whole delivery.
- Only `.kdl` files count: a push that changes only a README under the directory is ignored,
  and only `.kdl` files are fetched (other files in a repository directory are normal, unlike
  in an uploaded tarball, so they are skipped rather than refused). Symbolic links are refused.
- Files are fetched with the Git Data API: one recursive tree listing of the pushed commit
  (`GET /repos/{owner}/{repo}/git/trees/{sha}?recursive=1`), whose sizes are checked against
  the source limits before any content is downloaded, then one `GET …/git/blobs/{sha}` per
  file, a few in parallel, each checked against its Git object id. A truncated listing, an
  HTTP error, a timeout, an oversized response or more source than the limits allow is a
  fetch failure (`FetchFailed`, 502 at the webhook) and nothing is created.
- The API base URL must be `https://`, except for loopback hosts (a local mirror or a test
  server): the access token travels to it.
- No transaction is held open while GitHub is asked: the matching projects are read first,
  the fetch runs with no transaction, the submission runs in a new one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import parse_qs, quote, urlsplit

import httpx
from cryptography.fernet import InvalidToken
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import ForeignKey, Index, String, Text, select
from sqlalchemy.orm import Mapped, mapped_column

from sentinel_cp import audit, signing
from sentinel_cp.audit import Actor
from sentinel_cp.bundles import compiler, sources
from sentinel_cp.bundles.models import Bundle
from sentinel_cp.bundles.sources import DEFAULT_LIMITS, SourceLimits
from sentinel_cp.db import UTCDateTime, db, utcnow
from sentinel_cp.errors import DomainError, Invalid, NotFound, Unauthorized
from sentinel_cp.projects import Project

DEFAULT_API_BASE_URL = "https://api.github.com"
DEFAULT_BRANCH = "main"
WEBHOOK_PATH = "/api/v1/webhooks/github"
MAX_WEBHOOK_BODY = 1024 * 1024
MIN_SECRET_LENGTH = 16
REPOSITORY_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,39}/[A-Za-z0-9_.-]{1,100}")
# SHA-1 object ids, or SHA-256 ones for repositories created with the newer object format.
COMMIT_PATTERN = r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$"
SIGNATURE_PATTERN = re.compile(r"sha256=([0-9a-fA-F]{64})")
DELIVERY_PATTERN = re.compile(r"[A-Za-z0-9-]{1,64}")
# What git itself refuses in a branch name (git check-ref-format), minus the rarer rules.
_BAD_BRANCH = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|//|@\{|^[-/.]|[/.]$|\.lock$")
LOOPBACK_NAMES = frozenset({"localhost"})
log = logging.getLogger(__name__)


class FetchFailed(DomainError):
    """The repository could not be read (unreachable, refused, not found, too large)."""

    code = "fetch_failed"


class MalformedPayload(DomainError):
    """The delivery body is not a JSON object (400)."""

    code = "malformed_json"


# --- configuration -----------------------------------------------------------------------------


class GitOpsConfig(db.Model):  # type: ignore[name-defined]
    __tablename__ = "gitops_configs"
    __table_args__ = (Index("ix_gitops_configs_repository", "repository"),)

    project_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    # Stored lowercase: GitHub names are case-insensitive and payloads use the canonical case.
    repository: Mapped[str] = mapped_column(String(140), nullable=False)
    branch: Mapped[str] = mapped_column(String(255), nullable=False)
    path: Mapped[str] = mapped_column(String(255), nullable=False)
    api_base_url: Mapped[str] = mapped_column(String(255), nullable=False)
    secret_encrypted: Mapped[str] = mapped_column(Text, nullable=False)
    access_token_encrypted: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)

    def to_dict(self, project_slug: str) -> dict[str, Any]:
        """Everything but the secrets, which are only said to be set."""
        return {
            "project": project_slug,
            "repository": self.repository,
            "branch": self.branch,
            "path": self.path,
            "api_base_url": self.api_base_url,
            "secret_set": bool(self.secret_encrypted),
            "access_token_set": self.access_token_encrypted is not None,
            "webhook_path": WEBHOOK_PATH,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


class _Keep:
    """Marker for a write-only field that was not given: the stored value stays."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP = _Keep()


def _encrypt(value: str) -> str:
    return signing._cipher().encrypt(value.encode()).decode()


def _decrypt(token: str | None) -> str | None:
    if token is None:
        return None
    try:
        return signing._cipher().decrypt(token.encode()).decode()
    except InvalidToken:
        log.warning("a GitOps secret cannot be decrypted: SECRET_KEY_BASE changed?")
        return None


def normalize_repository(repository: str) -> str:
    """`owner/name`, lowercased; Invalid otherwise."""
    value = repository.strip()
    if value.endswith(".git"):
        value = value[:-4]
    if not REPOSITORY_PATTERN.fullmatch(value) or value.split("/")[1] in (".", ".."):
        raise Invalid(
            "Invalid repository",
            fields={"repository": ["must be owner/name (letters, digits, '.', '_', '-')"]},
        )
    return value.lower()


def normalize_branch(branch: str) -> str:
    """A branch name as git accepts it; a leading `refs/heads/` is dropped."""
    value = branch.removeprefix("refs/heads/")
    if not value or len(value) > 200 or _BAD_BRANCH.search(value):
        raise Invalid("Invalid branch", fields={"branch": ["not a valid git branch name"]})
    return value


def normalize_path(path: str) -> str:
    """A directory of the repository, without surrounding slashes; `""` is the root."""
    value = path.strip("/")
    if value in ("", "."):
        return ""
    problems = sources.path_problems(value)
    if problems:
        raise Invalid("Invalid path", fields={"path": problems})
    return value


def _is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def normalize_api_base_url(url: str | None) -> str:
    """The API root without a trailing slash; https unless the host is loopback."""
    if url is None or not url.strip():
        return DEFAULT_API_BASE_URL
    value = url.strip().rstrip("/")
    problem: str | None = None
    try:
        parts = urlsplit(value)
        host = parts.hostname or ""
        _ = parts.port  # raises ValueError for a port out of range
    except ValueError:
        parts, host = None, ""
    if parts is None or parts.scheme not in ("http", "https") or not host:
        problem = "must be an http(s) URL such as https://api.github.com"
    elif parts.username or parts.password or parts.query or parts.fragment:
        problem = "must not carry credentials, a query or a fragment"
    elif parts.scheme == "http" and not _is_loopback(host):
        problem = "must use https (http is accepted for loopback hosts only)"
    if problem is not None or len(value) > 255:
        raise Invalid(
            "Invalid API base URL", fields={"api_base_url": [problem or "at most 255 characters"]}
        )
    return value


def _check_access_token(token: str) -> str:
    if not isinstance(token, str) or not (1 <= len(token) <= 255):
        raise Invalid("Invalid access token", fields={"access_token": ["must be 1–255 characters"]})
    return token


def _check_secret(secret: str) -> str:
    if not isinstance(secret, str) or not (MIN_SECRET_LENGTH <= len(secret) <= 255):
        raise Invalid(
            "Invalid webhook secret",
            fields={"secret": [f"must be {MIN_SECRET_LENGTH}–255 characters"]},
        )
    return secret


def find_config(project_id: uuid.UUID) -> GitOpsConfig | None:
    """The project's GitOps configuration, if it has one."""
    return db.session.get(GitOpsConfig, project_id)


def get_config(project_id: uuid.UUID) -> GitOpsConfig:
    """The project's GitOps configuration; NotFound when none is set."""
    config = find_config(project_id)
    if config is None:
        raise NotFound("GitOps is not configured for this project", code="gitops_not_configured")
    return config


def configure(
    actor: Actor,
    project: Project,
    *,
    repository: str,
    branch: str = DEFAULT_BRANCH,
    path: str = "",
    secret: str | _Keep = KEEP,
    api_base_url: str | None = None,
    access_token: str | _Keep | None = KEEP,
    now: datetime | None = None,
) -> tuple[GitOpsConfig, bool]:
    """Create or replace the project's configuration; returns `(config, created)`.

    The secret and the access token are write-only: `KEEP` leaves the stored value alone
    (the secret is required on creation), `None` removes the token. Only real changes are
    audited, and secrets appear in the audit log as "set"/"changed"/"removed", never in clear.
    """
    now = now or utcnow()
    values = {
        "repository": normalize_repository(repository),
        "branch": normalize_branch(branch),
        "path": normalize_path(path),
        "api_base_url": normalize_api_base_url(api_base_url),
    }
    config = find_config(project.id)
    created = config is None
    if config is None:
        if isinstance(secret, _Keep):
            raise Invalid(
                "A webhook secret is required", fields={"secret": ["required on creation"]}
            )
        config = GitOpsConfig(project_id=project.id, created_at=now, secret_encrypted="")
    changes: dict[str, Any] = {}
    for name, value in values.items():
        before = None if created else getattr(config, name)
        if before != value:
            changes[name] = value if created else [before, value]
            setattr(config, name, value)
    if not isinstance(secret, _Keep):
        _check_secret(secret)
        if created or _decrypt(config.secret_encrypted) != secret:
            changes["secret"] = "set" if created else "changed"
            config.secret_encrypted = _encrypt(secret)
    if isinstance(access_token, str):
        _check_access_token(access_token)
    if not isinstance(access_token, _Keep):
        current = _decrypt(config.access_token_encrypted)
        if access_token is None and config.access_token_encrypted is not None:
            changes["access_token"] = "removed"
            config.access_token_encrypted = None
        elif access_token is not None and (
            config.access_token_encrypted is None or current != access_token
        ):
            changes["access_token"] = "set" if config.access_token_encrypted is None else "changed"
            config.access_token_encrypted = _encrypt(access_token)
    if created:
        db.session.add(config)
    if changes:
        config.updated_at = now
        audit.record(
            actor,
            "gitops.configured" if created else "gitops.updated",
            resource_type="gitops_config",
            resource_id=project.id,
            project_id=project.id,
            changes=changes,
            now=now,
        )
    return config, created


def remove_config(actor: Actor, project: Project, *, now: datetime | None = None) -> None:
    """Stop following the repository (audited); NotFound when nothing was configured."""
    config = get_config(project.id)
    audit.record(
        actor,
        "gitops.removed",
        resource_type="gitops_config",
        resource_id=project.id,
        project_id=project.id,
        changes={"repository": config.repository, "branch": config.branch, "path": config.path},
        now=now,
    )
    db.session.delete(config)


# --- the webhook: payload and signature ---------------------------------------------------------


def decode_payload(body: bytes, content_type: str) -> dict[str, Any]:
    """The JSON object GitHub sent, as `application/json` or as the `payload` form field."""
    data: bytes | str = body
    if content_type == "application/x-www-form-urlencoded":
        try:
            form = parse_qs(body.decode("utf-8"), strict_parsing=True, max_num_fields=16)
        except (UnicodeDecodeError, ValueError):
            raise MalformedPayload("The form body cannot be decoded") from None
        if len(form.get("payload", [])) != 1:
            raise MalformedPayload("The form body has no single 'payload' field")
        data = form["payload"][0]
    try:
        payload = json.loads(data, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedPayload(f"Malformed JSON: {exc}") from None
    except RecursionError:
        raise MalformedPayload("Malformed JSON: nested too deeply") from None
    if not isinstance(payload, dict):
        raise MalformedPayload("The payload must be a JSON object", code="malformed_body")
    return payload


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def repository_of(payload: dict[str, Any]) -> str:
    """`repository.full_name` of a delivery; Invalid when it is missing or not a string."""
    repository = payload.get("repository")
    full_name = repository.get("full_name") if isinstance(repository, dict) else None
    if not isinstance(full_name, str):
        raise Invalid(
            "The payload names no repository",
            fields={"repository.full_name": ["required: a string owner/name"]},
        )
    return full_name


def signature_matches(secret: str, body: bytes, signature_hex: str) -> bool:
    """Constant-time check of `X-Hub-Signature-256` (its hex part) against the body."""
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature_hex.lower())


@dataclass(frozen=True)
class Target:
    """A project whose secret signed the delivery, as plain values (no session needed)."""

    project_id: uuid.UUID
    project_slug: str
    repository: str
    branch: str
    path: str
    api_base_url: str
    access_token: str | None


def signed_targets(full_name: str, body: bytes, signature_header: str | None) -> list[Target]:
    """Every project configured for `full_name` whose secret signed `body`, by slug.

    Raises Unauthorized (`invalid_signature`) when the header is missing or malformed or no
    project's secret matches; the answer is the same whether or not any project follows the
    repository.
    """
    if not signature_header:
        raise Unauthorized("X-Hub-Signature-256 header is missing", code="invalid_signature")
    match = SIGNATURE_PATTERN.fullmatch(signature_header.strip())
    if match is None:
        raise Unauthorized(
            "X-Hub-Signature-256 must be sha256=<64 hex digits>", code="invalid_signature"
        )
    rows = []
    if REPOSITORY_PATTERN.fullmatch(full_name):
        rows = list(
            db.session.execute(
                select(GitOpsConfig, Project.slug)
                .join(Project, Project.id == GitOpsConfig.project_id)
                .where(GitOpsConfig.repository == full_name.lower())
                .order_by(Project.slug)
            ).all()
        )
    targets = []
    for config, slug in rows:
        secret = _decrypt(config.secret_encrypted)
        if secret is not None and signature_matches(secret, body, match.group(1)):
            targets.append(
                Target(
                    project_id=config.project_id,
                    project_slug=slug,
                    repository=config.repository,
                    branch=config.branch,
                    path=config.path,
                    api_base_url=config.api_base_url,
                    access_token=_decrypt(config.access_token_encrypted),
                )
            )
    if not targets:
        raise Unauthorized("The signature matches no configured project", code="invalid_signature")
    return targets


def delivery_id(header: str | None) -> str | None:
    """`X-GitHub-Delivery` when it looks like one (it is echoed and audited)."""
    if header and DELIVERY_PATTERN.fullmatch(header):
        return header
    return None


# --- the webhook: push --------------------------------------------------------------------------


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class CommitFiles(_Lenient):
    added: list[str] = Field(default_factory=list)
    modified: list[str] = Field(default_factory=list)
    removed: list[str] = Field(default_factory=list)


class RepositoryRef(_Lenient):
    full_name: str


class PushEvent(_Lenient):
    """The parts of GitHub's push payload that matter here (everything else is ignored)."""

    ref: str
    after: str = Field(pattern=COMMIT_PATTERN)
    deleted: bool = False
    repository: RepositoryRef
    commits: list[CommitFiles] = Field(default_factory=list)
    head_commit: CommitFiles | None = None

    def changed_paths(self) -> set[str]:
        paths: set[str] = set()
        for commit in [*self.commits, *([self.head_commit] if self.head_commit else [])]:
            paths.update(commit.added, commit.modified, commit.removed)
        return paths


def parse_push(payload: dict[str, Any]) -> PushEvent:
    """Validate a push payload; Invalid names every field that is missing or of the wrong type."""
    try:
        return PushEvent.model_validate(payload)
    except ValidationError as exc:
        fields: dict[str, list[str]] = {}
        for error in exc.errors():
            loc = ".".join(str(part) for part in error["loc"]) or "payload"
            fields.setdefault(loc, []).append(error["msg"])
        raise Invalid("Invalid push payload", fields=fields) from None


def _describe(path: str) -> str:
    return f"{path}/" if path else "the repository root"


def touches(changed: str, directory: str) -> bool:
    """Whether a changed file is a `.kdl` file under `directory` ("" is the root)."""
    inside = not directory or changed.startswith(directory + "/")
    return inside and changed.endswith(".kdl")


def ignore_reason(target: Target, event: PushEvent) -> str | None:
    """Why this push does not concern the project, or None when it must be built."""
    if event.deleted:
        return f"the push deleted {event.ref}"
    if event.ref != f"refs/heads/{target.branch}":
        return f"{event.ref} is not the configured branch refs/heads/{target.branch}"
    if not any(touches(path, target.path) for path in event.changed_paths()):
        return f"no .kdl file under {_describe(target.path)} changed"
    return None


@dataclass(frozen=True)
class Outcome:
    """What one delivery did for one project."""

    project: str
    status: str  # "accepted", "ignored" or "pong"
    reason: str | None = None
    bundle: Bundle | None = None
    existing: bool = False

    def to_dict(self) -> dict[str, Any]:
        bundle = None
        if self.bundle is not None:
            bundle = {
                "id": self.bundle.id,
                "version": self.bundle.version,
                "status": self.bundle.status,
                "existing": self.existing,
            }
        return {
            "project": self.project,
            "status": self.status,
            "reason": self.reason,
            "bundle": bundle,
        }


class TreeFetcher(Protocol):
    """Reads the `.kdl` files under a directory of a repository at one commit."""

    def fetch_tree(self, repository: str, ref: str, path: str) -> dict[str, str]:
        """`{path relative to the directory: text}`; raises FetchFailed (or Invalid)."""
        ...


FetcherFactory = Callable[[str, str | None], TreeFetcher]


def bundle_version(commit: str) -> str:
    return f"git-{commit[:8]}"


def _fetch_files(target: Target, event: PushEvent, factory: FetcherFactory) -> dict[str, str]:
    where = f"(project {target.project_slug}, commit {event.after[:8]})"
    try:
        fetched = factory(target.api_base_url, target.access_token).fetch_tree(
            target.repository, event.after, target.path
        )
        if not fetched:
            raise Invalid(
                f"No .kdl files under {_describe(target.path)}",
                code="no_config_files",
                fields={"path": [f"holds no .kdl files at commit {event.after[:8]}"]},
            )
        return sources.files_from_mapping(fetched)
    except FetchFailed as exc:
        raise FetchFailed(f"{exc.message} {where}", project=target.project_slug) from None
    except Invalid as exc:
        raise Invalid(f"{exc.message} {where}", fields=exc.fields, code=exc.code) from None


def handle_push(
    event: PushEvent,
    targets: list[Target],
    *,
    fetcher_factory: FetcherFactory,
    delivery: str | None = None,
    now: datetime | None = None,
) -> list[Outcome]:
    """Fetch and submit the pushed directory for every target the push concerns.

    Every fetch runs before any submission (see the module docstring); call it with no
    transaction open. The caller commits, which also enqueues the compile jobs.
    """
    ignored = {t.project_id: ignore_reason(t, event) for t in targets}
    wanted = [t for t in targets if ignored[t.project_id] is None]
    files = {t.project_id: _fetch_files(t, event, fetcher_factory) for t in wanted}
    actor = Actor("gitops", delivery, f"github:{event.repository.full_name}")
    outcomes = []
    for target in targets:
        reason = ignored[target.project_id]
        project = None
        if reason is None:
            project = db.session.get(Project, target.project_id)
            reason = "the project was deleted" if project is None else None
        if project is None:
            outcomes.append(Outcome(target.project_slug, "ignored", reason))
            continue
        bundle, existing = compiler.submit(
            actor,
            project,
            files[target.project_id],
            version=bundle_version(event.after),
            source_type="gitops",
            source_ref=event.after,
            now=now,
        )
        outcomes.append(Outcome(target.project_slug, "accepted", bundle=bundle, existing=existing))
    return outcomes


# --- the fetch client ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    path: str  # relative to the configured directory
    sha: str
    size: int


class GitHubTreeFetcher:
    """The default `TreeFetcher`: GitHub's Git Data REST API over httpx.

    One recursive tree listing of the commit, then one blob request per `.kdl` file under the
    directory (`workers` at a time). Limits: `timeout_s` per request, `deadline_s` for the
    whole fetch, `max_listing_bytes` for the tree listing, the file count and total size of
    `limits` (checked on the listing, before any content is downloaded), and each blob's
    response is capped by its listed size. Content is checked against the Git object id.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_API_BASE_URL,
        token: str | None = None,
        *,
        timeout_s: float = 10.0,
        deadline_s: float = 30.0,
        max_listing_bytes: int = 16 * 1024 * 1024,
        limits: SourceLimits = DEFAULT_LIMITS,
        workers: int = 8,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s
        self.max_listing_bytes = max_listing_bytes
        self.limits = limits
        self.workers = workers
        self.transport = transport
        self.clock = clock

    def fetch_tree(self, repository: str, ref: str, path: str) -> dict[str, str]:
        """The `.kdl` files under `path` at commit `ref`, keyed by path relative to `path`."""
        deadline = self.clock() + self.deadline_s
        headers = {
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
            "User-Agent": "sentinel-cp-gitops",
        }
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        repo = "/".join(quote(part, safe="") for part in repository.split("/", 1))
        with httpx.Client(
            base_url=self.base_url,
            headers=headers,
            transport=self.transport,
            follow_redirects=True,
            max_redirects=3,
        ) as client:
            listing = self._get_json(
                client,
                f"/repos/{repo}/git/trees/{quote(ref, safe='')}",
                {"recursive": "1"},
                self.max_listing_bytes,
                deadline,
            )
            entries = self._entries(listing, path)
            if not entries:
                return {}

            def download(entry: _Entry) -> tuple[str, str]:
                cap = entry.size * 2 + 64 * 1024  # base64 with line breaks, plus the envelope
                blob = self._get_json(
                    client, f"/repos/{repo}/git/blobs/{entry.sha}", None, cap, deadline
                )
                return entry.path, self._blob_text(entry, blob)

            pool = ThreadPoolExecutor(max_workers=max(1, min(self.workers, len(entries))))
            try:
                return dict(pool.map(download, entries))
            finally:
                pool.shutdown(wait=True, cancel_futures=True)

    def _get_json(
        self,
        client: httpx.Client,
        url: str,
        params: dict[str, str] | None,
        cap: int,
        deadline: float,
    ) -> Any:
        remaining = deadline - self.clock()
        if remaining <= 0:
            raise FetchFailed(f"Fetching from GitHub took longer than {self.deadline_s:g}s")
        body = bytearray()
        try:
            with client.stream(
                "GET", url, params=params, timeout=min(self.timeout_s, remaining)
            ) as response:
                if response.status_code != 200:
                    raise FetchFailed(_status_problem(response.status_code, url))
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > cap:
                        raise FetchFailed(f"GitHub's response to {url} exceeds {cap} bytes")
        except httpx.TimeoutException:
            raise FetchFailed(f"GitHub did not answer {url} in time") from None
        except httpx.HTTPError as exc:
            raise FetchFailed(
                f"GitHub API at {self.base_url} is unreachable ({exc.__class__.__name__})"
            ) from None
        try:
            return json.loads(bytes(body))
        except ValueError:
            raise FetchFailed(f"GitHub's response to {url} is not JSON") from None

    def _entries(self, listing: Any, path: str) -> list[_Entry]:
        if not isinstance(listing, dict) or not isinstance(listing.get("tree"), list):
            raise FetchFailed("GitHub's tree listing has an unexpected shape")
        if listing.get("truncated"):
            raise FetchFailed("The repository tree is too large for one listing (truncated)")
        prefix = f"{path}/" if path else ""
        entries: list[_Entry] = []
        total = 0
        for item in listing["tree"]:
            if not isinstance(item, dict) or not isinstance(item.get("path"), str):
                raise FetchFailed("GitHub's tree listing has an unexpected shape")
            full = item["path"]
            if item.get("type") != "blob" or not full.startswith(prefix):
                continue
            if not full.endswith(".kdl"):
                continue
            relative = full[len(prefix) :]
            if item.get("mode") == "120000":
                raise Invalid(
                    f"{relative} is a symbolic link", fields={relative: ["links are not accepted"]}
                )
            sha, size = item.get("sha"), item.get("size")
            if not isinstance(sha, str) or not re.fullmatch(COMMIT_PATTERN, sha):
                raise FetchFailed("GitHub's tree listing has an unexpected shape")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise FetchFailed("GitHub's tree listing has an unexpected shape")
            entries.append(_Entry(relative, sha, size))
            total += size
            if len(entries) > self.limits.max_files:
                raise FetchFailed(
                    f"More than {self.limits.max_files} .kdl files under {_describe(path)}"
                )
            if total > self.limits.max_total_bytes:
                raise FetchFailed(
                    f"The .kdl files under {_describe(path)} exceed "
                    f"{self.limits.max_total_bytes} bytes"
                )
        return entries

    @staticmethod
    def _blob_text(entry: _Entry, blob: Any) -> str:
        content = blob.get("content") if isinstance(blob, dict) else None
        if not isinstance(content, str) or blob.get("encoding") != "base64":
            raise FetchFailed(f"GitHub's blob for {entry.path} has an unexpected shape")
        try:
            data = base64.b64decode(content.replace("\n", ""), validate=True)
        except ValueError:
            raise FetchFailed(f"GitHub's blob for {entry.path} is not valid base64") from None
        algorithm = hashlib.sha1 if len(entry.sha) == 40 else hashlib.sha256
        object_id = algorithm(b"blob %d\x00" % len(data) + data, usedforsecurity=False)
        if object_id.hexdigest() != entry.sha:
            raise FetchFailed(f"The content of {entry.path} does not match its Git object id")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise Invalid(
                f"{entry.path} is not UTF-8 text", fields={entry.path: ["not UTF-8 text"]}
            ) from None


def _status_problem(status: int, url: str) -> str:
    if status == 404:
        return (
            f"GitHub answered 404 for {url}: check the repository name, the commit and the "
            "access token"
        )
    if status in (401, 403):
        return f"GitHub refused {url} ({status}): check the access token and the rate limit"
    return f"GitHub answered {status} for {url}"


def github_fetcher(base_url: str, token: str | None) -> TreeFetcher:
    """The default fetcher factory (`app.extensions["sentinel_gitops_fetcher"]`)."""
    return GitHubTreeFetcher(base_url, token)
