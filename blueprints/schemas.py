"""Request and response schemas of the operator API (pydantic), the source of the OpenAPI document.

Bodies are strict (no "5" for 5, no unknown fields); query strings are parsed leniently because
everything in a URL is a string, but unknown parameters are still refused.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, RootModel

from sentinel_cp import accounts
from sentinel_cp.accounts import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH
from sentinel_cp.pagination import DEFAULT_LIMIT, MAX_LIMIT

# The names come from the domain, so the schemas cannot drift from what it accepts.
Role = Literal[accounts.ROLES]  # type: ignore[valid-type]
Scope = Literal[accounts.SCOPES]  # type: ignore[valid-type]
EmailText = Field(min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")
T = TypeVar("T")


def _as_utc(value: datetime) -> datetime:
    """Naive times are UTC; every time is converted to UTC, which must be representable."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("time is out of range once converted to UTC") from None


UTCDatetime = Annotated[datetime, AfterValidator(_as_utc)]
AwareUTCDatetime = Annotated[AwareDatetime, AfterValidator(_as_utc)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Query(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorOut(BaseModel):
    """Extra keys (e.g. `checks` on 503 from `/ready`) may accompany an error."""

    model_config = ConfigDict(extra="allow")

    error: str
    code: str
    fields: dict[str, list[str]] | None = None
    required: str | None = None


class ListOut(Out, Generic[T]):
    items: list[T]
    next_cursor: str | None
    total: int


class PageQuery(Query):
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)
    cursor: str | None = Field(None, max_length=512)


# --- session and users ------------------------------------------------------------------


class LoginIn(Body):
    email: str = Field(min_length=1, max_length=254)
    password: str = Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)


class SessionOut(Out):
    id: str
    email: str
    role: Role


class MeKeyOut(Out):
    id: str
    name: str
    prefix: str
    project: str | None


class MeOut(Out):
    id: str
    email: str
    role: Role
    scopes: list[Scope]
    api_key: MeKeyOut | None


class StatusOut(Out):
    status: str


class UserCreateIn(Body):
    email: str = EmailText
    password: str = Field(min_length=MIN_PASSWORD_LENGTH, max_length=MAX_PASSWORD_LENGTH)
    role: Role = "reader"


class UserPatchIn(Body):
    role: Role | None = None
    disabled: bool | None = None
    password: str | None = Field(
        None, min_length=MIN_PASSWORD_LENGTH, max_length=MAX_PASSWORD_LENGTH
    )


class UserOut(Out):
    id: str
    email: str
    role: Role
    disabled: bool
    created_at: datetime
    last_login_at: datetime | None


# --- API keys -----------------------------------------------------------------------------


class ApiKeyCreateIn(Body):
    name: str = Field(min_length=1, max_length=100)
    scopes: list[str] = Field(min_length=1, max_length=len(accounts.SCOPES))
    project: str | None = Field(None, max_length=50)
    expires_at: AwareUTCDatetime | None = None


class ApiKeyOut(Out):
    id: str
    name: str
    prefix: str
    scopes: list[Scope]
    project: str | None
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class ApiKeyCreatedOut(ApiKeyOut):
    key: str = Field(description="The raw key, shown only in this response")


# --- projects -----------------------------------------------------------------------------


class SettingsIn(Body):
    heartbeat_interval_s: int | None = Field(None, ge=5, le=3600)
    poll_interval_s: int | None = Field(None, ge=5, le=3600)
    staleness_timeout_s: int | None = Field(None, ge=15, le=86400)
    approvals_required: int | None = Field(None, ge=0, le=10)
    approvals_required_high_risk: int | None = Field(None, ge=0, le=10)
    open_registration: bool | None = None
    drift_grace_s: int | None = Field(None, ge=0, le=86400)
    drift_auto_remediate: bool | None = None
    standby_slot: Literal["green", "blue"] | None = None

    def given(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class SettingsOut(Out):
    heartbeat_interval_s: int
    poll_interval_s: int
    staleness_timeout_s: int
    approvals_required: int
    approvals_required_high_risk: int
    open_registration: bool
    drift_grace_s: int
    drift_auto_remediate: bool
    standby_slot: Literal["green", "blue"]


class ProjectCreateIn(Body):
    slug: str = Field(min_length=2, max_length=50)
    name: str = Field(min_length=1, max_length=100)
    settings: SettingsIn | None = None


class ProjectPatchIn(Body):
    name: str | None = Field(None, min_length=1, max_length=100)
    settings: SettingsIn | None = None


class ProjectOut(Out):
    id: str
    slug: str
    name: str
    settings: SettingsOut
    has_registration_token: bool
    created_at: datetime
    updated_at: datetime


class TokenOut(Out):
    token: str


# --- audit --------------------------------------------------------------------------------


class AuditQuery(PageQuery):
    actor: str | None = Field(None, max_length=255)
    action: str | None = Field(None, max_length=64, pattern=r"^[a-z_]+(\.[a-z_]+)*(\.\*)?$")
    resource: str | None = Field(None, max_length=100, pattern=r"^[a-z_]+(:[A-Za-z0-9_.:-]+)?$")
    since: UTCDatetime | None = None
    until: UTCDatetime | None = None


class AuditExportQuery(Query):
    format: Literal["csv", "json"] = "json"
    actor: str | None = Field(None, max_length=255)
    action: str | None = Field(None, max_length=64, pattern=r"^[a-z_]+(\.[a-z_]+)*(\.\*)?$")
    resource: str | None = Field(None, max_length=100, pattern=r"^[a-z_]+(:[A-Za-z0-9_.:-]+)?$")
    since: UTCDatetime | None = None
    until: UTCDatetime | None = None


class AuditActorOut(Out):
    type: str
    id: str | None
    label: str


class AuditResourceOut(Out):
    type: str
    id: str | None


class AuditEntryOut(Out):
    id: str
    seq: int
    project_id: str | None
    created_at: datetime
    actor: AuditActorOut
    action: str
    resource: AuditResourceOut
    changes: dict[str, Any]
    metadata: dict[str, Any]
    prev_hash: str
    entry_hash: str


class AuditVerifyOut(Out):
    valid: bool
    checked: int
    first_bad_id: str | None
    reason: str | None


# --- service ------------------------------------------------------------------------------


class HealthOut(Out):
    status: Literal["ok"]


class ReadyOut(Out):
    status: str
    checks: dict[str, str]
    jobs_last_run_at: str | None = Field(
        description="When a periodic job last ran (cron → queue → worker alive)"
    )


# --- nodes (node protocol) ----------------------------------------------------------------

NodeName = Annotated[
    str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
]
LabelMap = Annotated[
    dict[Annotated[str, Field(min_length=1, max_length=63)], Annotated[str, Field(max_length=255)]],
    Field(max_length=64),
]
BundleId = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
MAX_METADATA_BYTES = 16 * 1024


def _small_json(value: dict[str, Any]) -> dict[str, Any]:
    import json as _json

    if len(_json.dumps(value)) > MAX_METADATA_BYTES:
        raise ValueError(f"must be at most {MAX_METADATA_BYTES} bytes as JSON")
    return value


Metadata = Annotated[dict[str, Any], AfterValidator(_small_json)]


class RegisterIn(Body):
    name: NodeName
    labels: LabelMap = Field(default_factory=dict)
    capabilities: list[Annotated[str, Field(max_length=64)]] = Field(
        default_factory=list, max_length=64
    )
    version: str | None = Field(None, max_length=64)
    ip: str | None = Field(None, max_length=45)
    hostname: str | None = Field(None, max_length=255)
    metadata: Metadata = Field(default_factory=dict)


class SigningKeyOut(Out):
    kid: str
    alg: Literal["Ed25519"]
    public_key: str
    state: Literal["active", "retired"] | None = None
    created_at: datetime | None = None


class RegisterOut(Out):
    node_id: str
    node_key: str
    poll_interval_s: int
    heartbeat_interval_s: int
    signing_keys: list[SigningKeyOut]


class HealthIn(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    status: Literal["healthy", "degraded", "unhealthy"] | None = None
    cpu_percent: float | None = Field(None, ge=0, le=100)
    memory_percent: float | None = Field(None, ge=0, le=100)


class MetricsIn(BaseModel):
    """Gate metrics are checked; other numeric metrics are kept and charted."""

    model_config = ConfigDict(extra="allow", strict=True)

    error_rate: float | None = Field(None, ge=0, le=100)
    latency_p99_ms: float | None = Field(None, ge=0)
    cpu_percent: float | None = Field(None, ge=0, le=100)
    memory_percent: float | None = Field(None, ge=0, le=100)
    requests_per_second: float | None = Field(None, ge=0)


class HeartbeatIn(Body):
    health: HealthIn | None = None
    metrics: MetricsIn | None = None
    active_bundle_id: BundleId | None = None
    staged_bundle_id: BundleId | None = None
    version: str | None = Field(None, max_length=64)
    ip: str | None = Field(None, max_length=45)
    hostname: str | None = Field(None, max_length=255)
    metadata: Metadata | None = None


class HeartbeatOut(Out):
    status: Literal["ok"]
    node_id: str
    last_seen_at: datetime
    poll_after_s: int
    assigned_bundle_id: str | None


class NodeTokenOut(Out):
    token: str
    token_type: Literal["Bearer"]
    expires_at: datetime
    expires_in: int


class NodeEventIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    event_type: str = Field(min_length=1, max_length=64)
    severity: Literal["debug", "info", "warning", "error", "critical"] = "info"
    message: str = Field(min_length=1, max_length=4096)
    metadata: Metadata = Field(default_factory=dict)


class NodeEventBatchIn(Body):
    events: list[NodeEventIn] = Field(max_length=100)


class NodeEventsIn(RootModel[NodeEventIn | NodeEventBatchIn]):
    """Either one event (its fields at the top level) or `{"events": [...]}` (≤ 100)."""


class CountOut(Out):
    status: Literal["ok"]
    count: int


class RunningConfigIn(Body):
    config_kdl: str = Field(max_length=1024 * 1024)


class RunningConfigOut(Out):
    status: Literal["ok"]
    config_hash: str


class SigningKeysOut(Out):
    keys: list[SigningKeyOut]


# --- nodes (operator API) -----------------------------------------------------------------


class NodeOut(Out):
    id: str
    name: str
    status: Literal["unknown", "online", "offline"]
    labels: dict[str, str]
    capabilities: list[str]
    version: str | None
    ip: str | None
    hostname: str | None
    metadata: dict[str, Any]
    last_seen_at: datetime | None
    registered_at: datetime
    active_bundle_id: str | None
    staged_bundle_id: str | None
    assigned_bundle_id: str | None
    expected_bundle_id: str | None
    health: dict[str, Any]
    metrics: dict[str, Any]
    drifted: bool
    credentials_revoked: bool


class NodeQuery(PageQuery):
    status: Literal["unknown", "online", "offline"] | None = None
    label: list[Annotated[str, Field(pattern=r"^[^:]{1,63}:.{0,255}$")]] = Field(
        default_factory=list, max_length=16
    )
    version: str | None = Field(None, max_length=64)
    bundle: BundleId | None = None
    drifted: bool | None = None
    q: str | None = Field(None, max_length=100)
    group: str | None = Field(None, max_length=100)


class NodeStatsOut(Out):
    total: int
    by_status: dict[str, int]
    by_active_bundle: dict[str, int]


class NodePatchIn(Body):
    labels: LabelMap


class HeartbeatSampleOut(Out):
    id: int
    created_at: datetime
    status: str | None
    health: dict[str, Any]
    metrics: dict[str, Any]
    active_bundle_id: str | None


class NodeEventOut(Out):
    id: int
    created_at: datetime
    event_type: str
    severity: str
    message: str
    metadata: dict[str, Any]


class GroupSelector(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    labels: LabelMap


class GroupCreateIn(Body):
    name: NodeName
    description: str = Field("", max_length=500)
    selector: GroupSelector


class GroupPatchIn(Body):
    description: str | None = Field(None, max_length=500)
    selector: GroupSelector | None = None


class GroupOut(Out):
    id: str
    name: str
    description: str
    selector: dict[str, dict[str, str]]
    created_at: datetime
    node_count: int | None = None


class GroupListOut(Out):
    items: list[GroupOut]


# --- bundles --------------------------------------------------------------------------------

BundleVersion = Annotated[str, Field(min_length=1, max_length=64)]
SourceText = Annotated[str, Field(max_length=1024 * 1024)]


class BundleFilesIn(Body):
    """Multi-file submission: `{path: KDL text}` with `sentinel.kdl` as the entry point."""

    version: BundleVersion
    files: dict[Annotated[str, Field(max_length=255)], SourceText] = Field(max_length=256)


class BundleSourceIn(Body):
    """Single-file submission, compatible with the peer control plane's API."""

    version: BundleVersion
    config_source: SourceText


class BundleSubmitIn(RootModel[BundleFilesIn | BundleSourceIn]):
    """JSON body; `multipart/form-data` (a `version` field plus `.kdl` files or one `.tar.gz`)
    is accepted too."""


class BundleValidateFilesIn(Body):
    files: dict[Annotated[str, Field(max_length=255)], SourceText] = Field(max_length=256)


class BundleValidateSourceIn(Body):
    config_source: SourceText


class BundleValidateIn(RootModel[BundleValidateFilesIn | BundleValidateSourceIn]):
    pass


class DiagnosticOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    severity: str
    code: str
    message: str
    file: str | None = None
    line: int | None = None
    column: int | None = None


class BundleOut(Out):
    id: str
    version: str
    status: Literal["pending", "compiling", "compiled", "failed", "revoked"]
    checksum: str
    size_bytes: int
    config_sha256: str
    risk_level: Literal["low", "medium", "high"] | None
    risk_reasons: list[str]
    errors: list[DiagnosticOut]
    warnings: list[DiagnosticOut]
    signed: bool
    signing_key_id: str | None
    parent_bundle_id: str | None
    diff_summary: dict[str, Any] | None
    source_type: str
    source_ref: str | None
    created_by: str | None
    created_at: datetime
    compiled_at: datetime | None
    revoked_at: datetime | None
    revoke_reason: str | None
    artifact_deleted_at: datetime | None
    files: list[str]
    existing: bool


class BundleDetailOut(BundleOut):
    manifest: dict[str, Any]
    output: dict[str, Any]


class BundleQuery(PageQuery):
    status: Literal["pending", "compiling", "compiled", "failed", "revoked"] | None = None


class ValidationOut(Out):
    valid: bool
    stage: str | None
    errors: list[DiagnosticOut]
    warnings: list[DiagnosticOut]
    node_warnings: list[DiagnosticOut]
    report: str
    files: list[str]
    external: dict[str, Any] | None


class BundleVerifyOut(Out):
    verified: bool
    signed: bool
    signature_valid: bool
    key_id: str | None
    key_state: str | None
    checksum_valid: bool
    artifact_present: bool


class BundleDiffQuery(Query):
    against: BundleId


class FileDiffOut(Out):
    path: str
    status: Literal["added", "removed", "changed"]
    diff: str


class BundleDiffOut(Out):
    bundle_id: str
    against: str
    files: list[FileDiffOut]
    summary: dict[str, Any]
    risk_level: Literal["low", "medium", "high"]
    risk_reasons: list[str]


class BundleRevokeIn(Body):
    reason: str | None = Field(None, max_length=500)


class BundleStatusReportIn(Body):
    reason: str | None = Field(None, max_length=1000)
    logs: str | None = Field(None, max_length=32 * 1024)


class BundleStatusReportOut(Out):
    status: Literal["ok"]
    state: str


class BundleOfferOut(Out):
    bundle_id: str
    version: str
    checksum: str
    size_bytes: int
    download_url: str
    signature: str
    signing_key_id: str | None
    project_id: str
    rollout_id: str | None
    poll_after_s: int


class NoUpdateOut(Out):
    no_update: Literal[True]
    poll_after_s: int


class PollOut(RootModel[BundleOfferOut | NoUpdateOut]):
    pass


class GcOut(Out):
    dry_run: bool
    bundles: list[dict[str, Any]]
    bytes: int
    objects_deleted: int | None = None


# --- rollouts -------------------------------------------------------------------------------


class RolloutSelectorIn(BaseModel):
    """Exactly one of: `all`, `labels`, `node_ids`, `group` (a group's name)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    all: bool | None = None
    labels: LabelMap | None = None
    node_ids: list[Annotated[str, Field(max_length=36)]] | None = Field(None, max_length=10_000)
    group: NodeName | None = None


class HealthGatesIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    heartbeat_healthy: bool | None = None
    max_error_rate: float | None = None
    max_latency_ms: float | None = None
    max_cpu_percent: float | None = None
    max_memory_percent: float | None = None
    max_error_rate_vs_baseline: float | None = None


class RolloutCreateIn(Body):
    bundle_id: BundleId
    target_selector: RolloutSelectorIn | None = None
    strategy: Literal["rolling", "canary", "blue_green", "all_at_once"] | None = None
    batch_size: int | None = None
    batch_percent: float | None = None
    canary_steps: list[float] | None = Field(None, max_length=20)
    max_unavailable: int | None = None
    max_failures: int | Annotated[str, Field(max_length=8)] | None = None
    progress_deadline_s: int | None = None
    bake_s: int | None = None
    health_gates: HealthGatesIn | None = None
    on_failure: Literal["pause", "rollback"] | None = None
    gate_grace_s: int | None = None
    gate_data_timeout_s: int | None = None
    standby_slot: Annotated[str, Field(max_length=63)] | None = None
    scheduled_at: AwareUTCDatetime | None = None
    start: bool = True
    skip_busy_nodes: bool = False
    template: NodeName | None = None
    override_freeze: str | None = Field(
        None, min_length=1, max_length=500, description="admins only: the reason"
    )


class RolloutActionIn(Body):
    reason: str | None = Field(None, max_length=500)


class RolloutResumeIn(RolloutActionIn):
    skip_unavailable: bool = False


class RolloutNodeOut(Out):
    node_id: str
    name: str | None
    state: str
    reason: str | None


class RolloutStepOut(Out):
    index: int
    kind: str
    state: str
    reason: str | None
    started_at: datetime | None
    baking_since: datetime | None
    finished_at: datetime | None
    gates: dict[str, Any] | None
    nodes: list[RolloutNodeOut]


class RolloutProgressOut(Out):
    total: int
    pending: int
    in_progress: int
    verified: int
    failed: int
    skipped: int


class RolloutOut(Out):
    id: str
    state: str
    approval_state: str
    strategy: str
    bundle_id: str
    target_selector: dict[str, Any]
    config: dict[str, Any]
    reason: str | None
    details: dict[str, Any]
    rollback_of: str | None
    approvals_required: int
    created_by: str | None
    created_at: datetime
    scheduled_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    steps: list[RolloutStepOut]
    progress: RolloutProgressOut
    gates: dict[str, Any] | None


class RolloutQuery(PageQuery):
    state: (
        Literal[
            "pending",
            "running",
            "paused",
            "completed",
            "failed",
            "cancelled",
            "rolling_back",
            "rolled_back",
        ]
        | None
    ) = None


class RolloutPlanOut(Out):
    bundle_id: str
    strategy: str
    config: dict[str, Any]
    target_selector: dict[str, Any]
    total: int
    steps: list[dict[str, Any]]
    skipped_busy: list[str]
    conflicts: list[str]


class RolloutApproveIn(Body):
    comment: str | None = Field(None, max_length=1000)


class RolloutRejectIn(Body):
    comment: str = Field(min_length=1, max_length=1000)


class FreezeWindowIn(Body):
    """`one_off`: starts_at/ends_at. `weekly`: days, start_time ("HH:MM"), duration_minutes,
    time_zone (IANA)."""

    kind: Literal["one_off", "weekly"]
    name: str = Field(min_length=1, max_length=100)
    reason: str | None = Field(None, max_length=500)
    starts_at: AwareUTCDatetime | None = None
    ends_at: AwareUTCDatetime | None = None
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] | None = None
    start_time: str | None = Field(None, max_length=5)
    duration_minutes: int | None = None
    time_zone: str | None = Field(None, max_length=64)


class FreezeWindowOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    kind: str
    name: str
    active: bool
    active_until: str | None


class RolloutTemplateIn(Body):
    name: NodeName
    target_selector: RolloutSelectorIn | None = None
    strategy: Literal["rolling", "canary", "blue_green", "all_at_once"] | None = None
    batch_size: int | None = None
    batch_percent: float | None = None
    canary_steps: list[float] | None = Field(None, max_length=20)
    max_unavailable: int | None = None
    max_failures: int | Annotated[str, Field(max_length=8)] | None = None
    progress_deadline_s: int | None = None
    bake_s: int | None = None
    health_gates: HealthGatesIn | None = None
    on_failure: Literal["pause", "rollback"] | None = None
    gate_grace_s: int | None = None
    gate_data_timeout_s: int | None = None


class RolloutTemplateOut(Out):
    id: str
    name: str
    target_selector: dict[str, Any] | None
    config: dict[str, Any]
    created_by: str | None
    created_at: datetime


class ItemsOut(Out, Generic[T]):
    items: list[T]
