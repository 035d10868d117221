"""Typed reads of child-node settings, the way the proxy reads them, plus warnings for what
the proxy silently ignores (wrong value types, unknown children, properties it never reads)."""

from __future__ import annotations

from collections.abc import Iterable

from sentinel_cp.bundles.kdl.diagnostics import STAGE_LOAD, Diagnostic, LoadFailure, SourceRef
from sentinel_cp.bundles.kdl.source import Scalar, SourceNode


def describe(value: Scalar) -> str:
    """A value as it would be written in KDL v2."""
    if value is None:
        return "#null"
    if isinstance(value, bool):
        return "#true" if value else "#false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def wrap(value: int, bits: int = 64) -> int:
    """Rust `as` cast of an arbitrary-precision integer into an unsigned integer type."""
    return value % (1 << bits)


def parse_unsigned(text: str, maximum: int) -> int | None:
    """`text` as Rust's unsigned-integer parsing reads it (ASCII digits, at most `maximum`).

    The length is checked before `int()`: a 5000-digit number must be a validation error, not
    Python's integer-string limit, and `int()` alone would also accept digits such as "²".
    """
    if not (text.isascii() and text.isdigit()):
        return None
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(maximum)):
        return None
    value = int(digits)
    return value if value <= maximum else None


def is_int(value: Scalar) -> bool:
    """True for KDL integers (not booleans)."""
    return isinstance(value, int) and not isinstance(value, bool)


class Reader:
    """Collects warnings while the loader reads settings; raises `LoadFailure` on errors."""

    def __init__(self) -> None:
        self.warnings: list[Diagnostic] = []

    def warn(
        self, code: str, message: str, source: SourceRef, suggestion: str | None = None
    ) -> None:
        """Record a warning."""
        self.warnings.append(Diagnostic("warning", code, message, source, STAGE_LOAD, suggestion))

    @staticmethod
    def fail(code: str, message: str, source: SourceRef) -> LoadFailure:
        """A load error to raise."""
        return LoadFailure(code, message, source)

    def _value(self, node: SourceNode, name: str) -> tuple[SourceNode | None, Scalar]:
        child = node.child(name)
        if child is None:
            return None, None
        return child, child.first_value()

    def _type_warning(self, child: SourceNode, expected: str, value: Scalar, default: str) -> None:
        self.warn(
            "wrong-value-type",
            f"'{child.name}' expects {expected} but got {describe(value)}; the proxy ignores "
            f"the value and uses {default}",
            child.source,
            f"write {child.name} as {expected}",
        )

    def string(self, node: SourceNode, name: str, default: str | None = None) -> str | None:
        """First entry of the first `name` child, if it is a string."""
        child, value = self._value(node, name)
        if child is None or value is None:
            return default
        if isinstance(value, str):
            return value
        self._type_warning(child, "a string", value, f"the default ({default})")
        return default

    def integer(self, node: SourceNode, name: str, default: int, bits: int = 64) -> int:
        """First entry of the first `name` child, if it is an integer (wrapped like Rust `as`)."""
        child, value = self._value(node, name)
        if child is None or value is None:
            return default
        if is_int(value):
            assert isinstance(value, int)
            return wrap(value, bits)
        self._type_warning(child, "an integer", value, f"the default ({default})")
        return default

    def optional_int(self, node: SourceNode, name: str, bits: int = 64) -> int | None:
        """Like `integer` without a default."""
        child, value = self._value(node, name)
        if child is None or value is None:
            return None
        if is_int(value):
            assert isinstance(value, int)
            return wrap(value, bits)
        self._type_warning(child, "an integer", value, "no value")
        return None

    def number(self, node: SourceNode, name: str, default: float) -> float:
        """A float setting (integers accepted too)."""
        child, value = self._value(node, name)
        if child is None or value is None:
            return default
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        self._type_warning(child, "a number", value, f"the default ({default})")
        return default

    def boolean(self, node: SourceNode, name: str, default: bool) -> bool:
        """A `#true`/`#false` setting."""
        child, value = self._value(node, name)
        if child is None or value is None:
            return default
        if isinstance(value, bool):
            return value
        self._type_warning(child, "#true or #false", value, f"the default ({describe(default)})")
        return default

    def strings(self, node: SourceNode, name: str) -> list[str]:
        """All string arguments of every `name` child (list settings accumulate)."""
        out: list[str] = []
        for child in node.children_named(name):
            for value in child.args:
                if isinstance(value, str):
                    out.append(value)
                else:
                    self._type_warning(child, "strings", value, "nothing for this value")
        return out

    def check_children(
        self,
        node: SourceNode,
        known: Iterable[str],
        where: str,
        *,
        allowed_props: Iterable[str] = (),
        props_from: int = 0,
    ) -> None:
        """Warn about children the proxy does not read and properties it never looks at."""
        known_set = set(known)
        for child in node.children:
            if child.name not in known_set:
                self.warn(
                    "unknown-directive",
                    f"'{child.name}' is not read in {where}; the proxy ignores it",
                    child.source,
                    _closest(child.name, known_set),
                )
        allowed = set(allowed_props)
        for entry in node.entries[props_from:]:
            if entry.key is not None and entry.key not in allowed:
                self.warn(
                    "ignored-property",
                    f"Property {entry.key}={describe(entry.value)} on {where} is ignored; the "
                    "proxy reads child nodes here",
                    node.source,
                    f"move it into the block as a child node: {entry.key} {describe(entry.value)}",
                )


def _closest(name: str, known: set[str]) -> str | None:
    from difflib import get_close_matches

    close = get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    return "remove it, or check the proxy's configuration reference"
