"""How a route is declared: its schemas, its auth, its scope — once, for both the request
handling and the OpenAPI document.

`route(bp, "/path", "POST", body=Schema, query=Schema, response=Schema, scope="x:y")` parses
and validates the input before the view runs and hands the view plain values
(`body`, `query`, `principal`). The same declaration feeds `openapi.build_document`, so the
document cannot drift from what the code accepts.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, request
from pydantic import BaseModel, RootModel, ValidationError

from blueprints import auth
from sentinel_cp.errors import Invalid, NotFound
from sentinel_cp.pagination import Page


class BadRequest(Exception):
    """Malformed input (not JSON, not an object): 400 with the reason."""

    def __init__(self, message: str, code: str = "malformed_json") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class UnsupportedMediaType(Exception):
    pass


class PayloadTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit


@dataclass
class RouteSpec:
    rule: str
    method: str
    summary: str
    auth: str  # "operator", "public", "session-optional"
    scope: str | None
    body: type[BaseModel] | None
    query: type[BaseModel] | None
    response: type[BaseModel] | None
    status: int
    responses: dict[int, str] = field(default_factory=dict)
    # Media type -> schema of a body that is not the `response` model (CSV, NDJSON, …).
    produces: dict[str, dict[str, Any]] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    multipart: bool = False
    # The route's own body limit in bytes; None means the app-wide MAX_CONTENT_LENGTH.
    max_body: int | None = None


REGISTRY: dict[str, RouteSpec] = {}


def validation_fields(exc: ValidationError | list[Any], prefix: str = "") -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for error in exc.errors() if isinstance(exc, ValidationError) else exc:
        loc = ".".join(str(p) for p in error["loc"])
        name = f"{prefix}{loc}" if loc else (prefix.rstrip(".") or "body")
        fields.setdefault(name, []).append(error["msg"])
    return fields


def parse_json_body(schema: type[BaseModel]) -> BaseModel:
    return parse_json_data(request.get_data(cache=True), request.mimetype or "", schema)


def parse_json_data(data: bytes, mimetype: str, schema: type[BaseModel]) -> BaseModel:
    """A request body (`mimetype` its Content-Type without parameters) as `schema`; 4xx
    errors naming the problem."""
    data = data or b"{}"
    if data != b"{}" and mimetype != "application/json" and not mimetype.endswith("+json"):
        raise UnsupportedMediaType()
    try:
        raw = json.loads(data, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"Malformed JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("Malformed JSON: nested too deeply") from None
    if not isinstance(raw, dict):
        raise BadRequest("The request body must be a JSON object", code="malformed_body")
    bad = _nul_field(raw, "")
    if bad is not None:
        raise Invalid(
            "Strings must not contain NUL characters",
            fields={bad or "body": ["contains a NUL character"]},
        )
    try:
        # Validating the bytes (not the dict) keeps strict mode's JSON rules: ISO strings
        # are accepted for datetimes, "5" is still refused for an integer.
        return schema.model_validate_json(data)
    except ValidationError as exc:
        if issubclass(schema, RootModel):
            raise Invalid(
                "Invalid request body", fields=validation_fields(_narrow_union_errors(exc))
            ) from None
        raise Invalid("Invalid request body", fields=validation_fields(exc)) from None


def _refuse_constant(name: str) -> Any:
    """NaN and Infinity are not JSON: stored, they would make every later response invalid."""
    raise ValueError(f"{name} is not valid JSON")


def _narrow_union_errors(exc: ValidationError) -> list[Any]:
    """For a union body, keep the errors of the branch the body was meant for (the one with
    fewest missing/unknown fields) and drop the branch label from each location."""
    by_branch: dict[str, list[Any]] = {}
    for error in exc.errors():
        branch = str(error["loc"][0]) if error["loc"] else ""
        by_branch.setdefault(branch, []).append(error)

    def misfit(branch: str) -> int:
        return sum(1 for e in by_branch[branch] if e["type"] in ("missing", "extra_forbidden"))

    best = min(by_branch, key=misfit)
    return [{**e, "loc": tuple(e["loc"][1:])} for e in by_branch[best]]


def _nul_field(value: Any, path: str, depth: int = 0) -> str | None:
    """The dotted path of the first string (or key) holding a NUL character, if any.

    PostgreSQL cannot store NUL in text, so it is refused here for every backend alike.
    """
    if depth > 64:
        return None  # pydantic refuses such nesting anyway; nothing this deep is stored
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            if "\x00" in key:
                return path or "body"
            found = _nul_field(item, child, depth + 1)
            if found is not None:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _nul_field(item, f"{path}.{index}" if path else str(index), depth + 1)
            if found is not None:
                return found
    return None


def parse_query(schema: type[BaseModel]) -> BaseModel:
    values: dict[str, Any] = {}
    list_fields = {
        name
        for name, info in schema.model_fields.items()
        if getattr(info.annotation, "__origin__", None) is list
    }
    for key in request.args:
        items = request.args.getlist(key)
        values[key] = items if key in list_fields else items[-1]
    try:
        return schema.model_validate(values)
    except ValidationError as exc:
        raise Invalid("Invalid query parameters", fields=validation_fields(exc, "query.")) from None


def route(
    bp: Blueprint,
    rule: str,
    method: str = "GET",
    *,
    summary: str,
    scope: str | None = None,
    auth_mode: str = "operator",
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    response: type[BaseModel] | None = None,
    status: int = 200,
    responses: dict[int, str] | None = None,
    produces: str | dict[str, dict[str, Any]] = "application/json",
    max_body: int | None = None,
    hot: bool = False,
    who_only: bool = False,
    multipart: bool = False,
    shortcut: Callable[..., Any] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a view with declared input/output; see the module docstring.

    `responses` documents every other status the view returns: a 2xx there answers with the
    same body as `status`, a 3xx with none, a 4xx/5xx with the error body. `produces` names
    the media type of a body that is not JSON (its schema a string), or maps each media type
    the view may answer with to its schema (an export in several formats).
    `auth_mode` is `operator` (API key or session, plus `scope`), `node` (node key or JWT
    whose node must be the `node_id` in the path) or `public`. `max_body` lowers the
    app-wide body limit for this route (or raises it, for uploads). `multipart` lets a
    `multipart/form-data` request through to the view with `body=None` (the view reads
    `request.files`). `hot` (node routes) authenticates on the autocommit
    hot-path connection, for the endpoints every node calls all the time. `who_only` (node
    routes) passes the view a `NodeWho` instead of a `NodeContext`, which may come from the
    process's memory of the credential (`node_auth.require_node_who`). `shortcut` is
    called with the path arguments once the body's size is checked, before authentication,
    and may answer at once from what the process remembers about the credential (the poll's
    cached 304, a steady heartbeat); None lets the request through.
    """

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapper(**path_args: Any) -> Any:
            kwargs: dict[str, Any] = dict(path_args)
            for value in path_args.values():
                if "\x00" in str(value):  # no stored name can contain one
                    raise NotFound("Not found")
            is_form = multipart and request.mimetype == "multipart/form-data"
            if max_body is not None:
                request.max_content_length = max_body
                if not is_form and len(request.get_data(cache=True)) > max_body:
                    raise PayloadTooLarge(max_body)
            if shortcut is not None:
                answer = shortcut(**path_args)
                if answer is not None:
                    return answer
            for name, value in request.args.items(multi=True):
                if "\x00" in name or "\x00" in value:
                    raise Invalid(
                        "Query strings must not contain NUL characters",
                        fields={f"query.{name}": ["contains a NUL character"]},
                    )
            if auth_mode == "operator":
                principal = auth.require_principal()
                if scope is not None:
                    principal.require(scope)
                kwargs["principal"] = principal
            elif auth_mode == "node":
                from blueprints import node_auth  # imports ids, which imports this module

                if who_only:
                    kwargs["node"] = node_auth.require_node_who(kwargs.pop("node_id"))
                else:
                    kwargs["node"] = node_auth.require_node(kwargs.pop("node_id"), hot=hot)
            if is_form:
                kwargs["body"] = None
            elif body is not None:
                kwargs["body"] = parse_json_body(body)
            elif method in ("POST", "PUT", "PATCH") and request.get_data(cache=True):
                # An action endpoint takes no body; tolerate `{}` but nothing malformed.
                parse_json_body(_Empty)
            if query is not None:
                kwargs["query"] = parse_query(query)
            elif request.args and auth_mode == "operator":
                raise Invalid(
                    "Unknown query parameters",
                    fields={f"query.{k}": ["not accepted here"] for k in request.args},
                )
            return view(**kwargs)

        endpoint = f"{bp.name}.{view.__name__}"
        REGISTRY[endpoint] = RouteSpec(
            rule=bp.url_prefix + rule if bp.url_prefix else rule,
            method=method,
            summary=summary,
            auth=auth_mode,
            scope=scope,
            body=body,
            query=query,
            response=response,
            status=status,
            responses=responses or {},
            produces=_media_types(produces),
            tags=(bp.name,),
            multipart=multipart,
            max_body=max_body,
        )
        bp.add_url_rule(rule, view.__name__, wrapper, methods=[method])
        return wrapper

    return decorate


def _media_types(produces: str | dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    if isinstance(produces, dict):
        return dict(produces)
    return {} if produces == "application/json" else {produces: {"type": "string"}}


def page_body(page: Page[Any], serialize: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """The list shape every collection endpoint answers with."""
    return {
        "items": [serialize(item) for item in page.items],
        "next_cursor": page.next_cursor,
        "total": page.total,
    }


class _Empty(BaseModel):
    model_config = {"extra": "forbid"}
