"""The proxy's load phase: walk the KDL document into a `ProxyConfig`, first error stops.

Messages are the proxy's own wording (reference/proxy-config.md §1.3-1.4); warnings name what
the proxy silently ignores or falls back on.
"""

from __future__ import annotations

import math

from sentinel_cp.bundles.kdl.diagnostics import LoadFailure, SourceRef
from sentinel_cp.bundles.kdl.model import (
    PRIORITY_LOW,
    PRIORITY_NORMAL,
    AcmeConfig,
    Agent,
    DnsProviderConfig,
    Exports,
    Filter,
    Limits,
    Listener,
    ListenerTls,
    MatchCondition,
    Namespace,
    Observability,
    ProxyConfig,
    Route,
    Service,
    ShadowConfig,
    SniCertificate,
    StaticFiles,
    SystemConfig,
    Target,
    Upstream,
    WafConfig,
)
from sentinel_cp.bundles.kdl.reading import Reader, describe, is_int, parse_unsigned
from sentinel_cp.bundles.kdl.source import SourceNode

TOP_LEVEL_BLOCKS = (
    "schema-version, system, listeners, routes, upstreams, filters, agents, waf, namespace, "
    "limits, observability, rate-limits, cache"
)
NAMESPACE_BLOCKS = "limits, listeners, upstreams, routes, agents, filters, service, exports"
SERVICE_BLOCKS = "listener, upstreams, routes, agents, filters, limits"
FILTER_TYPES = (
    "rate-limit",
    "agent",
    "headers",
    "compress",
    "cors",
    "timeout",
    "log",
    "geo",
    "redirect",
    "url-rewrite",
)
FILTER_TYPE_LIST = ", ".join(FILTER_TYPES)

ROUTE_DIRECTIVES = frozenset(
    {
        "matches",
        "priority",
        "upstream",
        "static-files",
        "api-schema",
        "inference",
        "filters",
        "builtin-handler",
        "cache",
        "shadow",
        "waf-enabled",
        "websocket",
        "websocket-inspection",
        "fallback",
        "policies",
        "service-type",
        "retry-policy",
    }
)
MATCH_CONDITIONS = ("path-prefix", "path", "path-regex", "host", "header", "method", "query-param")
PRIORITIES = {"low": 10, "normal": 50, "high": 100, "critical": 1000}
BUILTIN_HANDLERS = {
    "status": "status",
    "health": "health",
    "metrics": "metrics",
    "not-found": "not_found",
    "not_found": "not_found",
    "config": "config",
    "upstreams": "upstreams",
    "cache-purge": "cache_purge",
    "cache_purge": "cache_purge",
    "cache-stats": "cache_stats",
    "cache_stats": "cache_stats",
}
LOAD_BALANCERS = {
    "round_robin": "round_robin",
    "roundrobin": "round_robin",
    "least_connections": "least_connections",
    "weighted": "weighted",
    "weighted_round_robin": "weighted",
    "weighted-round-robin": "weighted",
    "ip_hash": "ip_hash",
    "random": "random",
    "consistent_hash": "consistent_hash",
    "power_of_two_choices": "power_of_two_choices",
    "p2c": "power_of_two_choices",
    "adaptive": "adaptive",
    "least_tokens_queued": "least_tokens_queued",
    "least_tokens": "least_tokens_queued",
    "maglev": "maglev",
    "locality_aware": "locality_aware",
    "locality": "locality_aware",
    "peak_ewma": "peak_ewma",
    "ewma": "peak_ewma",
    "deterministic_subset": "deterministic_subset",
    "subset": "deterministic_subset",
    "subsetting": "deterministic_subset",
    "weighted_least_connections": "weighted_least_connections",
    "wlc": "weighted_least_connections",
    "sticky": "sticky",
    "sticky_session": "sticky",
}
AGENT_EVENTS = {
    "request_headers": "request_headers",
    "request-headers": "request_headers",
    "request_body": "request_body",
    "request-body": "request_body",
    "response_headers": "response_headers",
    "response-headers": "response_headers",
    "response_body": "response_body",
    "response-body": "response_body",
    "log": "request_complete",
    "request_complete": "request_complete",
    "request-complete": "request_complete",
    "websocket_frame": "websocket_frame",
    "websocket-frame": "websocket_frame",
    "guardrail": "guardrail",
}
FAILURE_MODES = {
    "fail_open": "open",
    "fail-open": "open",
    "open": "open",
    "fail_closed": "closed",
    "fail-closed": "closed",
    "closed": "closed",
}
RATE_LIMIT_KEYS = (
    "client-ip",
    "client_ip",
    "ip",
    "path",
    "route",
    "client-ip-and-path",
    "client_ip_and_path",
)
CLOSED_BREAKER_KEYS = (
    "failure-threshold",
    "success-threshold",
    "timeout-seconds",
    "half-open-max-requests",
)
U32_MAX = (1 << 32) - 1


class Loader:
    """Turns top-level nodes into a `ProxyConfig`; `warnings` collects what was ignored."""

    def __init__(self) -> None:
        self.read = Reader()
        self.config = ProxyConfig()
        self._seen_system: SourceNode | None = None
        self._seen_waf: SourceNode | None = None
        self._singletons: dict[str, SourceNode] = {}
        self._listener_ids: set[str] = set()
        self._route_ids: set[str] = set()
        self._agent_ids: set[str] = set()
        self._has_system = False

    # ------------------------------------------------------------------ top level

    def load(self, nodes: list[SourceNode], entry: SourceRef) -> ProxyConfig:
        """Walk the document in order; raise `LoadFailure` on the first structural error."""
        for node in nodes:
            self._top_level(node)
        if not self._has_system:
            raise LoadFailure(
                "missing-system",
                "Missing required 'system' configuration block. Add a system { ... } block "
                "(worker-threads, max-connections, ...).",
                entry,
            )
        if not self.config.listeners:
            raise LoadFailure(
                "missing-listeners",
                "Missing required 'listeners' configuration block. Add at least one listener, "
                'e.g., listeners { listener "http" { address "0.0.0.0:8080" } }',
                entry,
            )
        return self.config

    def _top_level(self, node: SourceNode) -> None:
        name = node.name
        cfg = self.config
        if name in ("schema-version", "version"):
            value = node.first_value()
            if isinstance(value, str):
                cfg.schema_version = value
            else:
                self.read.warn(
                    "wrong-value-type",
                    f"'{name}' expects a string such as \"1.0\" but got {describe(value)}; "
                    "the proxy ignores it",
                    node.source,
                    f'{name} "1.0"',
                )
        elif name in ("system", "server"):
            if name == "server":
                self.read.warn(
                    "deprecated-server-block",
                    "The 'server' block is deprecated; use 'system' instead",
                    node.source,
                    "rename 'server' to 'system'",
                )
            if self._seen_system is not None:
                self._duplicate_singleton(node, self._seen_system)
            self._seen_system = node
            self._has_system = True
            cfg.system = self._system(node)
        elif name == "listeners":
            for listener in self._listeners(node, global_scope=True):
                cfg.listeners.append(listener)
        elif name == "routes":
            cfg.routes.extend(self._routes(node, track=True))
        elif name == "upstreams":
            for upstream in self._upstreams(node).values():
                if upstream.id in cfg.upstreams:
                    raise LoadFailure(
                        "duplicate-upstream",
                        f"Duplicate upstream ID '{upstream.id}' found. Each upstream ID must be "
                        "unique across all config files.",
                        upstream.source,
                    )
                cfg.upstreams[upstream.id] = upstream
        elif name == "filters":
            for flt in self._filters(node).values():
                if flt.id in cfg.filters:
                    raise LoadFailure(
                        "duplicate-filter",
                        f"Duplicate filter ID '{flt.id}' found. Each filter ID must be unique "
                        "across all config files.",
                        flt.source,
                    )
                cfg.filters[flt.id] = flt
        elif name == "agents":
            cfg.agents.extend(self._agents(node, track=True))
        elif name == "waf":
            if self._seen_waf is not None:
                self._duplicate_singleton(node, self._seen_waf)
            self._seen_waf = node
            cfg.waf = self._waf(node)
        elif name == "namespace":
            cfg.namespaces.append(self._namespace(node))
        elif name == "limits":
            self._singleton(node)
            cfg.limits = self._limits(node)
        elif name == "observability":
            self._singleton(node)
            cfg.observability = self._observability(node)
        elif name == "rate-limits":
            self._singleton(node)
            cfg.rate_limit_defaults = self._rate_limits(node)
        elif name == "cache":
            self._singleton(node)
            cfg.cache_backend = self._global_cache(node)
        else:
            raise LoadFailure(
                "unknown-top-level-block",
                f"Unknown top-level configuration block: '{name}'\nValid blocks are: "
                f"{TOP_LEVEL_BLOCKS}",
                node.source,
            )

    def _singleton(self, node: SourceNode) -> None:
        previous = self._singletons.get(node.name)
        if previous is not None:
            self._duplicate_singleton(node, previous)
        self._singletons[node.name] = node

    def _duplicate_singleton(self, node: SourceNode, previous: SourceNode) -> None:
        self.read.warn(
            "duplicate-singleton-block",
            f"'{node.name}' block appears more than once (first at {previous.source}); the "
            "last one wins and the earlier ones are ignored",
            node.source,
            f"merge the '{node.name}' blocks into one",
        )

    # ------------------------------------------------------------------ system

    def _system(self, node: SourceNode) -> SystemConfig:
        r = self.read
        r.check_children(
            node,
            (
                "worker-threads",
                "max-connections",
                "graceful-shutdown-timeout-secs",
                "daemon",
                "pid-file",
                "user",
                "group",
                "working-directory",
                "trace-id-format",
                "auto-reload",
                "route-cache-size",
            ),
            "the system block",
        )
        trace = r.string(node, "trace-id-format", "tinyflake") or "tinyflake"
        trace_format = "uuid" if trace.lower() in ("uuid", "uuid4", "uuidv4") else "tinyflake"
        if trace_format == "tinyflake" and trace.lower() != "tinyflake":
            r.warn(
                "enum-fallback",
                f"Unknown trace-id-format '{trace}'; the proxy falls back to tinyflake",
                node.source,
                'use "tinyflake" or "uuid"',
            )
        return SystemConfig(
            worker_threads=r.integer(node, "worker-threads", 0),
            max_connections=r.integer(node, "max-connections", 10000),
            graceful_shutdown_timeout_secs=r.integer(node, "graceful-shutdown-timeout-secs", 30),
            daemon=r.boolean(node, "daemon", False),
            pid_file=r.string(node, "pid-file"),
            user=r.string(node, "user"),
            group=r.string(node, "group"),
            working_directory=r.string(node, "working-directory"),
            trace_id_format=trace_format,
            auto_reload=r.boolean(node, "auto-reload", False),
            route_cache_size=r.integer(node, "route-cache-size", 1000),
            source=node.source,
        )

    # ------------------------------------------------------------------ listeners

    def _listeners(self, block: SourceNode, *, global_scope: bool) -> list[Listener]:
        self.read.check_children(block, ("listener",), "the listeners block")
        out = []
        for node in block.children_named("listener"):
            listener = self._listener(node)
            if global_scope:
                if listener.id in self._listener_ids:
                    raise LoadFailure(
                        "duplicate-listener",
                        f"Duplicate listener ID '{listener.id}' found. Each listener ID must be "
                        "unique across all config files.",
                        node.source,
                    )
                self._listener_ids.add(listener.id)
            out.append(listener)
        return out

    def _listener(self, node: SourceNode, *, listener_id: str | None = None) -> Listener:
        r = self.read
        if listener_id is None:
            value = node.first_value()
            if not isinstance(value, str):
                raise LoadFailure(
                    "listener-id",
                    'Listener requires an ID argument, e.g., listener "http" { ... }',
                    node.source,
                )
            listener_id = value
        r.check_children(
            node,
            (
                "address",
                "protocol",
                "tls",
                "default-route",
                "namespace",
                "request-timeout-secs",
                "keepalive-timeout-secs",
                "max-concurrent-streams",
                "keepalive-max-requests",
                "id",
            ),
            f"listener '{listener_id}'",
            props_from=1 if node.entries and node.entries[0].key is None else 0,
        )
        address = r.string(node, "address")
        if address is None:
            raise LoadFailure(
                "listener-address",
                f"Listener '{listener_id}' requires an 'address' field, e.g., address "
                '"0.0.0.0:8080"',
                node.source,
            )
        protocol = (r.string(node, "protocol", "http") or "http").lower()
        if protocol not in ("http", "https", "h2", "h3"):
            raw = r.string(node, "protocol")
            raise LoadFailure(
                "listener-protocol",
                f"Invalid protocol '{raw}' for listener '{listener_id}'. Valid protocols: "
                "http, https, h2, h3",
                (node.child("protocol") or node).source,
            )
        tls_node = node.child("tls")
        tls = self._listener_tls(tls_node, listener_id) if tls_node is not None else None
        listener = Listener(
            id=listener_id,
            address=address,
            protocol=protocol,
            tls=tls,
            default_route=r.string(node, "default-route"),
            namespace=r.string(node, "namespace"),
            request_timeout_secs=r.integer(node, "request-timeout-secs", 60),
            keepalive_timeout_secs=r.integer(node, "keepalive-timeout-secs", 75),
            max_concurrent_streams=r.integer(node, "max-concurrent-streams", 100, 32),
            keepalive_max_requests=r.optional_int(node, "keepalive-max-requests"),
            source=node.source,
        )
        self._listener_warnings(node, listener)
        return listener

    def _listener_warnings(self, node: SourceNode, listener: Listener) -> None:
        r = self.read
        if listener.max_concurrent_streams != 100:
            r.warn(
                "max-concurrent-streams-unsupported",
                f"Listener '{listener.id}' sets max-concurrent-streams "
                f"{listener.max_concurrent_streams}, which is not yet supported (the proxy "
                "uses 100)",
                (node.child("max-concurrent-streams") or node).source,
                "remove max-concurrent-streams",
            )
        if listener.protocol in ("h2", "h3"):
            r.warn(
                "listener-protocol-unserved",
                f"Listener '{listener.id}' uses protocol '{listener.protocol}', which passes "
                "validation but is skipped at runtime (only http and https are served)",
                (node.child("protocol") or node).source,
                'use protocol "https" (HTTP/2 is negotiated over TLS)',
            )
        if listener.protocol == "https" and listener.tls is None:
            r.warn(
                "https-without-tls",
                f"Listener '{listener.id}' is https but has no tls block",
                node.source,
                'add tls { cert-file "…"; key-file "…" } or an acme block',
            )
        if not _is_socket_address(listener.address):
            r.warn(
                "listener-address-format",
                f"Listener '{listener.id}' address '{listener.address}' is not an IP:PORT "
                "socket address; the proxy does not check it before binding",
                (node.child("address") or node).source,
                'write it as IP:PORT, e.g., "0.0.0.0:8080"',
            )

    def _listener_tls(self, node: SourceNode, listener_id: str) -> ListenerTls:
        r = self.read
        r.check_children(
            node,
            (
                "cert-file",
                "key-file",
                "ca-file",
                "client-auth",
                "min-version",
                "max-version",
                "cipher-suite",
                "ocsp-stapling",
                "session-resumption",
                "acme",
                "sni",
            ),
            f"the tls block of listener '{listener_id}'",
        )
        cert = r.string(node, "cert-file")
        key = r.string(node, "key-file")
        acme_node = node.child("acme")
        if acme_node is None and (cert is None or key is None):
            raise LoadFailure(
                "tls-files",
                f"TLS configuration for listener '{listener_id}' requires either 'cert-file' and "
                "'key-file', or an 'acme' block",
                node.source,
            )
        acme = self._acme(acme_node, listener_id) if acme_node is not None else None
        sni = [self._sni(s, listener_id) for s in node.children_named("sni")]
        tls = ListenerTls(
            cert_file=cert,
            key_file=key,
            ca_file=r.string(node, "ca-file"),
            client_auth=r.boolean(node, "client-auth", False),
            min_version=self._tls_version(node, "min-version", listener_id) or "1.2",
            max_version=self._tls_version(node, "max-version", listener_id),
            cipher_suites=r.strings(node, "cipher-suite"),
            ocsp_stapling=r.boolean(node, "ocsp-stapling", True),
            session_resumption=r.boolean(node, "session-resumption", True),
            acme=acme,
            sni=sni,
            source=node.source,
        )
        applied = "are staged but not applied by the proxy runtime yet"
        if tls.cipher_suites:
            r.warn(
                "tls-setting-not-applied",
                f"Listener '{listener_id}': custom cipher suites {applied}",
                (node.child("cipher-suite") or node).source,
                "remove cipher-suite until the proxy applies it",
            )
        if tls.min_version != "1.2":
            r.warn(
                "tls-setting-not-applied",
                f"Listener '{listener_id}': min-version TLS {tls.min_version} is staged but not "
                "applied by the proxy runtime yet",
                (node.child("min-version") or node).source,
                "remove min-version until the proxy applies it",
            )
        if tls.max_version is not None:
            r.warn(
                "tls-setting-not-applied",
                f"Listener '{listener_id}': max-version TLS {tls.max_version} is staged but not "
                "applied by the proxy runtime yet",
                (node.child("max-version") or node).source,
                "remove max-version until the proxy applies it",
            )
        return tls

    def _tls_version(self, node: SourceNode, name: str, listener_id: str) -> str | None:
        raw = self.read.string(node, name)
        if raw is None:
            return None
        lowered = raw.lower()
        if lowered in ("1.3", "tls1.3", "tlsv1.3"):
            return "1.3"
        if lowered not in ("1.2", "tls1.2", "tlsv1.2"):
            self.read.warn(
                "enum-fallback",
                f"Listener '{listener_id}': {name} '{raw}' is not recognised; the proxy "
                "treats it as TLS 1.2",
                (node.child(name) or node).source,
                'use "1.2" or "1.3"',
            )
        return "1.2"

    def _sni(self, node: SourceNode, listener_id: str) -> SniCertificate:
        r = self.read
        r.check_children(
            node,
            ("hostnames", "priority-hostnames", "cert-file", "key-file", "acme"),
            f"an sni block of listener '{listener_id}'",
        )
        hostnames = r.strings(node, "hostnames")
        priority = r.strings(node, "priority-hostnames")
        if hostnames and priority:
            raise LoadFailure(
                "sni-hostnames",
                f"SNI certificate for listener '{listener_id}' cannot specify both 'hostnames' "
                "and 'priority-hostnames'. Use one or the other.",
                node.source,
            )
        cert = r.string(node, "cert-file")
        key = r.string(node, "key-file")
        acme_node = node.child("acme")
        if acme_node is not None and (cert is not None or key is not None):
            raise LoadFailure(
                "sni-acme-and-files",
                f"SNI certificate for listener '{listener_id}' cannot specify both manual files "
                "and an 'acme' block",
                node.source,
            )
        if acme_node is None and (cert is None or key is None):
            raise LoadFailure(
                "sni-files",
                f"SNI certificate for listener '{listener_id}' requires either both 'cert-file' "
                "and 'key-file', or an 'acme' block",
                node.source,
            )
        acme = self._acme(acme_node, listener_id) if acme_node is not None else None
        return SniCertificate(hostnames, priority, cert, key, acme, node.source)

    def _acme(self, node: SourceNode, listener_id: str) -> AcmeConfig:
        r = self.read
        r.check_children(
            node,
            (
                "email",
                "domains",
                "server-url",
                "staging",
                "eab",
                "storage",
                "renew-before-days",
                "challenge-type",
                "key-type",
                "dns-provider",
            ),
            f"the acme block of listener '{listener_id}'",
        )
        email = r.string(node, "email")
        if email is None:
            raise LoadFailure(
                "acme-email",
                f"ACME configuration for listener '{listener_id}' requires 'email'",
                node.source,
            )
        domains = r.strings(node, "domains")
        if not domains:
            raise LoadFailure(
                "acme-domains",
                f"ACME configuration for listener '{listener_id}' requires at least one domain "
                "in 'domains'",
                node.source,
            )
        eab_kid = None
        eab = node.child("eab")
        if eab is not None:
            eab_kid = r.string(eab, "kid")
            if eab_kid is None:
                raise LoadFailure("acme-eab", "ACME EAB configuration requires 'kid'", eab.source)
            if r.string(eab, "hmac-key") is None:
                raise LoadFailure(
                    "acme-eab", "ACME EAB configuration requires 'hmac-key'", eab.source
                )
        challenge_raw = r.string(node, "challenge-type")
        challenge = "http-01"
        if challenge_raw is not None:
            lowered = challenge_raw.lower()
            if lowered in ("dns-01", "dns01", "dns"):
                challenge = "dns-01"
            elif lowered not in ("http-01", "http01", "http"):
                r.warn(
                    "enum-fallback",
                    f"Unknown ACME challenge-type '{challenge_raw}'; the proxy falls back to "
                    "HTTP-01",
                    (node.child("challenge-type") or node).source,
                    'use "http-01" or "dns-01"',
                )
        key_type = "ecdsa-p256"
        key_raw = r.string(node, "key-type")
        if key_raw is not None:
            lowered = key_raw.lower()
            if lowered in ("ecdsa-p256", "p256", "ecdsa"):
                key_type = "ecdsa-p256"
            elif lowered in ("ecdsa-p384", "p384"):
                key_type = "ecdsa-p384"
            else:
                raise LoadFailure(
                    "acme-key-type",
                    f"Invalid key-type '{key_raw}' for listener '{listener_id}'. Valid types: "
                    "ecdsa-p256, ecdsa-p384",
                    (node.child("key-type") or node).source,
                )
        dns_node = node.child("dns-provider")
        dns = self._dns_provider(dns_node, listener_id) if dns_node is not None else None
        if challenge == "dns-01" and dns is None:
            raise LoadFailure(
                "acme-dns-provider",
                f"ACME configuration for listener '{listener_id}' uses DNS-01 challenge but no "
                "'dns-provider' is configured",
                node.source,
            )
        if challenge != "dns-01" and any(d.startswith("*.") for d in domains):
            raise LoadFailure(
                "acme-wildcard",
                f"ACME configuration for listener '{listener_id}' has wildcard domain(s) but uses "
                "HTTP-01 challenge. Wildcard domains require 'challenge-type \"dns-01\"'",
                node.source,
            )
        return AcmeConfig(
            email=email,
            domains=domains,
            challenge_type=challenge,
            key_type=key_type,
            staging=r.boolean(node, "staging", False),
            server_url=r.string(node, "server-url"),
            storage=r.string(node, "storage", "/var/lib/zentinel/acme") or "",
            renew_before_days=r.integer(node, "renew-before-days", 30),
            eab_kid=eab_kid,
            dns_provider=dns,
            source=node.source,
        )

    def _dns_provider(self, node: SourceNode, listener_id: str) -> DnsProviderConfig:
        r = self.read
        r.check_children(
            node,
            (
                "type",
                "url",
                "auth-header",
                "credentials-file",
                "credentials-env",
                "api-timeout-secs",
                "propagation",
            ),
            f"the dns-provider block of listener '{listener_id}'",
        )
        kind = r.string(node, "type")
        if kind is None:
            raise LoadFailure(
                "dns-provider-type",
                f"DNS provider configuration for listener '{listener_id}' requires 'type'",
                node.source,
            )
        lowered = kind.lower()
        if lowered not in ("hetzner", "cloudflare", "webhook"):
            raise LoadFailure(
                "dns-provider-type",
                f"Unknown DNS provider type '{kind}' for listener '{listener_id}'. Valid types: "
                "hetzner, cloudflare, webhook",
                (node.child("type") or node).source,
            )
        url = r.string(node, "url")
        if lowered == "webhook" and url is None:
            raise LoadFailure(
                "dns-provider-url",
                f"DNS provider 'webhook' for listener '{listener_id}' requires 'url'",
                node.source,
            )
        cred_file = r.string(node, "credentials-file")
        cred_env = r.string(node, "credentials-env")
        if cred_file is None and cred_env is None:
            raise LoadFailure(
                "dns-provider-credentials",
                f"DNS provider configuration for listener '{listener_id}' requires either "
                "'credentials-file' or 'credentials-env'",
                node.source,
            )
        return DnsProviderConfig(
            lowered, url, cred_file, cred_env, r.integer(node, "api-timeout-secs", 30)
        )

    # ------------------------------------------------------------------ routes

    def _routes(self, block: SourceNode, *, track: bool) -> list[Route]:
        self.read.check_children(block, ("route",), "the routes block")
        out = []
        for node in block.children_named("route"):
            route = self._route(node)
            if track:
                if route.id in self._route_ids:
                    raise LoadFailure(
                        "duplicate-route",
                        f"Duplicate route ID '{route.id}' found. Each route ID must be unique "
                        "across all config files.",
                        node.source,
                    )
                self._route_ids.add(route.id)
            out.append(route)
        return out

    def _route(self, node: SourceNode) -> Route:
        r = self.read
        route_id = node.first_value()
        if not isinstance(route_id, str):
            raise LoadFailure(
                "route-id", 'Route requires an ID argument, e.g., route "api" { ... }', node.source
            )
        for child in node.children:
            if child.name not in ROUTE_DIRECTIVES:
                suggestion = (
                    "rename 'match' to 'matches' (the proxy only reads 'matches')"
                    if child.name == "match"
                    else "remove it, or check the spelling against the route directives"
                )
                r.warn(
                    "match-instead-of-matches"
                    if child.name == "match"
                    else "unrecognized-route-directive",
                    f"Unrecognized directive in route block (will be ignored): '{child.name}' "
                    f"in route '{route_id}'",
                    child.source,
                    suggestion,
                )
        r.check_children(node, {c.name for c in node.children}, f"route '{route_id}'", props_from=1)
        route = Route(id=route_id, source=node.source)
        matches = node.child("matches")
        if matches is not None:
            route.matches = self._match_conditions(matches, route_id)
        route.priority = self._priority(node, route_id)
        route.upstream = r.string(node, "upstream")
        route.filters = r.strings(node, "filters")
        handler_raw = r.string(node, "builtin-handler")
        if handler_raw is not None:
            route.builtin_handler = BUILTIN_HANDLERS.get(handler_raw)
            if route.builtin_handler is None:
                r.warn(
                    "enum-fallback",
                    f"Unknown builtin-handler '{handler_raw}' in route '{route_id}'; the proxy "
                    "ignores it and treats the route as a web route",
                    (node.child("builtin-handler") or node).source,
                    "use one of: " + ", ".join(sorted({*BUILTIN_HANDLERS.values()})),
                )
        static = node.child("static-files")
        if static is not None:
            route.static_files = self._static_files(static, route_id)
        schema = node.child("api-schema")
        if schema is not None:
            route.has_api_schema = True
            route.api_schema_file = self._api_schema(schema, route_id)
        inference = node.child("inference")
        if inference is not None:
            route.has_inference = True
            self._inference(inference, route_id)
        cache = node.child("cache")
        if cache is not None:
            route.cache_enabled = r.boolean(cache, "enabled", False)
        policies = node.child("policies")
        if policies is not None:
            self._policies(policies, route_id)
        retry = node.child("retry-policy")
        if retry is not None:
            route.retry_max_attempts = self._closed_u32_block(retry, ("max-attempts",)).get(
                "max-attempts"
            )
        shadow = node.child("shadow")
        if shadow is not None:
            route.shadow = self._shadow(shadow, route_id)
        fallback = node.child("fallback")
        if fallback is not None:
            self._fallback(fallback)
        route.waf_enabled = r.boolean(node, "waf-enabled", False)
        route.websocket = r.boolean(node, "websocket", False)
        route.websocket_inspection = r.boolean(node, "websocket-inspection", False)
        route.service_type = self._derive_service_type(route)
        declared = r.string(node, "service-type")
        if declared is not None and declared.lower() != route.service_type:
            r.warn(
                "service-type-ignored",
                f"Route '{route_id}' declares service-type '{declared}', but the proxy ignores "
                f"service-type and derives '{route.service_type}' from the route's contents",
                (node.child("service-type") or node).source,
                "remove service-type, or add the block that makes the route that type",
            )
        return route

    @staticmethod
    def _derive_service_type(route: Route) -> str:
        if route.static_files is not None:
            return "static"
        if route.builtin_handler is not None:
            return "builtin"
        if route.has_api_schema:
            return "api"
        if route.has_inference:
            return "inference"
        return "web"

    def _match_conditions(self, node: SourceNode, route_id: str) -> list[MatchCondition]:
        r = self.read
        r.check_children(node, MATCH_CONDITIONS, f"the matches block of route '{route_id}'")
        out: list[MatchCondition] = []
        for child in node.children:
            kind = child.name
            if kind not in MATCH_CONDITIONS:
                continue
            strings = [a for a in child.args if isinstance(a, str)]
            if len(strings) != len(child.args) or not strings:
                r.warn(
                    "wrong-value-type",
                    f"Match condition '{kind}' in route '{route_id}' needs string arguments; "
                    "the proxy skips it",
                    child.source,
                    f'{kind} "value"',
                )
                continue
            if kind == "method":
                out.append(MatchCondition(kind, values=strings))
            elif kind in ("header", "query-param"):
                value = strings[1] if len(strings) > 1 else None
                out.append(MatchCondition(kind, value=value, name=strings[0]))
            else:
                out.append(MatchCondition(kind, value=strings[0]))
        return out

    def _priority(self, node: SourceNode, route_id: str) -> int:
        child = node.child("priority")
        if child is None:
            return PRIORITY_NORMAL
        value = child.first_value()
        if is_int(value):
            assert isinstance(value, int)
            return value
        if isinstance(value, str):
            known = PRIORITIES.get(value.lower())
            if known is not None:
                return known
        self.read.warn(
            "enum-fallback",
            f"Unknown priority {describe(value)} in route '{route_id}'; the proxy uses "
            '"normal" (50)',
            child.source,
            "use low, normal, high, critical or an integer",
        )
        return PRIORITY_NORMAL

    def _static_files(self, node: SourceNode, route_id: str) -> StaticFiles:
        r = self.read
        r.check_children(
            node,
            ("root", "index", "directory-listing", "cache-control", "compress", "fallback"),
            f"the static-files block of route '{route_id}'",
        )
        root = r.string(node, "root")
        if root is None:
            raise LoadFailure(
                "static-files-root",
                "Static files configuration requires a 'root' directory, e.g., root "
                '"/var/www/html"',
                node.source,
            )
        return StaticFiles(
            root=root,
            index=r.string(node, "index", "index.html") or "index.html",
            directory_listing=r.boolean(node, "directory-listing", False),
            cache_control=r.string(node, "cache-control", "public, max-age=3600") or "",
            compress=r.boolean(node, "compress", True),
            fallback=r.string(node, "fallback"),
        )

    def _api_schema(self, node: SourceNode, route_id: str) -> str | None:
        r = self.read
        r.check_children(
            node,
            (
                "schema-file",
                "schema-content",
                "validate-requests",
                "validate-responses",
                "strict-mode",
                "request-schema",
                "response-schema",
            ),
            f"the api-schema block of route '{route_id}'",
        )
        schema_file = r.string(node, "schema-file")
        if schema_file is not None and r.string(node, "schema-content") is not None:
            raise LoadFailure(
                "api-schema-exclusive",
                "schema-file and schema-content are mutually exclusive. Use one or the other.",
                node.source,
            )
        r.boolean(node, "validate-requests", True)
        r.boolean(node, "validate-responses", False)
        r.boolean(node, "strict-mode", False)
        return schema_file

    def _policies(self, node: SourceNode, route_id: str) -> None:
        r = self.read
        for child in node.children:
            if child.name in ("request-headers", "response-headers"):
                r.check_children(
                    child, ("rename", "set", "add", "remove"), f"{child.name} of route '{route_id}'"
                )
                continue
            hint = (
                "move cache { … } out of policies, directly into the route"
                if child.name == "cache"
                else "only request-headers and response-headers are read inside policies"
            )
            r.warn(
                "policy-ignored",
                f"'{child.name}' inside policies of route '{route_id}' is ignored by the proxy",
                child.source,
                hint,
            )

    def _closed_u32_block(self, node: SourceNode, keys: tuple[str, ...]) -> dict[str, int]:
        out: dict[str, int] = {}
        for child in node.children:
            key = child.name
            if key not in keys:
                raise LoadFailure("closed-block-key", f"Got unknown key {key}", child.source)
            if not child.entries:
                raise LoadFailure(
                    "closed-block-value",
                    f"Tried to parse u32 for key {key} but did not find a value",
                    child.source,
                )
            value = child.first_value()
            if not is_int(value):
                raise LoadFailure(
                    "closed-block-value",
                    f"Tried to convert value in {key} to u32, but failed",
                    child.source,
                )
            assert isinstance(value, int)
            if value < 0 or value > U32_MAX:
                raise LoadFailure(
                    "closed-block-range",
                    "out of range integral type conversion attempted",
                    child.source,
                )
            if value == 0:
                raise LoadFailure(
                    "closed-block-implausible", f"Implausible value for {key}", child.source
                )
            out[key] = value
        return out

    def _shadow(self, node: SourceNode, route_id: str) -> ShadowConfig:
        r = self.read
        r.check_children(
            node,
            (
                "upstream",
                "percentage",
                "sample-header",
                "timeout-ms",
                "buffer-body",
                "max-body-bytes",
            ),
            f"the shadow block of route '{route_id}'",
        )
        upstream = r.string(node, "upstream")
        if upstream is None:
            raise LoadFailure(
                "shadow-upstream",
                "Shadow configuration requires an 'upstream' field, e.g., upstream \"canary\"",
                node.source,
            )
        percentage = 100.0
        pct = node.child("percentage")
        if pct is not None:
            value = pct.first_value()
            if is_int(value):
                assert isinstance(value, int)
                percentage = float(value)
            elif isinstance(value, str):
                try:
                    percentage = float(value)
                except ValueError:
                    percentage = 100.0
            else:
                r.warn(
                    "wrong-value-type",
                    f"Shadow percentage {describe(value)} in route '{route_id}' is not an "
                    "integer or string; the proxy ignores it and mirrors 100% of requests",
                    pct.source,
                    f"write percentage {_whole(value)} (an integer)",
                )
        sample = None
        sample_node = node.child("sample-header")
        if sample_node is not None:
            args = sample_node.args
            name = args[0] if args else None
            value = args[1] if len(args) > 1 else None
            if not isinstance(name, str):
                raise LoadFailure(
                    "shadow-sample-header",
                    "sample-header name must be a string",
                    sample_node.source,
                )
            if not isinstance(value, str):
                raise LoadFailure(
                    "shadow-sample-header",
                    "sample-header value must be a string",
                    sample_node.source,
                )
            sample = (name, value)
        return ShadowConfig(
            upstream=upstream,
            percentage=percentage,
            sample_header=sample,
            timeout_ms=r.integer(node, "timeout-ms", 5000),
            buffer_body=r.boolean(node, "buffer-body", False),
            max_body_bytes=r.integer(node, "max-body-bytes", 1048576),
        )

    def _fallback(self, node: SourceNode) -> None:
        for child in node.children_named("fallback-upstream"):
            if not isinstance(child.first_value(), str):
                raise LoadFailure(
                    "fallback-upstream-id",
                    'fallback-upstream requires an upstream ID, e.g., fallback-upstream "backup"',
                    child.source,
                )

    def _inference(self, node: SourceNode, route_id: str) -> None:
        r = self.read
        provider = r.string(node, "provider")
        if provider is not None and provider.lower() not in (
            "openai",
            "open-ai",
            "open_ai",
            "anthropic",
            "generic",
        ):
            raise LoadFailure(
                "inference-provider",
                f"Unknown inference provider '{provider}'. Valid providers: openai, anthropic, "
                "generic",
                (node.child("provider") or node).source,
            )
        rate = node.child("rate-limit")
        if rate is not None:
            if node_int(rate, "tokens-per-minute") is None:
                raise LoadFailure(
                    "inference-rate-limit",
                    "Token rate limit requires 'tokens-per-minute'",
                    rate.source,
                )
            method = r.string(rate, "estimation-method")
            if method is not None and method.lower() not in (
                "chars",
                "characters",
                "words",
                "tiktoken",
            ):
                raise LoadFailure(
                    "inference-estimation",
                    f"Unknown token estimation method '{method}'. Valid methods: chars, words, "
                    "tiktoken",
                    rate.source,
                )
        routing = node.child("routing")
        if routing is not None:
            strategy = r.string(routing, "strategy")
            if strategy is not None and strategy.lower().replace("_", "-") not in (
                "least-tokens-queued",
                "round-robin",
                "least-latency",
            ):
                raise LoadFailure(
                    "inference-routing",
                    f"Unknown inference routing strategy '{strategy}'. Valid strategies: "
                    "least-tokens-queued, round-robin, least-latency",
                    routing.source,
                )
        budget = node.child("budget")
        if budget is not None:
            period_node = budget.child("period")
            period = period_node.first_value() if period_node is not None else None
            if period_node is not None and not (
                is_int(period)
                or (
                    isinstance(period, str)
                    and (period.lower() in ("hourly", "daily", "monthly") or period.isdigit())
                )
            ):
                raise LoadFailure(
                    "inference-budget-period",
                    f"Unknown budget period '{period}'. Valid periods: hourly, daily, monthly, "
                    "or a number of seconds",
                    period_node.source,
                )
            if node_int(budget, "limit") is None:
                raise LoadFailure(
                    "inference-budget-limit", "Token budget requires 'limit'", budget.source
                )
        cost = node.child("cost-attribution")
        pricing = cost.child("pricing") if cost is not None else None
        if pricing is not None:
            for model in pricing.children_named("model"):
                if not isinstance(model.first_value(), str):
                    raise LoadFailure(
                        "inference-pricing",
                        "Model pricing requires a pattern argument",
                        model.source,
                    )
                for key in ("input-cost-per-million", "output-cost-per-million"):
                    child = model.child(key)
                    value = child.first_value() if child is not None else None
                    if not isinstance(value, int | float) or isinstance(value, bool):
                        raise LoadFailure(
                            "inference-pricing", f"Model pricing requires '{key}'", model.source
                        )
        model_routing = node.child("model-routing")
        if model_routing is not None:
            for model in model_routing.children_named("model"):
                if not isinstance(model.props.get("upstream"), str):
                    raise LoadFailure(
                        "inference-model-routing",
                        "Model mapping requires 'upstream' attribute",
                        model.source,
                    )
        guardrails = node.child("guardrails")
        if guardrails is not None:
            self._guardrail(guardrails.child("prompt-injection"), pii=False)
            self._guardrail(guardrails.child("pii-detection"), pii=True)
        del route_id

    def _guardrail(self, node: SourceNode | None, *, pii: bool) -> None:
        if node is None:
            return
        r = self.read
        if r.string(node, "agent") is None:
            raise LoadFailure(
                "guardrail-agent",
                "PII detection config requires 'agent' field"
                if pii
                else "Prompt injection config requires 'agent' field",
                node.source,
            )
        action = r.string(node, "action")
        if action is not None:
            valid = ("log", "redact", "block") if pii else ("block", "log", "warn")
            if action.lower() not in valid:
                label = "PII" if pii else "guardrail"
                raise LoadFailure(
                    "guardrail-action",
                    f"Unknown {label} action '{action}'. Valid actions: {', '.join(valid)}",
                    (node.child("action") or node).source,
                )
        mode = r.string(node, "failure-mode")
        if mode is not None and mode.lower() not in ("open", "closed"):
            raise LoadFailure(
                "guardrail-failure-mode",
                f"Unknown failure mode '{mode}'. Valid modes: open, closed",
                (node.child("failure-mode") or node).source,
            )

    # ------------------------------------------------------------------ upstreams

    def _upstreams(self, block: SourceNode) -> dict[str, Upstream]:
        self.read.check_children(block, ("upstream",), "the upstreams block")
        out: dict[str, Upstream] = {}
        for node in block.children_named("upstream"):
            upstream = self._upstream(node)
            if upstream.id in out:
                self.read.warn(
                    "duplicate-upstream-in-block",
                    f"Upstream '{upstream.id}' is defined twice in one upstreams block; the "
                    f"proxy silently keeps the last one (first at {out[upstream.id].source})",
                    node.source,
                    "rename or remove one of them",
                )
            out[upstream.id] = upstream
        return out

    def _upstream(self, node: SourceNode) -> Upstream:
        r = self.read
        upstream_id = node.first_value()
        if not isinstance(upstream_id, str):
            raise LoadFailure(
                "upstream-id",
                'Upstream requires an ID argument, e.g., upstream "backend" { ... }',
                node.source,
            )
        r.check_children(
            node,
            (
                "target",
                "targets",
                "address",
                "load-balancing",
                "health-check",
                "http-version",
                "connection-pool",
                "timeouts",
                "tls",
                "circuit-breaker",
            ),
            f"upstream '{upstream_id}'",
            allowed_props=("address",),
            props_from=1,
        )
        targets = self._targets(node)
        if not targets:
            address = r.string(node, "address")
            prop = node.props.get("address")
            if address is None and isinstance(prop, str):
                address = prop
            if address is not None:
                targets = [Target(address, 1, node.source)]
        if not targets:
            raise LoadFailure(
                "upstream-targets",
                f"Upstream '{upstream_id}' requires at least one target, e.g., target "
                '"127.0.0.1:8081"',
                node.source,
            )
        upstream = Upstream(id=upstream_id, targets=targets, source=node.source)
        lb = node.child("load-balancing")
        if lb is not None:
            upstream.load_balancing = self._load_balancing(lb, upstream_id)
        health = node.child("health-check")
        if health is not None:
            type_node = health.child("type")
            kind = type_node.first_value() if type_node is not None else None
            upstream.health_check = kind if isinstance(kind, str) else None
            r.check_children(
                health,
                (
                    "type",
                    "interval-secs",
                    "timeout-secs",
                    "healthy-threshold",
                    "unhealthy-threshold",
                ),
                f"the health-check of upstream '{upstream_id}'",
            )
        for name, known in (
            ("timeouts", ("connect", "request", "read", "write")),
            ("connection-pool", ("max-connections", "max-idle", "idle-timeout", "max-lifetime")),
            ("http-version", ("min-version", "max-version", "h2-ping-interval", "max-h2-streams")),
        ):
            child = node.child(name)
            if child is not None:
                r.check_children(child, known, f"the {name} block of upstream '{upstream_id}'")
        tls = node.child("tls")
        if tls is not None:
            r.check_children(
                tls,
                ("sni", "insecure-skip-verify", "client-cert", "client-key", "ca-cert"),
                f"the tls block of upstream '{upstream_id}'",
            )
            upstream.tls_sni = r.string(tls, "sni")
            upstream.tls_insecure_skip_verify = r.boolean(tls, "insecure-skip-verify", False)
        breaker = node.child("circuit-breaker")
        if breaker is not None:
            upstream.circuit_breaker = self._closed_u32_block(breaker, CLOSED_BREAKER_KEYS)
        return upstream

    def _targets(self, node: SourceNode) -> list[Target]:
        r = self.read
        out: list[Target] = []
        candidates = list(node.children_named("target"))
        for wrapper in node.children_named("targets"):
            candidates.extend(wrapper.children_named("target"))
        for target in candidates:
            address = target.first_value()
            if not isinstance(address, str):
                address = r.string(target, "address")
            if address is None:
                r.warn(
                    "target-without-address",
                    "Target without an address is dropped by the proxy",
                    target.source,
                    'target "host:port"',
                )
                continue
            weight_value = target.props.get("weight")
            weight = 1
            if is_int(weight_value):
                assert isinstance(weight_value, int)
                weight = weight_value % (1 << 32)
            elif weight_value is None:
                weight = r.integer(target, "weight", 1, 32)
            out.append(Target(address, weight, target.source))
        return out

    def _load_balancing(self, node: SourceNode, upstream_id: str) -> str:
        value = node.first_value()
        if isinstance(value, str):
            known = LOAD_BALANCERS.get(value.lower())
            if known is not None:
                return known
            guess = LOAD_BALANCERS.get(value.lower().replace("-", "_"))
            suggestion = (
                f'write load-balancing "{value.lower().replace("-", "_")}"'
                if guess is not None
                else "use one of: " + ", ".join(sorted(set(LOAD_BALANCERS.values())))
            )
            self.read.warn(
                "load-balancing-fallback",
                f"Upstream '{upstream_id}': load-balancing '{value}' is not recognised; the "
                "proxy silently uses round_robin",
                node.source,
                suggestion,
            )
        else:
            self.read.warn(
                "wrong-value-type",
                f"Upstream '{upstream_id}': load-balancing expects a string but got "
                f"{describe(value)}; the proxy uses round_robin",
                node.source,
                'load-balancing "round_robin"',
            )
        return "round_robin"

    # ------------------------------------------------------------------ filters

    def _filters(self, block: SourceNode) -> dict[str, Filter]:
        self.read.check_children(block, ("filter",), "the filters block")
        out: dict[str, Filter] = {}
        for node in block.children_named("filter"):
            flt = self._filter(node)
            if flt.id in out:
                self.read.warn(
                    "duplicate-filter-in-block",
                    f"Filter '{flt.id}' is defined twice in one filters block; the proxy "
                    f"silently keeps the last one (first at {out[flt.id].source})",
                    node.source,
                    "rename or remove one of them",
                )
            out[flt.id] = flt
        return out

    def _filter(self, node: SourceNode) -> Filter:
        r = self.read
        filter_id = node.first_value()
        if not isinstance(filter_id, str):
            raise LoadFailure(
                "filter-id",
                'Filter requires an ID argument, e.g., filter "auth" { ... }',
                node.source,
            )
        kind = r.string(node, "type")
        if kind is None:
            raise LoadFailure(
                "filter-type",
                f"Filter definition requires a 'type' field. Valid types: {FILTER_TYPE_LIST}",
                node.source,
            )
        if kind not in FILTER_TYPES:
            raise LoadFailure(
                "filter-type",
                f"Unknown filter type: '{kind}'. Valid types: {FILTER_TYPE_LIST}",
                (node.child("type") or node).source,
            )
        flt = Filter(id=filter_id, type=kind, source=node.source)
        if kind == "rate-limit":
            backend = r.string(node, "backend")
            if backend is not None and backend not in ("local", "redis", "memcached", "memcache"):
                raise LoadFailure(
                    "rate-limit-backend",
                    f"Unknown rate limit backend: '{backend}'. Valid backends: local, redis, "
                    "memcached",
                    (node.child("backend") or node).source,
                )
            flt.settings = {
                "max_rps": r.integer(node, "max-rps", 100, 32),
                "burst": r.integer(node, "burst", 10, 32),
                "backend": backend or "local",
            }
        elif kind == "agent":
            agent = r.string(node, "agent")
            if agent is None:
                raise LoadFailure(
                    "agent-filter-agent",
                    "Agent filter requires an 'agent' field referencing an agent definition",
                    node.source,
                )
            flt.agent = agent
        elif kind == "geo":
            database = r.string(node, "database-path")
            if database is None:
                raise LoadFailure(
                    "geo-database",
                    "Geo filter requires 'database-path' pointing to a GeoIP database file",
                    node.source,
                )
            flt.settings = {"database_path": database}
        return flt

    # ------------------------------------------------------------------ agents

    def _agents(self, block: SourceNode, *, track: bool) -> list[Agent]:
        self.read.check_children(block, ("agent",), "the agents block")
        out = []
        for node in block.children_named("agent"):
            agent = self._agent(node)
            if track:
                if agent.id in self._agent_ids:
                    raise LoadFailure(
                        "duplicate-agent",
                        f"Duplicate agent ID '{agent.id}' found. Each agent ID must be unique "
                        "across all config files.",
                        node.source,
                    )
                self._agent_ids.add(agent.id)
            out.append(agent)
        return out

    def _agent(self, node: SourceNode) -> Agent:
        r = self.read
        agent_id = node.first_value()
        if not isinstance(agent_id, str):
            raise LoadFailure("agent-id", "Agent requires an ID as first argument", node.source)
        if not node.has_block:
            raise LoadFailure(
                "agent-block", f"Agent '{agent_id}' requires configuration block", node.source
            )
        r.check_children(
            node,
            (
                "unix-socket",
                "grpc",
                "http",
                "timeout-ms",
                "failure-mode",
                "events",
                "circuit-breaker",
                "max-request-body-bytes",
                "max-response-body-bytes",
                "request-body-mode",
                "response-body-mode",
                "chunk-timeout-ms",
                "max-concurrent-calls",
                "config",
                "protocol-version",
                "type",
            ),
            f"agent '{agent_id}'",
            allowed_props=("type",),
            props_from=1,
        )
        type_prop = node.props.get("type")
        agent_type = f"custom({agent_id})"
        if isinstance(type_prop, str):
            agent_type = {
                "waf": "waf",
                "auth": "auth",
                "rate_limit": "rate_limit",
                "rate-limit": "rate_limit",
            }.get(type_prop, f"custom({type_prop})")
        type_child = node.child("type")
        if type_child is not None:
            r.warn(
                "agent-type-child-ignored",
                f"Agent '{agent_id}': a 'type' child node is ignored (the agent type is read "
                f"from the type= property); this agent is typed {agent_type}",
                type_child.source,
                f'write agent "{agent_id}" type={describe(type_child.first_value())} {{ … }}',
            )
        transport = endpoint = None
        for child in node.children:
            if child.name not in ("unix-socket", "grpc", "http"):
                continue
            value = child.first_value()
            if not isinstance(value, str):
                attr = {"unix-socket": "path", "grpc": "address", "http": "url"}[child.name]
                raise LoadFailure(
                    "agent-transport",
                    f"{child.name} requires '{attr}' attribute or argument",
                    child.source,
                )
            transport, endpoint = child.name, value
        mode_raw = r.string(node, "failure-mode")
        failure_mode = "open"
        if mode_raw is not None:
            if mode_raw not in FAILURE_MODES:
                raise LoadFailure(
                    "agent-failure-mode",
                    f"Unknown failure mode: '{mode_raw}'. Use 'open' or 'closed'",
                    (node.child("failure-mode") or node).source,
                )
            failure_mode = FAILURE_MODES[mode_raw]
        events = ["request_headers"]
        if node.child("events") is not None:
            events = []
            for raw in r.strings(node, "events"):
                if raw not in AGENT_EVENTS:
                    raise LoadFailure(
                        "agent-event",
                        f"Unknown agent event: '{raw}'",
                        (node.child("events") or node).source,
                    )
                events.append(AGENT_EVENTS[raw])
        modes = {}
        for name in ("request-body-mode", "response-body-mode"):
            raw_mode = r.string(node, name)
            modes[name] = self._body_mode(raw_mode, agent_id, node.child(name) or node)
        breaker = node.child("circuit-breaker")
        breaker_values = (
            self._closed_u32_block(breaker, CLOSED_BREAKER_KEYS) if breaker is not None else {}
        )
        if node.child("protocol-version") is not None:
            r.warn(
                "agent-protocol-version-deprecated",
                f"Agent '{agent_id}': 'protocol-version' is deprecated and ignored",
                (node.child("protocol-version") or node).source,
                "remove protocol-version",
            )
        if transport is None or endpoint is None:
            raise LoadFailure(
                "agent-transport",
                f"Agent '{agent_id}' requires a transport (unix-socket, grpc, or http)",
                node.source,
            )
        return Agent(
            id=agent_id,
            type=agent_type,
            transport=transport,
            endpoint=endpoint,
            timeout_ms=r.integer(node, "timeout-ms", 1000),
            failure_mode=failure_mode,
            events=events,
            max_request_body_bytes=r.optional_int(node, "max-request-body-bytes"),
            max_response_body_bytes=r.optional_int(node, "max-response-body-bytes"),
            request_body_mode=modes["request-body-mode"],
            response_body_mode=modes["response-body-mode"],
            chunk_timeout_ms=r.integer(node, "chunk-timeout-ms", 5000),
            max_concurrent_calls=r.integer(node, "max-concurrent-calls", 100),
            circuit_breaker=breaker_values,
            source=node.source,
        )

    @staticmethod
    def _body_mode(raw: str | None, agent_id: str, node: SourceNode) -> str:
        if raw is None:
            return "buffer"
        if raw in ("buffer", "stream", "hybrid"):
            return raw
        if raw.startswith("hybrid:"):
            threshold = raw.split(":", 1)[1]
            if not threshold.isdigit():
                raise LoadFailure(
                    "agent-body-mode",
                    f"Agent '{agent_id}': invalid hybrid threshold '{threshold}', expected number",
                    node.source,
                )
            return raw
        raise LoadFailure(
            "agent-body-mode",
            f"Agent '{agent_id}': unknown body streaming mode '{raw}'. Valid modes: buffer, "
            "stream, hybrid, hybrid:<bytes>",
            node.source,
        )

    # ------------------------------------------------------------------ waf

    def _waf(self, node: SourceNode) -> WafConfig:
        r = self.read
        r.check_children(
            node, ("engine", "mode", "audit-log", "ruleset", "body-inspection"), "the waf block"
        )
        waf = WafConfig(source=node.source)
        engine = r.string(node, "engine")
        if engine is not None:
            lowered = engine.lower()
            waf.engine = (
                "mod_security"
                if lowered in ("mod_security", "modsecurity")
                else "coraza"
                if lowered == "coraza"
                else f"custom({engine})"
            )
        mode = r.string(node, "mode")
        if mode is not None:
            lowered = mode.lower()
            if lowered == "off":
                waf.mode = "off"
            elif lowered in ("detection", "detect"):
                waf.mode = "detection"
            elif lowered in ("prevention", "prevent", "block"):
                waf.mode = "prevention"
            else:
                raise LoadFailure(
                    "waf-mode",
                    f"Invalid WAF mode '{mode}'. Valid options: off, detection, prevention",
                    (node.child("mode") or node).source,
                )
        waf.audit_log = r.boolean(node, "audit-log", True)
        ruleset = node.child("ruleset")
        if ruleset is not None:
            level = r.integer(ruleset, "paranoia-level", 1)
            if not 1 <= level <= 4:
                raise LoadFailure(
                    "waf-paranoia-level",
                    f"WAF paranoia level must be between 1 and 4, got {level}",
                    (ruleset.child("paranoia-level") or ruleset).source,
                )
            waf.paranoia_level = level
            for exclusion in ruleset.children_named("exclusion"):
                self._waf_exclusion(exclusion)
        return waf

    def _waf_exclusion(self, node: SourceNode) -> None:
        ids = [a for a in node.args if a is not None]
        rule_ids = node.child("rule-ids")
        if rule_ids is not None:
            ids.extend(a for a in rule_ids.args if a is not None)
        scope = node.props.get("scope")
        if scope is None:
            scope = self.read.string(node, "scope")
        if scope is not None:
            valid = isinstance(scope, str) and (
                scope == "global" or scope.startswith(("path=", "host="))
            )
            if not valid:
                raise LoadFailure(
                    "waf-exclusion-scope",
                    f"Invalid exclusion scope '{scope}'. Valid scopes: global, path=<prefix>, "
                    "host=<host>",
                    node.source,
                )
        if not ids:
            raise LoadFailure(
                "waf-exclusion-ids", "WAF rule exclusion requires at least one rule ID", node.source
            )

    # ------------------------------------------------------------------ limits & co

    def _limits(self, node: SourceNode) -> Limits:
        r = self.read
        keys = (
            "max-header-size",
            "max-header-count",
            "max-body-size",
            "max-connections-per-client",
            "max-total-connections",
            "max-in-flight-requests",
        )
        for child in node.children:
            if child.name not in keys:
                stripped = child.name.removesuffix("-bytes")
                suggestion = (
                    f"rename to '{stripped}'" if stripped in keys else "remove it (not read)"
                )
                r.warn(
                    "limits-key-ignored",
                    f"Limit '{child.name}' is not read by the proxy; the default applies",
                    child.source,
                    suggestion,
                )
        return Limits(
            max_header_size=r.integer(node, "max-header-size", 8192),
            max_header_count=r.integer(node, "max-header-count", 100),
            max_body_size=r.integer(node, "max-body-size", 10 * 1024 * 1024),
            max_connections_per_client=r.optional_int(node, "max-connections-per-client"),
            max_total_connections=r.optional_int(node, "max-total-connections"),
            max_in_flight_requests=r.optional_int(node, "max-in-flight-requests"),
            source=node.source,
        )

    def _observability(self, node: SourceNode) -> Observability:
        r = self.read
        r.check_children(node, ("logging", "metrics", "tracing"), "the observability block")
        obs = Observability()
        logging = node.child("logging")
        if logging is not None:
            r.check_children(
                logging,
                ("level", "format", "access-log", "error-log", "audit-log"),
                "the logging block",
            )
            obs.log_level = r.string(logging, "level", "info") or "info"
            obs.log_format = r.string(logging, "format", "json") or "json"
            for key, value, default in (
                ("level", obs.log_level, "info"),
                ("format", obs.log_format, "json"),
            ):
                if value != default:
                    r.warn(
                        "logging-not-applied",
                        f"Logging {key} '{value}' is not applied by the proxy (it logs {default})",
                        (logging.child(key) or logging).source,
                        f'use {key} "{default}" or remove it',
                    )
        metrics = node.child("metrics")
        if metrics is not None:
            r.check_children(
                metrics, ("enabled", "address", "path", "high-cardinality"), "the metrics block"
            )
            obs.metrics_enabled = r.boolean(metrics, "enabled", True)
            obs.metrics_address = r.string(metrics, "address", "0.0.0.0:9090") or ""
            obs.metrics_path = r.string(metrics, "path", "/metrics") or ""
        tracing = node.child("tracing")
        if tracing is not None:
            backend = tracing.child("backend")
            if backend is None:
                raise LoadFailure(
                    "tracing-backend", "tracing config requires 'backend' block", tracing.source
                )
            kind = backend.first_value()
            if not isinstance(kind, str):
                raise LoadFailure(
                    "tracing-backend",
                    "backend requires a type (otlp, jaeger, or zipkin)",
                    backend.source,
                )
            if kind not in ("otlp", "jaeger", "zipkin"):
                raise LoadFailure(
                    "tracing-backend",
                    f"Unknown tracing backend '{kind}'. Supported: otlp, jaeger, zipkin",
                    backend.source,
                )
            endpoint = r.string(backend, "endpoint")
            if endpoint is None:
                raise LoadFailure(
                    "tracing-endpoint",
                    "backend requires 'endpoint' configuration",
                    backend.source,
                )
            obs.tracing_backend = kind
            obs.tracing_endpoint = endpoint
            obs.sampling_rate = r.number(tracing, "sampling-rate", 0.01)
        return obs

    def _rate_limits(self, node: SourceNode) -> dict[str, object]:
        r = self.read
        r.check_children(
            node, ("default-rps", "default-burst", "key", "global"), "the rate-limits block"
        )
        out: dict[str, object] = {}
        self._rate_limit_key(node)
        glob = node.child("global")
        if glob is not None:
            if node_int(glob, "max-rps") is None:
                raise LoadFailure(
                    "rate-limits-global", "global rate limit requires 'max-rps'", glob.source
                )
            self._rate_limit_key(glob)
            out["global_max_rps"] = node_int(glob, "max-rps")
        out["default_rps"] = r.optional_int(node, "default-rps")
        return out

    def _rate_limit_key(self, node: SourceNode) -> None:
        key = self.read.string(node, "key")
        if key is None:
            return
        lowered = key.lower()
        if lowered in RATE_LIMIT_KEYS or lowered.startswith("header:"):
            return
        raise LoadFailure(
            "rate-limit-key",
            f"Unknown rate limit key: '{key}'. Valid values: client-ip, path, route, "
            "client-ip-and-path, header:<name>",
            (node.child("key") or node).source,
        )

    def _global_cache(self, node: SourceNode) -> str | None:
        r = self.read
        backend = r.string(node, "backend")
        if backend is None:
            return None
        lowered = backend.lower()
        if lowered not in ("memory", "disk", "hybrid"):
            raise LoadFailure(
                "cache-backend",
                f"Invalid cache backend '{backend}'. Valid options: memory, disk, hybrid",
                (node.child("backend") or node).source,
            )
        if lowered in ("disk", "hybrid") and r.string(node, "disk-path") is None:
            raise LoadFailure(
                "cache-disk-path",
                "Disk cache backend requires 'disk-path' to be specified",
                node.source,
            )
        return lowered

    # ------------------------------------------------------------------ namespaces

    def _namespace(self, node: SourceNode) -> Namespace:
        ns_id = node.first_value()
        if not isinstance(ns_id, str):
            raise LoadFailure(
                "namespace-id", "Namespace requires an ID as first argument", node.source
            )
        if not node.has_block:
            raise LoadFailure(
                "namespace-block",
                f"Namespace '{ns_id}' requires a configuration block with braces {{}}",
                node.source,
            )
        ns = Namespace(id=ns_id, source=node.source)
        for child in node.children:
            name = child.name
            if name == "limits":
                ns.limits = self._limits(child)
            elif name == "listeners":
                ns.listeners = self._listeners(child, global_scope=False)
            elif name == "upstreams":
                ns.upstreams = self._upstreams(child)
            elif name == "routes":
                ns.routes = self._scoped_routes(child, ns_id, None)
            elif name == "agents":
                ns.agents = self._agents(child, track=False)
            elif name == "filters":
                ns.filters = self._filters(child)
            elif name == "service":
                ns.services.append(self._service(child, ns_id))
            elif name == "exports":
                ns.exports = self._exports(child)
            else:
                raise LoadFailure(
                    "namespace-block-unknown",
                    f"Unknown block '{name}' in namespace '{ns_id}'\nValid blocks are: "
                    f"{NAMESPACE_BLOCKS}",
                    child.source,
                )
        return ns

    def _scoped_routes(self, block: SourceNode, ns_id: str, svc_id: str | None) -> list[Route]:
        routes = self._routes(block, track=False)
        for route in routes:
            route.namespace = ns_id
            route.service = svc_id
        return routes

    def _service(self, node: SourceNode, ns_id: str) -> Service:
        svc_id = node.first_value()
        if not isinstance(svc_id, str):
            raise LoadFailure("service-id", "Service requires an ID as first argument", node.source)
        if not node.has_block:
            raise LoadFailure(
                "service-block",
                f"Service '{svc_id}' requires a configuration block with braces {{}}",
                node.source,
            )
        svc = Service(id=svc_id, source=node.source)
        for child in node.children:
            name = child.name
            if name == "listener":
                svc.listener = self._service_listener(child)
            elif name == "upstreams":
                svc.upstreams = self._upstreams(child)
            elif name == "routes":
                svc.routes = self._scoped_routes(child, ns_id, svc_id)
            elif name == "agents":
                svc.agents = self._agents(child, track=False)
            elif name == "filters":
                svc.filters = self._filters(child)
            elif name == "limits":
                svc.limits = self._limits(child)
            else:
                raise LoadFailure(
                    "service-block-unknown",
                    f"Unknown block '{name}' in service '{svc_id}'\nValid blocks are: "
                    f"{SERVICE_BLOCKS}",
                    child.source,
                )
        return svc

    def _service_listener(self, node: SourceNode) -> Listener:
        first = node.first_value()
        listener_id = first if isinstance(first, str) else None
        if listener_id is None:
            listener_id = self.read.string(node, "id", "service-listener") or "service-listener"
        address = self.read.string(node, "address")
        if address is None:
            raise LoadFailure(
                "listener-address",
                f"Listener '{listener_id}' requires an 'address' field",
                node.source,
            )
        protocol = (self.read.string(node, "protocol", "http") or "http").lower()
        protocol = {"http2": "h2", "http3": "h3"}.get(protocol, protocol)
        if protocol not in ("http", "https", "h2", "h3"):
            raise LoadFailure(
                "listener-protocol",
                f"Invalid protocol '{protocol}' for listener '{listener_id}'. Valid protocols: "
                "http, https, h2, h3",
                node.source,
            )
        return Listener(id=listener_id, address=address, protocol=protocol, source=node.source)

    def _exports(self, node: SourceNode) -> Exports:
        exports = Exports()
        for child in node.children:
            values = [a for a in child.args if isinstance(a, str)]
            if child.name == "upstreams":
                exports.upstreams.extend(values)
            elif child.name == "agents":
                exports.agents.extend(values)
            elif child.name == "filters":
                exports.filters.extend(values)
            else:
                raise LoadFailure(
                    "export-type",
                    f"Unknown export type '{child.name}'. Valid types: upstreams, agents, filters",
                    child.source,
                )
        return exports


def _whole(value: object) -> int:
    """A float percentage as the integer to suggest (100 for anything else, inf and NaN too)."""
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    return 100


def node_int(node: SourceNode, name: str) -> int | None:
    """Integer first entry of the first `name` child, or None."""
    child = node.child(name)
    value = child.first_value() if child is not None else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _is_socket_address(address: str) -> bool:
    import ipaddress

    host, sep, port = address.rpartition(":")
    if not sep or parse_unsigned(port, 65535) is None:
        return False
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            return ipaddress.ip_address(host).version == 6
        except ValueError:
            return False
    try:
        return ipaddress.ip_address(host).version == 4
    except ValueError:
        return False


__all__ = ["PRIORITY_LOW", "Loader"]
