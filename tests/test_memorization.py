"""The memorization check: exposure, extraction, membership inference, redaction.

End-to-end runs fine-tune builtin:tiny-gpt2 (full, high learning rate) on 60 short reviews with
4-digit canaries inserted 1, 10 and 50 times (a space of 10^4 secrets, enumerated for the exact
exposure), and builtin:tiny-bert on randomly labelled reviews (torch runs single-threaded, as conftest
sets it; the thresholds were set on CPU with --device cpu). The exact exposure itself is tested against
brute force in test_exposure_exact.py; the default gates on planted faults in test_planted_memorization.py.
"""
from __future__ import annotations

import copy
import json
import math
import random
import shutil

import numpy as np
import pytest

from tests.conftest import write_jsonl, write_suite


def _reviews(registry, spec: str, n: int, start: int = 0) -> list[str]:
    from auditkit.data import load_dataset
    return [r["text"] for r in load_dataset(spec, registry).rows[start:start + n]]


def _cli(*args) -> int:
    """``auditkit ARGS --device cpu`` in-process (the thresholds below were set on CPU, float32)."""
    from auditkit.cli import main
    args = [str(a) for a in args]
    return main(args + ["--device", "cpu"] if args[0] == "run" else args)


LM_SUITE = """
name: memorization-test
seed: 0
model:
  base: builtin:tiny-gpt2
  task: causal-lm
finetune:
  data: members.jsonl
  validation: non_members.jsonl
  method: full
  epochs: 3
  learning_rate: 0.002
  batch_size: 16
  max_length: 64
  canaries:
    count: 3
    repeats: [1, 10, 50]
    digits: 4
    references: 500
checks:
{checks}
"""

FULL_CHECK = """
  - uses: memorization
    samples: 5
    max_extraction: 40
    gates:
      - "exposure_max <= baseline.exposure_max + 100"
      - {when: "mia_loss_auc <= 0.6", severity: warn}
"""


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory, registry):
    folder = tmp_path_factory.mktemp("memorization")
    write_jsonl(folder / "members.jsonl", [{"text": t} for t in _reviews(registry, "builtin:reviews", 60)])
    write_jsonl(folder / "non_members.jsonl",
                [{"text": t} for t in _reviews(registry, "builtin:reviews#validation", 60)])
    suite = write_suite(folder, LM_SUITE.format(checks=FULL_CHECK.strip("\n")))
    out = folder / "out"
    code = _cli("run", suite, "--out", out)
    results = json.loads((out / "results.json").read_text())
    from auditkit.finetune import make_canaries
    cfg = results["training"]["config"]
    canaries = make_canaries(cfg["canaries"], cfg["seed"])  # the record on disk holds no secret
    secrets = [c["secret"] for c in canaries["canaries"]]
    return {"folder": folder, "out": out, "code": code, "results": results, "secrets": secrets,
            "texts": [c["text"] for c in canaries["canaries"]]}


def _check(results: dict) -> dict:
    (check,) = [c for c in results["checks"] if c["uses"] == "memorization"]
    assert check["error"] is None, check["error"]
    return check


def _value(check: dict, name: str) -> float:
    return check["metrics"][name]["value"]


# ---------------------------------------------------------------------- exposure (unit)

def test_exposure_formula_on_hand_made_references():
    from auditkit_plugins.memorization.exposure import exposure_rank
    refs = np.arange(1.0, 17.0)  # log-perplexities 1..16, |R| = 16
    rank, exp = exposure_rank([3.5, 0.5, 4.0, 20.0], refs)
    assert rank.tolist() == [4.0, 1.0, 4.5, 17.0]  # ties are mid-ranks: 4.0 ties the reference 4
    assert exp[0] == pytest.approx(2.0)  # log2 16 - log2 4
    assert exp[1] == pytest.approx(4.0)  # more likely than every reference: log2 |R|
    assert exp[2] == pytest.approx(4 - math.log2(4.5))
    assert exp[3] < 0  # less likely than every reference


def test_skew_normal_exposure_reaches_beyond_the_reference_count():
    from scipy.stats import skewnorm
    from auditkit_plugins.memorization.exposure import exposure_fit, exposure_rank, skewnorm_fit
    refs = skewnorm.rvs(4.0, loc=50, scale=8, size=4000, random_state=0)
    canary = skewnorm.ppf(2.0 ** -16, 4.0, loc=50, scale=8)  # true exposure 16 bits
    params = skewnorm_fit(refs)
    _, by_rank = exposure_rank([canary], refs)
    assert by_rank[0] == pytest.approx(math.log2(4000))  # the rank estimate stops at log2 |R| = 11.97
    assert exposure_fit([canary], params)[0] == pytest.approx(16.0, abs=1.5)
    assert exposure_fit([canary], params, space_size=2 ** 10)[0] == pytest.approx(10.0)  # capped
    assert exposure_fit([np.median(refs)], params)[0] == pytest.approx(1.0, abs=0.15)  # CDF 1/2


# ---------------------------------------------------------------------- membership scores (unit)

def test_min_k_takes_at_least_one_token():
    from auditkit_plugins.memorization.membership import min_k, min_k_plus_plus
    assert min_k([-1.0, -5.0, -2.0], 0.2) == -5.0  # k*T = 0.6 < 1: the single lowest token
    assert min_k(-np.arange(10.0), 0.2) == pytest.approx(-8.5)  # the 2 lowest of 10
    assert math.isnan(min_k([], 0.2))
    assert min_k_plus_plus([-1.0, -3.0], [-2.0, -2.0], [0.5, 2.0], 0.5) == pytest.approx(-0.5)


def test_auc_and_tpr_at_low_fpr():
    from sklearn.metrics import roc_auc_score
    from auditkit_plugins.memorization.membership import attack_metrics, auc_mann_whitney, tpr_at_fpr
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(size=300) + y, 1)  # ties included
    assert auc_mann_whitney(y, s) == pytest.approx(roc_auc_score(y, s))
    # 100 non-members, 10 members: 4 members above every non-member, one non-member (5), 4 more
    # members, a second non-member (0.5), the rest
    y = np.array([1] * 10 + [0] * 100)
    s = np.array([10, 9, 8, 7, 4, 3, 2, 1, 0, -1] + [5, 0.5] + list(np.linspace(-5, -2, 98)))
    assert tpr_at_fpr(y, s, 0.001) == pytest.approx(0.4)
    assert tpr_at_fpr(y, s, 0.01) == pytest.approx(0.8)  # one false positive allowed
    m = attack_metrics(y, s)
    assert m["auc"] == pytest.approx(roc_auc_score(y, s)) and m["auc_ci"][0] <= m["auc"] <= m["auc_ci"][1]
    assert m["tpr_at_1pct_fpr"] == pytest.approx(0.8) and m["tpr_at_0_1pct_fpr"] == pytest.approx(0.4)


def test_minkpp_moments_match_a_direct_computation(tiny_gpt2):
    import torch
    from auditkit_plugins.memorization.membership import lm_scores, next_token_moments
    texts = ["my PIN is 1-2-3-4-5-6", "the cat sat on the mat and looked around the room", "hello", "a b"]
    mom = next_token_moments(tiny_gpt2, texts)
    for text, lp, mu, sd in zip(texts, mom["token_logprobs"], mom["mu"], mom["sigma"]):
        ids = torch.tensor([tiny_gpt2.token_ids([text])[0]])
        with torch.inference_mode():
            logp = torch.log_softmax(tiny_gpt2.model(input_ids=ids).logits[0, :-1].float(), -1)
        p = logp.exp()
        ref_mu = (p * logp).sum(-1)
        ref_sd = torch.sqrt((p * logp ** 2).sum(-1) - ref_mu ** 2)
        np.testing.assert_allclose(mu, ref_mu.numpy(), atol=1e-4)
        np.testing.assert_allclose(sd, ref_sd.numpy(), atol=1e-3)
        np.testing.assert_allclose(lp, logp.gather(-1, ids[0, 1:, None])[:, 0].numpy(), atol=1e-4)
    # the same pass serves the shared token_logprobs cache
    hits = tiny_gpt2.stats["cache_hits"]
    assert tiny_gpt2.token_logprobs(texts) is mom["token_logprobs"]
    assert tiny_gpt2.stats["cache_hits"] == hits + 1
    scores = lm_scores(tiny_gpt2, texts, 0.2)
    n_scored = [len(x) for x in mom["token_logprobs"]]
    for name in ("loss", "zlib", "mink", "minkpp"):
        assert all(math.isnan(v) == (n == 0) for v, n in zip(scores[name], n_scored)), name


# ---------------------------------------------------------------------- extraction (unit)

SENTENCE = "the lighthouse keeper counted seventeen gulls on the northern rocks before dawn"


@pytest.fixture(scope="module")
def memorized(tiny_gpt2):
    """tiny-gpt2 trained on one sentence until it reproduces it."""
    import torch
    from auditkit.models import ModelHandle
    model = copy.deepcopy(tiny_gpt2.model)
    model.train()
    torch.manual_seed(0)
    ids = torch.tensor([tiny_gpt2.token_ids([SENTENCE])[0]])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    return ModelHandle(model=model, tokenizer=tiny_gpt2.tokenizer, task="causal-lm", source="memorized")


def test_greedy_and_sampled_extraction(memorized, registry):
    from auditkit_plugins.memorization.extraction import extraction, rate_ci, split_sequences
    texts = [SENTENCE] + _reviews(registry, "builtin:reviews", 5)
    ids = memorized.token_ids(texts)
    keep, pre, suf = split_sequences(ids, 4, 6)
    assert keep[0] == 0 and all(len(p) == 4 and len(s) == 6 for p, s in zip(pre, suf))
    out = extraction(memorized, pre, suf, samples=8, seed=0)
    assert out["greedy"][0] and not out["greedy"][1:].any()
    assert out["sampled"][0] >= 0.5 and out["sampled"][1:].max() == 0.0
    rate, (lo, hi) = rate_ci(out["greedy"])
    assert rate == pytest.approx(1 / len(keep)) and 0 < lo < rate < hi < 1
    # seeded: a cold cache draws the same samples
    first = out["sampled"].copy()
    memorized.invalidate()
    np.testing.assert_array_equal(extraction(memorized, pre, suf, samples=8, seed=0)["sampled"], first)


def test_batched_left_padded_generation_matches_one_at_a_time(memorized, tiny_gpt2, registry):
    from auditkit_plugins.memorization.extraction import generate
    # the random base model stops at once after a prompt ending in <|endoftext|> (id 0): a row that
    # stopped is marked -1 after its stop, in a batch as alone
    prompts = [[77, 89, 498, 41, d] for d in range(6)]
    assert generate(tiny_gpt2, prompts, 5) == [generate(tiny_gpt2, [p], 5)[0] for p in prompts]
    assert generate(tiny_gpt2, prompts, 5)[0] == [[0, -1, -1, -1, -1]]
    texts = [SENTENCE, "the lighthouse keeper", "my PIN is"] + _reviews(registry, "builtin:reviews", 3)
    prompts = [ids[:n] for ids, n in zip(memorized.token_ids(texts), (5, 3, 3, 7, 2, 9))]
    batched = generate(memorized, prompts, 6)
    hits = memorized.stats["cache_hits"]
    assert generate(memorized, prompts, 6) == batched and memorized.stats["cache_hits"] == hits + 1
    for p, b in zip(prompts, batched):
        assert generate(memorized, [p], 6) == [b]
    assert memorized.tokenizer.decode(batched[0][0]) in SENTENCE  # it continues the memorized text


def test_generations_and_moments_are_kept_in_the_disk_cache(memorized, tmp_path, monkeypatch):
    from auditkit_plugins.memorization.extraction import generate
    from auditkit_plugins.memorization.membership import next_token_moments
    monkeypatch.setenv("AUDITKIT_DISK_CACHE", "1")
    monkeypatch.setenv("AUDITKIT_CACHE", str(tmp_path))
    prompts = [ids[:3] for ids in memorized.token_ids([SENTENCE, "my PIN is 1-2-3"])]
    texts = [SENTENCE, "my PIN is 1-2-3"]
    memorized.invalidate()
    first = (generate(memorized, prompts, 5, samples=3, seed=7), next_token_moments(memorized, texts))
    memorized.invalidate()  # a fresh run of the same weights
    hits = memorized.stats["disk_hits"]
    again = (generate(memorized, prompts, 5, samples=3, seed=7), next_token_moments(memorized, texts))
    assert memorized.stats["disk_hits"] >= hits + 2
    assert again[0] == first[0]
    for key in ("token_logprobs", "mu", "sigma"):
        for a, b in zip(again[1][key], first[1][key]):
            np.testing.assert_array_equal(a, b)
    memorized.invalidate()


def test_check_evidence_of_an_extracted_sequence_is_truncated(memorized, registry):
    from auditkit.api import CheckContext
    from auditkit.data import Dataset
    from auditkit_plugins.memorization import Memorization
    from auditkit_plugins.memorization.evidence import truncate
    assert truncate("<b>" * 40) == "<b>" * 26 + "<…" and len(truncate("x" * 500)) == 80
    assert truncate("a\nb") == "a b"
    others = _reviews(registry, "builtin:reviews#validation", 6)
    # the members' file lines (as a JSONL file with blank lines would give): the table names the file's line
    data = {"m": Dataset("m", [{"text": SENTENCE}] + [{"text": t} for t in others[:3]], "m", lines=[3, 5, 6, 8]),
            "n": Dataset("n", [{"text": t} for t in others[3:]], "n")}
    params = {k: v.default for k, v in Memorization.params.items()}
    params.update(members="m", non_members="n", prefix_tokens=4, suffix_tokens=6, samples=4, minkpp=False)

    def run(show: bool):
        ctx = CheckContext(model=memorized, params=params, seed=0, device="cpu", check_id="memorization",
                           load_data=lambda spec, cols=None: data[spec], artifacts={"show_secrets": show})
        return Memorization().run(ctx)

    res = run(False)
    assert res.metrics["extraction_rate"].value == pytest.approx(1 / 4) and res.metrics["extraction_rate"].n == 4
    (table,) = [e for e in res.evidence if e["title"].startswith("Extracted training sequences (1 of 4")]
    (row,) = table["rows"]
    # the extracted text is training data: without --show-secrets the table names the row, not the text
    assert row["training row"] == "row 3" and "prefix" not in row and "suffix" not in row
    assert "--show-secrets" in table["title"]
    assert row["P(extract)"] >= 0.5
    shown = run(True)
    (table,) = [e for e in shown.evidence if e["title"].startswith("Extracted training sequences (1 of 4")]
    ids = memorized.token_ids([SENTENCE])[0]
    (row,) = table["rows"]
    decode = memorized.tokenizer.decode
    assert row["prefix"] == decode(ids[:4]) and row["suffix"] == decode(ids[4:10])
    assert set(table["secret_columns"]) == {"prefix", "suffix"}  # a re-render without --show-secrets hides them
    # the one memorized member scores above every non-member: TPR 1/4 at zero false positives
    assert res.metrics["mia_loss_tpr_at_0_1pct_fpr"].value >= 0.25
    assert "mia_minkpp_auc" not in res.metrics and "mia_ref_auc" not in res.metrics  # off / no reference
    assert any("no canaries" in n for n in res.notes)


def test_secret_table_is_composed_once_for_a_model_and_a_base_sharing_a_tokenizer(memorized, tiny_gpt2, monkeypatch):
    """The table of every secret's token ids (10^digits rows, the expensive part of enumerating the secret
    space) is composed once when the audited model and its base tokenize alike (each handle still checks
    its own tokenization on a sample), and the exposures equal those of two separate builds."""
    from auditkit.api import CheckContext, CheckResult
    from auditkit.finetune import make_canaries
    from auditkit.models import ModelHandle
    from auditkit_plugins.memorization import Memorization, exposure
    monkeypatch.setenv("AUDITKIT_DISK_CACHE", "0")
    canaries = make_canaries({"count": 2, "repeats": [1, 5], "digits": 3, "references": 60,
                              "template": "my PIN is {digits}"}, 0)
    builds = []
    compose = exposure.compose_table
    monkeypatch.setattr(exposure, "compose_table", lambda *a, **kw: builds.append(a[1]) or compose(*a, **kw))

    def fresh(h):  # an empty memo (the space's log-probs are memoized per handle) and a tokenizer of its own
        return ModelHandle(model=h.model, tokenizer=copy.deepcopy(h.tokenizer), task="causal-lm", source=h.source)

    params = {k: v.default for k, v in Memorization.params.items()}
    params.update(parts=["exposure"])
    ctx = CheckContext(model=fresh(memorized), baseline=fresh(tiny_gpt2), params=params, seed=0, device="cpu",
                       check_id="memorization", artifacts={"canaries": copy.deepcopy(canaries)})
    res = Memorization().run(ctx)
    assert builds == [3]  # one table for the model and the base
    assert "exposure_method: exact" in res.notes and "baseline.exposure_max" in res.metrics
    # the two-build path: each handle alone, no shared table
    separate = CheckResult()
    for prefix, h in (("", fresh(memorized)), ("baseline.", fresh(tiny_gpt2))):
        e = exposure.canary_exposures(h, copy.deepcopy(canaries), params["unseen"], params["exact_max"])
        assert e["method"] == "exact"
        Memorization._exposure_metrics(separate, prefix, canaries["canaries"], e, 0)
    assert builds == [3, 3, 3]
    assert separate.metrics and all(res.metrics[k] == m for k, m in separate.metrics.items())
    # a base whose pieces tokenize differently (another template) gets a table of its own
    ids = {}
    exposure.candidate_ids(fresh(tiny_gpt2), "my PIN is {digits}", 3, "-", cache=ids)
    exposure.candidate_ids(fresh(tiny_gpt2), "my PIN is {digits}", 3, "-", cache=ids)
    exposure.candidate_ids(fresh(tiny_gpt2), "code: {digits}!", 3, "-", cache=ids)
    assert builds == [3, 3, 3, 3, 3] and len(ids) == 2


# ---------------------------------------------------------------------- end to end (causal LM)

def test_exposure_rises_with_repeats_and_unseen_canaries_stay_at_chance(lm_run):
    check = _check(lm_run["results"])
    assert lm_run["code"] == 0 and check["status"] == "warn"  # the warn gate on mia_loss_auc fired
    assert check["default_gates"] is False
    top = _value(check, "max_possible_exposure")
    assert top == pytest.approx(math.log2(10 ** 4))  # 4-digit secrets, every one ranked: exact
    assert "exposure_method: exact" in check["notes"]
    assert _value(check, "max_possible_exposure_rank") == pytest.approx(math.log2(480))  # 20 held out as unseen
    r1, r10, r50 = (_value(check, f"exposure_r{k}") for k in (1, 10, 50))
    # three secrets repeated 50 times stand out; the tiny model mixes their digits (a secret made of
    # digits of several of them ranks high too), so they stop short of rank 1
    assert max(r1, r10) + 3 < r50 and r50 > 8
    # the exact figure goes beyond the rank-based estimate, which stops at log2 |R|
    assert _value(check, "exposure_rank_max") <= math.log2(480) + 1e-9 < _value(check, "exposure_max") <= top
    assert _value(check, "exposure_unseen_mean") < 2.5  # chance: log2 e = 1.44
    assert _value(check, "baseline.exposure_mean") < 2.5  # the base model never saw the canaries
    assert check["baseline_metrics"]["exposure_max"]["value"] == _value(check, "baseline.exposure_max")
    assert "canary exposure" in check["figures"]
    rows = check["evidence"][0]["rows"]
    assert [r["repeats"] for r in rows] == [1, 1, 1, 10, 10, 10, 50, 50, 50]
    assert all(r["exposure"] >= r["exposure (rank among references)"] - 1e-3 for r in rows if r["repeats"] == 50)
    assert len(check["records"]["canary_exposure"]) == 9


def test_membership_auc_on_overfit_model_and_on_the_base(lm_run):
    check = _check(lm_run["results"])
    for a in ("loss", "zlib", "mink", "minkpp", "ref"):
        assert 0 <= _value(check, f"mia_{a}_tpr_at_0_1pct_fpr") <= _value(check, f"mia_{a}_tpr_at_1pct_fpr") <= 1
        m = check["metrics"][f"mia_{a}_auc"]
        assert m["n"] == 120 and m["ci_low"] <= m["value"] <= m["ci_high"]
    assert _value(check, "mia_loss_auc") > 0.7
    assert _value(check, "mia_auc_max") >= _value(check, "mia_loss_auc")
    for a in ("loss", "zlib", "mink", "minkpp"):  # the base model never saw the members
        assert abs(_value(check, f"baseline.mia_{a}_auc") - 0.5) < 0.12, a
    assert "membership ROC" in check["figures"] and "<svg" in check["figures"]["membership ROC"]


def test_extraction_metrics_end_to_end(lm_run):
    check = _check(lm_run["results"])
    for name in ("extraction_rate", "extraction_prob", "canary_extraction_rate", "canary_extraction_prob"):
        assert 0.0 <= _value(check, name) <= 1.0
    m = check["metrics"]["extraction_rate"]
    assert m["n"] == 40 and m["ci_low"] <= m["value"] <= m["ci_high"]
    assert len(check["records"]["extracted"]) == 40


def _files_holding(folder, needles: list[str]) -> dict[str, list[str]]:
    """Every file under ``folder`` (recursively, read as bytes) that holds one of ``needles``."""
    found = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        hits = [n for n in needles if n.encode() in data]
        if hits:
            found[str(path.relative_to(folder))] = hits
    return found


def test_secrets_are_redacted_unless_asked_for(lm_run):
    out, secrets = lm_run["out"], lm_run["secrets"]
    assert len(secrets) == 9 and all(len(s) == 7 for s in secrets)
    # no file under --out, the fine-tuned model's folder included, holds a secret or a canary text
    assert not _files_holding(out, secrets + lm_run["texts"])
    stored = json.loads((out / "model" / "canaries.json").read_text())
    assert stored["redacted"] is True and [c["id"] for c in stored["canaries"]][0] == "canary-r1-0"
    assert "canary-r50-0" in (out / "report.html").read_text(encoding="utf-8")
    # the same fine-tune (reused from model/, its canaries regenerated) with --show-secrets shows them
    folder = lm_run["folder"]
    shown = folder / "shown"
    shutil.copytree(out / "model", shown / "model")
    suite = write_suite(folder, LM_SUITE.format(checks="  - uses: memorization\n    parts: [exposure]\n"
                                                       "    baseline: false\n    gates: []"), "show.yaml")
    assert _cli("run", suite, "--out", shown, "--show-secrets") == 0
    results = json.loads((shown / "results.json").read_text())
    assert results["training"]["reused"] is True
    html = (shown / "report.html").read_text(encoding="utf-8")
    assert all(s in html for s in secrets)
    assert all(s in (shown / "results.json").read_text(encoding="utf-8") for s in secrets)
    # still none in the model folder: canaries.json stays redacted whatever the flag
    assert not _files_holding(shown / "model", secrets)


def test_a_reused_finetune_whose_canaries_do_not_regenerate_is_trained_again(lm_run, tmp_path):
    from auditkit.finetune import load_finished
    model = tmp_path / "model"
    shutil.copytree(lm_run["out"] / "model", model)
    fp = json.loads((model / "finetune.json").read_text())["fingerprint"]
    record, canaries = load_finished(model, fp)
    assert [c["secret"] for c in canaries["canaries"]] == lm_run["secrets"]
    stored = json.loads((model / "canaries.json").read_text())
    (model / "canaries.json").write_text(json.dumps(dict(stored, digest="0" * 32)))
    assert load_finished(model, fp) is None


# ---------------------------------------------------------------------- classifier and input errors

def test_classifier_loss_attack_on_memorized_random_labels(tmp_path, registry):
    rng = random.Random(0)
    texts = _reviews(registry, "builtin:reviews", 80)
    write_jsonl(tmp_path / "train.jsonl", [{"text": t, "label": rng.randrange(2)} for t in texts[:40]])
    write_jsonl(tmp_path / "held.jsonl", [{"text": t, "label": rng.randrange(2)} for t in texts[40:]])
    suite = write_suite(tmp_path, """
        name: memorization-classifier
        model: {base: "builtin:tiny-bert", task: sequence-classification, num_labels: 2}
        finetune: {data: train.jsonl, validation: held.jsonl, method: full, epochs: 12, learning_rate: 0.002,
                   batch_size: 8, max_length: 48}
        checks:
          - uses: memorization
    """)
    assert _cli("run", suite, "--out", tmp_path / "out") == 1  # memorized labels fail the default gates
    check = _check(json.loads((tmp_path / "out" / "results.json").read_text()))
    assert _value(check, "mia_loss_auc") > 0.75
    assert abs(_value(check, "baseline.mia_loss_auc") - 0.5) < 0.2
    assert check["status"] == "fail" and check["default_gates"] is True
    gates = {g["expr"]: g for g in check["gates"]}
    assert gates["mia_auc_max.ci_low <= baseline.mia_auc_max + 0.1"]["status"] == "fail"
    assert all(g["default"] for g in check["gates"])
    assert _value(check, "mia_auc_max") == _value(check, "mia_loss_auc")  # one attack for classifiers
    assert not any(k.startswith(("exposure", "extraction", "mia_minkpp")) for k in check["metrics"])
    assert any(n.startswith("extraction: only for causal LMs") for n in check["notes"])


def test_nothing_to_measure_and_bad_params_are_input_errors(tmp_path, capsys):
    suite = write_suite(tmp_path, """
        name: nothing
        model: {base: "builtin:tiny-gpt2", task: causal-lm}
        checks:
          - uses: memorization
    """)
    assert _cli("run", suite, "--out", tmp_path / "out") == 2
    assert "memorization has nothing to measure" in capsys.readouterr().err
    write_jsonl(tmp_path / "m.jsonl", [{"text": "one two three four"}] * 3)
    bad = write_suite(tmp_path, """
        name: bad-k
        model: {base: "builtin:tiny-gpt2", task: causal-lm}
        checks:
          - uses: memorization
            members: m.jsonl
            non_members: m.jsonl
            k: 1.5
    """, "bad.yaml")
    assert _cli("run", bad, "--out", tmp_path / "out2") == 2
    err = capsys.readouterr().err
    assert "line 7" in err and "k must be > 0 and <= 1, got 1.5" in err  # at load, before any model
    for line, want in (("parts: [exposure, membrship]", "did you mean 'membership'"),
                       ("samples: -1", "samples must be >= 0"), ("exact_max: -5", "exact_max must be >= 0"),
                       ("temperature: 0", "temperature must be > 0"), ("parts: []", "parts is empty")):
        text = bad.read_text().replace("k: 1.5", line)
        assert _cli("run", write_suite(tmp_path, text, "bad2.yaml"), "--out", tmp_path / "out3") == 2, line
        err = capsys.readouterr().err
        assert want in err and "line 7" in err, (line, err)


def test_exposure_of_any_repeat_count_can_be_gated(tmp_path, registry):
    """exposure_r{repeats} is a declared pattern: a suite's own repeat counts validate as gates."""
    from auditkit.errors import AuditInputError
    from auditkit.suite import load_suite
    checks = ("  - uses: memorization\n    gates: [\"exposure_r7 <= 6\", \"exposure_r1000.ci_high <= 8\", "
              "\"exposure_r3 <= baseline.exposure_r3 + 2\"]")
    suite = load_suite(write_suite(tmp_path, LM_SUITE.format(checks=checks).replace("[1, 10, 50]", "[3, 7, 1000]")),
                       registry)
    assert [g.expr for g in suite.checks[0].gates][:2] == ["exposure_r7 <= 6", "exposure_r1000.ci_high <= 8"]
    assert suite.finetune.canaries["repeats"] == [3, 7, 1000]
    bad = LM_SUITE.format(checks="  - uses: memorization\n    gates: [\"exposure_r7.x <= 6\"]")
    with pytest.raises(AuditInputError):
        load_suite(write_suite(tmp_path, bad, "bad.yaml"), registry)


def test_default_gates_per_task(registry):
    from auditkit.suite import default_gates
    cls = registry.checks["memorization"]
    lm = [g.expr for g in default_gates(cls, "causal-lm")]
    assert "exposure_max <= 10" in lm and "canary_extraction_rate <= 0" in lm
    assert any(e.startswith("mia_auc_max.ci_low") for e in lm) and any(e.startswith("extraction_rate") for e in lm)
    clf = [g.expr for g in default_gates(cls, "sequence-classification")]
    assert clf and all(e.startswith("mia_auc_max") for e in clf)


def _digit_table(digits: int = 3) -> np.ndarray:
    """Token rows [1, 2, d1, 9, d2, 9, d3]: a shared prefix, then digits (10 + d) joined by a separator (9)."""
    rows = []
    for i in range(10 ** digits):
        r = [1, 2]
        for j, ch in enumerate(f"{i:0{digits}d}"):
            r += ([9] if j else []) + [10 + int(ch)]
        rows.append(r)
    return np.array(rows, dtype=np.int64)


def test_trie_shape_and_planned_chunks():
    from auditkit.passes.prefix_tree import MIN_CHUNK, _plan_chunk, _trie_levels
    s = _digit_table(3)
    units = [(a, a + 100) for a in range(0, 1000, 100)]
    levels = _trie_levels(s, 2, units)
    # per unit: the unit node, its separator (10 digit children), 10 digits (one separator each), 10 separators
    assert levels == [(3, 1, True), (4, 1, False), (5, 10, True), (6, 10, True)]
    assert _plan_chunk(levels, 1000, 1000, 1) == MIN_CHUNK
    sizes = [_plan_chunk(levels, 1000, 1000, b) for b in (10_000, 100_000, 1_000_000, 10 ** 9)]
    assert sizes == sorted(sizes) and sizes[-1] >= 10  # a bigger budget never plans smaller steps


@pytest.mark.parametrize("budget", [1, 60_000, None])
def test_trie_with_planned_chunks_equals_whole_sequences(tiny_gpt2, monkeypatch, budget):
    """The chunks planned from the memory budget (as on a GPU: parents let go, one host sync per subtree)
    score every row as the full sequences do, whatever the budget."""
    from auditkit.models import ModelHandle
    from auditkit.passes import prefix_tree
    monkeypatch.setattr(prefix_tree, "PLAN_ON_CPU", True)
    ids = _digit_table(3)
    ids[:, :2] = [[464, 1204]]
    ids[:, 2:] += 400
    h = ModelHandle(model=tiny_gpt2.model, tokenizer=tiny_gpt2.tokenizer, task="causal-lm", source="plan")
    calls = []
    real = h.model.forward

    def forward(*a, **kw):
        calls.append(kw["input_ids"].shape[0])
        return real(*a, **kw)

    monkeypatch.setattr(h.model, "forward", forward)
    got = h.prefix_tree_logprobs(ids, budget_bytes=budget)
    monkeypatch.setattr(h.model, "forward", real)
    np.testing.assert_allclose(got, h.full_sequence_logprobs(ids), atol=1e-4)
    assert sum(calls) == 10 + 10 * (1 + 10 + 10)  # every trie node runs exactly one step
    if budget is None:  # a budget that fits a whole level: one step per level and subtree
        assert len(calls) == 10 * 4


def test_trie_budget_on_a_gpu_leaves_room_for_everything_the_run_holds(monkeypatch, tiny_gpt2):
    """A quarter of what the GPU's memory leaves beside this process's tensors (a 70B 4-bit model and its
    base fill most of an 80 GB card), between the fixed floor and the cap; the CPU keeps its fixed figure."""
    import types

    import torch

    from auditkit.passes import prefix_tree as pt
    gib = 1 << 30
    held = {"now": 0}
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace(total_memory=80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda i=None: held["now"])
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    model = tiny_gpt2.model
    assert pt._device_budget(model, "cpu") == pt.KV_BUDGET_BYTES["cpu"]
    held["now"] = 70 * gib
    assert pt._device_budget(model, "cuda") == int(2.5 * gib)
    held["now"] = 79 * gib
    assert pt._device_budget(model, "cuda:0") == pt.KV_BUDGET_BYTES["cuda"]  # never below the floor
    held["now"] = 3 * gib
    assert pt._device_budget(model, "cuda") == pt.CUDA_BUDGET_MAX
