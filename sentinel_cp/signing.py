"""Per-project Ed25519 signing keys: node JWTs now, bundle signatures later.

A project gets its first key on demand. Rotation makes a new key the signer while older active
keys keep verifying what they signed; retiring a key makes it stop verifying at once. Private
keys are stored encrypted (Fernet, with a key derived from SECRET_KEY_BASE), never in clear.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import ForeignKey, String, Text, select
from sqlalchemy.orm import Mapped, mapped_column

from sentinel_cp import audit
from sentinel_cp.audit import Actor
from sentinel_cp.db import UTCDateTime, db, new_id, utcnow
from sentinel_cp.errors import Conflict, NotFound, Unauthorized

TOKEN_LIFETIME = timedelta(hours=12)
MAX_TOKEN_LENGTH = 4096  # ours are ~300 characters; anything far longer is hostile
_fernet: Fernet | None = None


def configure(secret_key: str) -> None:
    """Derive the key that encrypts private keys at rest from the application secret."""
    global _fernet
    digest = hashlib.sha256(b"sentinel-signing-keys:" + secret_key.encode()).digest()
    _fernet = Fernet(base64.urlsafe_b64encode(digest))


def _cipher() -> Fernet:
    if _fernet is None:
        raise RuntimeError("signing.configure() was not called")
    return _fernet


class SigningKey(db.Model):  # type: ignore[name-defined]
    __tablename__ = "signing_keys"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    project_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), nullable=False, index=True
    )
    kid: Mapped[str] = mapped_column(String(40), nullable=False, unique=True)
    public_key: Mapped[str] = mapped_column(String(64), nullable=False)
    private_key_encrypted: Mapped[str] = mapped_column(Text, nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False, default="active")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def public_dict(self) -> dict[str, Any]:
        return {
            "kid": self.kid,
            "alg": "Ed25519",
            "public_key": self.public_key,
            "state": self.state,
            "created_at": self.created_at.isoformat(),
        }

    def private_key(self) -> Ed25519PrivateKey:
        try:
            raw = _cipher().decrypt(self.private_key_encrypted.encode())
        except InvalidToken:
            raise RuntimeError(
                f"signing key {self.kid} cannot be decrypted: SECRET_KEY_BASE changed?"
            ) from None
        return Ed25519PrivateKey.from_private_bytes(raw)


def _new_key(project_id: uuid.UUID, now: datetime) -> SigningKey:
    private = Ed25519PrivateKey.generate()
    raw_private = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    raw_public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return SigningKey(
        project_id=project_id,
        kid="kid_" + secrets.token_urlsafe(12),
        public_key=base64.b64encode(raw_public).decode(),
        private_key_encrypted=_cipher().encrypt(raw_private).decode(),
        state="active",
        created_at=now,
    )


def list_keys(project_id: uuid.UUID) -> list[SigningKey]:
    return list(
        db.session.scalars(
            select(SigningKey)
            .where(SigningKey.project_id == project_id)
            .order_by(SigningKey.created_at.desc(), SigningKey.kid)
        )
    )


def current_key(project_id: uuid.UUID, *, now: datetime | None = None) -> SigningKey:
    """The newest active key of the project, created (and audited) when there is none."""
    key = db.session.scalar(
        select(SigningKey)
        .where(SigningKey.project_id == project_id, SigningKey.state == "active")
        .order_by(SigningKey.created_at.desc())
        .limit(1)
    )
    if key is None:
        key = _new_key(project_id, now or utcnow())
        db.session.add(key)
        db.session.flush()
        audit.record(
            Actor.system("signing"),
            "signing_key.created",
            resource_type="signing_key",
            resource_id=key.kid,
            project_id=project_id,
            now=now,
        )
    return key


def rotate(actor: Actor, project_id: uuid.UUID, *, now: datetime | None = None) -> SigningKey:
    """Make a new key the signer; earlier active keys still verify until retired."""
    now = now or utcnow()
    key = _new_key(project_id, now)
    db.session.add(key)
    db.session.flush()
    audit.record(
        actor,
        "signing_key.rotated",
        resource_type="signing_key",
        resource_id=key.kid,
        project_id=project_id,
        now=now,
    )
    return key


def retire(
    actor: Actor, project_id: uuid.UUID, kid: str, *, now: datetime | None = None
) -> SigningKey:
    """Stop a key from verifying anything (tokens it signed stop working at once)."""
    key = db.session.scalar(
        select(SigningKey).where(SigningKey.project_id == project_id, SigningKey.kid == kid)
    )
    if key is None:
        raise NotFound("Signing key not found")
    if key.state == "retired":
        raise Conflict("Signing key is already retired", code="already_retired")
    key.state = "retired"
    key.retired_at = now or utcnow()
    audit.record(
        actor,
        "signing_key.retired",
        resource_type="signing_key",
        resource_id=kid,
        project_id=project_id,
        now=now,
    )
    return key


def sign(key: SigningKey, message: bytes) -> str:
    return base64.b64encode(key.private_key().sign(message)).decode()


def verify(public_key_b64: str, message: bytes, signature: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64)).verify(
            signature, message
        )
        return True
    except (InvalidSignature, ValueError):
        return False


# --- node JWTs (EdDSA) ---------------------------------------------------------------------

# A node presents the same token with every request for 12 hours, and checking its Ed25519
# signature was ~4 % of an `api` worker's time with a fleet applying a bundle. Whether a
# signature is good is a pure function of (key, signed bytes, signature), so the good ones are
# remembered, bounded; a bad one is never stored (nothing an attacker sends grows this). Key
# state, expiry and revocation are still checked on every request by the callers.
_GOOD_SIGNATURES_MAX = 20_000
_good_signatures: dict[tuple[str, bytes, bytes], None] = {}


def _verify_token_signature(public_key_b64: str, signing_input: bytes, signature: bytes) -> bool:
    memo = (public_key_b64, signing_input, signature)
    if memo in _good_signatures:
        return True
    if not verify(public_key_b64, signing_input, signature):
        return False
    if len(_good_signatures) >= _GOOD_SIGNATURES_MAX:
        _good_signatures.clear()  # a wholesale reset: the next requests re-verify once each
    _good_signatures[memo] = None
    return True


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class TokenClaims:
    node_id: str
    project_id: str
    kid: str
    issued_at: int
    expires_at: int
    key_version: int


def issue_token(
    key: SigningKey, *, node_id: uuid.UUID, key_version: int, now: datetime | None = None
) -> tuple[str, datetime]:
    """A compact JWS (EdDSA) naming the node; returns the token and its expiry."""
    now = now or utcnow()
    expires = now + TOKEN_LIFETIME
    header = {"alg": "EdDSA", "typ": "JWT", "kid": key.kid}
    claims = {
        "sub": str(node_id),
        "prj": str(key.project_id),
        "iat": int(now.timestamp()),
        "exp": int(expires.timestamp()),
        "ver": key_version,
    }
    signing_input = ".".join(
        _b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
    )
    signature = key.private_key().sign(signing_input.encode())
    return f"{signing_input}.{_b64url(signature)}", expires


def read_token(token: str) -> tuple[str, str, bytes, bytes, dict[str, Any]]:
    """Split a token without trusting it: (kid, node id, signing input, signature, claims)."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise Unauthorized("Malformed token", code="invalid_token")
    try:
        header_b64, claims_b64, signature_b64 = token.split(".")
        header = json.loads(_unb64url(header_b64))
        claims = json.loads(_unb64url(claims_b64))
        signature = _unb64url(signature_b64)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Unauthorized("Malformed token", code="invalid_token") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise Unauthorized("Malformed token", code="invalid_token")
    if header.get("alg") != "EdDSA" or not isinstance(header.get("kid"), str):
        raise Unauthorized("Token must be EdDSA with a kid", code="invalid_token")
    sub = claims.get("sub")
    if not isinstance(sub, str):
        raise Unauthorized("Token has no subject", code="invalid_token")
    return header["kid"], sub, f"{header_b64}.{claims_b64}".encode(), signature, claims


def check_token(
    public_key: str,
    key_state: str,
    signing_input: bytes,
    signature: bytes,
    claims: dict[str, Any],
    *,
    now: datetime | None = None,
) -> None:
    """Verify signature, key state and expiry of a token whose key row was looked up."""
    if key_state != "active":
        raise Unauthorized("Token signed by a retired key", code="signing_key_retired")
    if not _verify_token_signature(public_key, signing_input, signature):
        raise Unauthorized("Invalid token signature", code="invalid_token")
    exp = claims.get("exp")
    if not isinstance(exp, int) or isinstance(exp, bool):
        raise Unauthorized("Token has no expiry", code="invalid_token")
    if exp <= int((now or utcnow()).timestamp()):
        raise Unauthorized("Token has expired", code="token_expired")
