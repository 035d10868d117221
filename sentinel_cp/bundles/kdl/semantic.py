"""The proxy's validate phase: schema version, the collect-all semantic pass, post checks.

Host-dependent checks (static roots, unix-socket directories, certificate and schema files)
are not errors here: the control plane is not the node, so they become node-side warnings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from sentinel_cp.bundles.kdl.diagnostics import (
    STAGE_POST_VALIDATE,
    STAGE_SCHEMA,
    STAGE_VALIDATE,
    Diagnostic,
    SourceRef,
)
from sentinel_cp.bundles.kdl.model import PRIORITY_LOW, ProxyConfig, Route
from sentinel_cp.bundles.kdl.reading import parse_unsigned

CURRENT_SCHEMA = (1, 0)
# Rust's u32 parsing: an optional '+', ASCII digits only, at most 2**32 - 1.
_SCHEMA_RE = re.compile(r"\+?([0-9]+)\.\+?([0-9]+)")
_U32_MAX = 2**32 - 1


@dataclass
class SemanticOutcome:
    """Errors of the first failing validate step (empty when valid) and everything noticed."""

    errors: list[Diagnostic] = field(default_factory=list)
    stage: str | None = None
    combined_message: str | None = None
    warnings: list[Diagnostic] = field(default_factory=list)
    node_side: list[Diagnostic] = field(default_factory=list)


def format_available(ids: Iterable[str], empty: str = "(none defined)") -> str:
    """`'a', 'b'` (sorted, so the text is deterministic; the proxy's order is hash order)."""
    items = sorted(set(ids))
    return ", ".join(f"'{i}'" for i in items) if items else empty


def combine_messages(messages: list[str]) -> str:
    """One message, or the proxy's "Configuration has N issues" list."""
    if len(messages) == 1:
        return messages[0]
    body = "\n\n".join(f"{i}. {m}" for i, m in enumerate(messages, start=1))
    return f"Configuration has {len(messages)} issues:\n\n{body}"


def _schema_version(config: ProxyConfig, outcome: SemanticOutcome, where: SourceRef) -> bool:
    version = config.schema_version
    match = _SCHEMA_RE.fullmatch(version)
    parts = (
        (parse_unsigned(match.group(1), _U32_MAX), parse_unsigned(match.group(2), _U32_MAX))
        if match is not None
        else (None, None)
    )
    if parts[0] is None or parts[1] is None:
        message = f"Invalid schema version '{version}': Expected format: major.minor (e.g., '1.0')"
        outcome.errors.append(Diagnostic("error", "schema-version", message, where, STAGE_SCHEMA))
        return False
    parsed = (parts[0], parts[1])
    if parsed < CURRENT_SCHEMA:
        message = (
            f"Config schema version {version} is older than minimum supported version 1.0. "
            "Please update your configuration."
        )
        outcome.errors.append(Diagnostic("error", "schema-version", message, where, STAGE_SCHEMA))
        return False
    if parsed > CURRENT_SCHEMA:
        outcome.warnings.append(
            Diagnostic(
                "warning",
                "schema-version-newer",
                f"Config schema version {version} is newer than the supported version 1.0; "
                "some settings may not be understood",
                where,
                STAGE_SCHEMA,
                'use schema-version "1.0" unless the fleet runs a newer proxy',
            )
        )
    return True


class _Scopes:
    """Namespace resolution: own scope → parent namespace → global, then exports."""

    def __init__(self, config: ProxyConfig) -> None:
        self.all_ids: set[str] = set(config.upstreams) | set(config.filters)
        self.all_ids |= {a.id for a in config.agents} | {r.id for r in config.routes}
        self.upstreams: dict[tuple[str, ...], set[str]] = {(): set(config.upstreams)}
        self.filters: dict[tuple[str, ...], set[str]] = {(): set(config.filters)}
        self.exported_upstreams: set[str] = set()
        self.exported_filters: set[str] = set()
        for ns in config.namespaces:
            key = (ns.id,)
            self.upstreams.setdefault(key, set()).update(ns.upstreams)
            self.filters.setdefault(key, set()).update(ns.filters)
            for ident in [*ns.upstreams, *ns.filters, *(a.id for a in ns.agents)]:
                self.all_ids.add(f"{ns.id}:{ident}")
            self.all_ids.update(f"{ns.id}:{r.id}" for r in ns.routes)
            self.exported_upstreams.update(u for u in ns.exports.upstreams if u in ns.upstreams)
            self.exported_filters.update(f for f in ns.exports.filters if f in ns.filters)
            for svc in ns.services:
                skey = (ns.id, svc.id)
                self.upstreams.setdefault(skey, set()).update(svc.upstreams)
                self.filters.setdefault(skey, set()).update(svc.filters)
                for ident in [
                    *svc.upstreams,
                    *svc.filters,
                    *(a.id for a in svc.agents),
                    *(r.id for r in svc.routes),
                ]:
                    self.all_ids.add(f"{ns.id}:{svc.id}:{ident}")

    @staticmethod
    def _chain(scope: tuple[str, ...]) -> list[tuple[str, ...]]:
        return [scope[:i] for i in range(len(scope), -1, -1)]

    def resolves(self, kind: str, reference: str, scope: tuple[str, ...]) -> bool:
        if ":" in reference:
            return reference in self.all_ids
        table = self.upstreams if kind == "upstream" else self.filters
        if any(reference in table.get(s, set()) for s in self._chain(scope)):
            return True
        exported = self.exported_upstreams if kind == "upstream" else self.exported_filters
        return reference in exported

    def available(self, kind: str, scope: tuple[str, ...]) -> set[str]:
        table = self.upstreams if kind == "upstream" else self.filters
        out: set[str] = set()
        for s in self._chain(scope):
            out |= table.get(s, set())
        return out | (self.exported_upstreams if kind == "upstream" else self.exported_filters)


def _route_checks(config: ProxyConfig, add: _Adder) -> None:
    upstream_ids = set(config.upstreams)
    filter_ids = set(config.filters)
    for route in config.routes:
        needs_upstream = route.service_type != "static" and route.upstream is not None
        if needs_upstream and route.upstream not in upstream_ids:
            add(
                route,
                "route-upstream-missing",
                f"Route '{route.id}' references upstream '{route.upstream}' which doesn't "
                f"exist.\nAvailable upstreams: {format_available(upstream_ids)}\nHint: Add "
                "an upstream block or fix the reference.",
            )
    for route in config.routes:
        for filter_id in route.filters:
            if filter_id not in filter_ids:
                add(
                    route,
                    "route-filter-missing",
                    f"Route '{route.id}' references filter '{filter_id}' which doesn't exist.\n"
                    f"Available filters: {format_available(filter_ids)}",
                )
    for route in config.routes:
        if not route.matches and route.priority != PRIORITY_LOW:
            add(
                route,
                "route-no-matches",
                f"Route '{route.id}' has no match conditions.\nAdd at least one match condition "
                'or set priority to "low" for catch-all routes.',
            )
    for route in config.routes:
        if route.static_files is not None and route.upstream is not None:
            add(
                route,
                "route-upstream-and-static",
                f"Route '{route.id}' has both 'upstream' and 'static-files' configured.\nA "
                "route can only serve one type of content.",
            )


class _Adder:
    def __init__(self) -> None:
        self.items: list[tuple[str, str, SourceRef]] = []

    def __call__(self, thing: object, code: str, message: str) -> None:
        source = getattr(thing, "source", None)
        self.items.append((code, message, source if isinstance(source, SourceRef) else _NOWHERE))


_NOWHERE = SourceRef("", 0, 0)


def _semantic_pass(config: ProxyConfig, add: _Adder) -> None:
    if config.system.route_cache_size == 0:
        add(
            config.system,
            "route-cache-size",
            "server.route-cache-size must be greater than 0 (the route cache cannot be disabled "
            "by setting it to zero)",
        )
    _route_checks(config, add)
    route_ids = {r.id for r in config.routes}
    namespace_ids = {n.id for n in config.namespaces}
    for listener in config.listeners:
        if listener.default_route is not None and listener.default_route not in route_ids:
            add(
                listener,
                "listener-default-route-missing",
                f"Listener '{listener.id}' references default-route '{listener.default_route}' "
                f"which doesn't exist.\nAvailable routes: {format_available(route_ids)}",
            )
    for listener in config.listeners:
        if listener.namespace is not None and listener.namespace not in namespace_ids:
            add(
                listener,
                "listener-namespace-missing",
                f"Listener '{listener.id}' references namespace '{listener.namespace}' which "
                f'doesn\'t exist.\nDefine a `namespace "{listener.namespace}" {{ routes {{ ... '
                "} }` block, or remove the reference to serve the global routes.\nAvailable "
                f"namespaces: {format_available(namespace_ids, '(none)')}",
            )
    _acme_domains(config, add)
    agent_ids = {a.id for a in config.agents}
    for flt in config.filters.values():
        if flt.type == "agent" and flt.agent is not None and flt.agent not in agent_ids:
            add(
                flt,
                "filter-agent-missing",
                f"Filter '{flt.id}' references agent '{flt.agent}' which doesn't exist.\n"
                f"Available agents: {format_available(agent_ids)}",
            )
    for upstream in config.upstreams.values():
        if not upstream.targets:
            add(
                upstream,
                "upstream-no-targets",
                f"Upstream '{upstream.id}' has no targets defined.\nEach upstream must have at "
                "least one target.",
            )
        for index, target in enumerate(upstream.targets, start=1):
            if not _valid_target(target.address):
                add(
                    target,
                    "upstream-target-address",
                    f"Upstream '{upstream.id}' target #{index} has invalid address "
                    f"'{target.address}'.\nExpected format: HOST:PORT",
                )
    for agent in config.agents:
        for value, label, tail in (
            (agent.timeout_ms, "timeout_ms", "Timeouts must be greater than 0."),
            (agent.chunk_timeout_ms, "chunk_timeout_ms", "Timeouts must be greater than 0."),
            (
                agent.max_request_body_bytes,
                "max_request_body_bytes",
                "Use a positive limit, or omit the field for the default.",
            ),
            (
                agent.max_response_body_bytes,
                "max_response_body_bytes",
                "Use a positive limit, or omit the field for the default.",
            ),
        ):
            if value == 0:
                add(agent, "agent-zero-value", f"Agent '{agent.id}' has {label} 0. {tail}")
    seen_addresses: set[str] = set()
    for listener in config.listeners:
        if listener.address in seen_addresses:
            add(
                listener,
                "listener-duplicate-address",
                f"Duplicate listener address '{listener.address}'. Multiple listeners cannot "
                "bind to the same address.",
            )
        seen_addresses.add(listener.address)
    _namespace_checks(config, add)
    if config.waf is not None and config.waf.mode != "off":
        add(
            config.waf,
            "waf-not-wired",
            f"WAF mode is set to '{config.waf.mode}' but the WAF engine is not yet wired into "
            "the proxy runtime. Requests are NOT being inspected. Set waf mode to 'off' or "
            "remove the waf block until WAF support is implemented.",
        )


def _valid_target(address: str) -> bool:
    _host, sep, port = address.rpartition(":")
    if not sep:
        return False
    return parse_unsigned(port, 65535) is not None


def _acme_domains(config: ProxyConfig, add: _Adder) -> None:
    owners: dict[str, str] = {}
    for listener in config.listeners:
        if listener.tls is None:
            continue
        blocks = []
        if listener.tls.acme is not None:
            blocks.append((f"listener '{listener.id}' (root acme)", listener.tls.acme))
        for index, sni in enumerate(listener.tls.sni):
            if sni.acme is not None:
                blocks.append((f"listener '{listener.id}' (sni cert #{index})", sni.acme))
        for label, acme in blocks:
            for domain in acme.domains:
                key = domain.lower()
                if key in owners:
                    add(
                        acme,
                        "acme-duplicate-domain",
                        f"Domain '{domain}' is configured in multiple ACME blocks: "
                        f"{owners[key]} and {label}.\nEach domain must be managed by exactly one "
                        "ACME block to avoid conflicts.",
                    )
                else:
                    owners[key] = label


def _namespace_checks(config: ProxyConfig, add: _Adder) -> None:
    scopes = _Scopes(config)
    seen: set[str] = set()
    for ns in config.namespaces:
        if ns.id in seen:
            add(
                ns,
                "namespace-duplicate",
                f"Duplicate namespace ID '{ns.id}'. Each namespace must have a unique identifier.",
            )
        seen.add(ns.id)
        if ":" in ns.id:
            add(
                ns,
                "namespace-colon",
                f"Namespace ID '{ns.id}' contains reserved character ':'. The colon is reserved "
                "for qualified references.",
            )
        _scoped_route_refs(ns.routes, (ns.id,), f"namespace '{ns.id}'", scopes, add)
        for kind, names, defined in (
            ("upstream", ns.exports.upstreams, set(ns.upstreams)),
            ("agent", ns.exports.agents, {a.id for a in ns.agents}),
            ("filter", ns.exports.filters, set(ns.filters)),
        ):
            for name in names:
                if name not in defined:
                    add(
                        ns,
                        "namespace-export-missing",
                        f"Namespace '{ns.id}' exports {kind} '{name}' which doesn't exist in "
                        "this namespace.",
                    )
        seen_services: set[str] = set()
        for svc in ns.services:
            if svc.id in seen_services:
                add(
                    svc,
                    "service-duplicate",
                    f"Duplicate service ID '{svc.id}' in namespace '{ns.id}'. Each service must "
                    "have a unique identifier.",
                )
            seen_services.add(svc.id)
            if ":" in svc.id:
                add(
                    svc,
                    "service-colon",
                    f"Service ID '{svc.id}' in namespace '{ns.id}' contains reserved character "
                    "':'.",
                )
            _scoped_route_refs(
                svc.routes, (ns.id, svc.id), f"service '{ns.id}:{svc.id}'", scopes, add
            )


def _scoped_route_refs(
    routes: list[Route], scope: tuple[str, ...], label: str, scopes: _Scopes, add: _Adder
) -> None:
    for route in routes:
        if route.upstream is not None and not scopes.resolves("upstream", route.upstream, scope):
            add(
                route,
                "scoped-upstream-unresolved",
                f"Route '{route.id}' in {label} references upstream '{route.upstream}' which "
                "cannot be resolved.\nAvailable upstreams: "
                f"{format_available(scopes.available('upstream', scope))}",
            )
        for filter_id in route.filters:
            if not scopes.resolves("filter", filter_id, scope):
                add(
                    route,
                    "scoped-filter-unresolved",
                    f"Route '{route.id}' in {label} references filter '{filter_id}' which cannot "
                    "be resolved.\nAvailable filters: "
                    f"{format_available(scopes.available('filter', scope))}",
                )


def _post_checks(config: ProxyConfig) -> tuple[str, str, SourceRef] | None:
    limits = config.limits
    if limits.max_header_size == 0:
        return "limits-header-size", "max_header_size_bytes must be greater than 0", limits.source
    if limits.max_header_count == 0:
        return "limits-header-count", "max_header_count must be greater than 0", limits.source
    if limits.max_body_buffer > limits.max_body_size:
        return (
            "limits-body-buffer",
            "max_body_buffer_bytes cannot exceed max_body_size_bytes",
            limits.source,
        )
    return None


def _warnings(config: ProxyConfig, outcome: SemanticOutcome) -> None:
    def warn(code: str, message: str, source: SourceRef, suggestion: str) -> None:
        outcome.warnings.append(
            Diagnostic("warning", code, message, source, STAGE_VALIDATE, suggestion)
        )

    redirecting = {f.id for f in config.filters.values() if f.type in ("redirect", "url-rewrite")}
    for route in config.routes:
        if (
            route.upstream is None
            and route.static_files is None
            and route.builtin_handler is None
            and not any(f in redirecting for f in route.filters)
        ):
            warn(
                "route-without-backend",
                f"Route '{route.id}' has no upstream, static-files, builtin handler or "
                "redirect filter; requests to it will return 500",
                route.source,
                'add upstream "…", static-files { root "…" } or a builtin-handler',
            )
    referenced = {r.upstream for r in config.routes if r.upstream is not None}
    for upstream in config.upstreams.values():
        if upstream.id not in referenced:
            warn(
                "orphaned-upstream",
                f"Upstream '{upstream.id}' is defined but not referenced by any route.",
                upstream.source,
                "reference it from a route, or remove it",
            )


def _node_side(config: ProxyConfig, outcome: SemanticOutcome) -> None:
    def note(code: str, message: str, source: SourceRef, suggestion: str) -> None:
        outcome.node_side.append(
            Diagnostic("node-side", code, message, source, STAGE_VALIDATE, suggestion)
        )

    every_route = list(config.routes)
    for ns in config.namespaces:
        every_route.extend(ns.routes)
        for svc in ns.services:
            every_route.extend(svc.routes)
    for route in every_route:
        if route.static_files is not None:
            note(
                "static-root",
                f"Route '{route.id}' static files root directory '{route.static_files.root}' "
                "must exist as a directory on the node (the proxy checks it there)",
                route.source,
                "make sure the directory is provisioned on every node",
            )
        if route.api_schema_file is not None:
            note(
                "api-schema-file",
                f"Route '{route.id}' api-schema file '{route.api_schema_file}' is loaded at "
                "startup on the node; a missing or invalid file fails there",
                route.source,
                "provision the schema file on every node, or inline it with schema-content",
            )
    for listener in config.listeners:
        tls = listener.tls
        if tls is None:
            continue
        for label, path in (
            ("certificate", tls.cert_file),
            ("private key", tls.key_file),
            ("CA", tls.ca_file),
        ):
            if path is not None:
                note(
                    "tls-file",
                    f"Listener '{listener.id}' TLS {label} file '{path}' must exist and be "
                    "readable on the node",
                    tls.source,
                    "provision the file on every node before activating the bundle",
                )
    for agent in config.agents:
        if agent.transport == "unix-socket":
            note(
                "agent-socket",
                f"Agent '{agent.id}' unix socket '{agent.endpoint}' (or its parent directory) "
                "must exist on the node",
                agent.source,
                "run the agent on every node before activating the bundle",
            )
    for flt in config.filters.values():
        if flt.type == "geo":
            note(
                "geo-database",
                f"Filter '{flt.id}' GeoIP database '{flt.settings.get('database_path')}' must "
                "exist on the node",
                flt.source,
                "provision the database file on every node",
            )
    for upstream in config.upstreams.values():
        for target in upstream.targets:
            note(
                "upstream-connectivity",
                f"Upstream '{upstream.id}' target '{target.address}' must be reachable from the "
                "node (checked by `validate`, not by `test`)",
                target.source,
                "check connectivity from the nodes",
            )


def validate_config(config: ProxyConfig, entry: SourceRef) -> SemanticOutcome:
    """Run the validate phase in the proxy's order; stop at the first failing step."""
    outcome = SemanticOutcome()
    _warnings(config, outcome)
    _node_side(config, outcome)
    if not _schema_version(config, outcome, entry):
        outcome.stage = STAGE_SCHEMA
        outcome.combined_message = outcome.errors[0].message
        return outcome
    add = _Adder()
    _semantic_pass(config, add)
    if add.items:
        outcome.stage = STAGE_VALIDATE
        outcome.combined_message = combine_messages([message for _, message, _ in add.items])
        outcome.errors = [
            Diagnostic("error", code, message, source if source.line else entry, STAGE_VALIDATE)
            for code, message, source in add.items
        ]
        return outcome
    post = _post_checks(config)
    if post is not None:
        code, message, source = post
        outcome.stage = STAGE_POST_VALIDATE
        outcome.combined_message = message
        outcome.errors = [
            Diagnostic(
                "error", code, message, source if source.line else entry, STAGE_POST_VALIDATE
            )
        ]
    return outcome
