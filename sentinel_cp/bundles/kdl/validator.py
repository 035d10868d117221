"""Entry point: validate a bundle's proxy configuration the way `sentinel test -c FILE` does."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sentinel_cp.bundles.kdl.diagnostics import (
    STAGE_EXTERNAL,
    STAGE_INCLUDE,
    STAGE_LIMITS,
    STAGE_LOAD,
    STAGE_POST_VALIDATE,
    STAGE_SCHEMA,
    STAGE_SYNTAX,
    Diagnostic,
    LoadFailure,
    SourceRef,
)
from sentinel_cp.bundles.kdl.external import (
    DEFAULT_TIMEOUT_SECONDS,
    ExternalVerdict,
    run_external_check,
)
from sentinel_cp.bundles.kdl.includes import expand_includes, normalize_path
from sentinel_cp.bundles.kdl.loader import Loader
from sentinel_cp.bundles.kdl.model import ProxyConfig
from sentinel_cp.bundles.kdl.semantic import validate_config

DEFAULT_ENTRY = "sentinel.kdl"
PROGRAM = "sentinel"
MAX_TOTAL_BYTES = 8 * 1024 * 1024
MAX_FILES = 1000


@dataclass(frozen=True)
class ValidationResult:
    """The verdict, every finding with its place, the proxy-style report and the model."""

    valid: bool
    errors: tuple[Diagnostic, ...]
    warnings: tuple[Diagnostic, ...]
    node_warnings: tuple[Diagnostic, ...]
    report: str
    config: ProxyConfig | None
    stage: str | None = None
    external: ExternalVerdict | None = None
    files: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form (without the model)."""
        return {
            "valid": self.valid,
            "stage": self.stage,
            "errors": [d.as_dict() for d in self.errors],
            "warnings": [d.as_dict() for d in self.warnings],
            "node_warnings": [d.as_dict() for d in self.node_warnings],
            "report": self.report,
            "files": list(self.files),
            "external": None
            if self.external is None
            else {
                "valid": self.external.valid,
                "exit_code": self.external.exit_code,
                "output": self.external.output,
                "error": self.external.error,
            },
        }


def render_failure(context: str, message: str) -> str:
    """anyhow's rendering of an error with one cause, as the proxy prints it on stderr.

    anyhow also indents the cause's continuation lines; they are kept flush here so that a
    multi-line message of the proxy is a verbatim substring of the report.
    """
    return f"Error: {context}\n\nCaused by:\n    {message}"


def render_success(entry: str, warnings: list[Diagnostic]) -> str:
    """The log lines and the final line `sentinel test` prints when the config is valid."""
    lines = [f" WARN {w.message.splitlines()[0]}" for w in warnings]
    lines.append(f"{PROGRAM}: configuration file {entry} test is successful")
    return "\n".join(lines)


def _entry_format_failure(entry: str) -> LoadFailure | None:
    name = entry.rsplit("/", 1)[-1]
    if "." not in name:
        return None
    extension = name.rsplit(".", 1)[1]
    if extension == "kdl":
        return None
    if extension in ("json", "toml"):
        return LoadFailure(
            "unsupported-format",
            f"The control-plane validator only reads KDL; '{entry}' is {extension.upper()}",
            SourceRef(entry, 0, 0),
            STAGE_LOAD,
        )
    return LoadFailure(
        "unsupported-format",
        f"Unsupported config format: {extension}",
        SourceRef(entry, 0, 0),
        STAGE_LOAD,
    )


def _bounds_failure(files: Mapping[str, str], entry: str) -> LoadFailure | None:
    if len(files) > MAX_FILES:
        return LoadFailure(
            "input-too-many-files",
            f"Bundle has {len(files)} files; at most {MAX_FILES} are accepted",
            SourceRef(entry, 0, 0),
            STAGE_LIMITS,
        )
    total = 0
    for text in files.values():
        if not isinstance(text, str):
            return LoadFailure(
                "input-not-text",
                "Every bundle file must be text",
                SourceRef(entry, 0, 0),
                STAGE_LIMITS,
            )
        total += len(text)
        if total > MAX_TOTAL_BYTES:
            return LoadFailure(
                "input-too-large",
                f"Configuration is larger than {MAX_TOTAL_BYTES} characters",
                SourceRef(entry, 0, 0),
                STAGE_LIMITS,
            )
    return None


def _load_context(stage: str) -> str:
    if stage in (STAGE_SCHEMA, STAGE_POST_VALIDATE) or stage == "validate":
        return "Configuration validation failed"
    return "Failed to load configuration file"


def validate_bundle(
    files: Mapping[str, str],
    entry: str = DEFAULT_ENTRY,
    *,
    binary: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> ValidationResult:
    """Validate the configuration in `files` ({relative path: text}) starting at `entry`.

    Never raises for bad input: syntax errors, hostile sizes and depths, include cycles all
    come back as an invalid result. When `binary` (SENTINEL_BINARY) is given, the real proxy's
    `test -c` also runs and a rejection by either side makes the result invalid.
    """
    result = _validate_builtin(files, entry)
    if binary is None:
        return result
    verdict = run_external_check(files, entry, binary, timeout=timeout)
    return _merge_external(result, verdict)


def _validate_builtin(files: Mapping[str, str], entry: str) -> ValidationResult:
    entry_name = normalize_path(entry) or entry
    early = _entry_format_failure(entry_name) or _bounds_failure(files, entry_name)
    warnings: list[Diagnostic] = []
    node_side: list[Diagnostic] = []
    used: list[str] = []
    try:
        if early is not None:
            raise early
        expansion = expand_includes(files, entry_name)
        warnings.extend(expansion.warnings)
        node_side.extend(expansion.node_side)
        used = expansion.files
        loader = Loader()
        try:
            config = loader.load(expansion.nodes, SourceRef(entry_name, 1, 1))
        finally:
            warnings.extend(loader.read.warnings)
        config.source_files = used
    except LoadFailure as failure:
        diagnostic = failure.diagnostic
        return ValidationResult(
            valid=False,
            errors=(diagnostic,),
            warnings=tuple(warnings),
            node_warnings=tuple(node_side),
            report=render_failure(_load_context(diagnostic.stage), diagnostic.message),
            config=None,
            stage=diagnostic.stage,
            files=tuple(used),
        )
    outcome = validate_config(config, SourceRef(entry_name, 1, 1))
    warnings.extend(outcome.warnings)
    node_side.extend(outcome.node_side)
    if outcome.errors:
        message = outcome.combined_message or outcome.errors[0].message
        if outcome.stage == "validate":
            cause = f"Configuration error: Configuration validation failed: __all__: {message}"
        else:
            cause = f"Configuration error: {message}"
        report = render_failure("Configuration validation failed", cause)
        return ValidationResult(
            False,
            tuple(outcome.errors),
            tuple(warnings),
            tuple(node_side),
            report,
            config,
            outcome.stage,
            files=tuple(used),
        )
    return ValidationResult(
        True,
        (),
        tuple(warnings),
        tuple(node_side),
        render_success(entry_name, warnings),
        config,
        None,
        files=tuple(used),
    )


def _merge_external(result: ValidationResult, verdict: ExternalVerdict) -> ValidationResult:
    errors = list(result.errors)
    warnings = list(result.warnings)
    where = SourceRef(result.files[0] if result.files else DEFAULT_ENTRY, 0, 0)
    if verdict.valid is None:
        warnings.append(
            Diagnostic(
                "warning",
                "external-check-unavailable",
                f"The proxy binary gave no verdict: {verdict.error}",
                where,
                STAGE_EXTERNAL,
                "check SENTINEL_BINARY and the binary's health",
            )
        )
    elif not verdict.valid and result.valid:
        errors.append(
            Diagnostic(
                "error",
                "external-check-rejected",
                f"The proxy binary rejected the configuration (exit {verdict.exit_code}):\n"
                f"{verdict.output.strip()}",
                where,
                STAGE_EXTERNAL,
            )
        )
    elif verdict.valid and not result.valid:
        warnings.append(
            Diagnostic(
                "warning",
                "external-check-disagrees",
                "The proxy binary accepted a configuration the built-in validator rejects; "
                "the stricter verdict is kept",
                where,
                STAGE_EXTERNAL,
                "report the disagreement so the built-in validator can be corrected",
            )
        )
    valid = result.valid and verdict.valid is not False
    report = result.report
    if verdict.output:
        report = f"{report}\n\n--- {PROGRAM} test -c (external) ---\n{verdict.output.rstrip()}"
    stage = result.stage if result.stage is not None else (None if valid else STAGE_EXTERNAL)
    return ValidationResult(
        valid,
        tuple(errors),
        tuple(warnings),
        result.node_warnings,
        report,
        result.config,
        stage,
        verdict,
        result.files,
    )


__all__ = [
    "DEFAULT_ENTRY",
    "STAGE_INCLUDE",
    "STAGE_SYNTAX",
    "ValidationResult",
    "validate_bundle",
]
