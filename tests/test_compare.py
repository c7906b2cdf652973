"""``auditkit compare``: deltas, paired tests on per-example records, regressions first, comparison
gates (exit 1), bad input (exit 2), comparison.html/.md; hand-built results plus one end-to-end run."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from auditkit.results import SCHEMA, write_json_atomic
from auditkit.stats import mcnemar
from tests.conftest import write_jsonl, write_suite


def metric(value, hib=True, ci=None, n=None):
    return {"value": value, "ci_low": ci[0] if ci else None, "ci_high": ci[1] if ci else None, "n": n,
            "higher_is_better": hib}


def results(checks, suite="s", status="pass"):
    return {"schema": SCHEMA, "suite": {"name": suite, "file": "s.yaml", "description": ""}, "status": status,
            "model": {"id": "m", "fingerprint": "f" * 32}, "baseline": None, "environment": {},
            "checks": [dict({"status": "pass", "gates": [], "records": {}, "data": "d.jsonl"}, **c) for c in checks],
            "run": {"started": "2026-01-01T00:00:00Z"}}


def write_pair(tmp_path, a, b):
    (tmp_path / "a").mkdir(exist_ok=True)
    (tmp_path / "b").mkdir(exist_ok=True)
    return (write_json_atomic(tmp_path / "a" / "results.json", a),
            write_json_atomic(tmp_path / "b" / "results.json", b))


CORRECT_A = [1] * 30 + [0] * 10          # 0.75
CORRECT_B = [1] * 22 + [0] * 8 + [0] * 10  # 0.55: 8 items A got right and B got wrong


@pytest.fixture
def pair():
    a = results([
        {"id": "accuracy", "uses": "accuracy", "metrics": {"accuracy": metric(0.75, ci=(0.6, 0.88), n=40),
                                                             "macro_f1": metric(0.7)},
         "records": {"correct": CORRECT_A, "loss": [0.5] * 40}},
        {"id": "forgetting", "uses": "forgetting", "metrics": {"ppl_ratio": metric(1.0, False),
                                                                "mcnemar_p": metric(0.5, None),
                                                                "retention": metric(0.99)}},
        {"id": "gone", "uses": "accuracy", "metrics": {"accuracy": metric(0.5)}},
    ])
    b = results([
        {"id": "accuracy", "uses": "accuracy", "metrics": {"accuracy": metric(0.55, ci=(0.4, 0.7), n=40),
                                                             "macro_f1": metric(0.72)},
         "records": {"correct": CORRECT_B, "loss": [0.7] * 40}},
        {"id": "forgetting", "uses": "forgetting", "metrics": {"ppl_ratio": metric(1.02, False),
                                                                "mcnemar_p": metric(0.2, None),
                                                                "retention": metric(0.99), "cka_min": metric(0.9)}},
    ])
    return a, b


def test_deltas_paired_tests_and_regressions_first(pair):
    from auditkit.compare import compare_results
    c = compare_results(*pair)
    rows = {(r["check"], r["metric"]): r for r in c["rows"]}
    acc = rows[("accuracy", "accuracy")]
    assert acc["delta"] == pytest.approx(-0.2) and acc["direction"] == "regression"
    # the correctness records are paired: McNemar, exact since b + c = 8 <= 25
    expected = mcnemar(CORRECT_A, CORRECT_B)
    assert acc["test"] == "McNemar (exact)" and acc["p_value"] == pytest.approx(expected["p_value"])
    assert acc["significant"] is True and acc["p_value"] < 0.05
    assert acc["ci_low"] < -0.2 < acc["ci_high"] < 0  # bootstrap CI of the paired difference
    # lower is better: a higher perplexity ratio is a regression; no records -> no test
    ppl = rows[("forgetting", "ppl_ratio")]
    assert ppl["direction"] == "regression" and ppl["test"] is None and ppl["significant"] is None
    assert rows[("accuracy", "macro_f1")]["direction"] == "improvement"
    assert rows[("forgetting", "mcnemar_p")]["direction"] == "changed"  # no better direction
    assert rows[("forgetting", "retention")]["direction"] == "unchanged"
    order = [r["direction"] for r in c["rows"]]
    assert order == sorted(order, key=["regression", "changed", "improvement", "unchanged"].index)
    assert c["rows"][0]["metric"] == "accuracy"  # the significant regression leads
    assert "forgetting.cka_min" in c["only_in_b"] and "gone.accuracy" in c["only_in_a"]
    # two metrics regressed and the check 'gone' is missing in B, which is a regression too
    assert c["summary"]["regression"] == 3 and c["summary"]["significant_regressions"] == 1
    assert c["summary"]["check_regressions"] == 1 and c["status"] == "warn"
    # the non-binary record is compared by paired bootstrap
    loss = next(t for t in c["tests"] if t["record"] == "loss")
    assert loss["test"] == "paired bootstrap" and loss["delta"] == pytest.approx(0.2)


def test_records_of_different_length_or_data_are_not_paired(pair):
    from auditkit.compare import compare_results
    a, b = copy.deepcopy(pair)
    b["checks"][0]["records"]["correct"] = CORRECT_B[:30]
    c = compare_results(a, b)
    acc = next(r for r in c["rows"] if r["metric"] == "accuracy")
    assert acc["test"] is None and any("40 vs 30" in n for n in c["notes"])
    a, b = copy.deepcopy(pair)
    b["checks"][0]["data"] = "other.jsonl"
    c = compare_results(a, b)
    assert next(r for r in c["rows"] if r["metric"] == "accuracy")["test"] is None
    assert any("data differs" in n for n in c["notes"])


def test_fail_on_gates_apply_to_the_delta(tmp_path, pair, run_cli):
    pa, pb = write_pair(tmp_path, *pair)
    code, out, err = run_cli("compare", pa, pb, "--fail-on", "accuracy.accuracy < -0.01")
    assert code == 1, err
    assert "FAIL --fail-on 'accuracy.accuracy < -0.01'" in out
    code, out, err = run_cli("compare", pa, pb, "--fail-on", "accuracy.accuracy < -0.5",
                             "--fail-on", "ppl_ratio > 0.05", "--fail-on", "macro_f1 < 0")
    assert code == 0, out + err
    # the delta's CI bound: the paired bootstrap upper bound of accuracy is below 0
    code, out, _ = run_cli("compare", pa, pb, "--fail-on", "accuracy.accuracy.ci_high < 0")
    assert code == 1
    # a CI that does not exist (no records) is an ERROR gate, which fails the comparison
    code, out, _ = run_cli("compare", pa, pb, "--fail-on", "ppl_ratio.ci_low > 1")
    assert code == 1 and "no confidence interval" in out
    c = json.loads((tmp_path / "b" / "comparison.json").read_text())
    assert c["status"] == "fail" and c["gates"][0]["status"] == "error"


@pytest.mark.parametrize("gate, words", [
    ("accuracy < -0.01", "several checks"),
    ("acuracy < 0", "did you mean"),
    ("accuracy <", "bad comparison gate"),
    ("retention < baseline.retention", "no meaning in a comparison"),
])
def test_bad_fail_on_is_exit_2(tmp_path, pair, run_cli, gate, words):
    a, b = copy.deepcopy(pair)
    if "several" in words:  # make 'accuracy' ambiguous: a second shared check emits it
        for r in (a, b):
            r["checks"].append({"id": "accuracy-2", "uses": "accuracy", "status": "pass", "gates": [],
                                "metrics": {"accuracy": metric(0.5)}, "records": {}, "data": None})
    pa, pb = write_pair(tmp_path, a, b)
    code, _, err = run_cli("compare", pa, pb, "--fail-on", gate)
    assert code == 2 and words in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_different_suites_or_schemas_are_exit_2(tmp_path, pair, run_cli):
    a, b = pair
    pa, pb = write_pair(tmp_path, a, dict(b, suite={"name": "other"}))
    code, _, err = run_cli("compare", pa, pb)
    assert code == 2 and "different suites" in err
    pa, pb = write_pair(tmp_path, a, dict(b, schema="auditkit.results/2"))
    code, _, err = run_cli("compare", pa, pb)
    assert code == 2 and "auditkit.results/2" in err
    code, _, err = run_cli("compare", pa, tmp_path / "missing.json")
    assert code == 2 and "does not exist" in err


def test_reports_default_next_to_b_and_escape_everything(tmp_path, pair, run_cli):
    a, b = copy.deepcopy(pair)
    for r in (a, b):
        r["checks"][1]["metrics"]["<script>alert(1)</script>"] = metric(0.1 if r is a else 0.3)
    pa, pb = write_pair(tmp_path, a, b)
    code, out, _ = run_cli("compare", pa, pb)
    assert code == 0
    html = (tmp_path / "b" / "comparison.html").read_text()
    md = (tmp_path / "b" / "comparison.md").read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "Content-Security-Policy" in html and 'id="metrics"' in html
    # regressions first in both reports
    assert html.index("regression") < html.index("improvement")
    table = [line for line in md.splitlines() if line.startswith("| ") and "accuracy |" in line]
    assert table and "regression" in table[0] and "McNemar" in table[0]
    assert "<script>" not in md
    code, _, _ = run_cli("compare", pa, pb, "--out", tmp_path / "elsewhere")
    assert (tmp_path / "elsewhere" / "comparison.html").exists()
    assert (tmp_path / "elsewhere" / "comparison.md").exists()


def test_end_to_end_two_runs_of_a_suite(tmp_path, run_cli):
    rng = np.random.default_rng(0)
    words = ["good", "great", "bad", "awful", "fine", "poor"]
    rows = [{"text": f"The product was {w} and {v}.", "label": int(w in ('good', 'great', 'fine'))}
            for w in words for v in ("cheap", "late", "new", "blue", "small")]
    rng.shuffle(rows)
    write_jsonl(tmp_path / "test.jsonl", rows)
    for seed in (0, 1):
        write_suite(tmp_path, f"""
            name: cmp
            seed: {seed}
            model: {{base: builtin:tiny-bert, task: sequence-classification, num_labels: 2}}
            checks:
              - uses: accuracy
                data: test.jsonl
                bootstrap: 100
                gates: []  # a random tiny model: no verdict, only the numbers to compare (status info)
            """, name=f"s{seed}.yaml")
        code, _, err = run_cli("run", tmp_path / f"s{seed}.yaml", "--out", tmp_path / f"run{seed}")
        assert code == 0, err
    a, b = tmp_path / "run0" / "results.json", tmp_path / "run1" / "results.json"
    code, out, err = run_cli("compare", a, b, "--fail-on", "accuracy < -2")
    assert code == 0, err
    c = json.loads((tmp_path / "run1" / "comparison.json").read_text())
    acc = next(r for r in c["rows"] if r["metric"] == "accuracy")
    ra, rb = (json.loads(p.read_text())["checks"][0] for p in (a, b))
    assert acc["delta"] == pytest.approx(rb["metrics"]["accuracy"]["value"] - ra["metrics"]["accuracy"]["value"])
    assert acc["test"].startswith("McNemar")
    assert acc["p_value"] == pytest.approx(mcnemar(ra["records"]["correct"], rb["records"]["correct"])["p_value"])
    assert (tmp_path / "run1" / "comparison.html").exists() and (tmp_path / "run1" / "comparison.md").exists()
    # a run compared with itself: nothing changed, any drop gate passes
    code, out, _ = run_cli("compare", a, a, "--out", tmp_path / "self", "--fail-on", "accuracy < 0")
    assert code == 0
    c = json.loads((tmp_path / "self" / "comparison.json").read_text())
    assert all(r["direction"] == "unchanged" for r in c["rows"])


# ---------------------------------------------------------------------- a check that got worse

@pytest.fixture
def crashed():
    """``probe`` passed in A and crashed in B; ``drift`` went pass -> warn, ``gone`` is missing in B,
    ``healed`` went error -> pass, ``same`` did not change."""
    a = results([
        {"id": "probe", "uses": "probe", "metrics": {"mean_logprob": metric(-0.4), "top1": metric(0.6)}},
        {"id": "drift", "uses": "accuracy", "metrics": {"accuracy": metric(0.8)}},
        {"id": "gone", "uses": "forgetting", "metrics": {"retention": metric(0.9)}},
        {"id": "healed", "uses": "calibration", "status": "error", "metrics": {}},
        {"id": "same", "uses": "overfitting", "metrics": {"gap": metric(0.1, False)}},
    ])
    b = results([
        {"id": "probe", "uses": "probe", "status": "error", "metrics": {}, "error": "Traceback ..."},
        {"id": "drift", "uses": "accuracy", "status": "warn", "metrics": {"accuracy": metric(0.8)}},
        {"id": "healed", "uses": "calibration", "metrics": {"ece": metric(0.05, False)}},
        {"id": "same", "uses": "overfitting", "metrics": {"gap": metric(0.1, False)}},
    ], status="error")
    return a, b


def test_a_check_that_got_worse_is_a_regression(crashed):
    from auditkit.compare import compare_results, render_markdown
    c = compare_results(*crashed)
    status = {x["check"]: x for x in c["check_status"]}
    assert status["probe"]["direction"] == "regression" and status["probe"]["b"] == "error"
    assert status["drift"]["direction"] == "regression"
    assert status["gone"]["direction"] == "regression" and status["gone"]["b"] is None
    assert status["healed"]["direction"] == "improvement"
    assert status["same"]["direction"] == "unchanged"
    s = c["summary"]
    assert s["check_regressions"] == 3 and s["regression"] == 3  # no metric regressed, three checks did
    assert s["improvement"] == 1 and s["unchanged"] == 2
    # no gate failed, so the exit code stays 0, but the comparison is no pass
    assert c["status"] == "warn"
    md = render_markdown(c)
    title = md.splitlines()[0]
    assert "PASS" not in title and "WARN" in title
    assert "3 regressions" in md and "0 regressions" not in md
    # the headline names the checks that got worse with B's status, not A's
    worse = next(line for line in md.splitlines() if "Checks that got worse" in line)
    assert "`probe` pass → **error**" in worse and "`drift` pass → **warn**" in worse
    assert "`gone` pass → **absent**" in worse and "healed" not in worse


def test_compare_cli_reports_a_crash_in_b(tmp_path, crashed, run_cli):
    pa, pb = write_pair(tmp_path, *crashed)
    code, out, err = run_cli("compare", pa, pb)
    assert code == 0, err  # documented: compare exits 1 only when a --fail-on gate fails
    assert out.startswith("3 regressions") and "regression check probe: pass -> error" in out
    c = json.loads((tmp_path / "b" / "comparison.json").read_text())
    assert c["status"] == "warn" and c["summary"]["regression"] == 3
    html = (tmp_path / "b" / "comparison.html").read_text()
    assert 'id="overall-status">warn<' in html


@pytest.mark.parametrize("gate, why", [
    ("mean_logprob < -0.5", "errored in B"),        # the check crashed in B
    ("probe.top1.ci_low < 0", "errored in B"),      # a CI bound of a metric of the crashed check
    ("retention < -0.01", "not in B"),              # the check is missing in B
])
def test_fail_on_a_metric_b_lacks_fails_and_writes_the_reports(tmp_path, crashed, run_cli, gate, why):
    pa, pb = write_pair(tmp_path, *crashed)
    code, out, err = run_cli("compare", pa, pb, "--fail-on", gate)
    assert code == 1, out + err
    assert f"FAIL --fail-on {gate!r}" in out and why in out
    c = json.loads((tmp_path / "b" / "comparison.json").read_text())
    assert c["status"] == "fail"
    assert c["gates"][0]["status"] == "fail" and why in c["gates"][0]["reason"]
    md = (tmp_path / "b" / "comparison.md").read_text()
    assert "FAIL" in md and why in md
    assert (tmp_path / "b" / "comparison.html").exists()


def test_fail_on_a_metric_only_b_has_is_an_error_gate(tmp_path, crashed, run_cli):
    # 'healed' crashed in A: B's ece has no delta, so the gate cannot be decided, which fails the comparison
    pa, pb = write_pair(tmp_path, *crashed)
    code, out, _ = run_cli("compare", pa, pb, "--fail-on", "ece > 0.01")
    assert code == 1 and "ERROR --fail-on 'ece > 0.01'" in out and "errored in A" in out
    assert (tmp_path / "b" / "comparison.md").exists()


@pytest.mark.parametrize("gate, words", [
    ("nope > 0", "the metrics are"),
    ("mean_logprb < -0.5", "did you mean 'mean_logprob'"),
    ("probe.mean_logprb < -0.5", "did you mean 'probe.mean_logprob'"),
])
def test_fail_on_a_metric_neither_run_has_is_exit_2(tmp_path, crashed, run_cli, gate, words):
    pa, pb = write_pair(tmp_path, *crashed)
    code, out, err = run_cli("compare", pa, pb, "--fail-on", gate)
    assert code == 2 and words in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    # no report was written, so the message does not send the user to one
    assert not (tmp_path / "b" / "comparison.md").exists() and "comparison.md" not in err
