"""Keyset pagination: opaque cursors that stay stable while rows are inserted."""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from sentinel_cp.errors import Invalid

T = TypeVar("T")

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_CURSOR_INT = 2**31 - 1  # the largest INTEGER both databases store


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None
    total: int


def encode_cursor(*values: Any) -> str:
    raw = json.dumps([str(v) if not isinstance(v, int | float) else v for v in values])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, types: tuple[type, ...]) -> tuple[Any, ...]:
    """Decode a cursor made by `encode_cursor`; anything else is a 422 naming `cursor`."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode()).decode())
        if not isinstance(values, list) or len(values) != len(types):
            raise ValueError("wrong arity")
        decoded = []
        for value, kind in zip(values, types, strict=True):
            if kind is int and (
                not isinstance(value, int)
                or isinstance(value, bool)
                or not 0 <= value <= MAX_CURSOR_INT
            ):
                raise ValueError("not an int a column can hold")
            decoded.append(kind(value))
        return tuple(decoded)
    except (ValueError, TypeError, UnicodeDecodeError):
        raise Invalid("Invalid cursor", fields={"cursor": ["not a cursor from this API"]}) from None


def decode_position(cursor: str, *, uuid_id: bool = True) -> tuple[datetime, Any]:
    """A `(created_at, id)` cursor: an aware timestamp and an id (a UUID unless `uuid_id` is
    false); anything else is the same 422 as a cursor that does not decode."""
    created, ident = decode_cursor(cursor, (str, str))
    try:
        at = datetime.fromisoformat(created)
        if at.tzinfo is None:
            raise ValueError("cursor time without a zone")
        return at.astimezone(UTC), (uuid.UUID(ident) if uuid_id else ident)
    except (ValueError, OverflowError):
        raise Invalid("Invalid cursor", fields={"cursor": ["not a cursor from this API"]}) from None
