"""File diff, semantic summary and risk of a bundle, on real fixture configs edited by hand."""

from __future__ import annotations

import json
from pathlib import Path

from sentinel_cp.bundles.diff import semantic_summary, unified_diff
from sentinel_cp.bundles.kdl.model import ProxyConfig
from sentinel_cp.bundles.kdl.validator import validate_bundle
from sentinel_cp.bundles.risk import assess

FIXTURES = Path(__file__).parent / "fixtures" / "proxy-configs"
BASIC = (FIXTURES / "valid_basic.kdl").read_text()
RATE = (FIXTURES / "valid_distributed_rate_limit.kdl").read_text()
NAMESPACES = (FIXTURES / "valid_namespaces.kdl").read_text()
GUARDRAILS = (FIXTURES / "valid_ai_guardrails.kdl").read_text()
EMPTY: dict[str, list[str]] = {"added": [], "removed": [], "changed": []}


def _config(text: str) -> ProxyConfig:
    result = validate_bundle({"sentinel.kdl": text})
    assert result.valid, result.report
    assert result.config is not None
    return result.config


def _edit(text: str, old: str, new: str) -> str:
    assert text.count(old) >= 1, old
    return text.replace(old, new, 1)


def _with_routes(text: str, count: int) -> str:
    routes = "".join(
        f'    route "extra-{i:02}" {{\n'
        f'        matches {{\n            path-prefix "/extra/{i}"\n        }}\n'
        f'        upstream "backend"\n    }}\n'
        for i in range(count)
    )
    return _edit(text, "routes {\n", "routes {\n" + routes)


SPARE_UPSTREAM = 'upstreams {\n    upstream "spare" {\n        target "127.0.0.1:9000"\n    }\n'


# ---------------------------------------------------------------------------- file diff


def test_unified_diff_reports_added_removed_and_changed_files_sorted_by_path() -> None:
    old = {"sentinel.kdl": "a\nb\n", "routes/old.kdl": "x\n", "same.kdl": "s\n"}
    new = {"sentinel.kdl": "a\nc\n", "routes/new.kdl": "y\n", "same.kdl": "s\n"}
    entries = unified_diff(old, new)
    assert [(e["path"], e["status"]) for e in entries] == [
        ("routes/new.kdl", "added"),
        ("routes/old.kdl", "removed"),
        ("sentinel.kdl", "changed"),
    ]


def test_unified_diff_of_a_changed_file_has_a_and_b_headers() -> None:
    (entry,) = unified_diff({"sentinel.kdl": "a\nb\n"}, {"sentinel.kdl": "a\nc\n"})
    lines = entry["diff"].splitlines()
    assert lines[:2] == ["--- a/sentinel.kdl", "+++ b/sentinel.kdl"]
    assert "-b" in lines
    assert "+c" in lines


def test_unified_diff_of_an_added_file_comes_from_dev_null() -> None:
    (entry,) = unified_diff({}, {"routes/a.kdl": "x\n"})
    assert entry["diff"].splitlines()[:2] == ["--- /dev/null", "+++ b/routes/a.kdl"]


def test_unified_diff_marks_a_missing_final_newline() -> None:
    (entry,) = unified_diff({"sentinel.kdl": "a\nb"}, {"sentinel.kdl": "a\nc"})
    assert "-b\n\\ No newline at end of file\n+c\n\\ No newline at end of file\n" in entry["diff"]


def test_unified_diff_of_identical_file_sets_is_empty() -> None:
    assert unified_diff({"sentinel.kdl": BASIC}, {"sentinel.kdl": BASIC}) == []


# ---------------------------------------------------------------------------- semantic summary


def test_summary_of_an_added_route_lists_it_as_added() -> None:
    summary = semantic_summary(_config(BASIC), _config(_with_routes(BASIC, 1)))
    assert summary["routes"] == {"added": ["extra-00"], "removed": [], "changed": []}
    assert summary["listeners"] == summary["upstreams"] == summary["filters"] == EMPTY


def test_summary_of_a_changed_listener_lists_it_as_changed() -> None:
    new = _edit(BASIC, '"0.0.0.0:8080"', '"0.0.0.0:8081"')
    summary = semantic_summary(_config(BASIC), _config(new))
    assert summary["listeners"] == {"added": [], "removed": [], "changed": ["http"]}
    assert summary["tls_changed"] is False


def test_summary_ignores_comments_and_moved_lines() -> None:
    new = "// a comment on top\n\n" + BASIC
    summary = semantic_summary(_config(BASIC), _config(new))
    assert all(summary[kind] == EMPTY for kind in ("listeners", "routes", "upstreams"))
    assert not any(value for key, value in summary.items() if key.endswith("_changed"))


def test_summary_qualifies_namespaced_entities() -> None:
    new = _edit(NAMESPACES, 'path-prefix "/users"', 'path-prefix "/people"')
    summary = semantic_summary(_config(NAMESPACES), _config(new))
    assert summary["routes"]["changed"] == ["platform:users-api"]


def test_summary_flags_a_tls_change() -> None:
    new = _edit(NAMESPACES, "wildcard.crt", "wildcard-2025.crt")
    summary = semantic_summary(_config(NAMESPACES), _config(new))
    assert summary["tls_changed"] is True
    assert summary["listeners"]["changed"] == ["https"]


def test_summary_flags_a_rate_limit_change() -> None:
    new = _edit(RATE, "max-rps 100\n", "max-rps 150\n")
    summary = semantic_summary(_config(RATE), _config(new))
    assert summary["filters"]["changed"] == ["redis-rate-limit"]
    assert summary["rate_limits_changed"] is True


def test_summary_against_nothing_lists_everything_added_and_is_json() -> None:
    config = _config(NAMESPACES)
    summary = semantic_summary(None, config)
    assert "storefront:product-api:products" in summary["routes"]["added"]
    assert summary["namespaces"]["added"] == ["analytics", "platform", "storefront"]
    assert json.loads(json.dumps(summary)) == summary
    assert semantic_summary(config, None)["routes"]["removed"] == summary["routes"]["added"]


# ---------------------------------------------------------------------------- risk


def test_first_bundle_is_low_risk_with_reason_initial() -> None:
    risk = assess(None, _config(BASIC))
    assert (risk.level, risk.reasons) == ("low", ["initial"])


def test_unchanged_config_is_low_risk_without_semantic_changes() -> None:
    risk = assess(_config(BASIC), _config("// reformatted\n" + BASIC))
    assert (risk.level, risk.reasons) == ("low", ["no semantic changes"])


def test_an_added_route_is_low_risk() -> None:
    risk = assess(_config(BASIC), _config(_with_routes(BASIC, 1)))
    assert (risk.level, risk.reasons) == ("low", ["1 route changed: extra-00"])


def test_ten_route_changes_are_still_low_risk() -> None:
    risk = assess(_config(BASIC), _config(_with_routes(BASIC, 10)))
    assert risk.level == "low"
    assert risk.reasons[0].startswith("10 routes changed")


def test_eleven_route_changes_are_medium_risk() -> None:
    risk = assess(_config(BASIC), _config(_with_routes(BASIC, 11)))
    assert (risk.level, risk.reasons) == ("medium", ["11 routes changed (more than 10)"])


def test_a_removed_upstream_is_medium_risk() -> None:
    old = _config(_edit(BASIC, "upstreams {\n", SPARE_UPSTREAM))
    risk = assess(old, _config(BASIC))
    assert (risk.level, risk.reasons) == ("medium", ["1 upstream removed: spare"])


def test_an_added_upstream_is_low_risk() -> None:
    new = _config(_edit(BASIC, "upstreams {\n", SPARE_UPSTREAM))
    risk = assess(_config(BASIC), new)
    assert (risk.level, risk.reasons) == ("low", ["1 upstream added or changed: spare"])


def test_a_changed_rate_limit_filter_is_medium_risk() -> None:
    risk = assess(_config(RATE), _config(_edit(RATE, "max-rps 100\n", "max-rps 150\n")))
    assert risk.level == "medium"
    assert risk.reasons == [
        "Rate limits changed: filter redis-rate-limit changed",
        "1 filter changed: redis-rate-limit",
    ]


def test_detaching_a_rate_limit_filter_from_a_route_is_medium_risk() -> None:
    new = _edit(RATE, '        filters "redis-rate-limit"\n', "")
    risk = assess(_config(RATE), _config(new))
    assert risk.level == "medium"
    assert risk.reasons[0] == "Rate limits changed: route public-api filters"


def test_a_global_rate_limit_detached_inside_a_namespace_is_medium_risk() -> None:
    new = _edit(NAMESPACES, '"platform-auth" "global-rate-limit"', '"platform-auth"')
    risk = assess(_config(NAMESPACES), _config(new))
    assert risk.level == "medium"
    assert "Rate limits changed: route platform:users-api filters" in risk.reasons


def test_a_changed_listener_is_high_risk() -> None:
    new = _edit(BASIC, '"0.0.0.0:8080"', '"0.0.0.0:8081"')
    risk = assess(_config(BASIC), _config(new))
    assert (risk.level, risk.reasons) == ("high", ["1 listener changed: http"])


def test_a_tls_change_is_high_risk_with_its_own_reason() -> None:
    new = _edit(NAMESPACES, 'min-version "TLS1.2"', 'min-version "TLS1.3"')
    risk = assess(_config(NAMESPACES), _config(new))
    assert risk.level == "high"
    assert risk.reasons == ["1 listener changed: https", "TLS changed on listener https"]


def test_a_changed_agent_is_high_risk() -> None:
    new = _edit(GUARDRAILS, "timeout-ms 500", "timeout-ms 750")
    risk = assess(_config(GUARDRAILS), _config(new))
    assert (risk.level, risk.reasons) == ("high", ["1 agent changed: prompt-guard"])


def test_detaching_an_auth_filter_from_a_route_is_high_risk() -> None:
    new = _edit(GUARDRAILS, '        filters "content-moderator"\n', "")
    risk = assess(_config(GUARDRAILS), _config(new))
    assert risk.level == "high"
    assert risk.reasons == [
        "Agent (auth) filters changed: route secure-chat filters",
        "1 route changed: secure-chat",
    ]


def test_detaching_a_namespace_auth_filter_is_high_risk() -> None:
    new = _edit(NAMESPACES, '"platform-auth" "global-rate-limit"', '"global-rate-limit"')
    risk = assess(_config(NAMESPACES), _config(new))
    assert risk.level == "high"
    assert risk.reasons[0] == "Agent (auth) filters changed: route platform:users-api filters"


def test_enabling_waf_on_a_route_is_high_risk() -> None:
    new = _edit(
        BASIC,
        '        upstream "backend"\n',
        '        upstream "backend"\n        waf-enabled #true\n',
    )
    risk = assess(_config(BASIC), _config(new))
    assert risk.level == "high"
    assert risk.reasons == ["WAF changed: route default waf-enabled", "1 route changed: default"]


def test_adding_a_waf_block_is_high_risk() -> None:
    new = _config(BASIC + '\nwaf {\n    mode "off"\n}\n')
    risk = assess(_config(BASIC), new)
    assert (risk.level, risk.reasons) == ("high", ["WAF changed: waf settings"])


def test_level_is_the_highest_and_reasons_keep_rule_order() -> None:
    new = _with_routes(_edit(BASIC, '"0.0.0.0:8080"', '"0.0.0.0:8081"'), 2)
    risk = assess(_config(BASIC), _config(new))
    assert risk.level == "high"
    assert risk.reasons == [
        "1 listener changed: http",
        "2 routes changed: extra-00, extra-01",
    ]
