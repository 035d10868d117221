"""Risk of a bundle against the project's previous compiled bundle (`spec/bundles.md`).

- high: listeners, TLS (listener or upstream), agents, agent-backed (auth) filters or WAF
  change;
- medium: more than 10 routes change, an upstream is removed, or rate limits change;
- low: anything else, and the first bundle of a project (reason `initial`).

Every rule that fires adds one short sentence; the reasons come in rule order (high rules
first) and the level is the highest that fired. Smaller changes are still listed under a
higher level, so the reasons describe the whole change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sentinel_cp.bundles.diff import (
    auth_filter_changes,
    rate_limit_changes,
    semantic_summary,
    tls_changes,
    waf_changes,
)
from sentinel_cp.bundles.kdl.model import ProxyConfig

RiskLevel = Literal["low", "medium", "high"]
LEVELS: tuple[RiskLevel, ...] = ("low", "medium", "high")
MANY_ROUTES = 10
INITIAL = "initial"
NO_CHANGES = "no semantic changes"


@dataclass(frozen=True)
class Risk:
    """The assessed level and the reasons for it, in order."""

    level: RiskLevel
    reasons: list[str] = field(default_factory=list, hash=False)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _names(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown} and {len(items) - limit} more"


def _touched(table: dict[str, list[str]]) -> list[str]:
    return sorted({*table["added"], *table["removed"], *table["changed"]})


def assess(old: ProxyConfig | None, new: ProxyConfig) -> Risk:
    """Score `new` against `old` (None for a project's first compiled bundle)."""
    if old is None:
        return Risk("low", [INITIAL])
    summary = semantic_summary(old, new)
    found: list[tuple[RiskLevel, str]] = []

    listeners = _touched(summary["listeners"])
    if listeners:
        found.append(("high", f"{_count(len(listeners), 'listener')} changed: {_names(listeners)}"))
    tls = tls_changes(old, new)
    if tls:
        found.append(("high", f"TLS changed on {_names(tls)}"))
    agents = _touched(summary["agents"])
    if agents:
        found.append(("high", f"{_count(len(agents), 'agent')} changed: {_names(agents)}"))
    auth = auth_filter_changes(old, new)
    if auth:
        found.append(("high", f"Agent (auth) filters changed: {_names(auth)}"))
    waf = waf_changes(old, new)
    if waf:
        found.append(("high", f"WAF changed: {_names(waf)}"))

    routes = _touched(summary["routes"])
    if len(routes) > MANY_ROUTES:
        found.append(("medium", f"{len(routes)} routes changed (more than {MANY_ROUTES})"))
    removed_upstreams = summary["upstreams"]["removed"]
    if removed_upstreams:
        noun = _count(len(removed_upstreams), "upstream")
        found.append(("medium", f"{noun} removed: {_names(removed_upstreams)}"))
    rate_limits = rate_limit_changes(old, new)
    if rate_limits:
        found.append(("medium", f"Rate limits changed: {_names(rate_limits)}"))

    if routes and len(routes) <= MANY_ROUTES:
        found.append(("low", f"{_count(len(routes), 'route')} changed: {_names(routes)}"))
    other_upstreams = sorted({*summary["upstreams"]["added"], *summary["upstreams"]["changed"]})
    if other_upstreams:
        noun = _count(len(other_upstreams), "upstream")
        found.append(("low", f"{noun} added or changed: {_names(other_upstreams)}"))
    filters = _touched(summary["filters"])
    if filters:
        found.append(("low", f"{_count(len(filters), 'filter')} changed: {_names(filters)}"))
    namespaces = _touched(summary["namespaces"])
    if namespaces:
        noun = _count(len(namespaces), "namespace")
        found.append(("low", f"{noun} changed: {_names(namespaces)}"))
    if summary["limits_changed"]:
        found.append(("low", "Limits changed"))
    if summary["settings_changed"]:
        found.append(("low", "System or observability settings changed"))

    if not found:
        return Risk("low", [NO_CHANGES])
    level = max((lvl for lvl, _ in found), key=LEVELS.index)
    return Risk(level, [reason for _, reason in found])
