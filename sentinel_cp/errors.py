"""Domain errors.

Each adapter maps them to its own form (HTTP status, notification, job failure).
"""

from __future__ import annotations


class DomainError(Exception):
    """Base class: `code` is machine-readable, the message is a human sentence."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None, **details: object) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details


class Invalid(DomainError):
    """Well-formed input that breaks a rule; `fields` names each problem."""

    code = "invalid"

    def __init__(
        self, message: str, *, fields: dict[str, list[str]] | None = None, code: str | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.fields = fields or {}


class NotFound(DomainError):
    code = "not_found"


class Conflict(DomainError):
    code = "conflict"


class Forbidden(DomainError):
    code = "forbidden"


class Unauthorized(DomainError):
    code = "unauthorized"


class RateLimited(DomainError):
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class Unavailable(DomainError):
    """A dependency (database, Redis, storage) is down; the caller should retry later."""

    code = "unavailable"

    def __init__(self, message: str, *, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after
