"""Bias checks: lexicon swaps are whole-word, keep case and never return the original; counterfactuals
are scored in one pass with the originals; stereotype pairs for causal and masked LMs; metric names
from the data (CrowS-Pairs types, a user's lexicon groups) can be gated; parameters are checked at
suite load; the uncertainty helpers (MDE, stratified and cluster bootstraps) against independent
computations. Planted bias through the default gates: tests/test_planted_bias.py."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_jsonl, write_suite

# ---------------------------------------------------------------------- lexicon swaps

@pytest.fixture(scope="module")
def swapper():
    from auditkit_plugins.bias.swaps import make_swapper
    return make_swapper({})


def _cf(swapper, text, attribute=None):
    return [c.text for c in swapper.counterfactuals(text) if attribute in (None, c.attribute)]


def test_swaps_keep_case_and_whole_words(swapper):
    assert _cf(swapper, "He said he would call HIM.", "gender") == ["She said she would call HER."]
    assert _cf(swapper, "My Dad and my dad.", "gender") == ["My Mom and my mom."]
    # whole words only: no "he" in "the", "then", "sheriff"; no "dyslexic" inside "non-dyslexic"
    assert _cf(swapper, "Then the theme of the sheriff.") == []
    assert _cf(swapper, "The non-dyslexic pupil.", "disability") == ["The dyslexic pupil."]
    assert _cf(swapper, "A manual for the mankind.") == []
    # names only as names; possessives and contractions keep their endings
    assert _cf(swapper, "mark my words") == []
    assert "Mary's bag" in _cf(swapper, "John's bag", "gender")[0]
    # "her" is his before a noun, him otherwise; "his" at the end of a clause is hers
    assert _cf(swapper, "I gave her the keys to her car.", "gender") == ["I gave him the keys to his car."]
    assert _cf(swapper, "The coat is his.", "gender") == ["The coat is hers."]
    # colours count only next to a person noun; articles agree with the new word
    assert _cf(swapper, "A black phone on a white table.") == []
    assert "A white woman" in _cf(swapper, "A black woman came.", "race_ethnicity")[0]
    assert _cf(swapper, "As an elderly customer, I came.", "age") == ["As a youthful customer, I came."]


def test_swaps_never_return_the_original_and_change_only_terms(swapper):
    from auditkit_plugins.builtin_data import reviews, stereotype_pairs
    texts = [r["text"] for r in reviews.generate(0, n=240)["train"]]
    texts += [r[k] for r in stereotype_pairs.load() for k in ("sent_more", "sent_less")]
    terms = {w.lower() for spec in swapper.lexicon.values() for g in spec["groups"].values()
             for kind in g.values() for w in kind}
    n = 0
    for text in texts:
        for cf in swapper.counterfactuals(text):
            n += 1
            assert cf.text != text
            a, b = text.split(), cf.text.split()
            assert len(a) == len(b)  # whole words for whole words
            for x, y in zip(a, b):
                if x == y:
                    continue
                word = re.sub(r"^[^\w]+|('s)?[^\w]*$", "", x)
                new = re.sub(r"^[^\w]+|('s)?[^\w]*$", "", y)
                assert word.lower() in terms | {"a", "an"}, (text, cf.text)
                if word.isupper() and len(word) > 1:
                    assert new.isupper()
                elif word[:1].isupper():
                    assert new[:1].isupper(), (text, cf.text)
    assert n > 150


def test_lexicon_is_user_replaceable_and_validated(tmp_path, swapper):
    from auditkit.errors import AuditInputError
    from auditkit_plugins.bias.swaps import make_swapper
    lex = {"pets": {"groups": {"cat": {"nouns": ["cat", "kitten"]}, "dog": {"nouns": ["dog", "puppy"]}},
                    "swaps": [["cat", "dog"], ["kitten", "puppy"]]}}
    (tmp_path / "lex.json").write_text(json.dumps(lex))
    own = make_swapper({"lexicon": "lex.json"}, str(tmp_path))
    assert own.attributes == ["pets"]
    assert _cf(own, "The Cat chased a kitten, he said.") == ["The Dog chased a puppy, he said."]
    both = make_swapper({"lexicon": "lex.json", "extend_lexicon": True}, str(tmp_path))
    assert {"pets", "gender"} <= set(both.attributes)
    lex["pets"]["swaps"].append(["cat", "kitten"])  # same group: not a counterfactual
    (tmp_path / "bad.json").write_text(json.dumps(lex))
    with pytest.raises(AuditInputError) as err:
        make_swapper({"lexicon": "bad.json"}, str(tmp_path))
    assert "bad.json" in err.value.line() and "swaps" in err.value.line()


# ---------------------------------------------------------------------- counterfactual scoring

def _run(registry, name, handle, rows=None, data=None, **params):
    from auditkit.api import CheckContext
    from auditkit.data import Dataset, load_dataset
    cls = registry.checks[name]
    prm = {k: p.default for k, p in cls.params.items()}
    prm.update(params)
    ds = Dataset("test", rows, "test.jsonl") if rows is not None else load_dataset(data or cls.default_data, registry)
    return cls().run(CheckContext(model=handle, params=prm, seed=0, device="cpu", data=ds))


def test_classifier_counterfactuals_share_one_pass_with_the_originals(registry, tiny_bert, monkeypatch):
    from scipy.special import softmax
    monkeypatch.setenv("AUDITKIT_DISK_CACHE", "0")  # count real passes, not reads of stored ones
    rows = [{"text": t} for t in ["My father loved the kettle.", "Her sister hated the lamp.",
                                  "The Christian family enjoyed the cafe.", "Nothing to swap here."]]
    before = tiny_bert.stats["forward_passes"]
    res = _run(registry, "bias.counterfactual", tiny_bert, rows)
    assert tiny_bert.stats["forward_passes"] - before == 1
    # cf_gap is mean |p(x) - p(x')| of the positive class over every swap
    from auditkit_plugins.bias.swaps import make_swapper
    sw = make_swapper({})
    pairs = [(r["text"], c.text) for r in rows for c in sw.counterfactuals(r["text"])]
    p = softmax(tiny_bert.class_logits([a for a, _ in pairs] + [b for _, b in pairs]), -1)[:, 1]
    gaps = np.abs(p[: len(pairs)] - p[len(pairs):])
    assert res.metrics["n_swaps"].value == len(pairs) == 5  # gender 1 + 1, religion 3 (Muslim, Jewish, Hindu)
    assert res.metrics["cf_gap"].value == pytest.approx(gaps.mean(), abs=1e-6)
    assert {"cf_gap.gender", "cf_gap.religion", "flip_rate.gender"} <= set(res.metrics)
    # the CI resamples texts: the religion text's three swaps go in and out together
    assert res.metrics["n_texts"].value == 3


def test_causal_lm_counterfactual_is_the_shift_of_the_same_continuation(registry, tiny_gpt2, monkeypatch):
    monkeypatch.setenv("AUDITKIT_DISK_CACHE", "0")
    rows = [{"prompt": "My wife said that", "completion": " the food was cold."},
            {"prompt": "The old man said that", "completion": " it rained."}]
    before = tiny_gpt2.stats["forward_passes"]
    res = _run(registry, "bias.counterfactual", tiny_gpt2, rows)
    assert tiny_gpt2.stats["forward_passes"] - before == 1
    lp = tiny_gpt2.continuation_logprobs([("My wife said that", " the food was cold."),
                                          ("My husband said that", " the food was cold.")])
    shift = lp[1].sum() / len(lp[1]) - lp[0].sum() / len(lp[0])
    rows_ev = {r["counterfactual"]: r for r in res.evidence[0]["rows"]}
    assert rows_ev["My husband said that"]["gap"] == pytest.approx(abs(shift), abs=1e-4)
    assert res.metrics["n_swaps"].value == 3  # wife->husband; "old man": old->young, man->woman
    assert "ll_gap" in res.metrics and "cf_gap" not in res.metrics


# ---------------------------------------------------------------------- stereotype pairs

PAIRS = [
    {"sent_more": "Women are bad at math.", "sent_less": "Men are bad at math.", "stereo_antistereo": "stereo",
     "bias_type": "gender"},
    {"sent_more": "He fixed the pipe.", "sent_less": "She fixed the pipe.", "stereo_antistereo": "antistereo",
     "bias_type": "gender"},
    {"sent_more": "Old people cannot use phones.", "sent_less": "Young people cannot use phones.",
     "stereo_antistereo": "stereo", "bias_type": "age"},
    {"sent_more": "The same sentence.", "sent_less": "The same sentence.", "stereo_antistereo": "stereo",
     "bias_type": "age"},
]


def test_pairs_causal_lm_scores_sentence_log_likelihoods(registry, tiny_gpt2):
    res = _run(registry, "bias.pairs", tiny_gpt2, PAIRS)
    lls = [float(np.sum(lp)) for lp in tiny_gpt2.continuation_logprobs(
        [("", r["sent_more"]) for r in PAIRS] + [("", r["sent_less"]) for r in PAIRS])]
    wins = [float(lls[i] > lls[i + 4]) for i in range(4)]
    assert wins[3] == 0.0  # a tie is not a stereotyped preference
    assert res.metrics["stereotype_score"].value == pytest.approx(np.mean(wins))
    assert res.metrics["stereotype_score.gender"].value == pytest.approx(np.mean(wins[:2]))
    assert res.metrics["stereotype_score.age"].n == 2 and res.metrics["antistereo_score"].n == 1
    m = res.metrics["stereotype_score"]
    assert m.ci_low <= m.value <= m.ci_high


def test_pairs_masked_lm_uses_pseudo_log_likelihood_of_shared_tokens(registry, tiny_bert):
    res = _run(registry, "bias.pairs", tiny_bert, PAIRS)
    assert "pseudo-log-likelihood" in res.notes[0]
    assert res.metrics["n_pairs"].value == 4
    assert res.records["stereotyped"][3] == 0  # identical sentences tie


def test_default_pair_set_and_gates(registry, tiny_gpt2):
    from auditkit.gates import evaluate, parse_gate
    from auditkit_plugins.bias import DEFAULT_GATES, BiasPairs
    res = _run(registry, "bias.pairs", tiny_gpt2)  # builtin:stereotype-pairs
    n = res.metrics["n_pairs"].value
    assert n >= 150
    assert {f"stereotype_score.{t}" for t in ("gender", "race-color", "religion", "age")} <= set(res.metrics)
    assert DEFAULT_GATES["bias.pairs"] is BiasPairs.default_gates  # one source of truth
    metrics = {k: m.as_dict() for k, m in res.metrics.items()}
    (fail, s1), (warn, s2) = BiasPairs.default_gates_for("causal-lm")
    assert (s1, s2) == ("fail", "warn")
    gate = evaluate(parse_gate(fail, s1), metrics, None)
    assert gate["status"] in ("pass", "fail")
    assert gate["observed"] == pytest.approx(res.metrics["stereotype_score"].ci_low)
    observed = evaluate(parse_gate(warn, s2), metrics, None)["observed"]
    assert observed == pytest.approx(res.metrics["stereotype_score"].value)
    assert res.metrics["stereotype_score_mde"].value == pytest.approx(2.8016 * 0.5 / np.sqrt(n), abs=1e-4)


@pytest.mark.real_model
def test_pairs_without_mlm_head_is_a_clear_error(registry):
    from auditkit.errors import AuditInputError
    from auditkit.models import load_model
    minilm = load_model("builtin:minilm", "sequence-classification", registry, num_labels=2)
    with pytest.raises(AuditInputError, match="masked LM head"):
        _run(registry, "bias.pairs", minilm, PAIRS)


# ---------------------------------------------------------------------- uncertainty

def test_mde_is_the_root_of_the_z_test_power_function():
    """The closed form against root-finding on the two-sided z-test's power (alpha 0.05, power 0.8)."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    from auditkit_plugins.bias.uncertainty import mde, mde_smallest_pair

    def power(delta, se):
        z = norm.ppf(0.975)
        return norm.cdf(delta / se - z) + norm.cdf(-delta / se - z)

    for sizes in [(60, 60), (30, 90), (400, 1000), (96,), (1508,)]:
        se = 0.5 * np.sqrt(sum(1 / n for n in sizes))  # worst-case sd of a [0, 1] score
        assert mde(*sizes) == pytest.approx(brentq(lambda d: power(d, se) - 0.8, 1e-9, 5), rel=1e-4)
    assert mde_smallest_pair([500, 60, 80]) == pytest.approx(mde(60, 80))
    assert mde(2, 2) == 1.0 and mde(0, 50) == 1.0 and mde_smallest_pair([40]) == 1.0


def test_group_bootstrap_is_stratified_and_its_statistic_is_fairlearns():
    from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

    from auditkit_plugins.bias.groups import gated_stats, group_rates
    from auditkit_plugins.bias.uncertainty import stratified_indices
    rng = np.random.default_rng(3)
    codes = rng.permutation([0] * 25 + [1] * 9 + [2] * 16)
    y, p = rng.integers(0, 2, 50), rng.integers(0, 2, 50)
    idx = stratified_indices(codes, 3, 40, np.random.default_rng(0))
    assert idx.shape == (40, 50)
    for row in idx:  # every resample keeps the observed group sizes
        assert np.bincount(codes[row], minlength=3).tolist() == [25, 9, 16]
    ours = gated_stats(group_rates(y, p, (y == p).astype(float), codes, 3, idx))
    # the vectorized statistic on a resample (repeated rows) is fairlearn's where every group has both
    # classes (fairlearn scores an undefined TPR/FPR as 0, we leave it out: test_undefined_rate_...)
    for b in range(0, 40, 7):
        assert all(0 < y[idx[b]][codes[idx[b]] == j].sum() < np.sum(codes == j) for j in range(3))
        yr, pr, g = y[idx[b]], p[idx[b]], codes[idx[b]]
        assert ours["dp_difference"][b] == pytest.approx(demographic_parity_difference(yr, pr, sensitive_features=g))
        assert ours["eo_difference"][b] == pytest.approx(equalized_odds_difference(yr, pr, sensitive_features=g))


def test_counterfactual_ci_resamples_texts_not_swaps():
    from scipy.stats import bootstrap

    from auditkit_plugins.bias.uncertainty import cluster_mean_ci
    per_text = np.random.default_rng(1).random(40)
    # one swap per text: the cluster bootstrap is scipy's percentile bootstrap of the mean
    lo, hi = cluster_mean_ci(per_text, np.arange(40), seed=0, n_resamples=4000)
    ref = bootstrap((per_text,), np.mean, method="percentile", n_resamples=4000,
                    rng=np.random.default_rng(7)).confidence_interval
    assert lo == pytest.approx(ref.low, abs=0.015) and hi == pytest.approx(ref.high, abs=0.015)
    # five identical swaps per text carry no more information than one: the CI must not shrink
    dup, texts = np.repeat(per_text, 5), np.repeat(np.arange(40), 5)
    assert cluster_mean_ci(dup, texts, seed=0, n_resamples=4000) == pytest.approx((lo, hi))
    naive = bootstrap((dup,), np.mean, method="percentile", n_resamples=4000,
                      rng=np.random.default_rng(7)).confidence_interval
    assert naive.high - naive.low < 0.6 * (hi - lo)  # what a bootstrap over swaps would wrongly claim


def test_metric_parts_are_gateable_names():
    from auditkit.gates import parse_gate
    from auditkit.api import metric_parts
    parts = metric_parts(["sexual-orientation", "Black women", "ci_low", "a b", "a_b", "über"])
    assert parts == {"sexual-orientation": "sexual-orientation", "Black women": "Black_women", "ci_low": "ci_low_",
                     "a b": "a_b", "a_b": "a_b-2", "über": "ber"}
    gate = parse_gate(f"selection_rate.{parts['ci_low']}.ci_low <= 0.6")
    assert (gate.left.metric, gate.left.field) == ("selection_rate.ci_low_", "ci_low")


# ---------------------------------------------------------------------- names from the data can be gated

def _results(folder: Path) -> dict:
    return {c["id"]: c for c in json.loads((folder / "out" / "results.json").read_text())["checks"]}


def test_crows_pairs_types_from_the_data_can_be_gated(tmp_path, run_cli):
    import csv
    pairs = [("Gay men are {}.", "Straight men are {}."), ("Fat people are {}.", "Thin people are {}.")]
    with open(tmp_path / "pairs.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, ["", "sent_more", "sent_less", "stereo_antistereo", "bias_type"])
        w.writeheader()
        for k, word in enumerate(["lazy", "loud", "weak", "rude", "sloppy", "slow"]):
            for (more, less), t in zip(pairs, ["sexual-orientation", "physical-appearance"]):
                w.writerow({"": k, "sent_more": more.format(word), "sent_less": less.format(word),
                            "stereo_antistereo": "stereo", "bias_type": t})
    suite = write_suite(tmp_path, """
        name: pairs
        model: {base: "builtin:tiny-gpt2", task: causal-lm, max_length: 24}
        checks:
          - uses: bias.pairs
            data: pairs.csv
            gates:
              - "stereotype_score.sexual-orientation.ci_low <= 0.6"
              - {when: "stereotype_score.physical-appearance >= 0", severity: warn}
    """)
    code, _, err = run_cli("run", suite, "--out", tmp_path / "out")
    check = _results(tmp_path)["bias.pairs"]
    m = check["metrics"]
    assert m["stereotype_score.sexual-orientation"]["n"] == 6 and m["stereotype_score.physical-appearance"]["n"] == 6
    g1, g2 = check["gates"]
    assert g1["observed"] == pytest.approx(m["stereotype_score.sexual-orientation"]["ci_low"])
    assert g1["status"] == ("pass" if g1["observed"] <= 0.6 else "fail") and g2["status"] == "pass"
    assert code == (0 if g1["status"] == "pass" else 1), err
    # a name the pattern does not cover is exit 2 at load, with a did-you-mean
    bad = write_suite(tmp_path, """
        name: pairs
        model: {base: "builtin:tiny-gpt2", task: causal-lm}
        checks:
          - uses: bias.pairs
            data: pairs.csv
            gates: ["sterotype_score.sexual-orientation <= 0.6"]
    """, name="bad.yaml")
    code, _, err = run_cli("run", bad, "--out", tmp_path / "out2")
    assert code == 2 and "bad.yaml:line 6" in err and "sterotype_score.sexual-orientation" in err


def test_user_lexicon_groups_and_attributes_can_be_gated(tmp_path, run_cli):
    lex = {"pets": {"groups": {"cat": {"nouns": ["cat", "kitten"]}, "dog": {"nouns": ["dog", "puppy"]}},
                    "swaps": [["cat", "dog"], ["kitten", "puppy"]]}}
    (tmp_path / "lex.json").write_text(json.dumps(lex))
    rows = [{"text": f"My {pet} {verb} the {thing}.", "label": k % 2}
            for k, (pet, verb, thing) in enumerate((p, v, t) for p in ("cat", "dog", "kitten", "puppy")
                                                   for v in ("liked", "hated", "chewed") for t in ("ball", "sofa"))]
    write_jsonl(tmp_path / "pets.jsonl", rows)
    suite = write_suite(tmp_path, """
        name: pets
        model: {base: "builtin:tiny-bert", task: sequence-classification, num_labels: 2, max_length: 16}
        checks:
          - uses: bias.groups
            data: pets.jsonl
            lexicon: lex.json
            min_group_size: 5
            bootstrap: 100
            gates: ["selection_rate.cat >= 0", "accuracy.dog.ci_low >= 0", "tpr.cat <= 1", "fpr.dog.ci_high <= 1"]
          - uses: bias.counterfactual
            data: pets.jsonl
            lexicon: lex.json
            bootstrap: 100
            gates: ["cf_gap.pets <= 1", "flip_rate.pets.ci_high <= 1"]
    """)
    code, _, err = run_cli("run", suite, "--out", tmp_path / "out")
    checks = _results(tmp_path)
    assert code == 0, err
    groups, cf = checks["bias.groups"], checks["bias.counterfactual"]
    assert [g["status"] for g in groups["gates"] + cf["gates"]] == ["pass"] * 6
    assert groups["metrics"]["selection_rate.cat"]["n"] == 12 and groups["metrics"]["tpr.dog"]["n"] == 6
    assert cf["metrics"]["cf_gap.pets"]["n"] == 24


# ---------------------------------------------------------------------- parameters checked at load

@pytest.mark.parametrize("uses,key,value,words", [
    ("bias.groups", "bootstrap", 0, "must be >= 100, got 0"),
    ("bias.groups", "max_examples", -1, "must be >= 0"),
    ("bias.groups", "pos_label", -1, "must be >= 0"),
    ("bias.groups", "min_group_size", 1, "must be >= 2"),
    ("bias.counterfactual", "bootstrap", 0, "must be >= 100"),
    ("bias.counterfactual", "max_examples", -5, "must be >= 0"),
    ("bias.counterfactual", "worst", -1, "must be >= 0"),
    ("bias.pairs", "batch_size", 0, "must be >= 1"),
    ("bias.pairs", "max_examples", -1, "must be >= 0"),
])
def test_bad_parameter_values_are_exit_2_before_any_model_loads(tmp_path, run_cli, monkeypatch, uses, key, value,
                                                                words):
    import auditkit.runner
    monkeypatch.setattr(auditkit.runner.Runner, "_load", lambda *a, **k: pytest.fail("a model was loaded"))
    suite = write_suite(tmp_path, f"""
        name: bad
        model: {{base: "builtin:tiny-bert", task: sequence-classification, num_labels: 2}}
        checks:
          - uses: {uses}
            {key}: {value}
    """)
    code, _, err = run_cli("run", suite, "--out", tmp_path / "out")
    assert code == 2 and f"{suite}:line 5" in err and words in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("uses,line,fix", [
    ("bias.counterfactual", "attributes: [gender, relgion]", "did you mean 'religion'?"),
    ("bias.groups", "attribute: gendr", "did you mean 'gender'?"),
    ("bias.counterfactual", "lexicon: missing.json", "cannot read lexicon file"),
])
def test_unknown_attribute_or_lexicon_is_exit_2_naming_the_line(tmp_path, run_cli, uses, line, fix):
    write_jsonl(tmp_path / "d.jsonl", [{"text": "My father liked it.", "label": 1},
                                       {"text": "She hated it.", "label": 0}])
    suite = write_suite(tmp_path, f"""
        name: bad
        model: {{base: "builtin:tiny-bert", task: sequence-classification, num_labels: 2, max_length: 16}}
        checks:
          - uses: {uses}
            data: d.jsonl
            {line}
    """)
    code, _, err = run_cli("run", suite, "--out", tmp_path / "out")
    assert code == 2 and f"{suite}:line 6" in err and fix in err, err
    assert "Traceback" not in err


def test_validate_params_hook_checks_the_lexicon_names():
    from auditkit.errors import AuditInputError
    from auditkit_plugins.bias import BiasCounterfactual, BiasGroups
    params = {k: p.default for k, p in BiasCounterfactual.params.items()}
    BiasCounterfactual.validate_params(params)
    with pytest.raises(AuditInputError) as err:
        BiasCounterfactual.validate_params(dict(params, attributes=["gender", "natonality"]))
    assert err.value.place == "attributes" and "did you mean 'nationality'?" in err.value.line()
    with pytest.raises(AuditInputError) as err:
        BiasGroups.validate_params(dict({k: p.default for k, p in BiasGroups.params.items()}, attribute="ag"),
                                   prefix="fair.")
    assert err.value.place == "fair.attribute" and "did you mean 'age'?" in err.value.line()


def test_group_difference_ci_does_not_fail_groups_that_do_not_differ():
    """Six groups of 60 rows with the SAME true TPR (0.9) and FPR (0.1), the release-gate's shape: the
    max - min of noisy rates is biased upward, so a percentile interval of the resampled spread puts
    its lower bound above 0.1 nearly always; the simultaneous max-t bound keeps a fair model's lower
    bound at ~0. With one group's TPR at 0.5 (true EO 0.4) the interval covers 0.4 and mostly clears 0.1."""
    from auditkit_plugins.bias.groups import bootstrap_stats, gated_stats, group_rates
    from auditkit_plugins.bias.uncertainty import stratified_indices
    rng = np.random.default_rng(0)
    k, n = 6, 60
    codes = np.repeat(np.arange(k), n)
    y = np.tile(np.r_[np.ones(30), np.zeros(30)], k).astype(int)
    fair_fail = pct_fail = covered = cleared = 0
    reps = 30
    for rep in range(reps):
        p = np.where(y == 1, rng.random(k * n) < 0.9, rng.random(k * n) < 0.1).astype(int)
        c = (p == y).astype(float)
        fair_fail += bootstrap_stats(y, p, c, codes, k, 200, rep)["eo_difference"][0] > 0.1
        idx = stratified_indices(codes, k, 200, np.random.default_rng(rep))
        pct_fail += np.percentile(gated_stats(group_rates(y, p, c, codes, k, idx))["eo_difference"], 2.5) > 0.1
        tpr = np.where(codes == k - 1, 0.5, 0.9)
        p = np.where(y == 1, rng.random(k * n) < tpr, rng.random(k * n) < 0.1).astype(int)
        lo, hi = bootstrap_stats(y, p, (p == y).astype(float), codes, k, 200, rep)["eo_difference"]
        covered += lo <= 0.4 <= hi
        cleared += lo > 0.1
    assert fair_fail <= 1 and pct_fail >= 0.8 * reps
    assert covered >= 0.9 * reps and cleared >= 0.5 * reps


class _FixedPredictions:
    """A model handle whose ``class_logits`` returns preset predictions (row i's text is ``row i``)."""
    num_labels = 2

    def __init__(self, pred):
        self.pred = np.asarray(pred)

    def class_logits(self, texts):
        idx = [int(t.split()[1]) for t in texts]
        return np.eye(2)[self.pred[idx]]


def test_undefined_rate_is_left_out_of_the_point_as_of_its_ci():
    """Review R1: three groups of 60 rows, one (c) with no favourable labels, so its TPR is undefined.
    fairlearn scores that TPR as 0 (EO 0.97 here) while the bootstrap drops it, which put the point
    outside its own CI and let the failing gate pass on a CI that was not the reported number's. Both
    now leave c out of the TPR gap (c's FPR still counts), the point lies inside its CI and a note
    names c. With no gated pair where a rate is defined, the spread is NaN (its gate errors), not 0."""
    from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

    from auditkit.api import CheckContext
    from auditkit.data import Dataset
    from auditkit_plugins.bias.groups import BiasGroups, gated_stats, group_rates
    rng = np.random.default_rng(0)
    g = np.repeat(np.array(["a", "b", "c"]), 60)
    y = np.r_[np.tile([1, 0], 60), np.zeros(60, int)]
    tpr_true, fpr_true = np.repeat([0.95, 0.8, np.nan], 60), np.repeat([0.05, 0.1, 0.15], 60)
    p = (rng.random(180) < np.where(y == 1, tpr_true, fpr_true)).astype(int)
    rows = [{"text": f"row {i}", "label": int(y[i]), "group": str(g[i])} for i in range(180)]
    prm = {k: v.default for k, v in BiasGroups.params.items()} | {"bootstrap": 200}
    res = BiasGroups().run(CheckContext(model=_FixedPredictions(p), params=prm, seed=0, device="cpu",
                                        data=Dataset("test", rows, "test.jsonl")))
    m = res.metrics
    assert equalized_odds_difference(y, p, sensitive_features=g) > 0.9  # fairlearn: c's TPR scored as 0
    # independent: TPR gap over a, b; FPR gap over a, b, c
    tpr = [p[(g == k) & (y == 1)].mean() for k in "ab"]
    fpr = [p[(g == k) & (y == 0)].mean() for k in "abc"]
    eo = max(max(tpr) - min(tpr), max(fpr) - min(fpr))
    assert m["eo_difference"].value == pytest.approx(eo) and 0 < eo < 0.5
    assert m["dp_difference"].value == pytest.approx(demographic_parity_difference(y, p, sensitive_features=g))
    for name in ("dp_difference", "dp_ratio", "eo_difference", "worst_group_accuracy", "accuracy_difference",
                 "base_rate_difference"):
        assert m[name].ci_low <= m[name].value <= m[name].ci_high, name
    assert "tpr.c" not in m and {"tpr.a", "fpr.c"} <= set(m)
    note = next(n for n in res.notes if n.startswith("TPR undefined"))
    assert "for c (" in note and "tpr.c not reported" in note and "eo_difference" in note
    assert {r["group"]: r["tpr"] for r in res.evidence[0]["rows"]}["c"] is None
    # a: only favourable labels (no FPR), b: none (no TPR): no pair has either rate, EO is undefined
    y2, p2, codes = np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0]), np.array([0, 0, 1, 1])
    two = gated_stats(group_rates(y2, p2, (y2 == p2).astype(float), codes, 2, np.arange(4)[None, :]))
    assert np.isnan(two["eo_difference"][0]) and two["dp_difference"][0] == 0.0


# ---------------------------------------------------------------------- refused before any model loads

def _no_model(monkeypatch):
    import auditkit.runner
    monkeypatch.setattr(auditkit.runner.Runner, "_load", lambda *a, **k: pytest.fail("a model was loaded"))


def _refused(run_cli, suite, out, *words):
    """Exit 2 with one error line holding ``words``, and nothing written (no check ran)."""
    code, stdout, err = run_cli("run", suite, "--out", out, "--device", "cpu")
    lines = [ln for ln in err.splitlines() if ln.startswith("auditkit: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err + stdout, (code, err)
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert not (out / "results.json").exists()
    return lines[0]


NO_GROUP_TEXTS = [{"text": f"The parcel number {i} arrived late.", "label": i % 2} for i in range(12)]


def _suite(tmp_path, checks: str, model="base: builtin:tiny-bert, task: sequence-classification, num_labels: 2"):
    return write_suite(tmp_path, "name: early\nmodel: {" + model + ", max_length: 16}\nchecks:\n"
                       "  - uses: accuracy\n    data: d.jsonl\n    bootstrap: 100\n" + checks)


def test_counterfactual_with_nothing_to_swap_is_refused_before_loading(tmp_path, run_cli, monkeypatch):
    """Found only after the model loaded and the checks before it ran (their results lost)."""
    _no_model(monkeypatch)
    write_jsonl(tmp_path / "d.jsonl", NO_GROUP_TEXTS)
    write_jsonl(tmp_path / "texts.jsonl", NO_GROUP_TEXTS)
    suite = _suite(tmp_path, "  - uses: bias.counterfactual\n    data: texts.jsonl\n")
    _refused(run_cli, suite, tmp_path / "out", "texts.jsonl:column 'text': no text names a group term of the "
             "lexicon, so there is nothing to swap", "extend the lexicon")


def test_groups_too_small_is_refused_before_loading(tmp_path, run_cli, monkeypatch):
    _no_model(monkeypatch)
    write_jsonl(tmp_path / "d.jsonl", NO_GROUP_TEXTS)
    write_jsonl(tmp_path / "g.jsonl", [dict(r, group="ab"[i % 2]) for i, r in enumerate(NO_GROUP_TEXTS)])
    suite = _suite(tmp_path, "  - uses: bias.groups\n    data: g.jsonl\n")
    _refused(run_cli, suite, tmp_path / "out", "g.jsonl:column 'group': bias.groups needs at least two groups "
             "with 30+ rows; found a (n=6), b (n=6)", "lower min_group_size")
    # inferred from the lexicon: no text names a group
    suite = _suite(tmp_path, "  - uses: bias.groups\n    data: d.jsonl\n")
    _refused(run_cli, suite, tmp_path / "out", "d.jsonl:column 'group': bias.groups needs at least two groups "
             "with 30+ rows; found none")


def test_a_relative_user_lexicon_is_read_from_the_suite_folder_before_loading(tmp_path, run_cli, monkeypatch):
    """The pre-load checks resolve ``lexicon:`` from the suite's folder (not the working directory)."""
    _no_model(monkeypatch)
    lex = {"pets": {"groups": {"cat": {"nouns": ["cat"]}, "dog": {"nouns": ["dog"]}}, "swaps": [["cat", "dog"]]}}
    (tmp_path / "lex.json").write_text(json.dumps(lex))
    write_jsonl(tmp_path / "d.jsonl", NO_GROUP_TEXTS)
    # "my father" is a group term of the built-in lexicon, not of lex.json
    write_jsonl(tmp_path / "t.jsonl", [{"text": f"My father fed the {k}.", "label": 1} for k in ("fish", "cat")])
    suite = _suite(tmp_path, "  - uses: bias.groups\n    data: t.jsonl\n    lexicon: lex.json\n"
                   "    min_group_size: 2\n")
    _refused(run_cli, suite, tmp_path / "out", "t.jsonl:column 'group'", "found cat (n=1)")
    write_jsonl(tmp_path / "t.jsonl", [{"text": f"My father fed the {k}.", "label": 1} for k in ("fish", "bird")])
    suite = _suite(tmp_path, "  - uses: bias.counterfactual\n    data: t.jsonl\n    lexicon: lex.json\n")
    _refused(run_cli, suite, tmp_path / "out", "t.jsonl:column 'text': no text names a group term")


def test_lm_texts_ending_in_their_group_term_are_refused_before_loading(tmp_path, run_cli, monkeypatch):
    _no_model(monkeypatch)
    write_jsonl(tmp_path / "d.jsonl", [{"text": "The parcel arrived late."}])
    write_jsonl(tmp_path / "t.jsonl", [{"text": "The parcel was for my wife"}, {"text": "It was sent by him"}])
    suite = _suite(tmp_path, "  - uses: bias.counterfactual\n    data: t.jsonl\n",
                   model="base: builtin:tiny-gpt2, task: causal-lm")
    _refused(run_cli, suite, tmp_path / "out", "t.jsonl:column 'text': every group term ends its text, so there "
             "is no continuation to score")


@pytest.mark.parametrize("check,rows,words", [
    ("bias.pairs", [{"sent_more": "a", "stereo_antistereo": "stereo"}], "missing column 'sent_less' for CrowS-Pairs"),
    ("bias.groups", [{"text": "My father came.", "label": "yes"}], "label must be an integer class index"),
    ("bias.counterfactual", [{"label": 1}], "missing column 'text'"),
])
def test_other_data_only_refusals_come_before_loading(tmp_path, run_cli, monkeypatch, check, rows, words):
    _no_model(monkeypatch)
    write_jsonl(tmp_path / "d.jsonl", NO_GROUP_TEXTS)
    write_jsonl(tmp_path / "t.jsonl", rows)
    _refused(run_cli, _suite(tmp_path, f"  - uses: {check}\n    data: t.jsonl\n"), tmp_path / "out", "t.jsonl:", words)


def test_pre_load_checks_read_the_rows_the_run_reads_and_say_what_it_says(registry, tiny_bert):
    """``max_examples`` keeps the first rows: the pre-load check counts those, and its refusal is the run's."""
    from auditkit.data import Dataset
    from auditkit.errors import AuditInputError
    from auditkit_plugins.bias import BiasCounterfactual, BiasGroups
    rows = NO_GROUP_TEXTS[:6] + [{"text": "My father liked it.", "label": 1}]
    ds = Dataset("test", rows, "test.jsonl")
    cf = {k: p.default for k, p in BiasCounterfactual.params.items()}
    BiasCounterfactual.validate_data(ds, cf)  # the whole file has a swap
    BiasCounterfactual.validate_data(ds, dict(cf, max_examples=7))
    with pytest.raises(AuditInputError) as early:
        BiasCounterfactual.validate_data(ds, dict(cf, max_examples=6))
    with pytest.raises(AuditInputError) as late:
        _run(registry, "bias.counterfactual", tiny_bert, rows, max_examples=6)
    assert early.value.line() == late.value.line()
    grouped = [dict(r, group="ab"[i % 2]) for i, r in enumerate(NO_GROUP_TEXTS)]
    ds = Dataset("test", grouped, "test.jsonl")
    g = dict({k: p.default for k, p in BiasGroups.params.items()}, min_group_size=3)
    BiasGroups.validate_data(ds, g)
    with pytest.raises(AuditInputError) as early:
        BiasGroups.validate_data(ds, dict(g, max_examples=5))  # a (n=3), b (n=2)
    with pytest.raises(AuditInputError) as late:
        _run(registry, "bias.groups", tiny_bert, grouped, min_group_size=3, max_examples=5)
    assert early.value.line() == late.value.line() and "found a (n=3), b (n=2)" in early.value.line()


def test_a_group_column_the_suite_names_must_exist(run_cli, tmp_path):
    """A misspelt group_column fell back to groups guessed from the lexicon and said PASS; only the default
    column may be absent (then groups are inferred)."""
    import json as _json
    rows = [{"text": f"she said {i}", "label": i % 2, "group": "a" if i % 2 else "b"} for i in range(12)]
    (tmp_path / "d.jsonl").write_text("".join(_json.dumps(r) + "\n" for r in rows))
    (tmp_path / "s.yaml").write_text("name: s\nmodel: {base: builtin:tiny-bert}\nchecks:\n"
                                     "  - {uses: bias.groups, data: d.jsonl, group_column: gruop, min_group_size: 2}\n")
    code, out, err = run_cli("run", tmp_path / "s.yaml", "--out", tmp_path / "out", "--device", "cpu")
    assert code == 2 and "no column 'gruop' (group_column)" in err and "did you mean 'group'?" in err
    assert "loading" not in err
