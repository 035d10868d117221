# ruff: noqa: E501 - the rule table keeps each crafted config on one line
"""One passing and one failing case per rule and message of reference §1.4-1.5, one per warning."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sentinel_cp.bundles.kdl import validate_bundle
from sentinel_cp.bundles.kdl.validator import ValidationResult

SYSTEM = "system { worker-threads 0 }\n"
LISTENER = 'listeners {\n    listener "http" {\n        address "0.0.0.0:8080"\n    }\n}\n'
UPSTREAM = 'upstreams {\n    upstream "backend" {\n        target "127.0.0.1:8081"\n    }\n}\n'
ROUTE = 'routes {\n    route "r" {\n        matches { path-prefix "/" }\n        upstream "backend"\n    }\n}\n'
BASE = SYSTEM + LISTENER + UPSTREAM + ROUTE


def run(text: str, **files: str) -> ValidationResult:
    bundle = {"sentinel.kdl": text}
    bundle.update({k.replace("__", "/").replace("_kdl", ".kdl"): v for k, v in files.items()})
    return validate_bundle(bundle)


def route(body: str, rid: str = "x") -> str:
    return f'routes {{\n    route "{rid}" {{\n{body}\n    }}\n}}\n'


def listener(body: str) -> str:
    return f'listeners {{\n    listener "https" {{\n        address "0.0.0.0:8443"\n{body}\n    }}\n}}\n'


def tls(body: str) -> str:
    return listener(f"        tls {{\n{body}\n        }}")


def acme(body: str) -> str:
    return tls(f"            acme {{\n{body}\n            }}")


ACME_OK = 'email "a@example.com"\ndomains "example.com"'
DNS_OK = 'challenge-type "dns-01"\ndns-provider { type "cloudflare"; credentials-env "CF" }'


def agent(body: str, head: str = '"a"') -> str:
    return f"agents {{\n    agent {head} {{\n{body}\n    }}\n}}\n"


def filters(body: str, fid: str = "f") -> str:
    return f'filters {{\n    filter "{fid}" {{\n{body}\n    }}\n}}\n'


def inference(body: str) -> str:
    return route(f'matches {{ path "/v1" }}\nupstream "backend"\ninference {{\n{body}\n}}')


# (id, config text, substring of the one expected error). Each failing case has a passing twin
# in PASSING below (same rule, compliant value).
FAILING = [
    (
        "kdl-syntax",
        BASE + "x true\n",
        "KDL parse error during include expansion: Failed to parse KDL document",
    ),
    (
        "unknown-top-level",
        BASE + "settings { }\n",
        "Unknown top-level configuration block: 'settings'\nValid blocks are: schema-version, system",
    ),
    (
        "missing-system",
        LISTENER + UPSTREAM + ROUTE,
        "Missing required 'system' configuration block",
    ),
    (
        "missing-listeners",
        SYSTEM + UPSTREAM + ROUTE,
        "Missing required 'listeners' configuration block",
    ),
    (
        "empty-listeners",
        SYSTEM + "listeners { }\n" + UPSTREAM + ROUTE,
        "Missing required 'listeners' configuration block",
    ),
    (
        "listener-id",
        SYSTEM + 'listeners { listener { address "0.0.0.0:1" } }\n',
        'Listener requires an ID argument, e.g., listener "http" { ... }',
    ),
    (
        "listener-address",
        SYSTEM + 'listeners { listener "h" address="0.0.0.0:1" { } }\n',
        "Listener 'h' requires an 'address' field, e.g., address \"0.0.0.0:8080\"",
    ),
    (
        "listener-protocol",
        SYSTEM + 'listeners { listener "h" { address "0.0.0.0:1"; protocol "tcp" } }\n',
        "Invalid protocol 'tcp' for listener 'h'. Valid protocols: http, https, h2, h3",
    ),
    (
        "tls-files",
        SYSTEM + tls('cert-file "/c.pem"'),
        "TLS configuration for listener 'https' requires either 'cert-file' and 'key-file', or an 'acme' block",
    ),
    (
        "sni-both-hostnames",
        SYSTEM
        + tls(
            'cert-file "/c"\nkey-file "/k"\nsni { hostnames "a"; priority-hostnames "b"; cert-file "/c"; key-file "/k" }'
        ),
        "SNI certificate for listener 'https' cannot specify both 'hostnames' and 'priority-hostnames'",
    ),
    (
        "sni-acme-and-files",
        SYSTEM
        + tls(f'cert-file "/c"\nkey-file "/k"\nsni {{ cert-file "/c"\nacme {{ {ACME_OK} }} }}'),
        "SNI certificate for listener 'https' cannot specify both manual files and an 'acme' block",
    ),
    (
        "sni-files",
        SYSTEM + tls('cert-file "/c"\nkey-file "/k"\nsni { hostnames "a"; cert-file "/c" }'),
        "SNI certificate for listener 'https' requires either both 'cert-file' and 'key-file', or an 'acme' block",
    ),
    (
        "acme-email",
        SYSTEM + acme('domains "example.com"'),
        "ACME configuration for listener 'https' requires 'email'",
    ),
    (
        "acme-domains",
        SYSTEM + acme('email "a@example.com"'),
        "ACME configuration for listener 'https' requires at least one domain in 'domains'",
    ),
    (
        "acme-eab-kid",
        SYSTEM + acme(ACME_OK + '\neab { hmac-key "h" }'),
        "ACME EAB configuration requires 'kid'",
    ),
    (
        "acme-eab-hmac",
        SYSTEM + acme(ACME_OK + '\neab { kid "k" }'),
        "ACME EAB configuration requires 'hmac-key'",
    ),
    (
        "acme-key-type",
        SYSTEM + acme(ACME_OK + '\nkey-type "rsa"'),
        "Invalid key-type 'rsa' for listener 'https'. Valid types: ecdsa-p256, ecdsa-p384",
    ),
    (
        "acme-dns-no-provider",
        SYSTEM + acme(ACME_OK + '\nchallenge-type "dns-01"'),
        "ACME configuration for listener 'https' uses DNS-01 challenge but no 'dns-provider' is configured",
    ),
    (
        "acme-wildcard-http01",
        SYSTEM + acme('email "a@example.com"\ndomains "*.example.com"'),
        "has wildcard domain(s) but uses HTTP-01 challenge. Wildcard domains require 'challenge-type \"dns-01\"'",
    ),
    (
        "dns-type-missing",
        SYSTEM + acme(ACME_OK + '\nchallenge-type "dns"\ndns-provider { credentials-env "X" }'),
        "DNS provider configuration for listener 'https' requires 'type'",
    ),
    (
        "dns-type-unknown",
        SYSTEM
        + acme(
            ACME_OK + '\nchallenge-type "dns"\ndns-provider { type "route53"; credentials-env "X" }'
        ),
        "Unknown DNS provider type 'route53' for listener 'https'",
    ),
    (
        "dns-webhook-url",
        SYSTEM
        + acme(
            ACME_OK + '\nchallenge-type "dns"\ndns-provider { type "webhook"; credentials-env "X" }'
        ),
        "DNS provider 'webhook' for listener 'https' requires 'url'",
    ),
    (
        "dns-credentials",
        SYSTEM + acme(ACME_OK + '\nchallenge-type "dns"\ndns-provider { type "hetzner" }'),
        "requires either 'credentials-file' or 'credentials-env'",
    ),
    (
        "route-id",
        SYSTEM + LISTENER + 'routes { route { priority "low" } }\n',
        'Route requires an ID argument, e.g., route "api" { ... }',
    ),
    (
        "static-root",
        SYSTEM + LISTENER + route('priority "low"\nstatic-files { index "i.html" }'),
        "Static files configuration requires a 'root' directory",
    ),
    (
        "api-schema-exclusive",
        BASE + route('priority "low"\napi-schema { schema-file "/s.yaml"; schema-content "{}" }'),
        "schema-file and schema-content are mutually exclusive. Use one or the other.",
    ),
    (
        "retry-unknown-key",
        BASE + route('priority "low"\nretry-policy { max-attempts 3; timeout-ms 5 }'),
        "Got unknown key timeout-ms",
    ),
    (
        "retry-not-integer",
        BASE + route('priority "low"\nretry-policy { max-attempts "3" }'),
        "Tried to convert value in max-attempts to u32, but failed",
    ),
    (
        "retry-no-value",
        BASE + route('priority "low"\nretry-policy { max-attempts }'),
        "Tried to parse u32 for key max-attempts but did not find a value",
    ),
    (
        "retry-out-of-range",
        BASE + route('priority "low"\nretry-policy { max-attempts 4294967296 }'),
        "out of range integral type conversion attempted",
    ),
    (
        "retry-negative",
        BASE + route('priority "low"\nretry-policy { max-attempts -1 }'),
        "out of range integral type conversion attempted",
    ),
    (
        "retry-zero",
        BASE + route('priority "low"\nretry-policy { max-attempts 0 }'),
        "Implausible value for max-attempts",
    ),
    (
        "shadow-upstream",
        BASE + route('priority "low"\nshadow { percentage 5 }'),
        "Shadow configuration requires an 'upstream' field",
    ),
    (
        "shadow-sample-name",
        BASE + route('priority "low"\nshadow { upstream "backend"; sample-header 1 "v" }'),
        "sample-header name must be a string",
    ),
    (
        "shadow-sample-value",
        BASE + route('priority "low"\nshadow { upstream "backend"; sample-header "X" 1 }'),
        "sample-header value must be a string",
    ),
    (
        "fallback-upstream-id",
        BASE + route('priority "low"\nfallback { fallback-upstream { provider "x" } }'),
        "fallback-upstream requires an upstream ID",
    ),
    (
        "inference-provider",
        BASE + inference('provider "mistral"'),
        "Unknown inference provider 'mistral'",
    ),
    (
        "inference-tpm",
        BASE + inference("rate-limit { burst-tokens 5 }"),
        "Token rate limit requires 'tokens-per-minute'",
    ),
    (
        "inference-estimation",
        BASE + inference('rate-limit { tokens-per-minute 5; estimation-method "bytes" }'),
        "Unknown token estimation method",
    ),
    (
        "inference-routing",
        BASE + inference('routing { strategy "fastest" }'),
        "Unknown inference routing strategy",
    ),
    (
        "inference-budget-period",
        BASE + inference('budget { period "weekly"; limit 5 }'),
        "Unknown budget period",
    ),
    (
        "inference-budget-limit",
        BASE + inference('budget { period "daily" }'),
        "Token budget requires 'limit'",
    ),
    (
        "inference-pricing-pattern",
        BASE
        + inference(
            "cost-attribution { pricing { model { input-cost-per-million 1.0; output-cost-per-million 2.0 } } }"
        ),
        "Model pricing requires a pattern argument",
    ),
    (
        "inference-pricing-input",
        BASE
        + inference('cost-attribution { pricing { model "gpt" { output-cost-per-million 2.0 } } }'),
        "Model pricing requires 'input-cost-per-million'",
    ),
    (
        "inference-pricing-output",
        BASE
        + inference('cost-attribution { pricing { model "gpt" { input-cost-per-million 2.0 } } }'),
        "Model pricing requires 'output-cost-per-million'",
    ),
    (
        "inference-model-routing",
        BASE + inference('model-routing { model "gpt-4" provider="openai" }'),
        "Model mapping requires 'upstream' attribute",
    ),
    (
        "guardrail-prompt-agent",
        BASE + inference('guardrails { prompt-injection { action "block" } }'),
        "Prompt injection config requires 'agent' field",
    ),
    (
        "guardrail-pii-agent",
        BASE + inference('guardrails { pii-detection { action "redact" } }'),
        "PII detection config requires 'agent' field",
    ),
    (
        "guardrail-action",
        BASE + inference('guardrails { prompt-injection { agent "g"; action "redact" } }'),
        "Unknown guardrail action",
    ),
    (
        "guardrail-pii-action",
        BASE + inference('guardrails { pii-detection { agent "g"; action "warn" } }'),
        "Unknown PII action",
    ),
    (
        "guardrail-failure-mode",
        BASE + inference('guardrails { pii-detection { agent "g"; failure-mode "half" } }'),
        "Unknown failure mode 'half'. Valid modes: open, closed",
    ),
    (
        "upstream-id",
        SYSTEM + LISTENER + 'upstreams { upstream { target "1.2.3.4:5" } }\n',
        'Upstream requires an ID argument, e.g., upstream "backend" { ... }',
    ),
    (
        "upstream-targets",
        SYSTEM + LISTENER + 'upstreams { upstream "b" { server address="127.0.0.1:1" } }\n',
        "Upstream 'b' requires at least one target, e.g., target \"127.0.0.1:8081\"",
    ),
    (
        "circuit-breaker-key",
        SYSTEM
        + LISTENER
        + 'upstreams { upstream "b" { target "h:1"; circuit-breaker { threshold 5 } } }\n',
        "Got unknown key threshold",
    ),
    (
        "circuit-breaker-zero",
        SYSTEM
        + LISTENER
        + 'upstreams { upstream "b" { target "h:1"; circuit-breaker { failure-threshold 0 } } }\n',
        "Implausible value for failure-threshold",
    ),
    ("filter-id", BASE + 'filters { filter { type "cors" } }\n', "Filter requires an ID argument"),
    (
        "filter-type-missing",
        BASE + filters("max-rps 5"),
        "Filter definition requires a 'type' field. Valid types: rate-limit, agent, headers, compress, cors, timeout, log, geo, redirect, url-rewrite",
    ),
    (
        "filter-type-unknown",
        BASE + filters('type "auth"'),
        "Unknown filter type: 'auth'. Valid types: rate-limit, agent, headers",
    ),
    (
        "rate-limit-backend",
        BASE + filters('type "rate-limit"\nbackend "etcd"'),
        "Unknown rate limit backend: 'etcd'. Valid backends: local, redis, memcached",
    ),
    (
        "agent-filter-agent",
        BASE + filters('type "agent"'),
        "Agent filter requires an 'agent' field referencing an agent definition",
    ),
    (
        "geo-database",
        BASE + filters('type "geo"'),
        "Geo filter requires 'database-path' pointing to a GeoIP database file",
    ),
    (
        "agent-id",
        BASE + 'agents { agent { grpc "http://h:1" } }\n',
        "Agent requires an ID as first argument",
    ),
    ("agent-block", BASE + 'agents { agent "a" }\n', "Agent 'a' requires configuration block"),
    (
        "agent-transport",
        BASE + agent("timeout-ms 5"),
        "Agent 'a' requires a transport (unix-socket, grpc, or http)",
    ),
    (
        "agent-unix-socket",
        BASE + agent("unix-socket"),
        "unix-socket requires 'path' attribute or argument",
    ),
    ("agent-grpc", BASE + agent("grpc port=5"), "grpc requires 'address'"),
    ("agent-http", BASE + agent("http"), "http requires 'url'"),
    (
        "agent-failure-mode",
        BASE + agent('grpc "http://h:1"\nfailure-mode "maybe"'),
        "Unknown failure mode: 'maybe'. Use 'open' or 'closed'",
    ),
    (
        "agent-event",
        BASE + agent('grpc "http://h:1"\nevents "request_headers" "everything"'),
        "Unknown agent event: 'everything'",
    ),
    (
        "agent-body-mode",
        BASE + agent('grpc "http://h:1"\nrequest-body-mode "chunked"'),
        "Agent 'a': unknown body streaming mode 'chunked'. Valid modes: buffer, stream, hybrid, hybrid:<bytes>",
    ),
    (
        "agent-hybrid-threshold",
        BASE + agent('grpc "http://h:1"\nresponse-body-mode "hybrid:lots"'),
        "Agent 'a': invalid hybrid threshold 'lots', expected number",
    ),
    (
        "agent-circuit-breaker",
        BASE + agent('grpc "http://h:1"\ncircuit-breaker { success-threshold "2" }'),
        "Tried to convert value in success-threshold to u32, but failed",
    ),
    (
        "waf-mode-invalid",
        BASE + 'waf { mode "audit" }\n',
        "Invalid WAF mode 'audit'. Valid options: off, detection, prevention",
    ),
    (
        "waf-paranoia",
        BASE + 'waf { mode "off"; ruleset { paranoia-level 5 } }\n',
        "WAF paranoia level must be between 1 and 4, got 5",
    ),
    (
        "waf-exclusion-scope",
        BASE + 'waf { mode "off"; ruleset { exclusion "942100" scope="cookie" } }\n',
        "Invalid exclusion scope 'cookie'",
    ),
    (
        "waf-exclusion-ids",
        BASE + 'waf { mode "off"; ruleset { exclusion scope="global" } }\n',
        "WAF rule exclusion requires at least one rule ID",
    ),
    (
        "tracing-backend-block",
        BASE + "observability { tracing { sampling-rate 0.5 } }\n",
        "tracing config requires 'backend' block",
    ),
    (
        "tracing-backend-type",
        BASE + 'observability { tracing { backend { endpoint "http://h:4317" } } }\n',
        "backend requires a type (otlp, jaeger, or zipkin)",
    ),
    (
        "tracing-backend-unknown",
        BASE + 'observability { tracing { backend "datadog" { endpoint "http://h" } } }\n',
        "Unknown tracing backend 'datadog'. Supported: otlp, jaeger, zipkin",
    ),
    (
        "tracing-endpoint",
        BASE + 'observability { tracing { backend "otlp" } }\n',
        "backend requires 'endpoint' configuration",
    ),
    (
        "rate-limits-global",
        BASE + "rate-limits { global { burst 5 } }\n",
        "global rate limit requires 'max-rps'",
    ),
    (
        "rate-limits-key",
        BASE + 'rate-limits { key "user" }\n',
        "Unknown rate limit key: 'user'. Valid values: client-ip, path, route, client-ip-and-path, header:<name>",
    ),
    (
        "cache-backend",
        BASE + 'cache { backend "redis" }\n',
        "Invalid cache backend 'redis'. Valid options: memory, disk, hybrid",
    ),
    (
        "cache-disk-path",
        BASE + 'cache { backend "disk" }\n',
        "Disk cache backend requires 'disk-path' to be specified",
    ),
    ("namespace-id", BASE + "namespace { }\n", "Namespace requires an ID as first argument"),
    (
        "namespace-braces",
        BASE + 'namespace "n"\n',
        "Namespace 'n' requires a configuration block with braces {}",
    ),
    (
        "namespace-unknown-block",
        BASE + 'namespace "n" { waf { } }\n',
        "Unknown block 'waf' in namespace 'n'\nValid blocks are: limits, listeners",
    ),
    (
        "service-id",
        BASE + 'namespace "n" { service { } }\n',
        "Service requires an ID as first argument",
    ),
    (
        "service-braces",
        BASE + 'namespace "n" { service "s" }\n',
        "Service 's' requires a configuration block with braces {}",
    ),
    (
        "service-unknown-block",
        BASE + 'namespace "n" { service "s" { exports { } } }\n',
        "Unknown block 'exports' in service 's'",
    ),
    (
        "service-listener-address",
        BASE + 'namespace "n" { service "s" { listener { protocol "http2" } } }\n',
        "Listener 'service-listener' requires an 'address'",
    ),
    (
        "export-type",
        BASE + 'namespace "n" { exports { routes "r" } }\n',
        "Unknown export type 'routes'",
    ),
    (
        "duplicate-listener",
        SYSTEM + LISTENER + 'listeners { listener "http" { address "0.0.0.0:9" } }\n',
        "Duplicate listener ID 'http' found. Each listener ID must be unique across all config files.",
    ),
    (
        "duplicate-route",
        BASE + route('priority "low"', rid="r"),
        "Duplicate route ID 'r' found. Each route ID must be unique across all config files.",
    ),
    (
        "duplicate-agent",
        BASE + agent('grpc "http://h:1"') + agent('grpc "http://h:2"'),
        "Duplicate agent ID 'a' found.",
    ),
    (
        "duplicate-upstream-blocks",
        BASE + UPSTREAM,
        "Duplicate upstream ID 'backend' found. Each upstream ID must be unique across all config files.",
    ),
    (
        "duplicate-filter-blocks",
        BASE + filters('type "cors"') + filters('type "cors"'),
        "Duplicate filter ID 'f' found.",
    ),
    (
        "include-argument",
        BASE + "include 5\n",
        "The 'include' directive requires a string argument",
    ),
    # ---- semantic pass (collected)
    (
        "schema-format",
        'schema-version "1"\n' + BASE,
        "Invalid schema version '1': Expected format: major.minor (e.g., '1.0')",
    ),
    (
        "schema-old",
        'schema-version "0.9"\n' + BASE,
        "Config schema version 0.9 is older than minimum supported version 1.0. Please update your configuration.",
    ),
    (
        "route-cache-size",
        "system { route-cache-size 0 }\n" + LISTENER + UPSTREAM + ROUTE,
        "server.route-cache-size must be greater than 0 (the route cache cannot be disabled by setting it to zero)",
    ),
    (
        "route-cache-size-wraps",
        "system { route-cache-size 18446744073709551616 }\n" + LISTENER + UPSTREAM + ROUTE,
        "server.route-cache-size must be greater than 0",
    ),
    (
        "route-upstream",
        SYSTEM + LISTENER + UPSTREAM + route('matches { path "/" }\nupstream "nope"'),
        "Route 'x' references upstream 'nope' which doesn't exist.\nAvailable upstreams: 'backend'\nHint: Add an upstream block or fix the reference.",
    ),
    (
        "route-upstream-none",
        SYSTEM + LISTENER + route('matches { path "/" }\nupstream "nope"'),
        "Available upstreams: (none defined)",
    ),
    (
        "route-filter",
        BASE + route('priority "low"\nfilters "ghost"'),
        "Route 'x' references filter 'ghost' which doesn't exist.\nAvailable filters: (none defined)",
    ),
    (
        "route-no-matches",
        BASE + route('upstream "backend"'),
        "Route 'x' has no match conditions.\nAdd at least one match condition or set priority to \"low\" for catch-all routes.",
    ),
    (
        "route-match-not-matches",
        BASE + route('match { path "/" }\nupstream "backend"'),
        "Route 'x' has no match conditions.",
    ),
    (
        "route-upstream-and-static",
        BASE + route('priority "low"\nupstream "backend"\nstatic-files { root "/srv" }'),
        "Route 'x' has both 'upstream' and 'static-files' configured.\nA route can only serve one type of content.",
    ),
    (
        "listener-default-route",
        SYSTEM
        + 'listeners { listener "h" { address "0.0.0.0:1"; default-route "nope" } }\n'
        + UPSTREAM
        + ROUTE,
        "Listener 'h' references default-route 'nope' which doesn't exist.\nAvailable routes: 'r'",
    ),
    (
        "listener-namespace",
        SYSTEM
        + 'listeners { listener "h" { address "0.0.0.0:1"; namespace "nope" } }\n'
        + UPSTREAM
        + ROUTE,
        "Listener 'h' references namespace 'nope' which doesn't exist.\nDefine a `namespace \"nope\" { routes { ... } }` block, or remove the reference to serve the global routes.\nAvailable namespaces: (none)",
    ),
    (
        "acme-duplicate-domain",
        SYSTEM
        + tls(
            f'acme {{ {ACME_OK} }}\nsni {{\nacme {{ email "b@example.com"; domains "EXAMPLE.com" }} }}'
        ),
        "Domain 'EXAMPLE.com' is configured in multiple ACME blocks: listener 'https' (root acme) and listener 'https' (sni cert #0).\nEach domain must be managed by exactly one ACME block to avoid conflicts.",
    ),
    (
        "filter-agent-missing",
        BASE + filters('type "agent"\nagent "ghost"'),
        "Filter 'f' references agent 'ghost' which doesn't exist.\nAvailable agents: (none defined)",
    ),
    (
        "target-address",
        SYSTEM
        + LISTENER
        + 'upstreams { upstream "backend" { target "127.0.0.1:1"; target "localhost" } }\n'
        + ROUTE,
        "Upstream 'backend' target #2 has invalid address 'localhost'.\nExpected format: HOST:PORT",
    ),
    (
        "target-port-range",
        SYSTEM + LISTENER + 'upstreams { upstream "backend" { target "h:70000" } }\n' + ROUTE,
        "target #1 has invalid address 'h:70000'",
    ),
    (
        "agent-timeout-zero",
        BASE + agent('grpc "http://h:1"\ntimeout-ms 0'),
        "Agent 'a' has timeout_ms 0. Timeouts must be greater than 0.",
    ),
    (
        "agent-chunk-timeout-zero",
        BASE + agent('grpc "http://h:1"\nchunk-timeout-ms 0'),
        "Agent 'a' has chunk_timeout_ms 0. Timeouts must be greater than 0.",
    ),
    (
        "agent-request-body-zero",
        BASE + agent('grpc "http://h:1"\nmax-request-body-bytes 0'),
        "Agent 'a' has max_request_body_bytes 0. Use a positive limit, or omit the field for the default.",
    ),
    (
        "agent-response-body-zero",
        BASE + agent('grpc "http://h:1"\nmax-response-body-bytes 0'),
        "Agent 'a' has max_response_body_bytes 0.",
    ),
    (
        "listener-duplicate-address",
        SYSTEM
        + 'listeners { listener "a" { address "0.0.0.0:80" }\nlistener "b" { address "0.0.0.0:80" } }\n'
        + UPSTREAM
        + ROUTE,
        "Duplicate listener address '0.0.0.0:80'. Multiple listeners cannot bind to the same address.",
    ),
    (
        "namespace-duplicate",
        BASE + 'namespace "n" { }\nnamespace "n" { }\n',
        "Duplicate namespace ID 'n'. Each namespace must have a unique identifier.",
    ),
    (
        "namespace-colon",
        BASE + 'namespace "a:b" { }\n',
        "Namespace ID 'a:b' contains reserved character ':'. The colon is reserved for qualified references.",
    ),
    (
        "namespace-route-upstream",
        BASE
        + 'namespace "n" { upstreams { upstream "u" { target "h:1" } }\nroutes { route "nr" { matches { path "/" }; upstream "ghost" } } }\n',
        "Route 'nr' in namespace 'n' references upstream 'ghost' which cannot be resolved.\nAvailable upstreams: 'backend', 'u'",
    ),
    (
        "namespace-route-filter",
        BASE
        + 'namespace "n" { routes { route "nr" { matches { path "/" }; upstream "backend"; filters "other:f" } } }\n',
        "Route 'nr' in namespace 'n' references filter 'other:f' which cannot be resolved.",
    ),
    (
        "namespace-export-upstream",
        BASE + 'namespace "n" { exports { upstreams "ghost" } }\n',
        "Namespace 'n' exports upstream 'ghost' which doesn't exist in this namespace.",
    ),
    (
        "namespace-export-agent",
        BASE + 'namespace "n" { exports { agents "ghost" } }\n',
        "Namespace 'n' exports agent 'ghost' which doesn't exist in this namespace.",
    ),
    (
        "namespace-export-filter",
        BASE + 'namespace "n" { exports { filters "ghost" } }\n',
        "Namespace 'n' exports filter 'ghost' which doesn't exist in this namespace.",
    ),
    (
        "service-duplicate",
        BASE + 'namespace "n" { service "s" { }\nservice "s" { } }\n',
        "Duplicate service ID 's' in namespace 'n'. Each service must have a unique identifier.",
    ),
    (
        "service-colon",
        BASE + 'namespace "n" { service "s:t" { } }\n',
        "Service ID 's:t' in namespace 'n' contains reserved character ':'.",
    ),
    (
        "service-route-upstream",
        BASE
        + 'namespace "n" { service "s" { routes { route "sr" { matches { path "/" }; upstream "ghost" } } } }\n',
        "Route 'sr' in service 'n:s' references upstream 'ghost' which cannot be resolved.",
    ),
    (
        "service-route-filter",
        BASE
        + 'namespace "n" { service "s" { routes { route "sr" { matches { path "/" }; upstream "backend"; filters "ghost" } } } }\n',
        "Route 'sr' in service 'n:s' references filter 'ghost' which cannot be resolved.",
    ),
    (
        "waf-detection",
        BASE + 'waf { mode "detect" }\n',
        "WAF mode is set to 'detection' but the WAF engine is not yet wired into the proxy runtime. Requests are NOT being inspected. Set waf mode to 'off' or remove the waf block until WAF support is implemented.",
    ),
    (
        "waf-default-prevention",
        BASE + 'waf { engine "coraza" }\n',
        "WAF mode is set to 'prevention'",
    ),
    # ---- post-semantic fail-fast checks
    (
        "limits-header-size",
        BASE + "limits { max-header-size 0 }\n",
        "max_header_size_bytes must be greater than 0",
    ),
    (
        "limits-header-count",
        BASE + "limits { max-header-count 0 }\n",
        "max_header_count must be greater than 0",
    ),
    (
        "limits-body-buffer",
        BASE + "limits { max-body-size 1000 }\n",
        "max_body_buffer_bytes cannot exceed max_body_size_bytes",
    ),
]

PASSING = [
    ("base", BASE),
    (
        "kdl-v2-syntax",
        BASE
        + 'observability { metrics { enabled #true; path #"/m"# } }\n/- limits { x }\nrate-limits { key """\n    path\n    """ }\n',
    ),
    ("server-alias", BASE.replace("system", "server")),
    ("schema-version", 'schema-version "1.0"\n' + BASE),
    ("version-alias", 'version "1.0"\n' + BASE),
    (
        "listener-protocol-ci",
        SYSTEM + 'listeners { listener "h" { address "0.0.0.0:1"; protocol "HTTPS" } }\n',
    ),
    (
        "listener-address-unchecked",
        SYSTEM + 'listeners { listener "h" { address "not-an-address" } }\n',
    ),
    ("tls-files", SYSTEM + tls('cert-file "/c"\nkey-file "/k"')),
    ("tls-acme", SYSTEM + acme(ACME_OK)),
    (
        "sni-files",
        SYSTEM
        + tls(
            'cert-file "/c"\nkey-file "/k"\nsni { hostnames "a"; cert-file "/c"; key-file "/k" }'
        ),
    ),
    (
        "sni-acme",
        SYSTEM
        + tls(
            'cert-file "/c"\nkey-file "/k"\nsni {\nacme { email "b@example.com"; domains "b.example.com" } }'
        ),
    ),
    ("acme-eab", SYSTEM + acme(ACME_OK + '\neab { kid "k"; hmac-key "h" }')),
    ("acme-key-type-p384", SYSTEM + acme(ACME_OK + '\nkey-type "P384"')),
    (
        "acme-wildcard-dns",
        SYSTEM + acme('email "a@example.com"\ndomains "*.example.com"\n' + DNS_OK),
    ),
    (
        "acme-webhook",
        SYSTEM
        + acme(
            ACME_OK
            + '\nchallenge-type "dns"\ndns-provider { type "webhook"; url "https://h"; credentials-file "/c" }'
        ),
    ),
    ("static-files", SYSTEM + LISTENER + route('priority "low"\nstatic-files { root "/srv/www" }')),
    (
        "api-schema-one",
        BASE + route('priority "low"\nupstream "backend"\napi-schema { schema-content "{}" }'),
    ),
    (
        "retry-ok",
        BASE
        + route('priority "low"\nupstream "backend"\nretry-policy { max-attempts 4294967295 }'),
    ),
    (
        "shadow-ok",
        BASE
        + route(
            'priority "low"\nupstream "backend"\nshadow { upstream "missing-is-fine"; percentage "10"; sample-header "X" "1" }'
        ),
    ),
    (
        "fallback-ok",
        BASE
        + route(
            'priority "low"\nupstream "backend"\nfallback { fallback-upstream "not-cross-checked" }'
        ),
    ),
    (
        "inference-ok",
        BASE
        + inference(
            'provider "OpenAI"\nrate-limit { tokens-per-minute 5; estimation-method "tiktoken" }\nrouting { strategy "least_latency" }\nbudget { period 3600; limit 5 }\ncost-attribution { pricing { model "gpt" { input-cost-per-million 1; output-cost-per-million 2.5 } } }\nmodel-routing { model "gpt-4" upstream="ghost" }\nguardrails { prompt-injection { agent "g"; action "warn"; failure-mode "closed" }\npii-detection { agent "p"; action "redact" } }'
        ),
    ),
    (
        "upstream-target-forms",
        SYSTEM
        + LISTENER
        + 'upstreams { upstream "backend" { target { address "h:1"; weight 2 }\ntarget address="h:2" weight=3\ntargets { target "h:3" } } }\n'
        + ROUTE,
    ),
    (
        "upstream-address-child",
        SYSTEM + LISTENER + 'upstreams { upstream "backend" { address "h:1" } }\n' + ROUTE,
    ),
    (
        "upstream-port-zero",
        SYSTEM + LISTENER + 'upstreams { upstream "backend" { target "h:0" } }\n' + ROUTE,
    ),
    (
        "circuit-breaker-ok",
        SYSTEM
        + LISTENER
        + 'upstreams { upstream "backend" { target "h:1"; circuit-breaker { failure-threshold 5; success-threshold 2; timeout-seconds 30; half-open-max-requests 1 } } }\n'
        + ROUTE,
    ),
    (
        "duplicate-upstream-in-one-block",
        SYSTEM
        + LISTENER
        + 'upstreams { upstream "backend" { target "h:1" }\nupstream "backend" { target "h:2" } }\n'
        + ROUTE,
    ),
    (
        "filters-all-types",
        BASE
        + "".join(
            filters(body, fid)
            for fid, body in [
                ("rl", 'type "rate-limit"\nbackend "memcache"'),
                ("hd", 'type "headers"'),
                ("cp", 'type "compress"'),
                ("co", 'type "cors"'),
                ("ti", 'type "timeout"'),
                ("lo", 'type "log"'),
                ("ge", 'type "geo"\ndatabase-path "/g.mmdb"'),
                ("re", 'type "redirect"'),
                ("ur", 'type "url-rewrite"'),
            ]
        ).replace("}\n}\nfilters {\n", "}\n"),
    ),
    (
        "agent-filter-ok",
        BASE + agent('unix-socket path="/run/a.sock"') + filters('type "agent"\nagent "a"'),
    ),
    (
        "agent-transports",
        BASE
        + agent(
            'grpc address="http://h:1"\nhttp "http://h:2"\nfailure-mode "fail-closed"\nevents "request-body" "log" "guardrail"\nrequest-body-mode "hybrid:1024"\nresponse-body-mode "stream"',
            head='"a" type="waf"',
        ),
    ),
    ("agent-empty-block-then-transport", BASE + agent('unix-socket "/run/a.sock"')),
    (
        "waf-off",
        BASE
        + 'waf { mode "OFF"; ruleset { paranoia-level 4; exclusion "942100" scope="path=/api" } }\n',
    ),
    (
        "tracing-ok",
        BASE + 'observability { tracing { backend "otlp" { endpoint "http://h:4317" } } }\n',
    ),
    (
        "rate-limits-ok",
        BASE + 'rate-limits { key "header:X-User"; global { max-rps 5; key "CLIENT_IP" } }\n',
    ),
    ("cache-ok", BASE + 'cache { backend "hybrid"; disk-path "/var/cache" }\n'),
    (
        "namespace-ok",
        BASE
        + 'namespace "n" { upstreams { upstream "u" { target "h:1" } }\nfilters { filter "nf" { type "cors" } }\nroutes { route "nr" { matches { path "/" }; upstream "u"; filters "nf" } }\nexports { upstreams "u"; filters "nf" }\nservice "s" { listener "sl" { address "0.0.0.0:2"; protocol "http3" }\nroutes { route "sr" { matches { path "/" }; upstream "n:u"; filters "nf" } } } }\nnamespace "m" { routes { route "mr" { matches { path "/" }; upstream "u" } } }\n',
    ),
    ("route-low-priority-catch-all", BASE + route('priority "low"\nupstream "backend"')),
    ("route-priority-10-int", BASE + route('priority 10\nupstream "backend"')),
    (
        "route-static-ignores-upstream-check",
        SYSTEM + LISTENER + route('priority "low"\nstatic-files { root "/srv" }'),
    ),
    (
        "listener-default-route-ok",
        SYSTEM
        + 'listeners { listener "h" { address "0.0.0.0:1"; default-route "r" } }\n'
        + UPSTREAM
        + ROUTE,
    ),
    (
        "listener-namespace-ok",
        SYSTEM
        + 'listeners { listener "h" { address "0.0.0.0:1"; namespace "n" } }\n'
        + UPSTREAM
        + ROUTE
        + 'namespace "n" { }\n',
    ),
    (
        "listener-different-host-same-port",
        SYSTEM
        + 'listeners { listener "a" { address "0.0.0.0:80" }\nlistener "b" { address "127.0.0.1:80" } }\n'
        + UPSTREAM
        + ROUTE,
    ),
    (
        "agent-nonzero",
        BASE
        + agent(
            'grpc "http://h:1"\ntimeout-ms 1\nchunk-timeout-ms 1\nmax-request-body-bytes 1\nmax-response-body-bytes 1'
        ),
    ),
    (
        "limits-ok",
        BASE + "limits { max-header-size 1; max-header-count 1; max-body-size 1048576 }\n",
    ),
    ("limits-negative-wraps", BASE + "limits { max-header-size -1 }\n"),
    ("schema-newer", 'schema-version "1.1"\n' + BASE),
    (
        "include-ok",
        SYSTEM + 'include "conf.d/*.kdl"\n',
        {"conf.d/a.kdl": LISTENER, "conf.d/b.kdl": UPSTREAM + ROUTE},
    ),
]


@pytest.mark.parametrize(("text", "needle"), [c[1:] for c in FAILING], ids=[c[0] for c in FAILING])
def test_failing_rule_reports_the_proxy_message(text: str, needle: str) -> None:
    result = run(text)
    assert not result.valid
    assert result.errors
    assert needle in result.report, result.report
    assert any(needle in e.message for e in result.errors)
    for error in result.errors:
        assert error.file == "sentinel.kdl" and error.line >= 1 and error.column >= 1


@pytest.mark.parametrize("case", PASSING, ids=[c[0] for c in PASSING])
def test_passing_rule_is_accepted(case: tuple) -> None:
    text = case[1]
    extra = case[2] if len(case) > 2 else {}
    result = validate_bundle({"sentinel.kdl": text, **extra})
    assert result.valid, [e.render() for e in result.errors]
    assert result.errors == ()


def test_semantic_errors_are_collected_into_one_numbered_report() -> None:
    text = (
        "system { route-cache-size 0 }\n"
        + LISTENER
        + route('matches { path "/" }\nupstream "ghost"\nfilters "nf"')
    )
    result = run(text)
    assert [e.code for e in result.errors] == [
        "route-cache-size",
        "route-upstream-missing",
        "route-filter-missing",
    ]
    assert "Configuration has 3 issues:\n\n1. server.route-cache-size" in result.report
    assert "Configuration error: Configuration validation failed: __all__: " in result.report
    assert result.report.startswith("Error: Configuration validation failed\n\nCaused by:\n    ")
    assert result.stage == "validate"


def test_load_errors_stop_at_the_first_one() -> None:
    result = run(SYSTEM + 'listeners { listener "a" { } }\nbogus { }\n')
    assert len(result.errors) == 1
    assert "Listener 'a' requires an 'address' field" in result.errors[0].message
    assert result.stage == "load"


def test_post_checks_only_run_when_the_semantic_pass_is_clean() -> None:
    result = run(
        BASE + route('upstream "ghost"\npriority "low"') + "limits { max-header-size 0 }\n"
    )
    assert [e.code for e in result.errors] == ["route-upstream-missing"]


def test_error_positions_point_at_the_offending_node() -> None:
    text = SYSTEM + LISTENER + UPSTREAM + route('    matches { path "/" }\n    upstream "ghost"')
    (error,) = run(text).errors
    assert text.splitlines()[error.line - 1][error.column - 1 :].startswith('route "x"')


# ---------------------------------------------------------------- includes


def test_include_splices_files_in_sorted_order_relative_to_the_includer() -> None:
    result = validate_bundle(
        {
            "sentinel.kdl": SYSTEM + 'include "conf/main.kdl"\n',
            "conf/main.kdl": LISTENER + 'include "routes/*.kdl"\n' + UPSTREAM,
            "conf/routes/b.kdl": route('matches { path "/b" }\nupstream "backend"', "b"),
            "conf/routes/a.kdl": route('matches { path "/a" }\nupstream "backend"', "a"),
        }
    )
    assert result.valid
    assert result.config is not None
    assert [r.id for r in result.config.routes] == ["a", "b"]
    assert result.files == (
        "sentinel.kdl",
        "conf/main.kdl",
        "conf/routes/a.kdl",
        "conf/routes/b.kdl",
    )


def test_include_errors_carry_the_included_file_position() -> None:
    result = validate_bundle(
        {"sentinel.kdl": BASE + 'include "x.kdl"\n', "x.kdl": "\n\nbogus { }\n"}
    )
    (error,) = result.errors
    assert (error.file, error.line, error.column) == ("x.kdl", 3, 1)


def test_include_cycle_is_rejected() -> None:
    result = validate_bundle(
        {"sentinel.kdl": BASE + 'include "a.kdl"\n', "a.kdl": 'include "sentinel.kdl"\n'}
    )
    assert "Circular include detected: 'sentinel.kdl' has already been included" in result.report


def test_include_glob_matching_itself_is_circular() -> None:
    result = validate_bundle({"sentinel.kdl": BASE + 'include "*.kdl"\n'})
    assert not result.valid and result.errors[0].code == "include-circular"


def test_include_duplicate_routes_across_files_are_rejected() -> None:
    result = validate_bundle({"sentinel.kdl": BASE + 'include "more.kdl"\n', "more.kdl": ROUTE})
    assert "Duplicate route ID 'r' found." in result.report


def test_syntax_error_in_included_file_is_reported_there() -> None:
    result = validate_bundle({"sentinel.kdl": BASE + 'include "bad.kdl"\n', "bad.kdl": "a {\n"})
    (error,) = result.errors
    assert error.file == "bad.kdl"
    assert error.message == "KDL parse error during include expansion: Failed to parse KDL document"


def test_unsupported_entry_format() -> None:
    result = validate_bundle({"sentinel.yaml": "a: 1"}, entry="sentinel.yaml")
    assert "Unsupported config format: yaml" in result.report


def test_missing_entry_file_is_an_error_not_an_exception() -> None:
    result = validate_bundle({"other.kdl": BASE})
    assert not result.valid and result.errors[0].code == "entry-missing"


# ---------------------------------------------------------------- warnings (one test each)


def warning_codes(text: str, **files: str) -> list[str]:
    result = validate_bundle({"sentinel.kdl": text, **files})
    assert result.valid, [e.render() for e in result.errors]
    for warning in result.warnings:
        assert warning.suggestion
        assert warning.line >= 1
    return [w.code for w in result.warnings]


def test_warns_deprecated_server_block() -> None:
    assert "deprecated-server-block" in warning_codes(BASE.replace("system", "server"))


def test_warns_duplicate_singleton_block() -> None:
    assert "duplicate-singleton-block" in warning_codes(BASE + SYSTEM)
    assert "duplicate-singleton-block" not in warning_codes(BASE)


def test_warns_match_instead_of_matches() -> None:
    codes = warning_codes(BASE + route('priority "low"\nmatch { path "/" }\nupstream "backend"'))
    assert "match-instead-of-matches" in codes


def test_warns_unrecognized_route_directive() -> None:
    result = run(BASE + route('priority "low"\nupstream "backend"\nback-to "x"'))
    (warning,) = [w for w in result.warnings if w.code == "unrecognized-route-directive"]
    assert "Unrecognized directive in route block (will be ignored)" in warning.message


def test_warns_route_without_backend() -> None:
    assert "route-without-backend" in warning_codes(BASE + route('priority "low"'))
    codes = warning_codes(BASE + filters('type "redirect"') + route('priority "low"\nfilters "f"'))
    assert "route-without-backend" not in codes


def test_warns_orphaned_upstream() -> None:
    codes = warning_codes(BASE + 'upstreams { upstream "spare" { target "h:1" } }\n')
    assert "orphaned-upstream" in codes


def test_warns_tls_settings_not_applied() -> None:
    codes = warning_codes(
        SYSTEM + tls('cert-file "/c"\nkey-file "/k"\nmin-version "TLSv1.3"\ncipher-suite "X"')
    )
    assert codes.count("tls-setting-not-applied") == 2


def test_warns_unrecognised_tls_version_falls_back() -> None:
    codes = warning_codes(SYSTEM + tls('cert-file "/c"\nkey-file "/k"\nmin-version "1.1"'))
    assert "enum-fallback" in codes


def test_warns_max_concurrent_streams() -> None:
    codes = warning_codes(
        SYSTEM + 'listeners { listener "h" { address "0.0.0.0:1"; max-concurrent-streams 50 } }\n'
    )
    assert "max-concurrent-streams-unsupported" in codes


def test_warns_logging_not_applied() -> None:
    codes = warning_codes(BASE + 'observability { logging { level "debug" } }\n')
    assert "logging-not-applied" in codes


def test_warns_schema_version_newer() -> None:
    assert "schema-version-newer" in warning_codes('schema-version "2.0"\n' + BASE)


def test_warns_include_glob_matching_nothing() -> None:
    assert "include-no-match" in warning_codes(BASE + 'include "conf.d/*.kdl"\n')


def test_warns_agent_protocol_version() -> None:
    codes = warning_codes(BASE + agent('grpc "http://h:1"\nprotocol-version 2'))
    assert "agent-protocol-version-deprecated" in codes


def test_warns_hyphenated_load_balancing_falls_back_to_round_robin() -> None:
    text = (
        SYSTEM
        + LISTENER
        + 'upstreams { upstream "backend" { target "h:1"; load-balancing "least-connections" } }\n'
        + ROUTE
    )
    result = run(text)
    (warning,) = [w for w in result.warnings if w.code == "load-balancing-fallback"]
    assert warning.suggestion == 'write load-balancing "least_connections"'
    assert result.config is not None
    assert result.config.upstreams["backend"].load_balancing == "round_robin"


def test_warns_property_where_child_is_read() -> None:
    text = SYSTEM + 'listeners { listener "h" protocol="https" { address "0.0.0.0:1" } }\n'
    assert "ignored-property" in warning_codes(text)


def test_warns_unknown_child() -> None:
    assert "unknown-directive" in warning_codes(BASE.replace("worker-threads 0", "workers 1"))


def test_warns_wrong_value_type() -> None:
    result = run(BASE.replace("worker-threads 0", 'worker-threads "4"'))
    assert "wrong-value-type" in [w.code for w in result.warnings]
    assert result.config is not None and result.config.system.worker_threads == 0


def test_warns_float_shadow_percentage() -> None:
    result = run(
        BASE
        + route(
            'priority "low"\nupstream "backend"\nshadow { upstream "backend"; percentage 10.0 }'
        )
    )
    assert "wrong-value-type" in [w.code for w in result.warnings]
    assert result.config is not None
    shadow = result.config.routes[-1].shadow
    assert shadow is not None and shadow.percentage == 100.0


def test_warns_unknown_priority() -> None:
    assert "enum-fallback" in warning_codes(
        BASE + route('priority "urgent"\nmatches { path "/" }\nupstream "backend"')
    )


def test_warns_limits_key_not_read() -> None:
    result = run(BASE + "limits { max-body-size-bytes 1 }\n")
    (warning,) = [w for w in result.warnings if w.code == "limits-key-ignored"]
    assert warning.suggestion == "rename to 'max-body-size'"


def test_warns_policy_ignored() -> None:
    assert "policy-ignored" in warning_codes(
        BASE + route('priority "low"\nupstream "backend"\npolicies { timeout-secs 5 }')
    )


def test_warns_agent_type_child_ignored() -> None:
    codes = warning_codes(BASE + agent('type "auth"\ngrpc "http://h:1"'))
    assert "agent-type-child-ignored" in codes


def test_warns_service_type_ignored() -> None:
    codes = warning_codes(
        BASE + route('priority "low"\nupstream "backend"\nservice-type "builtin"')
    )
    assert "service-type-ignored" in codes


def test_warns_duplicate_upstream_in_one_block() -> None:
    text = (
        SYSTEM
        + LISTENER
        + 'upstreams { upstream "backend" { target "h:1" }\nupstream "backend" { target "h:2" } }\n'
        + ROUTE
    )
    assert "duplicate-upstream-in-block" in warning_codes(text)


def test_warns_duplicate_filter_in_one_block() -> None:
    text = BASE + 'filters { filter "f" { type "cors" }\nfilter "f" { type "log" } }\n'
    assert "duplicate-filter-in-block" in warning_codes(text)


def test_warns_target_without_address() -> None:
    text = (
        SYSTEM
        + LISTENER
        + 'upstreams { upstream "backend" { target weight=2\ntarget "h:1" } }\n'
        + ROUTE
    )
    assert "target-without-address" in warning_codes(text)


def test_warns_h2_listener_is_not_served() -> None:
    codes = warning_codes(
        SYSTEM + 'listeners { listener "h" { address "0.0.0.0:1"; protocol "h2" } }\n'
    )
    assert "listener-protocol-unserved" in codes


def test_warns_https_without_tls() -> None:
    codes = warning_codes(
        SYSTEM + 'listeners { listener "h" { address "0.0.0.0:1"; protocol "https" } }\n'
    )
    assert "https-without-tls" in codes


def test_warns_listener_address_not_socket_address() -> None:
    codes = warning_codes(SYSTEM + 'listeners { listener "h" { address "localhost:80" } }\n')
    assert "listener-address-format" in codes
    assert "listener-address-format" not in warning_codes(BASE)


def test_warns_unknown_builtin_handler() -> None:
    codes = warning_codes(BASE + route('priority "low"\nbuiltin-handler "teapot"'))
    assert "enum-fallback" in codes


# ---------------------------------------------------------------- node-side warnings


def test_host_dependent_checks_are_node_side_warnings() -> None:
    text = (
        SYSTEM
        + tls('cert-file "/etc/c.pem"\nkey-file "/etc/k.pem"')
        + route('priority "low"\nstatic-files { root "/does/not/exist" }')
        + agent('unix-socket "/nope/a.sock"')
    )
    result = run(text)
    assert result.valid
    codes = {w.code for w in result.node_warnings}
    assert {"tls-file", "static-root", "agent-socket"} <= codes


def test_include_outside_bundle_is_node_side() -> None:
    result = run(BASE + 'include "/etc/sentinel/extra/*.kdl"\n')
    assert "include-outside-bundle" in [w.code for w in result.node_warnings]


# ---------------------------------------------------------------- external binary


def _fake_binary(tmp_path: Path, body: str) -> str:
    script = tmp_path / "fake-sentinel"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_external_binary_verdict_is_merged(tmp_path: Path) -> None:
    binary = _fake_binary(
        tmp_path,
        'test -f "$3" || exit 3\necho "Error: Failed to load configuration file" >&2\nexit 1\n',
    )
    result = validate_bundle({"sentinel.kdl": BASE}, binary=binary)
    assert not result.valid
    assert result.external is not None and result.external.exit_code == 1
    assert result.errors[-1].code == "external-check-rejected"
    assert "Failed to load configuration file" in result.report


def test_external_binary_success_keeps_valid(tmp_path: Path) -> None:
    binary = _fake_binary(
        tmp_path,
        'grep -q listeners "$3" && echo "sentinel: configuration file $3 test is successful"\n',
    )
    result = validate_bundle({"sentinel.kdl": BASE}, binary=binary)
    assert result.valid
    assert result.external is not None and result.external.valid


def test_external_binary_timeout_is_a_warning(tmp_path: Path) -> None:
    binary = _fake_binary(tmp_path, "exec sleep 5\n")
    result = validate_bundle({"sentinel.kdl": BASE}, binary=binary, timeout=0.2)
    assert result.valid
    assert "external-check-unavailable" in [w.code for w in result.warnings]


def test_external_binary_missing_is_a_warning(tmp_path: Path) -> None:
    result = validate_bundle({"sentinel.kdl": BASE}, binary=os.fspath(tmp_path / "absent"))
    assert "external-check-unavailable" in [w.code for w in result.warnings]
