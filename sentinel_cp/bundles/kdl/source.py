"""KDL v2 source documents: ckdl decides and gives values, tree-sitter-kdl gives positions.

ckdl (`version=2`) is as strict as the proxy's kdl-rs 6.7 parser but keeps no positions;
tree-sitter-kdl gives a row/column for every node and also tells `node` from `node {}`, but
is lenient (it accepts KDL v1 `true`). Both trees are walked side by side; where they
disagree on structure, positions fall back to the nearest enclosing node that agreed.
"""

from __future__ import annotations

import bisect
import re
import time
from dataclasses import dataclass, field
from typing import Any

import ckdl
import tree_sitter
import tree_sitter_kdl

from sentinel_cp.bundles.kdl.diagnostics import STAGE_LIMITS, STAGE_SYNTAX, LoadFailure, SourceRef

# Bounds for hostile input: a document beyond these is a validation error, never a hang.
MAX_DEPTH = 64
MAX_NODES = 250_000
MAX_LOCATE_BYTES = 1 << 20
# Wall-clock time tree-sitter may spend finding positions in one bundle. Its error recovery is
# superlinear on some broken input (20,000 unclosed `{` take seconds, a megabyte of them
# hours); past the deadline positions fall back to the enclosing file's first line.
POSITION_BUDGET_SECONDS = 3.0

KDL_SYNTAX_MESSAGE = "KDL parse error during include expansion: Failed to parse KDL document"

Scalar = str | int | float | bool | None

_LANGUAGE = tree_sitter.Language(tree_sitter_kdl.language())


def _ts_parser() -> tree_sitter.Parser:
    return tree_sitter.Parser(_LANGUAGE)


def _ts_parse(data: bytes, deadline: float | None) -> tree_sitter.Tree | None:
    """The tree-sitter tree of `data`, or None when `deadline` (time.monotonic) passes first."""
    if deadline is None:
        return _ts_parser().parse(data)
    if time.monotonic() >= deadline:
        return None

    def read(offset: int, _point: tuple[int, int]) -> bytes:
        return data[offset : offset + 65536]

    def cancel(_offset: int, _has_error: bool) -> bool:
        return time.monotonic() >= deadline

    try:
        return _ts_parser().parse(read, progress_callback=cancel)
    except ValueError:  # "Parsing failed": cancelled by the deadline
        return None


@dataclass(slots=True)
class Entry:
    """One argument (`key is None`) or property of a node, in source order."""

    key: str | None
    value: Scalar


@dataclass(slots=True)
class SourceNode:
    """A KDL node with its source position; values are plain Python scalars."""

    name: str
    entries: list[Entry]
    children: list[SourceNode]
    has_block: bool
    source: SourceRef
    args: list[Scalar] = field(default_factory=list)
    props: dict[str, Scalar] = field(default_factory=dict)

    def first_entry(self) -> Entry | None:
        """The first entry, argument or property alike (the proxy's "first argument")."""
        return self.entries[0] if self.entries else None

    def first_value(self) -> Scalar:
        """Value of the first entry, or None."""
        return self.entries[0].value if self.entries else None

    def child(self, name: str) -> SourceNode | None:
        """The first child with this name (kdl-rs `KdlDocument::get`)."""
        for node in self.children:
            if node.name == name:
                return node
        return None

    def children_named(self, name: str) -> list[SourceNode]:
        """Every child with this name, in order."""
        return [node for node in self.children if node.name == name]


def _plain(value: Any) -> Scalar:
    if isinstance(value, ckdl.Value):
        value = value.value
    if value is None or isinstance(value, str | bool | int | float):
        return value
    return str(value)


def _budget_check(nodes: list[Any], file: str, budget: int) -> int:
    """Count nodes and nesting depth without recursion; raise when a bound is crossed."""
    count = 0
    stack: list[tuple[list[Any], int]] = [(nodes, 1)]
    while stack:
        level, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise LoadFailure(
                "input-too-deep",
                f"Configuration nesting is deeper than {MAX_DEPTH} levels",
                SourceRef(file, 1, 1),
                STAGE_LIMITS,
            )
        count += len(level)
        if count > budget:
            raise LoadFailure(
                "input-too-many-nodes",
                f"Configuration has more than {MAX_NODES} nodes",
                SourceRef(file, 1, 1),
                STAGE_LIMITS,
            )
        for node in level:
            if node.children:
                stack.append((node.children, depth + 1))
    return count


# KDL v2 newlines besides LF (and CRLF, which tree-sitter already counts as one line break).
_OTHER_NEWLINE = re.compile("\r(?!\n)|[\x0b\x0c\x85\u2028\u2029]")
_ANY_NEWLINE = re.compile(rb"\r\n|[\n\r\x0b\x0c]|\xc2\x85|\xe2\x80[\xa8\xa9]")


class _Positions:
    """A tree-sitter node's start -> 1-based line and character column, cheap for ASCII text.

    tree-sitter counts rows by LF only; a document whose lines end in CR alone (or another KDL
    newline) gets its lines counted here from the byte offset, or every error would be on
    line 1 at some huge column.
    """

    def __init__(self, text: str, data: bytes) -> None:
        self.ascii = text.isascii()
        self.data = data
        self.lines = data.split(b"\n") if not self.ascii else []
        self.starts: list[int] = []
        if _OTHER_NEWLINE.search(text) is not None:
            self.starts = [0, *(match.end() for match in _ANY_NEWLINE.finditer(data))]

    def ref(self, file: str, node: tree_sitter.Node) -> SourceRef:
        if self.starts:
            offset = node.start_byte
            line = bisect.bisect_right(self.starts, offset)
            prefix = self.data[self.starts[line - 1] : offset]
            return SourceRef(file, line, len(prefix.decode("utf-8", "replace")) + 1)
        row, col = node.start_point
        if not self.ascii and row < len(self.lines):
            col = len(self.lines[row][:col].decode("utf-8", "replace"))
        return SourceRef(file, row + 1, col + 1)


def _ts_live_nodes(container: tree_sitter.Node) -> list[tree_sitter.Node]:
    out = []
    for child in container.named_children:
        if child.type != "node":
            continue
        first = child.named_children[0] if child.named_child_count else None
        if first is not None and first.type == "node_comment":
            continue
        out.append(child)
    return out


def _ts_parts(node: tree_sitter.Node) -> tuple[list[str | None], tree_sitter.Node | None]:
    """Entry kinds in order (None = argument, str = property key text) and the live block."""
    kinds: list[str | None] = []
    block = None
    for child in node.named_children:
        kind = child.type
        if kind == "node_field":
            inner = child.named_children[0] if child.named_child_count else None
            if inner is None or inner.type == "node_field_comment":
                continue
            if inner.type == "prop":
                key = inner.child_by_field_name("key")
                kinds.append(key.text.decode("utf-8", "replace") if key and key.text else "")
            else:
                kinds.append(None)
        elif kind == "node_children":
            block = child
    return kinds, block


def _node_name(name_node: tree_sitter.Node | None) -> str | None:
    if name_node is None or name_node.text is None:
        return None
    raw = name_node.text.decode("utf-8", "replace")
    if name_node.type != "identifier" or name_node.named_child_count:
        return _prop_key(raw)
    return raw


def _prop_key(raw: str) -> str:
    if raw and raw[0] in '"#':
        try:
            doc = ckdl.parse(f"n {raw}=0", version=2)
            keys = list(doc.nodes[0].properties)
            return str(keys[0]) if keys else raw
        except Exception:
            return raw
    return raw


class _Builder:
    def __init__(self, file: str, positions: _Positions) -> None:
        self.file = file
        self.positions = positions
        self.disagreements: list[SourceRef] = []

    def build(
        self, ck_nodes: list[Any], ts_nodes: list[tree_sitter.Node] | None, parent: SourceRef
    ) -> list[SourceNode]:
        if ts_nodes is not None and len(ts_nodes) != len(ck_nodes):
            self.disagreements.append(parent)
            ts_nodes = None
        out: list[SourceNode] = []
        for index, ck in enumerate(ck_nodes):
            args = [_plain(a) for a in ck.args]
            props = {str(k): _plain(v) for k, v in ck.properties.items()}
            ts = ts_nodes[index] if ts_nodes is not None else None
            ts_block: tree_sitter.Node | None = None
            if ts is not None:
                source = self.positions.ref(self.file, ts)
                kinds, ts_block = _ts_parts(ts)
                ts_name = _node_name(ts.child_by_field_name("name"))
                if ts_name is not None and ts_name != ck.name:
                    self.disagreements.append(source)
                has_block = ts_block is not None
                entries = self._entries(args, props, kinds, source)
            else:
                source = parent
                has_block = bool(ck.children)
                entries = [Entry(None, a) for a in args] + [Entry(k, v) for k, v in props.items()]
            children: list[SourceNode] = []
            if ck.children:
                ts_children = _ts_live_nodes(ts_block) if ts_block is not None else None
                if ts is not None and ts_block is None:
                    self.disagreements.append(source)
                children = self.build(list(ck.children), ts_children, source)
            out.append(SourceNode(str(ck.name), entries, children, has_block, source, args, props))
        return out

    def _entries(
        self,
        args: list[Scalar],
        props: dict[str, Scalar],
        kinds: list[str | None],
        source: SourceRef,
    ) -> list[Entry]:
        if not props:
            if len(kinds) != len(args):
                self.disagreements.append(source)
            return [Entry(None, a) for a in args]
        entries: list[Entry] = []
        arg_iter = iter(args)
        for kind in kinds:
            if kind is None:
                value = next(arg_iter, None)
                entries.append(Entry(None, value))
            else:
                key = _prop_key(kind)
                entries.append(Entry(key, props.get(key)))
        if sum(1 for k in kinds if k is None) != len(args):
            self.disagreements.append(source)
            return [Entry(None, a) for a in args] + [Entry(k, v) for k, v in props.items()]
        return entries


@dataclass(slots=True)
class ParsedDocument:
    """A parsed file: its top-level nodes, node count, and places where the parsers disagreed."""

    file: str
    nodes: list[SourceNode]
    node_count: int
    disagreements: list[SourceRef]


def parse_document(
    text: str, file: str, *, node_budget: int = MAX_NODES, deadline: float | None = None
) -> ParsedDocument:
    """Parse one KDL v2 file; raise `LoadFailure` on a syntax error or a crossed bound.

    Positions come from tree-sitter until `deadline` (time.monotonic); after it, every node is
    placed at the file's first line rather than parsing on.
    """
    try:
        document = ckdl.parse(text, version=2)
        ck_nodes = list(document.nodes)
    except Exception as exc:
        line, column, hint = locate_syntax_error(text, deadline=deadline)
        detail = f"ckdl: {exc}" if str(exc) else "ckdl rejected the document"
        raise LoadFailure(
            "kdl-syntax",
            KDL_SYNTAX_MESSAGE,
            SourceRef(file, line, column),
            STAGE_SYNTAX,
            f"{hint} ({detail})",
        ) from None
    count = _budget_check(ck_nodes, file, node_budget)
    data = text.encode("utf-8", "replace")
    tree = _ts_parse(data, deadline)
    builder = _Builder(file, _Positions(text, data))
    root_ref = SourceRef(file, 1, 1)
    ts_nodes = _ts_live_nodes(tree.root_node) if tree is not None else None
    nodes = builder.build(ck_nodes, ts_nodes, root_ref)
    return ParsedDocument(file, nodes, count, builder.disagreements)


def _first_error(root: tree_sitter.Node) -> tree_sitter.Node | None:
    stack = [root]
    while stack:
        node = stack.pop()
        if node.type == "ERROR" or node.is_missing:
            return node
        if node.has_error:
            stack.extend(reversed(node.children))
    return None


def _first_bare_keyword(root: tree_sitter.Node) -> tree_sitter.Node | None:
    stack = [root]
    while stack:
        node = stack.pop()
        if node.type == "keyword" and node.text is not None and not node.text.startswith(b"#"):
            return node
        stack.extend(reversed(node.children))
    return None


def _ckdl_accepts(data: bytes) -> bool:
    try:
        ckdl.parse(data.decode("utf-8", "replace"), version=2)
    except Exception:
        return False
    return True


def _bisect_nodes(
    data: bytes, root: tree_sitter.Node, deadline: float | None
) -> tree_sitter.Node | None:
    """Deepest node whose own text ckdl rejects (ckdl gives no position of its own)."""
    level = _ts_live_nodes(root)
    found: tree_sitter.Node | None = None
    for _ in range(MAX_DEPTH):
        if deadline is not None and time.monotonic() >= deadline:
            return found
        culprit = next(
            (n for n in level if not _ckdl_accepts(data[n.start_byte : n.end_byte])), None
        )
        if culprit is None:
            return found
        found = culprit
        _, block = _ts_parts(culprit)
        if block is None:
            return found
        level = _ts_live_nodes(block)
    return found


def locate_syntax_error(text: str, *, deadline: float | None = None) -> tuple[int, int, str]:
    """Best position (line, column) and a hint for a document ckdl rejected."""
    data = text.encode("utf-8", "replace")
    if len(data) > MAX_LOCATE_BYTES:
        return 1, 1, "document too large to locate the syntax error precisely"
    tree = _ts_parse(data, deadline)
    if tree is None:
        return 1, 1, "document too complex to locate the syntax error precisely"
    positions = _Positions(text, data)
    error = _first_error(tree.root_node)
    if error is not None:
        ref = positions.ref("", error)
        return ref.line, ref.column, "KDL v2 syntax error here"
    keyword = _first_bare_keyword(tree.root_node)
    if keyword is not None:
        ref = positions.ref("", keyword)
        word = (keyword.text or b"").decode("utf-8", "replace")
        return ref.line, ref.column, f"bare `{word}` is KDL v1 syntax; write `#{word}` in KDL v2"
    culprit = _bisect_nodes(data, tree.root_node, deadline)
    if culprit is not None:
        ref = positions.ref("", culprit)
        return ref.line, ref.column, "this node is not valid KDL v2"
    return 1, 1, "KDL v2 syntax error"


def outline_ckdl(text: str) -> list[tuple[int, str, int, int]]:
    """(depth, name, #args, #props) for every node, as ckdl sees the document."""
    out: list[tuple[int, str, int, int]] = []
    stack: list[tuple[Any, int]] = [
        (n, 0) for n in reversed(list(ckdl.parse(text, version=2).nodes))
    ]
    while stack:
        node, depth = stack.pop()
        out.append((depth, str(node.name), len(node.args), len(node.properties)))
        stack.extend((c, depth + 1) for c in reversed(list(node.children)))
    return out


def outline_tree_sitter(text: str) -> list[tuple[int, str, int, int]]:
    """(depth, name, #args, #distinct props) for every node, as tree-sitter-kdl sees it."""
    tree = _ts_parser().parse(text.encode("utf-8"))
    out: list[tuple[int, str, int, int]] = []
    stack: list[tuple[tree_sitter.Node, int]] = [
        (n, 0) for n in reversed(_ts_live_nodes(tree.root_node))
    ]
    while stack:
        node, depth = stack.pop()
        kinds, block = _ts_parts(node)
        name = _node_name(node.child_by_field_name("name")) or ""
        args = sum(1 for k in kinds if k is None)
        props = len({_prop_key(k) for k in kinds if k is not None})
        out.append((depth, name, args, props))
        if block is not None:
            stack.extend((c, depth + 1) for c in reversed(_ts_live_nodes(block)))
    return out
