"""The semantic model of a proxy configuration, as the proxy reads it (defaults applied).

Plain dataclasses, so the bundle diff and the risk scoring can compare two configs field by
field. Every entity keeps `source`, the place it was declared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sentinel_cp.bundles.kdl.diagnostics import UNKNOWN_SOURCE, SourceRef

PRIORITY_LOW = 10
PRIORITY_NORMAL = 50


@dataclass
class SystemConfig:
    """`system { … }` (alias `server`)."""

    worker_threads: int = 0
    max_connections: int = 10000
    graceful_shutdown_timeout_secs: int = 30
    daemon: bool = False
    pid_file: str | None = None
    user: str | None = None
    group: str | None = None
    working_directory: str | None = None
    trace_id_format: str = "tinyflake"
    auto_reload: bool = False
    route_cache_size: int = 1000
    source: SourceRef = UNKNOWN_SOURCE


@dataclass
class DnsProviderConfig:
    """ACME `dns-provider { … }`."""

    type: str
    url: str | None = None
    credentials_file: str | None = None
    credentials_env: str | None = None
    api_timeout_secs: int = 30


@dataclass
class AcmeConfig:
    """ACME certificate management for a listener or an SNI certificate."""

    email: str
    domains: list[str]
    challenge_type: str = "http-01"
    key_type: str = "ecdsa-p256"
    staging: bool = False
    server_url: str | None = None
    storage: str = "/var/lib/zentinel/acme"
    renew_before_days: int = 30
    eab_kid: str | None = None
    dns_provider: DnsProviderConfig | None = None
    source: SourceRef = UNKNOWN_SOURCE


@dataclass
class SniCertificate:
    """`sni { … }` inside a listener's tls."""

    hostnames: list[str]
    priority_hostnames: list[str]
    cert_file: str | None
    key_file: str | None
    acme: AcmeConfig | None
    source: SourceRef = UNKNOWN_SOURCE


@dataclass
class ListenerTls:
    """A listener's `tls { … }`."""

    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None
    client_auth: bool = False
    min_version: str = "1.2"
    max_version: str | None = None
    cipher_suites: list[str] = field(default_factory=list)
    ocsp_stapling: bool = True
    session_resumption: bool = True
    acme: AcmeConfig | None = None
    sni: list[SniCertificate] = field(default_factory=list)
    source: SourceRef = UNKNOWN_SOURCE


@dataclass
class Listener:
    """`listener "ID" { … }`."""

    id: str
    address: str
    protocol: str = "http"
    tls: ListenerTls | None = None
    default_route: str | None = None
    namespace: str | None = None
    request_timeout_secs: int = 60
    keepalive_timeout_secs: int = 75
    max_concurrent_streams: int = 100
    keepalive_max_requests: int | None = None
    source: SourceRef = UNKNOWN_SOURCE


@dataclass
class MatchCondition:
    """One route match condition (conditions of a route are OR-ed)."""

    kind: str
    value: str | None = None
    name: str | None = None
    values: list[str] = field(default_factory=list)


@dataclass
class StaticFiles:
    """`static-files { … }`."""

    root: str
    index: str = "index.html"
    directory_listing: bool = False
    cache_control: str = "public, max-age=3600"
    compress: bool = True
    fallback: str | None = None


@dataclass
class ShadowConfig:
    """`shadow { … }` traffic mirroring."""

    upstream: str
    percentage: float = 100.0
    sample_header: tuple[str, str] | None = None
    timeout_ms: int = 5000
    buffer_body: bool = False
    max_body_bytes: int = 1048576


@dataclass
class Route:
    """`route "ID" { … }`."""

    id: str
    priority: int = PRIORITY_NORMAL
    matches: list[MatchCondition] = field(default_factory=list)
    upstream: str | None = None
    filters: list[str] = field(default_factory=list)
    service_type: str = "web"
    builtin_handler: str | None = None
    static_files: StaticFiles | None = None
    api_schema_file: str | None = None
    has_api_schema: bool = False
    has_inference: bool = False
    retry_max_attempts: int | None = None
    shadow: ShadowConfig | None = None
    cache_enabled: bool = False
    waf_enabled: bool = False
    websocket: bool = False
    websocket_inspection: bool = False
    namespace: str | None = None
    service: str | None = None
    source: SourceRef = UNKNOWN_SOURCE


@dataclass
class Target:
    """One upstream target."""

    address: str
    weight: int = 1
    source: SourceRef = UNKNOWN_SOURCE


@dataclass
class Upstream:
    """`upstream "ID" { … }`."""

    id: str
    targets: list[Target]
    load_balancing: str = "round_robin"
    health_check: str | None = None
    circuit_breaker: dict[str, int] = field(default_factory=dict)
    tls_sni: str | None = None
    tls_insecure_skip_verify: bool = False
    source: SourceRef = UNKNOWN_SOURCE


@dataclass
class Filter:
    """`filter "ID" { type "…" … }`; `settings` holds the type-specific values read."""

    id: str
    type: str
    agent: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    source: SourceRef = UNKNOWN_SOURCE


@dataclass
class Agent:
    """`agent "ID" [type=…] { transport … }`."""

    id: str
    type: str
    transport: str
    endpoint: str
    timeout_ms: int = 1000
    failure_mode: str = "open"
    events: list[str] = field(default_factory=lambda: ["request_headers"])
    max_request_body_bytes: int | None = None
    max_response_body_bytes: int | None = None
    request_body_mode: str = "buffer"
    response_body_mode: str = "buffer"
    chunk_timeout_ms: int = 5000
    max_concurrent_calls: int = 100
    circuit_breaker: dict[str, int] = field(default_factory=dict)
    source: SourceRef = UNKNOWN_SOURCE


@dataclass
class WafConfig:
    """Top-level `waf { … }`."""

    engine: str = "coraza"
    mode: str = "prevention"
    audit_log: bool = True
    paranoia_level: int = 1
    source: SourceRef = UNKNOWN_SOURCE


@dataclass
class Limits:
    """`limits { … }` (only the keys the proxy reads)."""

    max_header_size: int = 8192
    max_header_count: int = 100
    max_body_size: int = 10 * 1024 * 1024
    max_body_buffer: int = 1024 * 1024
    max_connections_per_client: int | None = None
    max_total_connections: int | None = None
    max_in_flight_requests: int | None = None
    source: SourceRef = UNKNOWN_SOURCE


@dataclass
class Observability:
    """`observability { … }` (the parts that matter to validation and diffs)."""

    log_level: str = "info"
    log_format: str = "json"
    metrics_enabled: bool = True
    metrics_address: str = "0.0.0.0:9090"
    metrics_path: str = "/metrics"
    tracing_backend: str | None = None
    tracing_endpoint: str | None = None
    sampling_rate: float = 0.01


@dataclass
class Exports:
    """A namespace's `exports { … }`."""

    upstreams: list[str] = field(default_factory=list)
    agents: list[str] = field(default_factory=list)
    filters: list[str] = field(default_factory=list)


@dataclass
class Service:
    """`service "ID" { … }` inside a namespace."""

    id: str
    listener: Listener | None = None
    routes: list[Route] = field(default_factory=list)
    upstreams: dict[str, Upstream] = field(default_factory=dict)
    filters: dict[str, Filter] = field(default_factory=dict)
    agents: list[Agent] = field(default_factory=list)
    limits: Limits | None = None
    source: SourceRef = UNKNOWN_SOURCE


@dataclass
class Namespace:
    """`namespace "ID" { … }`."""

    id: str
    listeners: list[Listener] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    upstreams: dict[str, Upstream] = field(default_factory=dict)
    filters: dict[str, Filter] = field(default_factory=dict)
    agents: list[Agent] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)
    exports: Exports = field(default_factory=Exports)
    limits: Limits | None = None
    source: SourceRef = UNKNOWN_SOURCE


@dataclass
class ProxyConfig:
    """The whole configuration after the load phase."""

    schema_version: str = "1.0"
    system: SystemConfig = field(default_factory=SystemConfig)
    listeners: list[Listener] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    upstreams: dict[str, Upstream] = field(default_factory=dict)
    filters: dict[str, Filter] = field(default_factory=dict)
    agents: list[Agent] = field(default_factory=list)
    waf: WafConfig | None = None
    namespaces: list[Namespace] = field(default_factory=list)
    limits: Limits = field(default_factory=Limits)
    observability: Observability = field(default_factory=Observability)
    rate_limit_defaults: dict[str, Any] = field(default_factory=dict)
    cache_backend: str | None = None
    source_files: list[str] = field(default_factory=list)
