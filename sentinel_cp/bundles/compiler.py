"""Submission and the compile pipeline (spec/bundles.md): parse and validate, external check,
sign, store, persist — with a status machine that survives a worker killed at any instant.

`submit` assembles the deterministic archive at once (so the id is known in the response) and
asks for a compile job. `compile_bundle` runs in that job in three short transactions: claim
(`pending|compiling → compiling`, one attempt counted), the slow work with no transaction
open, then finish, guarded by the attempt number so that of two workers racing on one bundle
exactly one records the outcome. A bundle left in `compiling` by a dead worker is found by
`recover_stuck_compiles` (cron) and compiled again; the archive is deterministic and storage
writes are idempotent, so a repeat produces the same bytes and the same id. After MAX_ATTEMPTS
claims that all died it fails (`compile_abandoned`) instead of killing workers forever.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError

from sentinel_cp import audit, events, jobqueue, signing, storage
from sentinel_cp.audit import Actor
from sentinel_cp.bundles.archive import build_archive
from sentinel_cp.bundles.diff import semantic_summary
from sentinel_cp.bundles.kdl import ProxyConfig, ValidationResult, validate_bundle
from sentinel_cp.bundles.models import Bundle
from sentinel_cp.bundles.risk import assess
from sentinel_cp.db import db, utcnow
from sentinel_cp.errors import Conflict, Invalid, Unavailable
from sentinel_cp.projects import Project

VERSION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+@-]{0,63}")
SOURCE_TYPES = ("api", "upload", "gitops")
# A compile that has not finished after this long is presumed dead (worker killed) and retried.
COMPILE_TIMEOUT = timedelta(minutes=5)
# A pending bundle never picked up (the queue was down when it was submitted).
PENDING_GRACE = timedelta(seconds=30)
MAX_ATTEMPTS = 5
SIGNATURE_CONTEXT = "sentinel-bundle-v1"
log = logging.getLogger(__name__)


def signature_message(project_id: uuid.UUID | str, checksum: str) -> bytes:
    """The exact bytes a bundle signature covers (spec/node-protocol.md, Signature)."""
    return f"{SIGNATURE_CONTEXT}\n{project_id}\n{checksum}".encode()


def check_version(version: str) -> str:
    if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version):
        raise Invalid(
            "Invalid version",
            fields={
                "version": [
                    "must be 1–64 characters: letters, digits and . _ : + @ -, "
                    "starting with a letter or digit"
                ]
            },
        )
    return version


def submit(
    actor: Actor,
    project: Project,
    files: dict[str, str],
    *,
    version: str,
    source_type: str = "api",
    source_ref: str | None = None,
    now: datetime | None = None,
) -> tuple[Bundle, bool]:
    """Create a pending bundle from already-checked source files (see `sources`), or return the
    project's existing bundle with identical content. Returns `(bundle, existing)`."""
    now = now or utcnow()
    check_version(version)
    archive = build_archive(str(project.id), files)
    found = db.session.get(Bundle, archive.bundle_id)
    if found is not None:
        return _existing(actor, found, now), True
    _require_free_version(project.id, version)
    bundle = Bundle(
        id=archive.bundle_id,
        project_id=project.id,
        version=version,
        status="pending",
        size_bytes=archive.size_bytes,
        storage_key=storage.bundle_key(str(project.id), archive.bundle_id),
        files=dict(sorted(files.items())),
        manifest=archive.manifest,
        config_sha256=archive.config_sha256,
        source_type=source_type,
        source_ref=source_ref,
        created_by=actor.label,
        created_at=now,
    )
    try:
        with db.session.begin_nested():
            db.session.add(bundle)
    except IntegrityError:
        # Someone submitted the same content or took the version in the meantime.
        found = db.session.get(Bundle, archive.bundle_id)
        if found is not None:
            return _existing(actor, found, now), True
        raise Conflict(f"Version {version} already exists", code="version_taken") from None
    audit.record(
        actor,
        "bundle.submitted",
        resource_type="bundle",
        resource_id=bundle.id,
        project_id=project.id,
        metadata={
            "version": version,
            "source_type": source_type,
            "source_ref": source_ref,
            "files": len(files),
            "size_bytes": archive.size_bytes,
        },
        now=now,
    )
    events.publish_after_commit(project.id, "bundle", bundle.id, "pending")
    request_compile(bundle.id)
    return bundle, False


def _existing(actor: Actor, bundle: Bundle, now: datetime) -> Bundle:
    """The bundle with identical content, retried first if only storage failed it."""
    if _failed_for_storage(bundle):
        _retry(actor, bundle, now)
    return bundle


def _failed_for_storage(bundle: Bundle) -> bool:
    """Failed only because storage stayed down through every attempt: the content is fine."""
    return (
        bundle.status == "failed"
        and bool(bundle.errors)
        and all(error.get("code") == "storage_unavailable" for error in bundle.errors)
    )


def _retry(actor: Actor, bundle: Bundle, now: datetime) -> None:
    """`failed → pending` with fresh attempts, when the same content is submitted again after
    a storage outage outlasted the compile's retries (identical content is the same bundle, so
    without this it could never be compiled)."""
    retried = db.session.execute(
        update(Bundle)
        .where(Bundle.id == bundle.id, Bundle.status == "failed")
        .values(status="pending", compile_attempts=0, errors=[], output={})
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if retried != 1:
        return
    audit.record(
        actor,
        "bundle.retried",
        resource_type="bundle",
        resource_id=bundle.id,
        project_id=bundle.project_id,
        changes={"status": ["failed", "pending"]},
        metadata={"reason": "resubmitted after storage_unavailable"},
        now=now,
    )
    db.session.refresh(bundle)
    events.publish_after_commit(bundle.project_id, "bundle", bundle.id, "pending")
    request_compile(bundle.id)


def _require_free_version(project_id: uuid.UUID, version: str) -> None:
    taken = db.session.scalar(
        select(Bundle.id).where(Bundle.project_id == project_id, Bundle.version == version)
    )
    if taken is not None:
        raise Conflict(
            f"Version {version} already exists (bundle {taken[:12]})", code="version_taken"
        )


def request_compile(bundle_id: str) -> None:
    jobqueue.enqueue_after_commit(
        "compile_bundle", bundle_id, job_id=f"compile-{bundle_id}", queue="compile"
    )


def dry_run(files: dict[str, str], *, binary: str | None = None) -> dict[str, Any]:
    """Steps 1–3 without creating anything: the verdict with every error and warning."""
    result = validate_bundle(files, binary=binary)
    return result.as_dict()


@dataclass(frozen=True)
class _Claim:
    bundle_id: str
    project_id: uuid.UUID
    attempt: int
    files: dict[str, str]
    started: float


def compile_bundle(
    bundle_id: str, *, binary: str | None = None, now: datetime | None = None
) -> str | None:
    """Run the pipeline for one bundle; returns its final status, or None when there was
    nothing to do (unknown, already finished, or another worker holds a fresh claim)."""
    claim = _claim(bundle_id, now=now)
    if not isinstance(claim, _Claim):
        return claim  # nothing to do, or "failed": every allowed attempt died
    result = validate_bundle(claim.files, binary=binary)
    if not result.valid:
        return _finish_failed(claim, result, now=now)
    archive = build_archive(str(claim.project_id), claim.files)
    if archive.bundle_id != claim.bundle_id:
        return _finish_failed(
            claim, result, now=now, reason="the archive did not rebuild to the same bytes"
        )
    key = signing.current_key(claim.project_id, now=now)
    signature = signing.sign(key, signature_message(claim.project_id, archive.bundle_id))
    kid = key.kid
    db.session.commit()  # a key created on demand is kept even if storage fails below
    try:
        storage.current().put(
            storage.bundle_key(str(claim.project_id), claim.bundle_id), archive.data
        )
    except Unavailable as exc:
        return _storage_failed(claim, str(exc), now=now)
    return _finish_compiled(claim, result, signature=signature, kid=kid, now=now)


def _claim(bundle_id: str, *, now: datetime | None) -> _Claim | str | None:
    """Take the bundle for one attempt (committed), or None when it is not ours to take; the
    outcome string when the bundle ran out of attempts and was failed instead."""
    now = now or utcnow()
    stale = now - COMPILE_TIMEOUT
    bundle = db.session.get(Bundle, bundle_id, populate_existing=True)
    if bundle is None or bundle.status not in ("pending", "compiling"):
        return None
    if (
        bundle.status == "compiling"
        and bundle.compile_attempts >= MAX_ATTEMPTS
        and bundle.compile_started_at is not None
        and bundle.compile_started_at <= stale
    ):
        # Every attempt died before recording an outcome (a bundle that kills its worker):
        # fail it rather than kill a worker every COMPILE_TIMEOUT forever.
        return _abandon(bundle, now)
    attempt = bundle.compile_attempts + 1
    claimed = db.session.execute(
        update(Bundle)
        .where(
            Bundle.id == bundle_id,
            Bundle.compile_attempts == bundle.compile_attempts,
            or_(
                Bundle.status == "pending",
                (Bundle.status == "compiling") & (Bundle.compile_started_at <= stale),
            ),
        )
        .values(status="compiling", compile_started_at=now, compile_attempts=attempt)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if claimed != 1:
        db.session.rollback()
        return None
    events.publish_after_commit(bundle.project_id, "bundle", bundle_id, "compiling")
    db.session.commit()
    return _Claim(bundle_id, bundle.project_id, attempt, dict(bundle.files), time.perf_counter())


def _abandon(bundle: Bundle, now: datetime) -> str | None:
    """`compiling → failed` for a bundle whose last allowed attempt never finished."""
    claim = _Claim(bundle.id, bundle.project_id, bundle.compile_attempts, {}, time.perf_counter())
    message = (
        f"the compile did not finish in {bundle.compile_attempts} attempts: each worker "
        f"stopped before recording an outcome (none within {COMPILE_TIMEOUT.seconds} s)"
    )
    error = {"severity": "error", "code": "compile_abandoned", "message": message}
    output = {"last_error": message, "attempt": bundle.compile_attempts}
    return _record_failed(claim, [error], {"output": output}, now)


def _finish(claim: _Claim, values: dict[str, Any]) -> bool:
    """Record the outcome if this attempt still owns the bundle (exactly one writer wins)."""
    done = db.session.execute(
        update(Bundle)
        .where(
            Bundle.id == claim.bundle_id,
            Bundle.status == "compiling",
            Bundle.compile_attempts == claim.attempt,
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if done != 1:
        db.session.rollback()
        return False
    return True


def _diagnostics(result: ValidationResult) -> tuple[list[Any], list[Any]]:
    errors = [d.as_dict() for d in result.errors]
    warnings = [d.as_dict() for d in (*result.warnings, *result.node_warnings)]
    return errors, warnings


def _output(claim: _Claim, result: ValidationResult, **extra: Any) -> dict[str, Any]:
    external = result.as_dict()["external"]
    return {
        "stage": result.stage,
        "report": result.report,
        "external": external,
        "attempt": claim.attempt,
        "duration_ms": round((time.perf_counter() - claim.started) * 1000, 1),
        **extra,
    }


def _finish_failed(
    claim: _Claim, result: ValidationResult, *, now: datetime | None, reason: str | None = None
) -> str | None:
    now = now or utcnow()
    errors, warnings = _diagnostics(result)
    if reason is not None:
        errors.append({"severity": "error", "code": "compile", "message": reason})
    return _record_failed(
        claim, errors, {"warnings": warnings, "output": _output(claim, result)}, now
    )


def _record_failed(
    claim: _Claim, errors: list[Any], values: dict[str, Any], now: datetime
) -> str | None:
    """`compiling → failed` with its errors, audit row and event, if this attempt owns it."""
    if not _finish(claim, {"status": "failed", "errors": errors, "compiled_at": now, **values}):
        return None
    audit.record(
        Actor.system("compiler"),
        "bundle.failed",
        resource_type="bundle",
        resource_id=claim.bundle_id,
        project_id=claim.project_id,
        changes={"status": ["compiling", "failed"]},
        metadata={"errors": errors[:20], "error_count": len(errors)},
        now=now,
    )
    events.publish_after_commit(claim.project_id, "bundle", claim.bundle_id, "failed")
    db.session.commit()
    return "failed"


def _storage_failed(claim: _Claim, message: str, *, now: datetime | None) -> str | None:
    """Storage is down: try again later (the sweep), fail for good after MAX_ATTEMPTS."""
    now = now or utcnow()
    if claim.attempt < MAX_ATTEMPTS:
        if _finish(
            claim,
            {"status": "pending", "output": {"last_error": message, "attempt": claim.attempt}},
        ):
            db.session.commit()
            log.warning("bundle %s waits for storage: %s", claim.bundle_id, message)
            return "pending"
        return None
    error = {"severity": "error", "code": "storage_unavailable", "message": message}
    return _record_failed(claim, [error], {"output": {"last_error": message}}, now)


def _finish_compiled(
    claim: _Claim, result: ValidationResult, *, signature: str, kid: str, now: datetime | None
) -> str | None:
    now = now or utcnow()
    assert result.config is not None
    parent = _previous_compiled(claim.project_id, claim.bundle_id)
    parent_config = _config_of(parent) if parent is not None else None
    risk = assess(parent_config, result.config)
    summary = semantic_summary(parent_config, result.config)
    errors, warnings = _diagnostics(result)
    if not _finish(
        claim,
        {
            "status": "compiled",
            "errors": errors,
            "warnings": warnings,
            "output": _output(claim, result),
            "signature": signature,
            "signing_key_id": kid,
            "risk_level": risk.level,
            "risk_reasons": list(risk.reasons),
            "diff_summary": summary,
            "parent_bundle_id": parent.id if parent is not None else None,
            "compiled_at": now,
        },
    ):
        return None
    audit.record(
        Actor.system("compiler"),
        "bundle.compiled",
        resource_type="bundle",
        resource_id=claim.bundle_id,
        project_id=claim.project_id,
        changes={"status": ["compiling", "compiled"]},
        metadata={
            "risk_level": risk.level,
            "risk_reasons": list(risk.reasons),
            "warnings": len(warnings),
            "signing_key_id": kid,
            "parent_bundle_id": parent.id if parent is not None else None,
        },
        now=now,
    )
    events.publish_after_commit(claim.project_id, "bundle", claim.bundle_id, "compiled")
    db.session.commit()
    return "compiled"


def _previous_compiled(project_id: uuid.UUID, bundle_id: str) -> Bundle | None:
    return db.session.scalars(
        select(Bundle)
        .where(
            Bundle.project_id == project_id,
            Bundle.id != bundle_id,
            Bundle.status.in_(("compiled", "revoked")),
        )
        .order_by(Bundle.compiled_at.desc())
        .limit(1)
    ).first()


def config_of(bundle: Bundle) -> ProxyConfig | None:
    """The parsed model of a bundle's files (None when they do not validate)."""
    return validate_bundle(bundle.files).config


_config_of = config_of


def recover_stuck_compiles(*, now: datetime | None = None) -> list[str]:
    """Ask again for every compile that never started or whose worker died (cron)."""
    now = now or utcnow()
    stuck = db.session.scalars(
        select(Bundle.id).where(
            or_(
                (Bundle.status == "pending") & (Bundle.created_at <= now - PENDING_GRACE),
                (Bundle.status == "compiling")
                & (Bundle.compile_started_at <= now - COMPILE_TIMEOUT),
            )
        )
    ).all()
    for bundle_id in stuck:
        jobqueue.enqueue_now(
            "compile_bundle", bundle_id, job_id=f"compile-{bundle_id}", queue="compile"
        )
    return list(stuck)
