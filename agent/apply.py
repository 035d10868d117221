"""Applying the assigned bundle: node behaviour steps 3–5 of spec/node-protocol.md.

    poll → download → verify hash and signature → unpack → report downloaded, staged
         → driver.activate → report activated → driver.verify → report verified

Any rejection before activation reports `failed` with the reason and leaves the proxy alone; any
failure from activation on rolls the driver back to the last known good config first. Both the
`sentinel-agent` and the simulator's nodes run this, with different drivers.

Outcomes are values (`ApplyResult`), not exceptions: `applied`, `failed` (reported; this bundle
is not tried again), `skipped` (it failed here before), `up_to_date`, or `deferred` (the control
plane could not be asked or could not answer; the caller tries again later and keeps serving).

Status reports are best effort: their failure is logged, never a reason to stop applying a bundle
whose signature checked out (the next heartbeat tells the control plane what is active anyway).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from agent.bundle import (
    DEFAULT_MAX_ENTRIES,
    DEFAULT_MAX_TOTAL_BYTES,
    BundleRejected,
    UnknownSigningKey,
    unpack,
    verify_archive,
)
from agent.client import (
    MAX_DOWNLOAD_BYTES,
    BundleOffer,
    Conflict,
    ControlPlaneError,
    DownloadRefused,
    NodeClient,
    NotModified,
    PollResult,
    SigningKey,
)
from agent.drivers import ActivationFailed, Driver

log = logging.getLogger("sentinel_agent")
Outcome = Literal["applied", "failed", "skipped", "up_to_date", "deferred"]
MAX_REMEMBERED_FAILURES = 32


@dataclass(frozen=True)
class ApplyResult:
    outcome: Outcome
    bundle_id: str | None = None
    reason: str | None = None


class BundleApplier:
    """Brings one node's proxy to its assigned bundle. Not re-entrant: one apply at a time.

    `keys` are the pinned signing keys. An unknown `kid` is looked up at the project's public
    signing-keys endpoint only when `allow_key_refresh` (default: the control plane URL is
    https, so the answer is authenticated by TLS); `on_keys_changed` is told the new set so it
    can be persisted. `active_bundle_id` and `failed_bundles` come from the node's saved state
    and are kept current here.
    """

    def __init__(
        self,
        client: NodeClient,
        driver: Driver,
        *,
        keys: list[SigningKey],
        staging_root: Path,
        project: str | None = None,
        project_id: str | None = None,
        active_bundle_id: str | None = None,
        failed_bundles: dict[str, str] | None = None,
        allow_key_refresh: bool | None = None,
        on_keys_changed: Callable[[list[SigningKey]], None] | None = None,
        max_download_bytes: int = MAX_DOWNLOAD_BYTES,
        max_unpacked_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        logger: logging.Logger = log,
    ) -> None:
        self.log = logger
        self.client = client
        self.driver = driver
        self.keys = list(keys)
        self.staging_root = Path(staging_root)
        self.project = project
        self.project_id = project_id
        self.active_bundle_id = active_bundle_id
        self.failed_bundles = dict(failed_bundles or {})
        if allow_key_refresh is None:
            allow_key_refresh = client.base_url.lower().startswith("https://")
        self.allow_key_refresh = allow_key_refresh
        self.on_keys_changed = on_keys_changed
        self.max_download_bytes = max_download_bytes
        self.max_unpacked_bytes = max_unpacked_bytes
        self.max_entries = max_entries
        self._poll_etag: str | None = None
        self._poll_cached: PollResult | None = None

    # --- entry points ---------------------------------------------------------------------

    async def apply_assigned(self, assigned_bundle_id: str | None) -> ApplyResult:
        """Called with each heartbeat's `assigned_bundle_id`: poll and apply when it differs
        from the active bundle."""
        if assigned_bundle_id is None or assigned_bundle_id == self.active_bundle_id:
            return ApplyResult("up_to_date", self.active_bundle_id)
        try:
            offer = await self._poll()
        except ControlPlaneError as exc:
            return ApplyResult("deferred", assigned_bundle_id, f"poll: {exc}")
        if offer is None or offer.bundle_id == self.active_bundle_id:
            return ApplyResult("up_to_date", self.active_bundle_id)
        failed = self.failed_bundles.get(_failure_key(offer))
        if failed is not None:
            return ApplyResult("skipped", offer.bundle_id, failed)
        return await self.apply_offer(offer)

    async def apply_offer(self, offer: BundleOffer) -> ApplyResult:
        """Steps 3–5 for one offer (the poll already happened)."""
        try:
            data = await self.client.download_bundle(
                offer.bundle_id,
                url=offer.download_url,
                size_bytes=offer.size_bytes,
                max_bytes=self.max_download_bytes,
            )
            project_id = offer.project_id or self.project_id
            if project_id is None:
                project_id = await self.client.learn_project_id()
            self.project_id = project_id
            await self._verify(offer, data, project_id)
        except DownloadRefused as exc:
            return await self._fail(offer, exc.reason)
        except BundleRejected as exc:
            return await self._fail(offer, exc.reason)
        except ControlPlaneError as exc:
            return ApplyResult("deferred", offer.bundle_id, str(exc))
        staged = self.staging_root / f"{offer.bundle_id[:16]}-{secrets.token_hex(4)}"
        try:
            self.staging_root.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(
                unpack,
                data,
                staged,
                max_total_bytes=self.max_unpacked_bytes,
                max_entries=self.max_entries,
                project_id=project_id,
            )
        except BundleRejected as exc:
            return await self._fail(offer, exc.reason)
        except OSError as exc:
            return await self._fail(offer, f"cannot stage: {exc}")
        try:
            return await self._activate(offer, staged)
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    # --- steps ----------------------------------------------------------------------------

    async def _poll(self) -> BundleOffer | None:
        answer = await self.client.poll_bundle(etag=self._poll_etag)
        if isinstance(answer, NotModified):
            current = self._poll_cached  # unchanged since the answer we kept
        else:
            self._poll_etag, self._poll_cached = answer.etag, answer
            current = answer
        return current if isinstance(current, BundleOffer) else None

    async def _verify(self, offer: BundleOffer, data: bytes, project_id: str) -> None:
        """Hash and signature; one look-up of the project's keys for an unknown kid."""

        def check() -> None:
            verify_archive(
                data,
                bundle_id=offer.bundle_id,
                checksum=offer.checksum,
                signature_b64=offer.signature,
                kid=offer.signing_key_id,
                project_id=project_id,
                keys=self.keys,
            )

        try:
            await asyncio.to_thread(check)
        except UnknownSigningKey:
            if not (self.allow_key_refresh and self.project):
                raise
            await self._refresh_keys()  # a ControlPlaneError here defers: try again later
            await asyncio.to_thread(check)

    async def _refresh_keys(self) -> None:
        assert self.project is not None
        fetched = await self.client.signing_keys(self.project)
        keys = {key.kid: key for key in self.keys}
        for key in fetched:
            if key.state == "retired":
                keys.pop(key.kid, None)  # the project stopped trusting it
            else:
                keys[key.kid] = SigningKey(key.kid, key.alg, key.public_key)
        if list(keys.values()) != self.keys:
            self.keys = list(keys.values())
            self.log.info("signing keys refreshed: %s", ", ".join(keys) or "none")
            if self.on_keys_changed is not None:
                self.on_keys_changed(list(self.keys))

    async def _activate(self, offer: BundleOffer, staged: Path) -> ApplyResult:
        await self._report(offer, "downloaded")
        await self._report(offer, "staged")
        try:
            await self.driver.activate(staged)
        except Exception as exc:
            return await self._fail_after_activation(offer, exc)
        await self._report(offer, "activated")
        try:
            await self.driver.verify()
        except Exception as exc:
            return await self._fail_after_activation(offer, exc)
        await self._report(offer, "verified")
        self.active_bundle_id = offer.bundle_id
        self.log.info("bundle %s (%s) active and verified", offer.bundle_id[:12], offer.version)
        return ApplyResult("applied", offer.bundle_id)

    async def _fail_after_activation(self, offer: BundleOffer, exc: Exception) -> ApplyResult:
        if isinstance(exc, ActivationFailed):
            reason, logs = exc.reason, exc.logs
        else:
            reason, logs = f"activation error: {type(exc).__name__}: {exc}", None
        try:
            await self.driver.rollback()
        except Exception as again:
            reason = f"{reason}; rollback failed: {again}"
        return await self._fail(offer, reason, logs=logs)

    async def _fail(
        self, offer: BundleOffer, reason: str, *, logs: str | None = None
    ) -> ApplyResult:
        self.log.warning("bundle %s failed: %s", offer.bundle_id[:12], reason)
        self.failed_bundles[_failure_key(offer)] = reason
        while len(self.failed_bundles) > MAX_REMEMBERED_FAILURES:
            self.failed_bundles.pop(next(iter(self.failed_bundles)))
        await self._report(offer, "failed", reason=reason, logs=logs)
        return ApplyResult("failed", offer.bundle_id, reason)

    async def _report(
        self, offer: BundleOffer, state: str, *, reason: str | None = None, logs: str | None = None
    ) -> None:
        try:
            await self.client.report_bundle_status(offer.bundle_id, state, reason=reason, logs=logs)
        except Conflict as exc:
            self.log.info(
                "bundle %s: server already past %s (%s)", offer.bundle_id[:12], state, exc
            )
        except ControlPlaneError as exc:
            self.log.warning("bundle %s: could not report %s: %s", offer.bundle_id[:12], state, exc)


def _failure_key(offer: BundleOffer) -> str:
    """A failure is remembered per assignment: the same bundle offered again by a later
    rollout is tried again; within one rollout it is not downloaded over and over."""
    return f"{offer.bundle_id}@{offer.rollout_id or '-'}"
