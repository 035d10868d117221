"""Bundles for operators: submit, dry-run validate, list, show, files, download, verify, diff,
SBOM, revoke."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, request

from blueprints.api import page_body, route
from blueprints.projects import visible_project
from blueprints.schemas import (
    BundleDetailOut,
    BundleDiffOut,
    BundleDiffQuery,
    BundleFilesIn,
    BundleOut,
    BundleQuery,
    BundleRevokeIn,
    BundleSubmitIn,
    BundleValidateFilesIn,
    BundleValidateIn,
    BundleVerifyOut,
    ListOut,
    ValidationOut,
)
from sentinel_cp.accounts import Principal
from sentinel_cp.bundles import catalog, compiler, distribution, sbom, sources
from sentinel_cp.bundles.archive import MEDIA_TYPE
from sentinel_cp.db import db
from sentinel_cp.errors import Invalid, NotFound

bp = Blueprint("bundles", __name__, url_prefix="/api/v1/projects/<slug>")
READ, WRITE = "bundles:read", "bundles:write"
# 1 MiB of source, JSON-escaped or multipart-encoded, with room for the envelope.
MAX_SUBMISSION = 4 * 1024 * 1024


def _detail(bundle: Any, *, existing: bool = False) -> dict[str, Any]:
    return {
        **bundle.to_dict(existing=existing),
        "manifest": bundle.manifest,
        "output": bundle.output,
    }


def _uploaded_files() -> tuple[str, dict[str, str]]:
    """`version` plus `.kdl` files or one `.tar.gz` from a multipart form."""
    version = request.form.get("version", "")
    uploads = [(f.filename or "", f.read()) for f in request.files.getlist("files")]
    if not uploads:
        uploads = [(f.filename or "", f.read()) for f in request.files.values()]
    if not uploads:
        raise Invalid("No files uploaded", fields={"files": ["upload .kdl files or a .tar.gz"]})
    if len(uploads) == 1 and uploads[0][0].endswith((".tar.gz", ".tgz")):
        return version, sources.files_from_targz(uploads[0][1])
    return version, sources.files_from_uploads(uploads)


@route(
    bp,
    "/bundles",
    "POST",
    summary="Submit KDL files; 201 pending bundle (compiled by a job), 200 when identical "
    "content exists",
    scope=WRITE,
    body=BundleSubmitIn,
    response=BundleOut,
    status=201,
    max_body=MAX_SUBMISSION,
    multipart=True,
    responses={200: "Identical content exists: that bundle", 409: "version_taken"},
)
def submit(principal: Principal, slug: str, body: BundleSubmitIn | None) -> tuple[Any, int]:
    project = visible_project(principal, slug)
    if body is None:
        version, files = _uploaded_files()
        source_type = "upload"
    else:
        payload = body.root
        version = payload.version
        if isinstance(payload, BundleFilesIn):
            files = sources.files_from_mapping(payload.files)
        else:
            files = sources.files_from_single(payload.config_source)
        source_type = "api"
    bundle, existing = compiler.submit(
        principal.actor, project, files, version=version, source_type=source_type
    )
    db.session.commit()
    return bundle.to_dict(existing=existing), 200 if existing else 201


@route(
    bp,
    "/bundles/validate",
    "POST",
    summary="Dry run: parse and validate (and run the external check) without creating anything",
    scope=READ,
    body=BundleValidateIn,
    response=ValidationOut,
    max_body=MAX_SUBMISSION,
)
def validate(principal: Principal, slug: str, body: BundleValidateIn) -> dict[str, Any]:
    visible_project(principal, slug)
    db.session.commit()
    payload = body.root
    if isinstance(payload, BundleValidateFilesIn):
        files = sources.files_from_mapping(payload.files)
    else:
        files = sources.files_from_single(payload.config_source)
    binary = current_app.config["SENTINEL_SETTINGS"].sentinel_binary
    return compiler.dry_run(files, binary=binary)


@route(
    bp,
    "/bundles",
    summary="List bundles, newest first (filter: status)",
    scope=READ,
    query=BundleQuery,
    response=ListOut[BundleOut],
)
def list_bundles(principal: Principal, slug: str, query: BundleQuery) -> dict[str, Any]:
    project = visible_project(principal, slug)
    page = catalog.list_bundles(
        project.id, status=query.status, limit=query.limit, cursor=query.cursor
    )
    db.session.commit()
    return page_body(page, lambda bundle: bundle.to_dict())


def _bundle(principal: Principal, slug: str, bundle_id: str) -> Any:
    return catalog.get_bundle(visible_project(principal, slug).id, bundle_id)


@route(
    bp,
    "/bundles/<bundle_id>",
    summary="One bundle with its manifest and compiler output",
    scope=READ,
    response=BundleDetailOut,
)
def show(principal: Principal, slug: str, bundle_id: str) -> dict[str, Any]:
    bundle = _bundle(principal, slug, bundle_id)
    db.session.commit()
    return _detail(bundle)


@route(
    bp,
    "/bundles/<bundle_id>/files/<path:path>",
    summary="One source file of a bundle",
    scope=READ,
    produces="text/plain",
)
def file(principal: Principal, slug: str, bundle_id: str, path: str) -> Response:
    bundle = _bundle(principal, slug, bundle_id)
    db.session.commit()
    return Response(catalog.file_text(bundle, path), mimetype="text/plain")


@route(
    bp,
    "/bundles/<bundle_id>/download",
    summary="The signed archive itself (application/zstd)",
    scope=READ,
    produces=MEDIA_TYPE,
)
def download(principal: Principal, slug: str, bundle_id: str) -> Response:
    bundle = _bundle(principal, slug, bundle_id)
    db.session.commit()
    data = catalog.read_artifact(bundle)
    if data is None:
        raise NotFound("This bundle has no artifact", code="artifact_not_found")
    return Response(
        data,
        mimetype=MEDIA_TYPE,
        headers={
            "ETag": f'"{bundle.id}"',
            "Content-Disposition": f'attachment; filename="{bundle.version}.tar.zst"',
        },
    )


@route(
    bp,
    "/bundles/<bundle_id>/verify",
    summary="Check the stored archive's hash and its signature against the project's key",
    scope=READ,
    response=BundleVerifyOut,
)
def verify(principal: Principal, slug: str, bundle_id: str) -> dict[str, Any]:
    bundle = _bundle(principal, slug, bundle_id)
    result = distribution.verify(bundle, catalog.read_artifact(bundle))
    db.session.commit()
    return result


@route(
    bp,
    "/bundles/<bundle_id>/diff",
    summary="Unified diff per file and semantic summary against another bundle",
    scope=READ,
    query=BundleDiffQuery,
    response=BundleDiffOut,
)
def diff(principal: Principal, slug: str, bundle_id: str, query: BundleDiffQuery) -> Any:
    project = visible_project(principal, slug)
    bundle = catalog.get_bundle(project.id, bundle_id)
    against = catalog.get_bundle(project.id, query.against)
    db.session.commit()
    return catalog.diff(bundle, against)


@route(
    bp,
    "/bundles/<bundle_id>/sbom",
    summary="CycloneDX SBOM of the bundle's files",
    scope=READ,
)
def bill_of_materials(principal: Principal, slug: str, bundle_id: str) -> dict[str, Any]:
    bundle = _bundle(principal, slug, bundle_id)
    db.session.commit()
    return sbom.cyclonedx(
        {
            "id": bundle.id,
            "version": bundle.version,
            "project": slug,
            "manifest": bundle.manifest,
            "created_at": bundle.created_at.isoformat(),
        }
    )


@route(
    bp,
    "/bundles/<bundle_id>/revoke",
    "POST",
    summary="Stop distributing a compiled bundle at once (the artifact is kept)",
    scope=WRITE,
    body=BundleRevokeIn,
    response=BundleOut,
    responses={409: "bundle_<status>: only a compiled bundle can be revoked"},
)
def revoke(principal: Principal, slug: str, bundle_id: str, body: BundleRevokeIn) -> Any:
    bundle = _bundle(principal, slug, bundle_id)
    distribution.revoke(principal.actor, bundle, reason=body.reason)
    db.session.commit()
    return bundle.to_dict()
