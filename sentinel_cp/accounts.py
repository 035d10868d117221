"""Users, roles, API keys and the principal that every operator request acts as.

Passwords use Argon2id (slow by design); API keys are `sk_` + 43 url-safe characters, shown
once and stored only as a SHA-256 hash. A key has exactly the scopes it was given, never more
than its creator's role allows — checked when it is created and again on every use, so a
demoted or disabled creator takes their keys down with them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Boolean, ForeignKey, Integer, String, func, select
from sqlalchemy.orm import Mapped, mapped_column, relationship

from sentinel_cp import audit, metrics, throttle
from sentinel_cp.audit import Actor
from sentinel_cp.db import JSONType, UTCDateTime, db, new_id, utcnow
from sentinel_cp.errors import Conflict, Forbidden, Invalid, NotFound, Unauthorized
from sentinel_cp.pagination import Page, decode_cursor, encode_cursor

ROLES = ("admin", "operator", "reader")
SCOPES = (
    "nodes:read",
    "nodes:write",
    "bundles:read",
    "bundles:write",
    "rollouts:read",
    "rollouts:write",
    "audit:read",
    "projects:admin",
    "api_keys:admin",
)
ROLE_SCOPES: dict[str, frozenset[str]] = {
    "reader": frozenset(s for s in SCOPES if s.endswith(":read")),
    "operator": frozenset(s for s in SCOPES if s.endswith((":read", ":write"))),
    "admin": frozenset(SCOPES),
}
# Who may manage access: list, create and revoke API keys, and manage users (admins only).
ACCESS_ADMIN_SCOPE = "api_keys:admin"
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 256
KEY_PREFIX = "sk_"
LAST_USED_RESOLUTION = timedelta(seconds=60)

LOGIN_LIMIT_PER_ADDRESS = throttle.Limit("login:addr", limit=20, window_s=300)
LOGIN_LIMIT_PER_ACCOUNT = throttle.Limit("login:acct", limit=5, window_s=900)

_hasher = PasswordHasher()
# Verified against when the email is unknown, so both answers take the same time.
_dummy_hash: str | None = None


def configure_password_hashing(*, time_cost: int, memory_cost: int) -> None:
    """Tune Argon2 (tests use a cheaper setting; production keeps the library defaults)."""
    global _hasher, _dummy_hash
    _hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_cost, parallelism=1)
    _dummy_hash = None


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def _verify_password(stored_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


class User(db.Model):  # type: ignore[name-defined]
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    email: Mapped[str] = mapped_column(String(254), nullable=False, unique=True)
    password_hash: Mapped[str] = mapped_column(String(255), nullable=False)
    role: Mapped[str] = mapped_column(String(16), nullable=False, default="reader")
    disabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    # Bumped when the password changes or the user is disabled: every session cookie that
    # carries the old value stops working at once.
    session_epoch: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    # Flask-Login protocol, kept here so the adapters share one definition of a session id.
    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def is_active(self) -> bool:
        return not self.disabled

    @property
    def is_anonymous(self) -> bool:
        return False

    def get_id(self) -> str:
        return f"{self.id}:{self.session_epoch}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "email": self.email,
            "role": self.role,
            "disabled": self.disabled,
            "created_at": self.created_at.isoformat(),
            "last_login_at": self.last_login_at.isoformat() if self.last_login_at else None,
        }


class ApiKey(db.Model):  # type: ignore[name-defined]
    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    key_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSONType, nullable=False)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    project_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    user: Mapped[User] = relationship(lazy="joined")

    def to_dict(self, project_slug: str | None) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "id": str(self.id),
            "name": self.name,
            "prefix": self.prefix,
            "scopes": list(self.scopes),
            "project": project_slug,
            "created_by": self.user.email,
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at),
            "revoked_at": iso(self.revoked_at),
            "last_used_at": iso(self.last_used_at),
        }


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of an operator request: a user, directly or through a key."""

    user: User
    scopes: frozenset[str]
    api_key: ApiKey | None = None

    @property
    def project_id(self) -> uuid.UUID | None:
        """The one project a bound key may see; None means every project."""
        return self.api_key.project_id if self.api_key else None

    @property
    def actor(self) -> Actor:
        if self.api_key is not None:
            return Actor(
                "api_key", str(self.api_key.id), f"{self.user.email} ({self.api_key.name})"
            )
        return Actor("user", str(self.user.id), self.user.email)

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise Forbidden(
                f"Insufficient scope: {scope} is required",
                code="insufficient_scope",
                required=scope,
            )

    def may_see_project(self, project_id: uuid.UUID) -> bool:
        return self.project_id is None or self.project_id == project_id

    def require_unbound(self, action: str) -> None:
        """Refuse what reaches beyond one project (users, new projects) to a bound key."""
        if self.project_id is not None:
            raise Forbidden(f"A project-bound key cannot {action}", code="project_binding")


def require_user_admin(principal: Principal) -> None:
    """Refuse managing users (list, show, create, change) to a caller without the access-admin
    scope, or acting through a key bound to one project: users span every project."""
    principal.require(ACCESS_ADMIN_SCOPE)
    principal.require_unbound("manage users")


def principal_for_user(user: User) -> Principal:
    return Principal(user=user, scopes=ROLE_SCOPES[user.role])


def normalize_email(email: str) -> str:
    return email.strip().lower()


def _check_password_rules(password: str) -> None:
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise Invalid(
            "Invalid password",
            fields={
                "password": [f"must be {MIN_PASSWORD_LENGTH}–{MAX_PASSWORD_LENGTH} characters"]
            },
        )


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise Invalid("Invalid role", fields={"role": [f"must be one of {', '.join(ROLES)}"]})


def create_user(actor: Actor, *, email: str, password: str, role: str) -> User:
    """Create a user (audited on the global chain); 409 when the email is taken."""
    email = normalize_email(email)
    _check_password_rules(password)
    _check_role(role)
    if db.session.scalar(select(User.id).where(User.email == email)) is not None:
        raise Conflict(f"A user with email {email} already exists", code="email_taken")
    user = User(email=email, password_hash=hash_password(password), role=role)
    db.session.add(user)
    db.session.flush()
    audit.record(
        actor,
        "user.created",
        resource_type="user",
        resource_id=user.id,
        changes={"email": email, "role": role},
    )
    return user


def update_user(
    actor: Actor,
    user_id: uuid.UUID,
    *,
    role: str | None = None,
    disabled: bool | None = None,
    password: str | None = None,
) -> User:
    """Change a user's role, disabled flag or password; disabling or a new password ends
    every session of that user."""
    user = get_user(user_id)
    changes: dict[str, Any] = {}
    if role is not None and role != user.role:
        _check_role(role)
        _keep_one_admin(user, new_role=role, disabled=user.disabled)
        changes["role"] = [user.role, role]
        user.role = role
    if disabled is not None and disabled != user.disabled:
        _keep_one_admin(user, new_role=user.role, disabled=disabled)
        changes["disabled"] = [user.disabled, disabled]
        user.disabled = disabled
        user.session_epoch += 1
    if password is not None:
        _check_password_rules(password)
        user.password_hash = hash_password(password)
        user.session_epoch += 1
        changes["password"] = "changed"
    if changes:
        audit.record(
            actor, "user.updated", resource_type="user", resource_id=user.id, changes=changes
        )
    return user


def _keep_one_admin(user: User, *, new_role: str, disabled: bool) -> None:
    if user.role != "admin" or (new_role == "admin" and not disabled):
        return
    # Lock the other active admins, so two admins demoting each other at once cannot both pass.
    others = db.session.scalars(
        select(User.id)
        .where(User.role == "admin", User.disabled.is_(False), User.id != user.id)
        .with_for_update()
    ).all()
    if not others:
        raise Conflict("The last active admin cannot be demoted or disabled", code="last_admin")


def get_user(user_id: uuid.UUID) -> User:
    user = db.session.get(User, user_id)
    if user is None:
        raise NotFound("User not found")
    return user


def list_users(*, limit: int, cursor: str | None) -> Page[User]:
    query = select(User)
    total = db.session.scalar(select(func.count()).select_from(User)) or 0
    if cursor is not None:
        (email,) = decode_cursor(cursor, (str,))
        query = query.where(User.email > email)
    rows = list(db.session.execute(query.order_by(User.email).limit(limit + 1)).scalars())
    next_cursor = encode_cursor(rows[limit - 1].email) if len(rows) > limit else None
    return Page(rows[:limit], next_cursor, total)


def load_session_user(session_id: str) -> User | None:
    """Resolve a Flask-Login id (`<uuid>:<epoch>`); None when stale, unknown or disabled."""
    user_part, _, epoch_part = session_id.partition(":")
    try:
        user_id = uuid.UUID(user_part)
        epoch = int(epoch_part)
    except ValueError:
        return None
    user = db.session.get(User, user_id)
    if user is None or user.disabled or user.session_epoch != epoch:
        return None
    return user


def authenticate(email: str, password: str, *, address: str, now: datetime | None = None) -> User:
    """Check a login. Throttled per client address and per account; audited either way.

    Every attempt is counted before the password is checked (so parallel guesses cannot slip
    past the limit); a success resets the account's counter and refunds the address's.
    """
    email = normalize_email(email)
    throttle.consume(LOGIN_LIMIT_PER_ADDRESS, address)
    throttle.consume(LOGIN_LIMIT_PER_ACCOUNT, email)
    user = db.session.scalar(select(User).where(User.email == email))
    global _dummy_hash
    if user is None:
        _dummy_hash = _dummy_hash or hash_password(secrets.token_urlsafe(16))
    # Always pay for one Argon2 check: unknown, disabled and active accounts answer alike.
    password_ok = _verify_password(user.password_hash if user else str(_dummy_hash), password)
    if user is None or user.disabled or not password_ok:
        metrics.LOGIN_FAILURES.inc()
        audit.record(
            Actor("anonymous", None, address),
            "session.login_failed",
            resource_type="user",
            resource_id=user.id if user else None,
            metadata={"email": email[:254], "address": address},
        )
        raise Unauthorized("Invalid email or password", code="invalid_credentials")
    throttle.refund(LOGIN_LIMIT_PER_ADDRESS, address)
    throttle.reset(LOGIN_LIMIT_PER_ACCOUNT, email)
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    user.last_login_at = now or utcnow()
    audit.record(
        Actor("user", str(user.id), user.email),
        "session.login",
        resource_type="user",
        resource_id=user.id,
        metadata={"address": address},
    )
    return user


def record_logout(user: User, *, address: str) -> None:
    audit.record(
        Actor("user", str(user.id), user.email),
        "session.logout",
        resource_type="user",
        resource_id=user.id,
        metadata={"address": address},
    )


# --- API keys -------------------------------------------------------------------------------


def _hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def validate_scopes(scopes: list[str]) -> list[str]:
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise Invalid(
            "Unknown scopes",
            fields={"scopes": [f"unknown scope {s!r}" for s in unknown]},
        )
    if not scopes:
        raise Invalid("A key needs at least one scope", fields={"scopes": ["must not be empty"]})
    return sorted(set(scopes))


def create_api_key(
    principal: Principal,
    *,
    name: str,
    scopes: list[str],
    project_id: uuid.UUID | None,
    expires_at: datetime | None,
    now: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Create a key for the principal's user; returns the row and the raw key (shown once)."""
    now = now or utcnow()
    scopes = validate_scopes(scopes)
    # The ceiling is what the caller holds right now: a user's role, or a key's own scopes
    # (already capped by its owner's role), so no key can mint a stronger key.
    beyond = sorted(set(scopes) - principal.scopes)
    if beyond:
        raise Forbidden(
            f"A key cannot hold more than its creator: {', '.join(beyond)} is not held by "
            "the caller",
            code="scope_exceeds_role",
        )
    if principal.project_id is not None and project_id != principal.project_id:
        raise Forbidden(
            "A project-bound key can only create keys bound to its own project",
            code="project_binding",
        )
    if expires_at is not None and expires_at <= now:
        raise Invalid("Expiry is in the past", fields={"expires_at": ["must be in the future"]})
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        name=name,
        prefix=raw[:12],
        key_hash=_hash_key(raw),
        scopes=scopes,
        user_id=principal.user.id,
        project_id=project_id,
        created_at=now,
        expires_at=expires_at,
    )
    key.user = principal.user
    db.session.add(key)
    db.session.flush()
    audit.record(
        principal.actor,
        "api_key.created",
        resource_type="api_key",
        resource_id=key.id,
        project_id=None,
        changes={
            "name": name,
            "scopes": scopes,
            "prefix": key.prefix,
            "project_id": str(project_id) if project_id else None,
            "expires_at": expires_at.isoformat() if expires_at else None,
        },
    )
    return key, raw


def authenticate_api_key(raw: str, *, now: datetime | None = None) -> Principal:
    """Resolve `Authorization: Bearer sk_…`; 401 for unknown, revoked or expired keys."""
    now = now or utcnow()
    if not raw.startswith(KEY_PREFIX) or len(raw) > 128:
        raise Unauthorized("Invalid API key", code="invalid_api_key")
    digest = _hash_key(raw)
    key = db.session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    if key is None or not hmac.compare_digest(key.key_hash, digest):
        raise Unauthorized("Invalid API key", code="invalid_api_key")
    if key.revoked_at is not None:
        raise Unauthorized("API key has been revoked", code="api_key_revoked")
    if key.expires_at is not None and key.expires_at <= now:
        raise Unauthorized("API key has expired", code="api_key_expired")
    if key.user.disabled:
        raise Unauthorized("The key's owner is disabled", code="api_key_owner_disabled")
    if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
        key.last_used_at = now
    scopes = frozenset(key.scopes) & ROLE_SCOPES[key.user.role]
    return Principal(user=key.user, scopes=scopes, api_key=key)


def _visible_keys(principal: Principal) -> Any:
    query = select(ApiKey)
    if principal.project_id is not None:
        query = query.where(ApiKey.project_id == principal.project_id)
    return query


def list_api_keys(principal: Principal, *, limit: int, cursor: str | None) -> Page[ApiKey]:
    query = _visible_keys(principal)
    total = db.session.scalar(select(func.count()).select_from(query.subquery())) or 0
    if cursor is not None:
        created, key_id = decode_cursor(cursor, (str, str))
        try:
            created_at = datetime.fromisoformat(created)
            last_id = uuid.UUID(key_id)
            if created_at.tzinfo is None:
                raise ValueError("cursor time without a zone")
            created_at = created_at.astimezone(UTC)
        except (ValueError, OverflowError):
            raise Invalid(
                "Invalid cursor", fields={"cursor": ["not a cursor from this API"]}
            ) from None
        query = query.where(
            (ApiKey.created_at < created_at)
            | ((ApiKey.created_at == created_at) & (ApiKey.id < last_id))
        )
    rows = list(
        db.session.execute(
            query.order_by(ApiKey.created_at.desc(), ApiKey.id.desc()).limit(limit + 1)
        )
        .scalars()
        .unique()
    )
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor(last.created_at.isoformat(), str(last.id))
    return Page(rows[:limit], next_cursor, total)


def get_api_key(principal: Principal, key_id: uuid.UUID) -> ApiKey:
    key = db.session.scalar(_visible_keys(principal).where(ApiKey.id == key_id))
    if key is None:
        raise NotFound("API key not found")
    return key


def revoke_api_key(
    principal: Principal, key_id: uuid.UUID, *, now: datetime | None = None
) -> ApiKey:
    """Revoke a key (idempotent: revoking twice keeps the first time and audits once)."""
    key = get_api_key(principal, key_id)
    if key.revoked_at is None:
        key.revoked_at = now or utcnow()
        audit.record(
            principal.actor,
            "api_key.revoked",
            resource_type="api_key",
            resource_id=key.id,
            changes={"prefix": key.prefix},
        )
    return key
