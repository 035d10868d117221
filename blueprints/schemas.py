"""Request and response schemas of the operator API (pydantic), the source of the OpenAPI document.

Bodies are strict (no "5" for 5, no unknown fields); query strings are parsed leniently because
everything in a URL is a string, but unknown parameters are still refused.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

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
