"""What changed between two bundles: a unified diff of the files and a semantic summary.

The semantic summary compares the parsed configs (`kdl.model.ProxyConfig`) entity by entity.
Entities inside namespaces are qualified the way the proxy qualifies references:
`namespace:id` and, inside a service, `namespace:service:id`. Source positions are ignored,
so moving a route or adding a comment changes the file diff but not the summary.

The `*_changes` functions list the security- and traffic-relevant changes one by one; the risk
assessment (`risk.py`) builds its reasons from them.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sentinel_cp.bundles.kdl.diagnostics import SourceRef
from sentinel_cp.bundles.kdl.model import (
    Agent,
    Filter,
    Limits,
    Listener,
    ProxyConfig,
    Route,
    Upstream,
)

KINDS = ("listeners", "routes", "upstreams", "filters", "agents")
AUTH_FILTER_TYPE = "agent"
RATE_LIMIT_FILTER_TYPE = "rate-limit"
_NO_NEWLINE = "\\ No newline at end of file\n"


# ---------------------------------------------------------------------------- file diff


def _diff_lines(lines: Iterable[str]) -> str:
    out = []
    for line in lines:
        out.append(line if line.endswith("\n") else f"{line}\n{_NO_NEWLINE}")
    return "".join(out)


def unified_diff(old: Mapping[str, str], new: Mapping[str, str]) -> list[dict[str, str]]:
    """One entry per differing path, sorted by path: `{"path", "status", "diff"}`.

    `status` is `added`, `removed` or `changed`; `diff` is a git-style unified diff
    (`--- a/path`, `+++ b/path`, `/dev/null` for the missing side).
    """
    entries = []
    for path in sorted(set(old) | set(new)):
        before, after = old.get(path), new.get(path)
        if before == after:
            continue
        status = "added" if before is None else "removed" if after is None else "changed"
        lines = difflib.unified_diff(
            (before or "").splitlines(keepends=True),
            (after or "").splitlines(keepends=True),
            fromfile="/dev/null" if before is None else f"a/{path}",
            tofile="/dev/null" if after is None else f"b/{path}",
        )
        entries.append({"path": path, "status": status, "diff": _diff_lines(lines)})
    return entries


# ---------------------------------------------------------------------------- entities


def plain(value: Any) -> Any:
    """A model value as plain JSON-like data, without source positions (for comparisons)."""
    if isinstance(value, SourceRef):
        return None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.name != "source"
        }
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


@dataclasses.dataclass
class Entities:
    """Every listener, route, upstream, filter and agent of a config by qualified id."""

    listeners: dict[str, Listener] = dataclasses.field(default_factory=dict)
    routes: dict[str, Route] = dataclasses.field(default_factory=dict)
    upstreams: dict[str, Upstream] = dataclasses.field(default_factory=dict)
    filters: dict[str, Filter] = dataclasses.field(default_factory=dict)
    agents: dict[str, Agent] = dataclasses.field(default_factory=dict)
    limits: dict[str, Limits] = dataclasses.field(default_factory=dict)
    namespaces: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def of_kind(self, kind: str) -> Mapping[str, Any]:
        """The table for one of `KINDS`."""
        table: Mapping[str, Any] = getattr(self, kind)
        return table


def _qualified(prefix: str, name: str) -> str:
    return f"{prefix}:{name}" if prefix else name


def _add_scope(
    into: Entities,
    prefix: str,
    *,
    listeners: Iterable[Listener],
    routes: Iterable[Route],
    upstreams: Mapping[str, Upstream],
    filters: Mapping[str, Filter],
    agents: Iterable[Agent],
    limits: Limits | None,
) -> None:
    for listener in listeners:
        into.listeners[_qualified(prefix, listener.id)] = listener
    for route in routes:
        into.routes[_qualified(prefix, route.id)] = route
    for name, upstream in upstreams.items():
        into.upstreams[_qualified(prefix, name)] = upstream
    for name, flt in filters.items():
        into.filters[_qualified(prefix, name)] = flt
    for agent in agents:
        into.agents[_qualified(prefix, agent.id)] = agent
    if limits is not None:
        into.limits[prefix] = limits


def entities(config: ProxyConfig | None) -> Entities:
    """Flatten `config` (global scope, namespaces, services) into qualified tables."""
    out = Entities()
    if config is None:
        return out
    _add_scope(
        out,
        "",
        listeners=config.listeners,
        routes=config.routes,
        upstreams=config.upstreams,
        filters=config.filters,
        agents=config.agents,
        limits=config.limits,
    )
    for ns in config.namespaces:
        out.namespaces[ns.id] = {
            "exports": plain(ns.exports),
            "services": sorted(s.id for s in ns.services),
        }
        _add_scope(
            out,
            ns.id,
            listeners=ns.listeners,
            routes=ns.routes,
            upstreams=ns.upstreams,
            filters=ns.filters,
            agents=ns.agents,
            limits=ns.limits,
        )
        for svc in ns.services:
            _add_scope(
                out,
                f"{ns.id}:{svc.id}",
                listeners=[svc.listener] if svc.listener is not None else [],
                routes=svc.routes,
                upstreams=svc.upstreams,
                filters=svc.filters,
                agents=svc.agents,
                limits=svc.limits,
            )
    return out


def compare(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, list[str]]:
    """`{"added", "removed", "changed"}` ids between two tables (changed: same id, other value)."""
    return {
        "added": sorted(set(new) - set(old)),
        "removed": sorted(set(old) - set(new)),
        "changed": sorted(k for k in set(old) & set(new) if plain(old[k]) != plain(new[k])),
    }


# ---------------------------------------------------------------------------- focused changes


def tls_changes(old: ProxyConfig | None, new: ProxyConfig | None) -> list[str]:
    """Listeners and upstreams whose TLS settings differ (present on both sides or not)."""
    before, after = entities(old), entities(new)
    found = []
    for qid in sorted(set(before.listeners) | set(after.listeners)):
        was, now = before.listeners.get(qid), after.listeners.get(qid)
        if plain(was.tls if was else None) != plain(now.tls if now else None):
            found.append(f"listener {qid}")
    for qid in sorted(set(before.upstreams) & set(after.upstreams)):
        was_up, now_up = before.upstreams[qid], after.upstreams[qid]
        if (was_up.tls_sni, was_up.tls_insecure_skip_verify) != (
            now_up.tls_sni,
            now_up.tls_insecure_skip_verify,
        ):
            found.append(f"upstream {qid}")
    return found


def _filter_types(*tables: Entities) -> Callable[[str, str], str | None]:
    """Resolve a route's filter reference to a type (own scope first, then outwards)."""

    def resolve(route_qid: str, reference: str) -> str | None:
        scope = route_qid.split(":")[:-1]
        candidates = [reference] if ":" in reference else []
        candidates += [":".join([*scope[:i], reference]) for i in range(len(scope), -1, -1)]
        for table in tables:
            for candidate in candidates:
                flt = table.filters.get(candidate)
                if flt is not None:
                    return flt.type
        return None

    return resolve


def _attachment_changes(
    old: ProxyConfig | None, new: ProxyConfig | None, filter_type: str
) -> list[str]:
    before, after = entities(old), entities(new)
    found = []
    filter_table = compare(before.filters, after.filters)
    for state in ("added", "removed", "changed"):
        for qid in filter_table[state]:
            flt = (after if state == "added" else before).filters[qid]
            if flt.type == filter_type or after.filters.get(qid, flt).type == filter_type:
                found.append(f"filter {qid} {state}")
    resolve_old, resolve_new = _filter_types(before, after), _filter_types(after, before)
    for qid in sorted(set(before.routes) & set(after.routes)):
        was = [f for f in before.routes[qid].filters if resolve_old(qid, f) == filter_type]
        now = [f for f in after.routes[qid].filters if resolve_new(qid, f) == filter_type]
        if was != now:
            found.append(f"route {qid} filters")
    return found


def auth_filter_changes(old: ProxyConfig | None, new: ProxyConfig | None) -> list[str]:
    """Agent-backed filters (auth, WAF, guardrails) changed, or attached/detached on a route."""
    return _attachment_changes(old, new, AUTH_FILTER_TYPE)


def rate_limit_changes(old: ProxyConfig | None, new: ProxyConfig | None) -> list[str]:
    """Rate-limit filters changed or attached/detached on a route, and `rate-limits` defaults."""
    found = _attachment_changes(old, new, RATE_LIMIT_FILTER_TYPE)
    before = old.rate_limit_defaults if old is not None else {}
    after = new.rate_limit_defaults if new is not None else {}
    if plain(before) != plain(after):
        found.insert(0, "rate-limits defaults")
    return found


def waf_changes(old: ProxyConfig | None, new: ProxyConfig | None) -> list[str]:
    """The `waf` block, and routes whose `waf-enabled` flipped."""
    found = []
    if plain(old.waf if old else None) != plain(new.waf if new else None):
        found.append("waf settings")
    before, after = entities(old), entities(new)
    for qid in sorted(set(before.routes) & set(after.routes)):
        if before.routes[qid].waf_enabled != after.routes[qid].waf_enabled:
            found.append(f"route {qid} waf-enabled")
    return found


def _settings(config: ProxyConfig | None) -> Any:
    if config is None:
        return None
    return plain(
        {
            "schema_version": config.schema_version,
            "system": config.system,
            "observability": config.observability,
            "cache_backend": config.cache_backend,
        }
    )


def semantic_summary(old: ProxyConfig | None, new: ProxyConfig | None) -> dict[str, Any]:
    """Entities added / removed / changed between two configs, plus focused change flags.

    Keys: `listeners`, `routes`, `upstreams`, `filters`, `agents`, `namespaces` (each
    `{"added", "removed", "changed"}` of qualified ids), and the booleans `tls_changed`,
    `waf_changed`, `rate_limits_changed`, `auth_filters_changed`, `limits_changed` and
    `settings_changed` (system, observability, cache, schema version). JSON-serializable.
    """
    before, after = entities(old), entities(new)
    summary: dict[str, Any] = {
        kind: compare(before.of_kind(kind), after.of_kind(kind)) for kind in KINDS
    }
    summary["namespaces"] = compare(before.namespaces, after.namespaces)
    summary["tls_changed"] = bool(tls_changes(old, new))
    summary["waf_changed"] = bool(waf_changes(old, new))
    summary["rate_limits_changed"] = bool(rate_limit_changes(old, new))
    summary["auth_filters_changed"] = bool(auth_filter_changes(old, new))
    summary["limits_changed"] = plain(before.limits) != plain(after.limits)
    summary["settings_changed"] = _settings(old) != _settings(new)
    return summary
