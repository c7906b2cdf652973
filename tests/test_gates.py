"""Gate grammar and evaluation (auditkit.gates): parsed, never eval-ed; NaN or missing is ERROR."""
from __future__ import annotations

import math

import pytest

from auditkit.gates import Gate, GateSyntaxError, Ref, evaluate, parse_gate
from auditkit.runner import exit_code_for


def m(value, lo=None, hi=None):
    return {"value": value, "ci_low": lo, "ci_high": hi, "n": 10, "higher_is_better": True}


# ---------------------------------------------------------------------- parsing

def test_simple_gate_parses_into_parts():
    g = parse_gate("accuracy >= 0.85")
    assert g == Gate("accuracy >= 0.85", Ref("accuracy"), ">=", 0.85, 0.0, "fail")
    assert not g.needs_baseline


@pytest.mark.parametrize("op", [">=", "<=", ">", "<", "==", "!="])
def test_every_operator(op):
    assert parse_gate(f"x {op} 1").op == op


def test_no_spaces_needed():
    g = parse_gate("loss_gap<=0.15")
    assert (g.left.metric, g.op, g.right) == ("loss_gap", "<=", 0.15)


@pytest.mark.parametrize("expr,offset", [
    ("accuracy >= baseline.accuracy - 0.01", -0.01),
    ("accuracy >= baseline.accuracy -0.01", -0.01),
    ("accuracy >= baseline.accuracy + 0.02", 0.02),
    ("accuracy >= baseline.accuracy+0.02", 0.02),
    ("accuracy >= baseline.accuracy", 0.0),
])
def test_baseline_with_offset(expr, offset):
    g = parse_gate(expr)
    assert g.right == Ref("accuracy", "value", baseline=True)
    assert g.offset == pytest.approx(offset)
    assert g.needs_baseline


def test_confidence_bounds_on_both_sides():
    g = parse_gate("accuracy.ci_low >= baseline.accuracy.ci_high")
    assert g.left == Ref("accuracy", "ci_low")
    assert g.right == Ref("accuracy", "ci_high", baseline=True)


def test_percent_values():
    assert parse_gate("accuracy >= 85%").right == pytest.approx(0.85)
    assert parse_gate("accuracy >= baseline.accuracy - 1%").offset == pytest.approx(-0.01)


def test_scientific_notation_and_negative_numbers():
    assert parse_gate("kl <= 1e-3").right == pytest.approx(1e-3)
    assert parse_gate("delta >= -0.5").right == pytest.approx(-0.5)


def test_dotted_metric_names():
    g = parse_gate("random.comprehensiveness.ci_high <= 0.2")
    assert g.left == Ref("random.comprehensiveness", "ci_high")
    g = parse_gate("a.b >= baseline.a.b - 0.1")
    assert g.left == Ref("a.b") and g.right == Ref("a.b", baseline=True)


def test_severity_warn_and_bad_severity():
    assert parse_gate("x >= 1", "warn").severity == "warn"
    with pytest.raises(GateSyntaxError, match="severity"):
        parse_gate("x >= 1", "fatal")


@pytest.mark.parametrize("expr", [
    "accuracy",                     # no operator
    "accuracy >=",                  # no value
    ">= 0.8",                       # no metric
    "accuracy => 0.8",              # wrong operator
    "accuracy >= 0.8 0.9",          # trailing junk
    "accuracy >= 0.8 - 0.1",        # offset on a plain number
    "baseline.accuracy <= 0.9",     # left side must be the audited model
    "__import__('os').system('x') >= 1",
    "",
    "   ",
])
def test_bad_syntax_is_rejected(expr):
    with pytest.raises(GateSyntaxError):
        parse_gate(expr)


def test_non_string_is_rejected():
    with pytest.raises(GateSyntaxError):
        parse_gate(0.8)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- evaluation

def test_pass_and_fail():
    metrics = {"accuracy": m(0.9)}
    ok = evaluate(parse_gate("accuracy >= 0.85"), metrics, None)
    assert ok["status"] == "pass" and ok["observed"] == 0.9 and ok["threshold"] == 0.85
    bad = evaluate(parse_gate("accuracy >= 0.95"), metrics, None)
    assert bad["status"] == "fail"


def test_warn_severity_gives_warn_not_fail():
    assert evaluate(parse_gate("accuracy >= 0.95", "warn"), {"accuracy": m(0.9)}, None)["status"] == "warn"
    assert evaluate(parse_gate("accuracy >= 0.5", "warn"), {"accuracy": m(0.9)}, None)["status"] == "pass"


def test_baseline_offset_threshold():
    g = parse_gate("accuracy >= baseline.accuracy - 0.05")
    rec = evaluate(g, {"accuracy": m(0.86)}, {"accuracy": m(0.9)})
    assert rec["threshold"] == pytest.approx(0.85) and rec["status"] == "pass"
    rec = evaluate(g, {"accuracy": m(0.84)}, {"accuracy": m(0.9)})
    assert rec["status"] == "fail"


def test_ci_low_is_what_is_compared():
    g = parse_gate("accuracy.ci_low >= 0.8")
    assert evaluate(g, {"accuracy": m(0.9, 0.79, 0.95)}, None)["status"] == "fail"
    assert evaluate(g, {"accuracy": m(0.9, 0.81, 0.95)}, None)["status"] == "pass"


def test_dotted_metric_is_looked_up_by_full_name():
    g = parse_gate("random.comprehensiveness <= 0.2")
    assert evaluate(g, {"random.comprehensiveness": m(0.1)}, None)["status"] == "pass"


@pytest.mark.parametrize("metrics", [
    {"accuracy": m(float("nan"))},
    {"accuracy": m(None)},
    {},
    {"other": m(1.0)},
])
@pytest.mark.parametrize("expr", ["accuracy >= 0.5", "accuracy <= 0.5", "accuracy != 0.5"])
def test_nan_or_missing_metric_is_error_never_pass(metrics, expr):
    rec = evaluate(parse_gate(expr), metrics, None)
    assert rec["status"] == "error"
    assert "missing or NaN" in rec["reason"]


@pytest.mark.parametrize("value", [math.inf, -math.inf])
@pytest.mark.parametrize("expr", ["accuracy > -100", "accuracy < 100"])
def test_an_infinite_metric_is_error_never_pass(value, expr):
    """results.json stores an infinity as null: a gate that passed on it would be a PASS on a value the
    stored results show as missing."""
    rec = evaluate(parse_gate(expr), {"accuracy": m(value)}, None)
    assert rec["status"] == "error" and "not a finite number" in rec["reason"] and rec["observed"] is None


def test_an_infinite_metric_is_null_in_results_json_beside_an_error_gate():
    import json

    from auditkit.api import Metric
    from auditkit.results import dumps
    metric = Metric(-math.inf).as_dict()
    rec = evaluate(parse_gate("x > -100"), {"x": metric}, None)
    stored = json.loads(dumps({"metrics": {"x": metric}, "gates": [rec]}))
    assert stored["metrics"]["x"]["value"] is None and stored["gates"][0]["status"] == "error"


def test_missing_ci_bound_is_error():
    assert evaluate(parse_gate("accuracy.ci_low >= 0"), {"accuracy": m(0.9)}, None)["status"] == "error"


def test_nan_baseline_or_no_baseline_is_error():
    g = parse_gate("accuracy >= baseline.accuracy")
    assert evaluate(g, {"accuracy": m(0.9)}, {"accuracy": m(math.nan)})["status"] == "error"
    rec = evaluate(g, {"accuracy": m(0.9)}, None)
    assert rec["status"] == "error" and "baseline" in rec["reason"]


def test_warn_gate_on_nan_is_still_error():
    assert evaluate(parse_gate("x >= 0", "warn"), {"x": m(math.nan)}, None)["status"] == "error"


# ---------------------------------------------------------------------- exit codes from gate outcomes

def _results(*checks):
    return {"checks": [{"status": s, "gates": [{"status": g} for g in gates], "error": err}
                       for s, gates, err in checks]}


def test_exit_codes_from_gates():
    assert exit_code_for(_results(("pass", ["pass"], None))) == 0
    assert exit_code_for(_results(("warn", ["warn"], None))) == 0
    assert exit_code_for(_results(("warn", ["warn"], None)), strict=True) == 1
    assert exit_code_for(_results(("fail", ["fail"], None), ("pass", ["pass"], None))) == 1
    assert exit_code_for(_results(("error", ["error"], None))) == 1  # a NaN gate fails the run
    crashed = ("error", ["error"], {"type": "RuntimeError", "message": "x", "traceback": "..."})
    assert exit_code_for(_results(crashed, ("fail", ["fail"], None))) == 3
