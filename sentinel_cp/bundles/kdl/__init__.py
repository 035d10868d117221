"""Proxy configuration validator: KDL v2 source, load and validate phases, semantic model."""

from sentinel_cp.bundles.kdl.diagnostics import Diagnostic, SourceRef
from sentinel_cp.bundles.kdl.external import ExternalVerdict
from sentinel_cp.bundles.kdl.model import ProxyConfig
from sentinel_cp.bundles.kdl.validator import DEFAULT_ENTRY, ValidationResult, validate_bundle

__all__ = [
    "DEFAULT_ENTRY",
    "Diagnostic",
    "ExternalVerdict",
    "ProxyConfig",
    "SourceRef",
    "ValidationResult",
    "validate_bundle",
]
