"""The explainability check: rollout, gradient-weighted attention, IG, ERASER faithfulness, agreement.

The central test fine-tunes tiny-bert (full, 3 epochs) on data where one planted token decides the
label ("zebra" -> 1, "tiger" -> 0, among random filler words) and asks every method to find it.
"""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from tests.conftest import write_jsonl, write_suite

FILLER = ("table river green quickly paper window music garden yellow stone coffee letter bright simple "
          "market winter cloud travel morning silver ocean pencil forest").split()


@pytest.fixture(scope="module", autouse=True)
def no_disk_cache():
    """Compute every pass here: a disk cache of passes from an earlier run would skip the code under test."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUDITKIT_DISK_CACHE", "0")
        yield


def shortcut_rows(n: int, seed: int) -> list[dict]:
    """Random filler words plus one decisive token: 'zebra' => label 1, 'tiger' => label 0."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = rng.sample(FILLER, rng.randint(4, 8))
        words.insert(rng.randint(0, len(words)), "zebra" if label else "tiger")
        rows.append({"text": " ".join(words), "label": label})
    return rows


@pytest.fixture(scope="module")
def shortcut_run(tmp_path_factory):
    """One audit run: fine-tune tiny-bert on the shortcut data, then explain 16 (+1 named) test rows."""
    from auditkit.cli import main
    folder = tmp_path_factory.mktemp("shortcut")
    write_jsonl(folder / "train.jsonl", shortcut_rows(160, 0))
    write_jsonl(folder / "val.jsonl", shortcut_rows(40, 1))
    write_jsonl(folder / "test.jsonl", shortcut_rows(40, 2))
    suite = write_suite(folder, """
        name: shortcut
        seed: 0
        model: {base: "builtin:tiny-bert", task: sequence-classification, num_labels: 2, max_length: 32}
        finetune: {data: train.jsonl, validation: val.jsonl, method: full, epochs: 3, learning_rate: 0.001,
                   batch_size: 16, max_length: 32}
        checks:
          - uses: explainability
            data: test.jsonl
            max_examples: 16
            ig_steps: 16
            heatmaps: 1
            target_tokens: [zebra, tiger]
            examples: [30]
            gates:
              - "grad_rollout.top1_hit >= 0.9"
              - "ig.top1_hit >= 0.9"
              - "ig.comprehensiveness.ci_low > random.comprehensiveness"
              - "comprehensiveness.ci_low > random.comprehensiveness.ci_high"
    """)
    out = folder / "out"
    code = main(["run", str(suite), "--out", str(out), "--device", "cpu"])
    results = json.loads((out / "results.json").read_text())
    return code, results, out


def _check(results) -> dict:
    return next(c for c in results["checks"] if c["uses"] == "explainability")


def test_shortcut_token_is_found_and_explanations_are_faithful(shortcut_run):
    code, results, _ = shortcut_run
    c = _check(results)
    assert c["error"] is None and code == 0, c["gates"]
    m = {k: v["value"] for k, v in c["metrics"].items()}
    assert m["grad_rollout.top1_hit"] >= 0.9 and m["ig.top1_hit"] >= 0.9
    assert c["metrics"]["ig.top1_hit"]["n"] == 17  # 16 first rows + the named row 30
    # comprehensiveness clearly above the random rationale's, for every method
    for meth in ("rollout", "grad_rollout", "ig"):
        assert m[f"{meth}.comprehensiveness"] > 2 * m["random.comprehensiveness"] + 0.05
        assert c["metrics"][f"{meth}.comprehensiveness_vs_random"]["ci_low"] > 0
        # keeping the planted token alone is (nearly) sufficient, a random rationale is not
        assert m[f"{meth}.sufficiency"] < m["random.sufficiency"] - 0.05
    assert m["comprehensiveness"] == m["ig.comprehensiveness"]  # primary defaults to ig
    # the default gate's metric: the primary method's paired difference with the random rationale
    assert c["metrics"]["comprehensiveness_vs_random"] == c["metrics"]["ig.comprehensiveness_vs_random"]
    assert m["ig_delta_relative"] < 0.05
    assert -1 <= m["spearman.rollout.ig"] <= 1 and 0 <= m["topk_overlap.grad_rollout.ig"] <= 1
    assert 0 < m["attention_entropy"] <= 1
    assert len(c["records"]["ig.comprehensiveness"]) == 17


def test_report_shows_heatmaps_tables_and_figures(shortcut_run):
    _, results, out = shortcut_run
    c = _check(results)
    maps = [e for e in c["evidence"] if e.get("kind") == "tokens"]
    titles = [e["title"] for e in maps]
    # most and least confident (heatmaps: 1) plus the named row 30, each method by method
    assert len(maps) == 3 * 3 and sum("row 30 ·" in t for t in titles) == 3
    for hm in maps:
        texts = [t["text"] for t in hm["tokens"]]
        assert "[CLS]" not in texts and "[SEP]" not in texts and not any(t.startswith("##") for t in texts)
        assert all(-1 <= t["score"] <= 1 for t in hm["tokens"])
        if "gradient-weighted" in hm["title"]:  # the planted token carries the largest score
            best = max(hm["tokens"], key=lambda t: t["score"])
            assert best["text"] in ("zebra", "tiger") and best["score"] == 1.0
    tables = {e["title"].split(" (")[0]: e["rows"] for e in c["evidence"] if "rows" in e}
    faith = tables["Faithfulness"]
    assert [r["method"] for r in faith][-1] == "random rationale" and "comp@0.5" in faith[0]
    assert len(tables["Agreement between methods"]) == 3
    assert len(tables["Attention heads"]) == 2 * 2  # tiny-bert: 2 layers x 2 heads
    assert c["figures"]["agreement matrix (Spearman)"].lstrip().startswith("<?xml")
    html = (out / "report.html").read_text()
    assert "zebra</span>" in html and "gradient-weighted attention" in html


def test_rollout_rows_sum_to_one(tiny_bert):
    from auditkit_plugins.explainability.rollout import attention_rollout
    texts = ["the food was great", "a zebra walked past the old market today"]
    for att in tiny_bert.attentions(texts):
        r = attention_rollout(att)
        assert r.shape == att.shape[-2:]
        np.testing.assert_allclose(r.sum(-1), 1.0, atol=1e-9)
        assert (r >= 0).all()
    # one layer: rownorm(A + I) = (A + I) / 2 for a row-stochastic A; identity attention stays identity
    a = np.random.default_rng(0).random((1, 3, 4, 4))
    a /= a.sum(-1, keepdims=True)
    np.testing.assert_allclose(attention_rollout(a), (a[0].mean(0) + np.eye(4)) / 2)
    np.testing.assert_allclose(attention_rollout(np.broadcast_to(np.eye(4), (2, 2, 4, 4))), np.eye(4))


def test_rollout_stats_and_logits_share_one_attention_pass(tiny_bert):
    """The handle's one eager attention pass answers rollout, the head statistics and the logits."""
    from auditkit.data import Dataset
    from auditkit_plugins.explainability.attention_stats import head_statistics_of
    from auditkit_plugins.explainability.rollout import rollout_scores
    from auditkit_plugins.explainability.targets import prepare
    texts = ["cached attention reductions are reused", "no second pass"]
    ds = Dataset("mem", [{"text": t, "label": 0} for t in texts], "mem")
    tiny_bert.attention_rollout(texts)
    before = tiny_bert.stats["forward_passes"]
    ex = prepare(tiny_bert, ds, [0, 1], texts, "classification")  # logits came with the attention pass
    scores = rollout_scores(tiny_bert, ex, texts)
    stats = head_statistics_of(tiny_bert, texts)
    assert tiny_bert.stats["forward_passes"] == before
    assert [len(s) for s in scores] == [len(e.ids) for e in ex]
    assert stats["entropy"].shape == (2, 2)


def test_gradient_methods_are_batch_invariant(tiny_bert):
    """Batched (right-padded, length-sorted) results equal one-example-at-a-time results."""
    from auditkit.data import Dataset
    from auditkit_plugins.explainability.integrated_gradients import integrated_gradients
    from auditkit_plugins.explainability.rollout import grad_rollout_scores
    from auditkit_plugins.explainability.targets import prepare
    texts = ["short one", "a much longer sentence about a zebra and the river in winter", "three words here"]
    ds = Dataset("mem", [{"text": t, "label": 0} for t in texts], "mem")
    ex = prepare(tiny_bert, ds, [0, 1, 2], texts, "classification")
    batched = grad_rollout_scores(tiny_bert, ex)
    ig_b, delta_b, _ = integrated_gradients(tiny_bert, ex, n_steps=8, internal_batch_size=5)
    for i, e in enumerate(ex):
        single = grad_rollout_scores(tiny_bert, [e])[0]
        np.testing.assert_allclose(batched[i], single, rtol=1e-3, atol=1e-9)
        ig_s, delta_s, _ = integrated_gradients(tiny_bert, [e], n_steps=8, internal_batch_size=1000)
        np.testing.assert_allclose(ig_b[i], ig_s[0], rtol=1e-3, atol=1e-6)
        assert ig_b[i][0] == 0 and ig_b[i][-1] == 0  # [CLS]/[SEP] equal in input and baseline
    assert np.all(delta_b < 1e-3)


def test_faithfulness_perturbations():
    from auditkit_plugins.explainability.faithfulness import perturb, ranking, rationale_size
    ids = [101, 5, 6, 7, 8, 102]
    special = np.array([True, False, False, False, False, True])
    order = ranking(np.array([9.0, 0.1, 0.9, 0.5, 0.9, 9.0]), np.arange(1, 5))
    assert order.tolist() == [2, 4, 3, 1]  # specials never ranked, ties in text order
    r = order[:rationale_size(0.5, 4)]
    assert perturb(ids, special, r, "remove", 0) == [101, 5, 7, 102]
    assert perturb(ids, special, r, "keep", 0) == [101, 6, 8, 102]
    assert rationale_size(0.1, 4) == 1 and rationale_size(1.0, 4) == 4
    assert perturb([5, 6], np.zeros(2, bool), np.array([0, 1]), "remove", 0) == [0]  # never empty


def _run(handle, rows, registry, **params):
    from auditkit.api import CheckContext
    from auditkit.data import Dataset
    cls = registry.checks["explainability"]
    full = {k: p.default for k, p in cls.params.items()}
    full.update(params)
    ctx = CheckContext(model=handle, params=full, seed=0, device="cpu", data=Dataset("mem", rows, "mem.jsonl"))
    return cls().run(ctx)


def test_causal_lm_next_token_and_multiple_choice(tiny_gpt2, registry):
    from auditkit_plugins.builtin_data import multiple_choice
    text = [{"text": t} for t in ("the weather today is", "she opened the door and", "my favourite food")]
    res = _run(tiny_gpt2, text, registry, ig_steps=8, heatmaps=1)
    m = {k: v.value for k, v in res.metrics.items()}
    for meth in ("rollout", "grad_rollout", "ig", "random"):
        assert np.isfinite(m[f"{meth}.comprehensiveness"]) and np.isfinite(m[f"{meth}.sufficiency"])
    assert m["ig_delta"] < 1e-2 and res.metrics["ig_delta"].n == 3
    assert "greedy next tokens" in res.notes[0]
    mc = multiple_choice.generate(0)[:3]
    res = _run(tiny_gpt2, mc, registry, ig_steps=8, methods=["ig", "rollout"], heatmaps=1)
    assert "chosen answers' first tokens" in res.notes[0]
    maps = [e for e in res.evidence if e.get("kind") == "tokens"]
    assert maps and all("answer" in e["caption"] for e in maps)
    assert "grad_rollout.comprehensiveness" not in res.metrics and "spearman.rollout.ig" in res.metrics


def test_without_ig_the_primary_method_is_the_first_listed(tiny_bert, registry):
    """The default gate reads the unprefixed metrics, so they exist whatever methods lists."""
    from auditkit.suite import default_gates
    rows = [{"text": t, "label": i % 2} for i, t in enumerate(["a fine day out", "the soup was cold and bland"])]
    res = _run(tiny_bert, rows, registry, methods=["rollout"], heatmaps=0)
    m = res.metrics
    assert "ig.comprehensiveness" not in m and "ig_delta" not in m
    assert m["comprehensiveness"].value == m["rollout.comprehensiveness"].value
    assert m["comprehensiveness_vs_random"].value == m["rollout.comprehensiveness_vs_random"].value
    for gate in default_gates(registry.checks["explainability"], "sequence-classification"):
        assert all(ref.metric in m for ref in gate.refs())


def test_bad_parameters_are_input_errors(tiny_bert, registry):
    from auditkit.errors import AuditInputError
    rows = [{"text": "hello there", "label": 0}]
    with pytest.raises(AuditInputError, match="not a row index"):
        _run(tiny_bert, rows, registry, examples=[5])
    # unknown methods and too few IG steps are refused by the Param declarations when the suite loads
    cls = registry.checks["explainability"]
    with pytest.raises(ValueError, match="lime"):
        cls.params["methods"].coerce(["lime"], "methods")
    with pytest.raises(ValueError, match=">= 2"):
        cls.params["ig_steps"].coerce(1, "ig_steps")
    with pytest.raises(AuditInputError, match="rationale_sizes"):
        _run(tiny_bert, rows, registry, rationale_sizes=[0, 2])


@pytest.mark.real_model
def test_ig_convergence_delta_is_small_on_minilm(registry):
    import torch
    from auditkit.data import load_dataset
    from auditkit.models import load_model
    from auditkit_plugins.explainability.integrated_gradients import integrated_gradients
    from auditkit_plugins.explainability.targets import prepare
    torch.manual_seed(0)
    handle = load_model("builtin:minilm", "sequence-classification", registry, device="cpu", num_labels=2)
    ds = load_dataset("builtin:reviews#test", registry)
    texts = [r["text"] for r in ds.rows[:4]]
    ex = prepare(handle, ds, list(range(4)), texts, "classification")
    scores, delta, diff = integrated_gradients(handle, ex, n_steps=32, internal_batch_size=128)
    assert delta.mean() / diff.mean() < 0.05, (delta, diff)
    assert np.all(delta < 0.01), delta
    assert all(np.isfinite(s).all() and np.abs(s).sum() > 0 for s in scores)
