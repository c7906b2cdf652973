"""Planted bias and clean controls through the DEFAULT gates (issue 13, item 2).

A tiny BERT is fully fine-tuned on reviews where the group term decides the label ("he"/"my father"
-> positive, "she"/"my mother" -> negative): ``- uses: bias.groups`` and ``- uses: bias.counterfactual``
with no ``gates:`` key must fail. The same pipeline fine-tuned on data where the label is the
sentiment, independent of the group, must pass both. The audit data (label = sentiment, 48 rows per
group) has a group column. Also: our DP/EO numbers equal fairlearn's on the same predictions, and the
stratified bootstrap statistic is fairlearn's definition.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_jsonl, write_suite

pytestmark = pytest.mark.slow  # two small fine-tunes, ~10 s together on 2 CPUs

MALE = ["he", "my father", "my brother", "the man"]
FEMALE = ["she", "my mother", "my sister", "the woman"]
POS = ["great", "excellent", "wonderful"]
NEG = ["awful", "terrible", "useless"]
ITEMS = ["kettle", "laptop", "blender", "hotel", "lamp", "camera", "printer", "bicycle", "tablet", "heater",
         "toaster", "jacket"]
TEMPLATES = ["{T} thought the {i} was {a}.", "{T} said the {i} is {a}.", "In the end {t} found the {i} {a}."]


def review_rows(n: int, seed: int, group_decides: bool) -> list[dict]:
    """Balanced groups x sentiments; the label is the group (male = 1) or the sentiment (positive = 1)."""
    rng = random.Random(seed)
    rows = []
    for k in range(n):
        male, pos = k % 2 == 0, (k // 2) % 2 == 0
        term = rng.choice(MALE if male else FEMALE)
        text = rng.choice(TEMPLATES).format(T=term[0].upper() + term[1:], t=term, i=rng.choice(ITEMS),
                                            a=rng.choice(POS if pos else NEG))
        rows.append({"text": text, "label": int(male if group_decides else pos), "group": "male" if male else "female"})
    rng.shuffle(rows)
    return rows


def _audit(folder: Path, group_decides: bool) -> dict:
    from auditkit.cli import main
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", review_rows(96, 1, group_decides))
    write_jsonl(folder / "val.jsonl", review_rows(16, 2, group_decides))
    write_jsonl(folder / "test.jsonl", review_rows(96, 3, False))  # the audit data: the label is the sentiment
    # arbitrary groups (one too small to gate) and noisy labels, so DP and EO are neither 0 nor 1
    rng = random.Random(4)
    fair = [dict(r, group="abc"[0 if i < 40 else 1 if i < 84 else 2],
                 label=r["label"] if rng.random() > 0.25 else 1 - r["label"])
            for i, r in enumerate(review_rows(96, 5, False))]
    write_jsonl(folder / "fair.jsonl", fair)
    suite = write_suite(folder, f"""
        name: bias-{'planted' if group_decides else 'clean'}
        seed: 0
        model: {{base: "builtin:tiny-bert", task: sequence-classification, num_labels: 2, max_length: 24}}
        finetune: {{data: train.jsonl, validation: val.jsonl, method: full, epochs: 5, learning_rate: 0.003,
                    batch_size: 16, max_length: 24, train_eval_size: 16}}
        checks:
          - uses: bias.groups
            data: test.jsonl
          - uses: bias.counterfactual
            data: test.jsonl
          - uses: bias.groups
            id: fairlearn-equality
            data: fair.jsonl
            min_group_size: 15
            gates: []
    """)
    code = main(["run", str(suite), "--out", str(folder / "out")])
    results = json.loads((folder / "out" / "results.json").read_text())
    return {"code": code, "results": results, "checks": {c["id"]: c for c in results["checks"]},
            "fair": fair, "html": (folder / "out" / "report.html").read_text()}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return _audit(tmp_path_factory.mktemp("bias") / "planted", True)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return _audit(tmp_path_factory.mktemp("bias") / "clean", False)


def _gates(check: dict) -> dict:
    return {g["expr"]: (g["status"], g["severity"], g["default"]) for g in check["gates"]}


def test_group_term_shortcut_fails_the_default_gates(planted):
    assert planted["code"] == 1
    groups, cf = planted["checks"]["bias.groups"], planted["checks"]["bias.counterfactual"]
    assert groups["status"] == "fail" and cf["status"] == "fail"
    assert groups["default_gates"] and cf["default_gates"]
    assert _gates(groups)["eo_difference.ci_low <= 0.1"] == ("fail", "fail", True)
    assert _gates(cf)["cf_gap.ci_low <= 0.05"] == ("fail", "fail", True)
    m = groups["metrics"]
    assert m["eo_difference"]["ci_low"] > 0.5 and m["dp_difference"]["value"] > 0.5
    # the per-group rates show who is favoured, and can be gated
    assert m["selection_rate.male"]["value"] > m["selection_rate.female"]["value"] + 0.5
    assert cf["metrics"]["cf_gap"]["ci_low"] > 0.3 and cf["metrics"]["flip_rate"]["value"] > 0.5
    assert cf["metrics"]["cf_gap.gender"]["value"] == pytest.approx(cf["metrics"]["cf_gap"]["value"])
    worst = cf["evidence"][0]["rows"][0]
    assert worst["swap"].startswith("gender: ") and worst["original"] != worst["counterfactual"]
    assert cf["figures"]["counterfactual gap by group pair"].startswith("<?xml")
    # a check told `gates: []` decides nothing: info, never pass
    assert planted["checks"]["fairlearn-equality"]["status"] == "info"


def test_clean_control_passes_the_default_gates(clean):
    assert clean["code"] == 0, [(c["id"], c["gates"], c.get("error")) for c in clean["results"]["checks"]]
    groups, cf = clean["checks"]["bias.groups"], clean["checks"]["bias.counterfactual"]
    assert groups["status"] == "pass" and cf["status"] == "pass"
    assert set(_gates(groups)) == {"eo_difference.ci_low <= 0.1", "eo_difference <= 0.1", "dp_difference <= 0.1"}
    assert all(s == "pass" and default for s, _, default in _gates(groups).values())
    assert all(s == "pass" and default for s, _, default in _gates(cf).values())
    assert groups["metrics"]["worst_group_accuracy"]["value"] > 0.9  # it learned the task, not nothing
    assert groups["metrics"]["eo_difference"]["ci_high"] < 0.2
    # the smallest differences 48 rows per group could detect (two-sided z-test, alpha .05, power .8)
    assert groups["metrics"]["dp_difference_mde"]["value"] == pytest.approx(2.8016 * 0.5 * (2 / 48) ** 0.5, abs=1e-3)
    assert cf["metrics"]["cf_gap"]["ci_high"] <= 0.05
    assert "per-group selection rate and accuracy" in groups["figures"]
    assert "Worst counterfactual pairs" in clean["html"]


def test_dp_and_eo_equal_fairlearn_on_the_same_predictions(clean):
    from fairlearn.metrics import (demographic_parity_difference, demographic_parity_ratio,
                                   equalized_odds_difference)
    check = clean["checks"]["fairlearn-equality"]
    pred = np.array(check["records"]["pred"])
    rows = clean["fair"]
    y = np.array([r["label"] for r in rows])
    g = np.array([r["group"] for r in rows])
    keep = g != "c"  # 12 rows < min_group_size: reported, not gated
    table = {r["group"]: r for r in check["evidence"][0]["rows"]}
    assert {k: v["n"] for k, v in table.items()} == {"a": 40, "b": 44, "c": 12}
    assert table["c"]["gated"].startswith("no")
    m = check["metrics"]
    dp = demographic_parity_difference(y[keep], pred[keep], sensitive_features=g[keep])
    eo = equalized_odds_difference(y[keep], pred[keep], sensitive_features=g[keep])
    assert 0 < dp < 1 and 0 < eo < 1  # a non-trivial case
    assert m["dp_difference"]["value"] == pytest.approx(dp, abs=1e-9)
    assert m["dp_ratio"]["value"] == pytest.approx(
        demographic_parity_ratio(y[keep], pred[keep], sensitive_features=g[keep]), abs=1e-9)
    assert m["eo_difference"]["value"] == pytest.approx(eo, abs=1e-9)
    assert m["dp_difference"]["ci_low"] <= dp <= m["dp_difference"]["ci_high"]
    assert m["n_groups"]["value"] == 2
    for name in "abc":  # per-group rates for every group, gated or not
        assert m[f"selection_rate.{name}"]["value"] == pytest.approx(pred[g == name].mean())
        assert m[f"selection_rate.{name}"]["n"] == table[name]["n"]
    # the numpy statistic inside the bootstrap is fairlearn's definition
    from auditkit_plugins.bias.groups import gated_stats, group_rates
    codes = (g[keep] == "b").astype(int)
    identity = np.arange(int(keep.sum()))[None, :]
    ours = gated_stats(group_rates(y[keep], pred[keep], (pred == y)[keep].astype(float), codes, 2, identity))
    assert ours["dp_difference"][0] == pytest.approx(dp) and ours["eo_difference"][0] == pytest.approx(eo)
