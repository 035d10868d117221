"""Diagnostics: one located finding (error, warning or node-side warning) of the validator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning", "node-side"]

# Stages, in the order the proxy runs them.
STAGE_LIMITS = "limits"
STAGE_SYNTAX = "syntax"
STAGE_INCLUDE = "include"
STAGE_LOAD = "load"
STAGE_SCHEMA = "schema"
STAGE_VALIDATE = "validate"
STAGE_POST_VALIDATE = "post-validate"
STAGE_EXTERNAL = "external"


@dataclass(frozen=True, slots=True)
class SourceRef:
    """Where something was written: bundle-relative file, 1-based line and column."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


UNKNOWN_SOURCE = SourceRef("", 0, 0)


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One finding. `message` is the proxy's own wording for errors it raises itself."""

    severity: Severity
    code: str
    message: str
    source: SourceRef
    stage: str
    suggestion: str | None = None

    @property
    def file(self) -> str:
        """Bundle-relative file the finding points at."""
        return self.source.file

    @property
    def line(self) -> int:
        """1-based line (0 when unknown)."""
        return self.source.line

    @property
    def column(self) -> int:
        """1-based column in characters (0 when unknown)."""
        return self.source.column

    def render(self) -> str:
        """`file:line:col: severity: message` (continuation lines indented)."""
        label: str = self.severity
        if self.severity == "node-side":
            label = "node-side warning"
        text = f"{self.source}: {label}: {self.message}".replace("\n", "\n    ")
        if self.suggestion:
            text += f"\n    fix: {self.suggestion}"
        return text

    def as_dict(self) -> dict[str, object]:
        """Plain JSON-ready form."""
        return {
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "stage": self.stage,
            "suggestion": self.suggestion,
        }


class LoadFailure(Exception):
    """The first structural error of the load phase: loading stops here (fail-fast)."""

    def __init__(
        self,
        code: str,
        message: str,
        source: SourceRef,
        stage: str = STAGE_LOAD,
        suggestion: str | None = None,
    ) -> None:
        super().__init__(message)
        self.diagnostic = Diagnostic("error", code, message, source, stage, suggestion)
