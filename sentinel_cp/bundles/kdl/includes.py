"""The proxy's include pre-pass, over the bundle's files instead of the node's filesystem.

Each top-level `include "glob"` is replaced, in place, by the top-level nodes of every bundle
file the glob matches (relative to the including file's directory, sorted by path),
recursively. A file included a second time anywhere in the expansion is reported as circular,
as the proxy's message ("has already been included") says.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from sentinel_cp.bundles.kdl.diagnostics import (
    STAGE_INCLUDE,
    Diagnostic,
    LoadFailure,
    SourceRef,
)
from sentinel_cp.bundles.kdl.source import MAX_NODES, SourceNode, parse_document

INCLUDE_ARGUMENT_MESSAGE = (
    "The 'include' directive requires a string argument (a file path or glob pattern), "
    'e.g., include "routes/*.kdl"'
)


def normalize_path(path: str) -> str:
    """Bundle-relative POSIX path without `.` segments."""
    return posixpath.normpath(path.replace("\\", "/")).lstrip("/") if path else path


def _match_parts(pattern: list[str], parts: list[str]) -> bool:
    if not pattern:
        return not parts
    head = pattern[0]
    if head == "**":
        return any(_match_parts(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatchcase(parts[0], head) and _match_parts(pattern[1:], parts[1:])


def match_glob(pattern: str, paths: list[str]) -> list[str]:
    """Bundle paths matching a normalized glob (`*` stays within one path segment)."""
    pattern_parts = pattern.split("/")
    return sorted(p for p in paths if _match_parts(pattern_parts, p.split("/")))


@dataclass
class Expansion:
    """Result of the pre-pass: the merged top-level nodes and what was noticed on the way."""

    nodes: list[SourceNode]
    files: list[str]
    warnings: list[Diagnostic] = field(default_factory=list)
    node_side: list[Diagnostic] = field(default_factory=list)
    disagreements: list[SourceRef] = field(default_factory=list)


class _Expander:
    def __init__(self, files: Mapping[str, str]) -> None:
        self.files = {normalize_path(k): v for k, v in files.items()}
        self.paths = sorted(self.files)
        self.visited: list[str] = []
        self.budget = MAX_NODES
        self.result = Expansion([], [])

    def expand(self, path: str) -> list[SourceNode]:
        self.visited.append(path)
        document = parse_document(self.files[path], path, node_budget=self.budget)
        self.budget -= document.node_count
        self.result.disagreements.extend(document.disagreements)
        out: list[SourceNode] = []
        for node in document.nodes:
            if node.name != "include":
                out.append(node)
                continue
            out.extend(self._include(node, path))
        return out

    def _include(self, node: SourceNode, including: str) -> list[SourceNode]:
        pattern = node.first_value()
        if not isinstance(pattern, str):
            raise LoadFailure(
                "include-argument", INCLUDE_ARGUMENT_MESSAGE, node.source, STAGE_INCLUDE
            )
        joined = posixpath.normpath(posixpath.join(posixpath.dirname(including), pattern))
        if posixpath.isabs(pattern) or joined == ".." or joined.startswith("../"):
            self.result.node_side.append(
                Diagnostic(
                    "node-side",
                    "include-outside-bundle",
                    f"Include '{pattern}' points outside the bundle; the proxy resolves it "
                    "against the node's filesystem, which the control plane cannot see.",
                    node.source,
                    STAGE_INCLUDE,
                    "ship the included files inside the bundle and use a relative path",
                )
            )
            return []
        matches = match_glob(joined, self.paths)
        if not matches:
            self.result.warnings.append(
                Diagnostic(
                    "warning",
                    "include-no-match",
                    f"Include pattern '{pattern}' matched no files",
                    node.source,
                    STAGE_INCLUDE,
                    "fix the pattern or add the files to the bundle",
                )
            )
            return []
        out: list[SourceNode] = []
        for match in matches:
            if match in self.visited:
                raise LoadFailure(
                    "include-circular",
                    f"Circular include detected: '{match}' has already been included",
                    node.source,
                    STAGE_INCLUDE,
                )
            out.extend(self.expand(match))
        return out


def expand_includes(files: Mapping[str, str], entry: str) -> Expansion:
    """Parse `entry` and splice in every included file; raise `LoadFailure` on the first error."""
    expander = _Expander(files)
    entry_path = normalize_path(entry)
    if entry_path not in expander.files:
        raise LoadFailure(
            "entry-missing",
            f"Configuration file '{entry}' is not in the bundle",
            SourceRef(entry, 0, 0),
            STAGE_INCLUDE,
        )
    nodes = expander.expand(entry_path)
    expander.result.nodes = nodes
    expander.result.files = list(expander.visited)
    return expander.result
