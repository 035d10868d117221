"""Property tests: any input gives a validation result, never an exception; bounds hold."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentinel_cp.bundles.kdl import ValidationResult, includes, validate_bundle
from sentinel_cp.bundles.kdl.source import MAX_DEPTH, MAX_NODES, outline_ckdl, outline_tree_sitter
from sentinel_cp.bundles.kdl.validator import MAX_TOTAL_BYTES

BOUNDED = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NAMES = [
    "system",
    "listeners",
    "listener",
    "routes",
    "route",
    "upstreams",
    "upstream",
    "target",
    "filters",
    "filter",
    "agents",
    "agent",
    "waf",
    "namespace",
    "service",
    "exports",
    "limits",
    "observability",
    "rate-limits",
    "cache",
    "include",
    "matches",
    "path-prefix",
    "address",
    "protocol",
    "tls",
    "acme",
    "sni",
    "retry-policy",
    "circuit-breaker",
    "type",
    "priority",
    "upstream",
    "static-files",
    "inference",
    "shadow",
    "schema-version",
    "grpc",
    "x",
]

scalars = st.one_of(
    st.text(max_size=12),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.booleans(),
    st.none(),
    st.sampled_from(["0.0.0.0:8080", "h:1", "low", "dns-01", "1.0", "off", "*.example.com"]),
)


def _scalar(value: object) -> str:
    if value is None:
        return "#null"
    if isinstance(value, bool):
        return "#true" if value else "#false"
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        escaped = "".join(
            c if c.isprintable() or c == " " else f"\\u{{{ord(c):x}}}" for c in escaped
        )
        return f'"{escaped}"'
    if isinstance(value, float):
        return repr(value) if "." in repr(value) or "e" in repr(value) else f"{value}.0"
    return str(value)


PROPS = st.dictionaries(
    st.sampled_from(["address", "weight", "type", "upstream", "path"]), scalars, max_size=2
)


def _node(children: st.SearchStrategy[list[tuple]]) -> st.SearchStrategy[tuple]:
    return st.tuples(st.sampled_from(NAMES), st.lists(scalars, max_size=3), PROPS, children)


nodes = st.recursive(
    _node(st.just([])), lambda inner: _node(st.lists(inner, max_size=4)), max_leaves=12
)


def render(tree: list[tuple], depth: int = 0) -> str:
    lines = []
    for name, args, props, children in tree:
        parts = [
            name,
            *(_scalar(a) for a in args),
            *(f"{k}={_scalar(v)}" for k, v in props.items()),
        ]
        line = "    " * depth + " ".join(parts)
        if children:
            line += " {\n" + render(children, depth + 1) + "    " * depth + "}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _assert_result(result: ValidationResult) -> None:
    assert isinstance(result, ValidationResult)
    assert result.valid == (not result.errors)
    assert isinstance(result.report, str) and result.report
    for diagnostic in (*result.errors, *result.warnings, *result.node_warnings):
        assert isinstance(diagnostic.message, str) and diagnostic.message


@BOUNDED
@given(st.text(max_size=3000))
def test_arbitrary_text_gives_a_result(text: str) -> None:
    _assert_result(validate_bundle({"sentinel.kdl": text}))


@BOUNDED
@given(st.text(alphabet='ab{}"#;=/-\\ \n\t0123456789.rx*(),', max_size=400))
def test_kdl_like_noise_gives_a_result(text: str) -> None:
    _assert_result(validate_bundle({"sentinel.kdl": text}))


@BOUNDED
@given(st.lists(nodes, max_size=6))
def test_arbitrary_kdl_trees_give_a_result_and_parsers_agree(tree: list[tuple]) -> None:
    text = render(tree)
    assert outline_ckdl(text) == outline_tree_sitter(text)
    _assert_result(validate_bundle({"sentinel.kdl": text}))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(nodes, max_size=4), st.lists(nodes, max_size=4))
def test_arbitrary_trees_inside_a_valid_skeleton_give_a_result(
    extra_top: list[tuple], listener_body: list[tuple]
) -> None:
    text = (
        "system { worker-threads 0 }\n"
        'listeners {\n    listener "http" {\n        address "0.0.0.0:8080"\n'
        + render(listener_body, 2)
        + "    }\n}\n"
        + render(extra_top)
    )
    files = {"sentinel.kdl": text, "more.kdl": render(extra_top)}
    _assert_result(validate_bundle(files))


def test_deep_nesting_is_rejected_as_a_validation_error() -> None:
    depth = 5000
    result = validate_bundle({"sentinel.kdl": "a {" * depth + "}" * depth})
    assert not result.valid
    assert result.errors[0].code == "input-too-deep"
    assert str(MAX_DEPTH) in result.errors[0].message


def test_nesting_beyond_the_parser_limit_is_a_syntax_error() -> None:
    depth = 400_000
    result = validate_bundle({"sentinel.kdl": "a{" * depth + "}" * depth})
    assert not result.valid
    assert result.errors[0].code in ("kdl-syntax", "input-too-deep")


def test_huge_input_is_rejected_before_parsing() -> None:
    result = validate_bundle({"sentinel.kdl": "a 1\n" * (MAX_TOTAL_BYTES // 4 + 1)})
    assert not result.valid
    assert result.errors[0].code == "input-too-large"


def test_too_many_nodes_is_rejected() -> None:
    result = validate_bundle({"sentinel.kdl": "a;" * (MAX_NODES + 1)})
    assert not result.valid
    assert result.errors[0].code == "input-too-many-nodes"


def test_node_budget_spans_included_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(includes, "MAX_NODES", 1000)
    chunk = "a;" * 501
    files = {"sentinel.kdl": 'include "part-*.kdl"\n', "part-1.kdl": chunk, "part-2.kdl": chunk}
    result = validate_bundle(files)
    assert result.errors[0].code == "input-too-many-nodes"


def test_too_many_files_is_rejected() -> None:
    files = {f"f{i}.kdl": "" for i in range(2000)}
    files["sentinel.kdl"] = ""
    result = validate_bundle(files)
    assert result.errors[0].code == "input-too-many-files"


def test_non_text_file_is_rejected() -> None:
    result = validate_bundle({"sentinel.kdl": b"system {}"})  # type: ignore[dict-item]
    assert result.errors[0].code == "input-not-text"
