"""The proxy's include pre-pass, over the bundle's files instead of the node's filesystem.

Each top-level `include "glob"` is replaced, in place, by the top-level nodes of every bundle
file the glob matches (relative to the including file's directory, sorted by path),
recursively. A file included a second time anywhere in the expansion is reported as circular,
as the proxy's message ("has already been included") says.
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from sentinel_cp.bundles.kdl.diagnostics import (
    STAGE_INCLUDE,
    STAGE_LIMITS,
    Diagnostic,
    LoadFailure,
    SourceRef,
)
from sentinel_cp.bundles.kdl.source import (
    MAX_NODES,
    POSITION_BUDGET_SECONDS,
    SourceNode,
    parse_document,
)

INCLUDE_ARGUMENT_MESSAGE = (
    "The 'include' directive requires a string argument (a file path or glob pattern), "
    'e.g., include "routes/*.kdl"'
)


def normalize_path(path: str) -> str:
    """Bundle-relative POSIX path without `.` segments."""
    return posixpath.normpath(path.replace("\\", "/")).lstrip("/") if path else path


# Work allowed for matching every include glob of one bundle against its paths, in steps (one
# pattern segment tried against one path segment). A real bundle needs thousands; a crafted one
# (many includes of long `*/**/*/**` patterns over 255 deep paths) would otherwise take minutes.
MAX_GLOB_STEPS = 1_000_000


class GlobTooComplex(Exception):
    """Matching the include globs would exceed `MAX_GLOB_STEPS`."""


@dataclass
class GlobBudget:
    """Steps left for glob matching (shared by every include of one expansion)."""

    left: int = MAX_GLOB_STEPS

    def spend(self, steps: int) -> None:
        self.left -= steps
        if self.left < 0:
            raise GlobTooComplex


def _match_parts(pattern: list[str], parts: list[str], budget: GlobBudget) -> bool:
    """Whether `parts` matches `pattern`, where `**` stands for any number of segments.

    One pass over the pattern keeping the set of reachable positions in `parts`, so the cost is
    len(pattern) × len(parts): trying every split for each `**` recursively was exponential
    (`**/**/**/**/**/**/x` against a 40-segment path took minutes).
    """
    reachable = [True] + [False] * len(parts)
    for head in pattern:
        budget.spend(len(reachable))
        if head == "**":
            seen = False
            for index, here in enumerate(reachable):
                seen = seen or here
                reachable[index] = seen
        else:
            reachable = [False] + [
                reachable[index] and fnmatchcase(part, head) for index, part in enumerate(parts)
            ]
        if not any(reachable):
            return False
    return reachable[-1]


def _pattern_parts(pattern: str) -> list[str]:
    """The pattern's segments with runs of `**` collapsed (they match the same paths)."""
    out: list[str] = []
    for part in pattern.split("/"):
        if not (part == "**" and out and out[-1] == "**"):
            out.append(part)
    return out


def match_glob(pattern: str, paths: list[str], budget: GlobBudget | None = None) -> list[str]:
    """Bundle paths matching a normalized glob (`*` stays within one path segment).

    Raises `GlobTooComplex` when `budget` runs out.
    """
    budget = budget if budget is not None else GlobBudget()
    pattern_parts = _pattern_parts(pattern)
    budget.spend(len(pattern_parts))
    fixed = sum(1 for part in pattern_parts if part != "**")
    return sorted(
        p
        for p in paths
        if fixed <= p.count("/") + 1 and _match_parts(pattern_parts, p.split("/"), budget)
    )


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
        self.deadline = time.monotonic() + POSITION_BUDGET_SECONDS
        self.glob_budget = GlobBudget()
        self.matched: dict[str, list[str]] = {}
        self.result = Expansion([], [])

    def expand(self, path: str) -> list[SourceNode]:
        self.visited.append(path)
        document = parse_document(
            self.files[path], path, node_budget=self.budget, deadline=self.deadline
        )
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
        matches = self._match(joined, node)
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

    def _match(self, pattern: str, node: SourceNode) -> list[str]:
        if pattern not in self.matched:
            try:
                self.matched[pattern] = match_glob(pattern, self.paths, self.glob_budget)
            except GlobTooComplex:
                raise LoadFailure(
                    "input-too-complex",
                    f"Include patterns take more than {MAX_GLOB_STEPS} steps to match against "
                    "the bundle's files",
                    node.source,
                    STAGE_LIMITS,
                    "use fewer include directives, or simpler patterns",
                ) from None
        return self.matched[pattern]


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
