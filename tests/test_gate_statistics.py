"""The statistics behind default gates: each failing gate must not fire on a model that is fine (seeded
simulations) and must fire on one that is not; each statistic is checked against an independent computation."""
from __future__ import annotations

import numpy as np
import pytest


# ---------------------------------------------------------------------- calibration

def _ece_loop(conf, correct, bins):
    """ECE as Guo et al. (2017) write it: bins ((b-1)/M, b/M], sum_b |B_b|/n |acc(B_b) - conf(B_b)|."""
    n, total = len(conf), 0.0
    for b in range(1, bins + 1):
        lo, hi = (b - 1) / bins, b / bins
        members = [i for i in range(n) if (lo < conf[i] <= hi) or (b == 1 and conf[i] == 0.0)]
        if members:
            acc = sum(correct[i] for i in members) / len(members)
            avg = sum(conf[i] for i in members) / len(members)
            total += len(members) / n * abs(acc - avg)
    return total


def test_ece_matches_guo_et_al_and_the_vectorized_rows():
    from auditkit_plugins.calibration import expected_calibration_error, expected_calibration_error_rows
    rng = np.random.default_rng(0)
    for bins in (1, 10, 15):
        conf = rng.uniform(0.3, 1.0, 97)
        conf[:5] = [0.4, 0.6, 0.2, 1.0, 2 / 3]  # bin edges and the top
        correct = (rng.random(97) < conf).astype(float)
        want = _ece_loop(list(conf), list(correct), bins)
        assert expected_calibration_error(conf, correct, bins) == pytest.approx(want, abs=1e-12)
        rows = expected_calibration_error_rows(np.vstack([conf, conf[::-1]]), np.vstack([correct, correct[::-1]]),
                                               bins)
        assert rows == pytest.approx([want, want], abs=1e-12)


def test_debiased_ece_is_the_bootstrap_bias_correction_with_the_basic_interval():
    from auditkit_plugins.calibration import debiased_ece
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.5, 1.0, 60)
    correct = (rng.random(60) < conf).astype(float)
    value, low, high = debiased_ece(conf, correct, bins=15, seed=7, n_resamples=200)
    # independently: the same resamples (numpy's default_rng(seed).integers), ECE of each by the loop
    idx = np.random.default_rng(7).integers(0, 60, size=(200, 60))
    theta = _ece_loop(list(conf), list(correct), 15)
    boot = np.array([_ece_loop(list(conf[i]), list(correct[i]), 15) for i in idx])
    assert value == pytest.approx(2 * theta - boot.mean(), abs=1e-12)
    assert low == pytest.approx(2 * theta - np.percentile(boot, 97.5), abs=1e-12)
    assert high == pytest.approx(2 * theta - np.percentile(boot, 2.5), abs=1e-12)
    assert low <= value <= high
    assert debiased_ece([0.9], [1.0]) == pytest.approx((0.1, 0.1, 0.1))


def _calibration_gates(conf, correct, seed):
    """The calibration check's default gates decided on the metrics it computes from these predictions."""
    from auditkit.gates import evaluate
    from auditkit.plugins import registry
    from auditkit.suite import default_gates
    from auditkit_plugins.calibration import debiased_ece, expected_calibration_error
    v, lo, hi = debiased_ece(conf, correct, 15, seed=seed, n_resamples=300)
    metrics = {"ece": {"value": expected_calibration_error(conf, correct, 15)},
               "ece_debiased": {"value": v, "ci_low": lo, "ci_high": hi}}
    gates = default_gates(registry().checks["calibration"], "sequence-classification")
    return {g.severity: evaluate(g, metrics, None)["status"] for g in gates}


def test_calibration_default_gate_does_not_fail_a_calibrated_model_and_fails_a_miscalibrated_one():
    """Perfectly calibrated binary predictions (confidence uniform on [0.5, 1], correct with that probability):
    the percentile lower bound of the plain ECE failed 2.5% of such models at n=40; the default gate fails
    at most 2 of 200 (1 in simulation) at each size. An over-confident model (accuracy 0.3 below its
    confidence) fails."""
    from auditkit.plugins import registry
    assert registry().checks["calibration"].default_gates[0] == "ece_debiased.ci_low <= 0.15"
    rng = np.random.default_rng(2026)
    for n in (40, 120, 360):
        fails = 0
        for draw in range(200):
            conf = rng.uniform(0.5, 1.0, n)
            correct = (rng.random(n) < conf).astype(float)
            fails += _calibration_gates(conf, correct, draw)["fail"] == "fail"
        assert fails <= 2, (n, fails)
    fails = 0
    for draw in range(40):
        conf = rng.uniform(0.7, 1.0, 200)
        correct = (rng.random(200) < conf - 0.3).astype(float)
        fails += _calibration_gates(conf, correct, draw)["fail"] == "fail"
    assert fails >= 36, fails


def test_calibration_check_emits_what_its_default_gates_read():
    from auditkit.api import CheckContext
    from auditkit.data import Dataset
    from auditkit.plugins import registry
    from auditkit.suite import default_gates
    from auditkit_plugins.calibration import debiased_ece

    rng = np.random.default_rng(3)
    logits = rng.normal(size=(50, 2)) * 2
    labels = rng.integers(0, 2, 50)

    class Model:
        task, num_labels = "sequence-classification", 2

        def class_logits(self, texts):
            return logits[: len(texts)]

    rows = [{"text": f"t{i}", "label": int(y)} for i, y in enumerate(labels)]
    cls = registry().checks["calibration"]
    params = {k: p.default for k, p in cls.params.items()}
    res = cls().run(CheckContext(model=Model(), params=params, seed=5, device="cpu", data=Dataset("d", rows, "d")))
    for gate in default_gates(cls, "sequence-classification"):
        assert all(ref.metric in res.metrics for ref in gate.refs())
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    want = debiased_ece(p.max(1), (p.argmax(1) == labels).astype(float), 15, seed=5, n_resamples=300)
    m = res.metrics["ece_debiased"]
    assert (m.value, m.ci_low, m.ci_high) == pytest.approx(want)


# ---------------------------------------------------------------------- bootstrap params

@pytest.mark.parametrize("check", ["accuracy", "forgetting"])
def test_bootstrap_needs_at_least_100_resamples(check):
    from auditkit.plugins import registry
    param = registry().checks[check].params["bootstrap"]
    with pytest.raises(ValueError, match=">= 100"):
        param.coerce(20, "bootstrap")
    assert param.coerce(100, "bootstrap") == 100


# ---------------------------------------------------------------------- membership inference

def test_max_auc_ci_against_sklearn_per_resample():
    from sklearn.metrics import roc_auc_score
    from auditkit_plugins.memorization.membership import max_auc_ci, stratified_indices
    rng = np.random.default_rng(4)
    y = np.array([1] * 12 + [0] * 9)
    rng.shuffle(y)
    scores = {"a": rng.normal(size=21) + 0.8 * y, "b": np.round(rng.normal(size=21)), "c": rng.normal(size=21)}
    scores["c"][3] = np.nan  # a row one attack cannot score is left out for every attack
    out = max_auc_ci(y, scores, seed=9, n_resamples=150)
    keep = np.isfinite(scores["c"])
    yk = y[keep]
    sk = {a: s[keep] for a, s in scores.items()}
    point = {a: roc_auc_score(yk, s) for a, s in sk.items()}
    assert out["aucs"] == pytest.approx(point) and out["n"] == 20
    assert out["auc"] == pytest.approx(max(point.values())) and out["attack"] == max(point, key=point.get)
    # the resamples: members drawn from members, non-members from non-members
    idx = stratified_indices(yk, 150, seed=9)
    assert all(sorted(yk[i]) == sorted(yk) for i in idx)
    assert all(set(i[yk == 1]) <= set(np.flatnonzero(yk == 1)) for i in idx)
    boot = np.array([[roc_auc_score(yk[i], sk[a][i]) for a in sk] for i in idx])  # [B, A]
    p = np.array([point[a] for a in sk])
    over, under = (boot - p).max(axis=1), (p - boot).max(axis=1)
    assert out["ci_low"] == pytest.approx(p.max() - np.quantile(over, 0.975), abs=1e-12)
    assert out["ci_high"] == pytest.approx(p.max() + np.quantile(under, 0.975), abs=1e-12)


def test_max_auc_lower_bound_holds_when_no_attack_beats_chance():
    """Five correlated attacks, none better than chance: the winner's own percentile CI had its lower bound
    above 0.5 in about 10% of draws; the max-statistic bound at about the nominal 2.5%."""
    from auditkit_plugins.memorization.membership import auc_rows, max_auc_ci, stratified_indices
    rng = np.random.default_rng(11)
    y = np.array([1] * 40 + [0] * 40)
    new = old = 0
    draws = 120
    for d in range(draws):
        shared = rng.normal(size=80)
        scores = {a: 0.5 * shared + rng.normal(size=80) for a in "abcde"}
        out = max_auc_ci(y, scores, seed=d, n_resamples=200)
        new += out["ci_low"] > 0.5
        own = auc_rows(y, scores[out["attack"]][stratified_indices(y, 200, d)])
        old += np.percentile(own, 2.5) > 0.5
    assert new / draws <= 0.06 and old > new, (new, old)
    shifted = {a: 0.5 * shared + rng.normal(size=80) + (1.5 * y if a == "c" else 0) for a in "abcde"}
    assert max_auc_ci(y, shifted, seed=0, n_resamples=200)["ci_low"] > 0.7


def test_memorization_parts_empty_is_refused_at_load():
    from auditkit.errors import AuditInputError
    from auditkit.plugins import registry
    cls = registry().checks["memorization"]
    with pytest.raises(AuditInputError, match="parts is empty"):
        cls.validate_params({"parts": []}, None, "checks[0].")
    cls.validate_params({"parts": ["membership"]}, None, "checks[0].")
