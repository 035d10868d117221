"""Every error leaves as JSON `{"error", "code"[, "fields"]}` — never HTML, never a traceback."""

from __future__ import annotations

import logging

from flask import Flask, Response, has_request_context, jsonify, request
from werkzeug.exceptions import HTTPException

from blueprints.api import BadRequest, PayloadTooLarge, UnsupportedMediaType
from sentinel_cp.errors import (
    Conflict,
    DomainError,
    Forbidden,
    Invalid,
    NotFound,
    RateLimited,
    Unauthorized,
    Unavailable,
)

log = logging.getLogger("sentinel_cp.http")

STATUS_BY_ERROR: dict[type[DomainError], int] = {
    Invalid: 422,
    NotFound: 404,
    Conflict: 409,
    Forbidden: 403,
    Unauthorized: 401,
    RateLimited: 429,
    Unavailable: 503,
}

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "rate_limited",
}


def error_response(status: int, message: str, code: str, **extra: object) -> Response:
    response = jsonify({"error": message, "code": code, **extra})
    response.status_code = status
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(DomainError)
    def domain_error(exc: DomainError) -> Response:
        status = next((s for kind, s in STATUS_BY_ERROR.items() if isinstance(exc, kind)), 400)
        extra: dict[str, object] = dict(exc.details)
        if isinstance(exc, Invalid) and exc.fields:
            extra["fields"] = exc.fields
        response = error_response(status, exc.message, exc.code, **extra)
        if isinstance(exc, RateLimited | Unavailable):
            response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.errorhandler(BadRequest)
    def bad_request(exc: BadRequest) -> Response:
        return error_response(400, exc.message, exc.code)

    @app.errorhandler(UnsupportedMediaType)
    def unsupported(exc: UnsupportedMediaType) -> Response:
        return error_response(
            415, "Request body must be application/json", "unsupported_media_type"
        )

    @app.errorhandler(PayloadTooLarge)
    def too_large(exc: PayloadTooLarge) -> Response:
        return error_response(
            413, f"Request body exceeds the limit of {exc.limit} bytes", "body_too_large"
        )

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status == 413:
            # The route's own limit when it set one (uploads, node reports), else the app's.
            limit = request.max_content_length if has_request_context() else None
            limit = limit or app.config.get("MAX_CONTENT_LENGTH")
            return error_response(
                413, f"Request body exceeds the limit of {limit} bytes", "body_too_large"
            )
        message = {404: "Not found", 405: "Method not allowed"}.get(status, exc.name)
        response = error_response(status, message, HTTP_CODES.get(status, "http_error"))
        valid_methods = getattr(exc, "valid_methods", None)
        if status == 405 and valid_methods:
            response.headers["Allow"] = ", ".join(valid_methods)
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        from sqlalchemy.exc import DataError, IntegrityError, OperationalError
        from sqlalchemy.exc import TimeoutError as PoolTimeout

        if isinstance(exc, DataError):
            # A value the database cannot hold slipped past validation: still the caller's input.
            log.warning("database refused a value: %s", exc.__class__.__name__)
            return error_response(422, "A value is out of range or not storable", "invalid_value")
        if isinstance(exc, IntegrityError):
            # Two requests raced past a uniqueness check; the database kept exactly one.
            return error_response(409, "Conflicting change; reload and retry", "conflicting_change")

        if isinstance(exc, OperationalError | PoolTimeout):
            log.warning("database unavailable: %s", exc.__class__.__name__)
            response = error_response(503, "Database unavailable; try again shortly", "unavailable")
            response.headers["Retry-After"] = "5"
            return response
        log.exception("unhandled error")
        return error_response(500, "Internal error", "internal_error")
