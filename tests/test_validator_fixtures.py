"""Every proxy-config fixture gives the outcome the real proxy gives (`sentinel test -c`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sentinel_cp.bundles.kdl import validate_bundle
from sentinel_cp.bundles.kdl.source import outline_ckdl, outline_tree_sitter

# A copy of shared/fixtures/proxy-configs, so the suite runs from any checkout.
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "proxy-configs"
KDL_FILES = sorted(FIXTURES.glob("*.kdl"))
assert KDL_FILES, f"no fixtures under {FIXTURES}"


def _expected(path: Path) -> dict[str, list[str]]:
    expected: dict[str, list[str]] = {}
    text = path.with_suffix(".expected.txt").read_text()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key in ("stage", "exit_code", "error_contains"):
            expected.setdefault(key, []).append(value.strip())
    return expected


def test_fixture_directory_is_present() -> None:
    assert len(KDL_FILES) >= 13


@pytest.mark.parametrize("path", KDL_FILES, ids=lambda p: p.name)
def test_fixture_outcome_matches_the_proxy(path: Path) -> None:
    result = validate_bundle({"sentinel.kdl": path.read_text()})
    if path.name.startswith("valid_"):
        assert result.valid, [e.render() for e in result.errors]
        assert result.errors == ()
        assert result.report.endswith("configuration file sentinel.kdl test is successful")
        assert result.config is not None and result.config.listeners
    else:
        expected = _expected(path)
        assert not result.valid
        assert expected["exit_code"] == ["1"]
        assert expected["stage"][0].startswith("load")
        for needle in expected["error_contains"]:
            assert needle in result.report
            assert any(needle in e.message for e in result.errors)
        assert result.report.startswith("Error: Failed to load configuration file\n\nCaused by:")
        for error in result.errors:
            assert error.file == "sentinel.kdl" and error.line > 0 and error.column > 0


@pytest.mark.parametrize("path", KDL_FILES, ids=lambda p: p.name)
def test_ckdl_and_tree_sitter_agree_on_structure(path: Path) -> None:
    text = path.read_text()
    if "kdl_v1" in path.name:
        with pytest.raises(Exception):  # noqa: B017 - ckdl rejects v1; tree-sitter is lenient
            outline_ckdl(text)
        assert outline_tree_sitter(text)
        return
    assert outline_ckdl(text) == outline_tree_sitter(text)


def test_v1_syntax_error_points_at_the_bare_boolean() -> None:
    path = FIXTURES / "invalid_acme_san_kdl_v1_syntax.kdl"
    result = validate_bundle({"sentinel.kdl": path.read_text()})
    (error,) = result.errors
    line = path.read_text().splitlines()[error.line - 1]
    assert line[error.column - 1 :].startswith("true")
    assert error.suggestion is not None and "#true" in error.suggestion


def test_retry_policy_error_points_at_the_unknown_key() -> None:
    path = FIXTURES / "invalid_api_gateway_retry_policy.kdl"
    result = validate_bundle({"sentinel.kdl": path.read_text()})
    (error,) = result.errors
    assert path.read_text().splitlines()[error.line - 1].strip().startswith("timeout-ms")


def test_fixture_model_exposes_routes_and_upstreams() -> None:
    result = validate_bundle({"sentinel.kdl": (FIXTURES / "valid_namespaces.kdl").read_text()})
    config = result.config
    assert config is not None
    assert [n.id for n in config.namespaces] == ["platform", "storefront", "analytics"]
    assert {r.id for r in config.routes} == {"health", "metrics", "fallback"}
    assert config.namespaces[0].services[0].routes[0].service == "user-management"
    assert config.upstreams["auth-service"].targets[1].address == "auth.internal:8081"
