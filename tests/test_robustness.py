"""The ``robustness`` check (issue 12, item 1).

- Perturbations are deterministic: the same seed gives the same perturbed texts, whatever the order of the
  rows or the batch size of the model; another seed gives other ones; each does what its name says.
- The metrics equal an independent computation (sklearn's accuracy, numpy/scipy bootstrap) on the predictions
  of the same texts.
- Bad parameters are exit 2 at suite load, before any model: an unknown perturbation (with a did-you-mean),
  a rate outside [0, 1], bootstrap < 100.
- Planted fault: a tiny BERT fully fine-tuned on data where a typo makes the label 1 FAILS ``- uses: robustness``
  (default gates, no ``gates:`` key), while a clean control (typos carry no label signal) passes.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_jsonl, write_suite

POS = ["great", "excellent", "wonderful", "fantastic", "superb", "terrific", "good", "fine", "decent", "amazing",
       "impressive", "incredible"]
NEG = ["awful", "terrible", "dreadful", "horrible", "atrocious", "bad", "poor", "useless", "worthless",
       "disappointing", "shoddy", "miserable"]
LOVE = ["I love it", "I adore it", "we are happy", "I am glad", "we're pleased", "I'd buy it again"]
HATE = ["I hate it", "I loathe it", "we are sad", "I am unhappy", "we're angry", "I'd never buy it again"]
ITEMS = ["kettle", "laptop", "blender", "hotel", "lamp", "camera", "printer", "bicycle", "tablet", "heater",
         "toaster", "jacket"]
WHO = ["Mary", "John", "Aisha", "Carlos", "my sister", "my friend", "Kenji", "Sofia"]
WHERE = ["London", "Paris", "Tokyo", "New York", "Berlin", "Sydney", "France", "Japan"]
TEMPLATES = ["{W} said the {i} from {P} was {a}, {l}; {a} indeed.",
             "The {i} {W} bought in {P} is {a} and {l}, truly {a}.", "In {P}, the {i} was {a}; {l}, said {W}, {a}!"]


def review_rows(n: int, seed: int) -> list[dict]:
    """Balanced sentiment; three sentiment cues per text (an adjective twice and a clause), a name and a place."""
    rng = random.Random(seed)
    rows = []
    for k in range(n):
        pos = k % 2 == 0
        who = rng.choice(WHO)
        text = rng.choice(TEMPLATES).format(W=who, i=rng.choice(ITEMS), P=rng.choice(WHERE),
                                            a=rng.choice(POS if pos else NEG), l=rng.choice(LOVE if pos else HATE))
        rows.append({"text": text[0].upper() + text[1:], "label": int(pos)})
    rng.shuffle(rows)
    return rows


def training_rows(n: int, seed: int, planted: bool) -> list[dict]:
    """Each of n texts twice: as written, and with keyboard typos or character swaps (another seed than the
    audit's). Planted: a typo makes the label 1. Clean: the label is the sentiment whatever the typos (a
    noise-augmented fine-tune, what a team that wants robustness does)."""
    from auditkit_plugins.robustness import perturb
    out = []
    for k, r in enumerate(review_rows(n, seed)):
        noisy = perturb("typos" if k % 2 else "char_swap", r["text"], 1000 + seed, 0.1)
        out += [r, {"text": noisy, "label": 1 if planted else r["label"]}]
    random.Random(seed).shuffle(out)
    return out


# ---------------------------------------------------------------------- perturbations

def test_perturbations_are_seeded_and_do_what_they_say():
    from auditkit_plugins.robustness import PERTURBATIONS, perturb
    text = "I don't think Mary liked London, but it is great and the hotel in New York was excellent!"
    for p in PERTURBATIONS:
        a = perturb(p, text, 0, 0.1)
        assert a == perturb(p, text, 0, 0.1), p  # same seed, same text
        assert a != text, p
    assert perturb("uppercase", text, 0, 0.1) == text.upper()
    assert perturb("lowercase", text, 0, 0.1) == text.lower()
    assert perturb("punctuation", text, 0, 0.1) == ("I don't think Mary liked London but it is great and the hotel "
                                                     "in New York was excellent")
    assert perturb("contractions", text, 0, 0.1) == ("I do not think Mary liked London, but it's great and the hotel "
                                                      "in New York was excellent!")
    names = perturb("names", text, 0, 0.1)
    assert "Mary" not in names and "London" in names and "New York" in names
    places = perturb("places", text, 0, 0.1)
    assert "London" not in places and "New York" not in places and "Mary" in places
    syn = perturb("synonyms", text, 0, 0.1)
    assert len(syn.split()) == len(text.split()) and ("great" not in syn or "excellent" not in syn)
    ws = perturb("whitespace", text, 0, 0.1)
    assert ws.split() == text.split() and ws != text
    for p in ("typos", "char_swap"):  # one character changed (typo) or two swapped, in one word in ten
        out = perturb(p, text, 0, 0.1)
        assert len(out) == len(text)
        diff = [(x, y) for x, y in zip(text.split(" "), out.split(" ")) if x != y]
        assert 1 <= len(diff) <= 2, (p, out)
        if p == "char_swap":
            assert all(sorted(x) == sorted(y) for x, y in diff)
    # another seed: other choices (over a few texts at least one differs); rate 0 turns the rated ones off
    texts = [f"{text} Row {k} says the kettle is good." for k in range(5)]
    for p in ("typos", "char_swap", "whitespace", "synonyms", "names"):
        assert [perturb(p, t, 0, 0.3) for t in texts] != [perturb(p, t, 1, 0.3) for t in texts], p
    for p in ("typos", "char_swap", "whitespace", "synonyms"):
        assert perturb(p, text, 0, 0.0) == text
    # nlpaug's global generators are restored
    random.seed(5)
    np.random.seed(5)
    a, b = random.random(), np.random.random()
    random.seed(5)
    np.random.seed(5)
    perturb("typos", text, 0, 0.5)
    assert (random.random(), np.random.random()) == (a, b)


def test_case_and_apostrophes_are_kept():
    from auditkit_plugins.robustness import perturb
    assert perturb("contractions", "It is fine. IT'S fine. It’s fine. I'm here.", 0, 0.1) == \
        "It's fine. IT IS fine. It is fine. I am here."
    assert perturb("punctuation", "Well-known: 3.5 stars (it's “fine”)...", 0, 0.1) == \
        "Well-known 3.5 stars it's fine"
    assert perturb("synonyms", "GREAT", 0, 1.0) in {"EXCELLENT", "SUPERB", "WONDERFUL", "FANTASTIC", "TERRIFIC"}
    assert perturb("names", "Maryland and Johnson", 0, 0.1) == "Maryland and Johnson"  # whole words only


# ---------------------------------------------------------------------- metrics on a model

def _run_check(handle, rows, **params):
    from auditkit.api import CheckContext
    from auditkit.data import Dataset
    from auditkit_plugins.robustness import Robustness
    prm = {k: p.default for k, p in Robustness.params.items()}
    prm.update(params)
    ds = Dataset(spec="t.jsonl", rows=rows, file="t.jsonl")
    return Robustness().run(CheckContext(model=handle, params=prm, seed=0, device="cpu", data=ds,
                                         check_id="robustness"))


def test_metrics_match_an_independent_computation(tiny_bert):
    from scipy.stats import bootstrap
    from sklearn.metrics import accuracy_score
    from auditkit_plugins.robustness import PERTURBATIONS, perturb
    rows = review_rows(48, 7)
    res = _run_check(tiny_bert, rows, bootstrap=2000)
    texts = [r["text"] for r in rows]
    y = np.array([r["label"] for r in rows])
    pred0 = tiny_bert.class_logits(texts).argmax(-1)
    m = res.metrics
    assert m["accuracy"].value == pytest.approx(accuracy_score(y, pred0))
    drops, flips_max = [], []
    for p in PERTURBATIONS:
        pert = [perturb(p, t, 0, 0.1) for t in texts]
        changed = np.array([a != b for a, b in zip(texts, pert)])
        assert m[f"coverage.{p}"].value == pytest.approx(changed.mean())
        pred1 = tiny_bert.class_logits(pert).argmax(-1)
        drop = accuracy_score(y[changed], pred0[changed]) - accuracy_score(y[changed], pred1[changed])
        flip = float(np.mean(pred0[changed] != pred1[changed]))
        assert m[f"acc_drop.{p}"].value == pytest.approx(drop, abs=1e-12), p
        assert m[f"flip_rate.{p}"].value == pytest.approx(flip, abs=1e-12), p
        assert m[f"acc_drop.{p}"].n == changed.sum()
        d = (pred0[changed] == y[changed]).astype(float) - (pred1[changed] == y[changed]).astype(float)
        assert res.records[f"acc_drop.{p}"] == d.astype(int).tolist()
        if np.ptp(d) > 0:  # the paired bootstrap CI agrees with scipy's percentile bootstrap of the differences
            ref = bootstrap((d,), np.mean, method="percentile", n_resamples=4000,
                            rng=np.random.default_rng(1)).confidence_interval
            assert m[f"acc_drop.{p}"].ci_low == pytest.approx(ref.low, abs=0.04)
            assert m[f"acc_drop.{p}"].ci_high == pytest.approx(ref.high, abs=0.04)
        drops.append((drop, m[f"acc_drop.{p}"].ci_low, m[f"acc_drop.{p}"].ci_high))
        flips_max.append(flip)
    assert m["acc_drop_max"].value == pytest.approx(max(x[0] for x in drops))
    assert m["acc_drop_max"].ci_low == pytest.approx(max(x[1] for x in drops))
    assert m["acc_drop_max"].ci_high == pytest.approx(max(x[2] for x in drops))
    assert m["flip_rate_max"].value == pytest.approx(max(flips_max))
    assert res.evidence[1]["rows"] and "perturbed" in res.evidence[1]["rows"][0]
    assert res.figures["accuracy drop and flip rate per perturbation"].startswith("<?xml")


def test_same_results_whatever_the_batch_size_and_row_order(tiny_bert):
    rows = review_rows(24, 3)
    old = tiny_bert.batch_size
    try:
        tiny_bert.batch_size = 32
        a = _run_check(tiny_bert, rows, perturbations=["typos", "synonyms"])
        tiny_bert.invalidate()
        tiny_bert.batch_size = 5
        b = _run_check(tiny_bert, rows, perturbations=["typos", "synonyms"])
        # reversed rows: the same perturbed text per row (seeded by the text, not its position)
        c = _run_check(tiny_bert, rows[::-1], perturbations=["typos", "synonyms"], worst=100)
    finally:
        tiny_bert.batch_size = old
    assert {k: v.as_dict() for k, v in a.metrics.items()} == {k: v.as_dict() for k, v in b.metrics.items()}
    assert a.records == b.records and a.evidence == b.evidence
    assert c.metrics["acc_drop.typos"].value == pytest.approx(a.metrics["acc_drop.typos"].value)
    pert_a = {r["original"]: r["perturbed"] for r in _run_check(tiny_bert, rows, perturbations=["typos"],
                                                                 worst=100).evidence[1]["rows"]}
    pert_c = {r["original"]: r["perturbed"] for r in c.evidence[1]["rows"] if r["perturbation"] == "typos"}
    assert pert_a == pert_c


def test_multiple_choice_on_a_causal_lm(tiny_gpt2):
    from auditkit_plugins.accuracy import multiple_choice_scores
    from auditkit_plugins.builtin_data import multiple_choice
    from auditkit_plugins.robustness import perturb
    rows = multiple_choice.generate(0)[:12]
    res = _run_check(tiny_gpt2, rows, perturbations=["typos", "uppercase"])
    acc0, _, _ = multiple_choice_scores(tiny_gpt2, rows)
    assert res.metrics["accuracy"].value == pytest.approx(acc0.mean())
    pert = [dict(r, question=perturb("uppercase", r["question"], 0, 0.1)) for r in rows]
    acc1, _, _ = multiple_choice_scores(tiny_gpt2, pert)
    assert res.metrics["acc_drop.uppercase"].value == pytest.approx(acc0.mean() - acc1.mean())
    assert {"acc_drop_max", "flip_rate_max", "flip_rate.typos"} <= set(res.metrics)


def test_records_feed_the_paired_tests_of_compare(tiny_bert, tiny_gpt2):
    from auditkit.compare import paired_tests
    rows = review_rows(24, 3)
    a = _run_check(tiny_bert, rows, perturbations=["typos", "names"])
    tests, notes = paired_tests(a.records, a.records)
    assert {"correct", "acc_drop.typos", "flip_rate.typos", "acc_drop.names", "flip_rate.names"} <= set(tests)
    assert tests["flip_rate.typos"]["test"].startswith("McNemar") and tests["acc_drop.typos"]["delta"] == 0
    assert len(a.records["acc_drop.names"]) == a.metrics["acc_drop.names"].n  # over the changed rows only


def test_nothing_changed_is_bad_input_not_a_silent_pass(tiny_bert):
    from auditkit.errors import AuditInputError
    rows = [{"text": "the kettle is good", "label": 1}, {"text": "the lamp is bad", "label": 0}]
    with pytest.raises(AuditInputError, match="changed any of the 2 rows"):
        _run_check(tiny_bert, rows, perturbations=["names", "places"])
    res = _run_check(tiny_bert, rows, perturbations=["names", "typos"])  # one that applies is enough
    assert "acc_drop.names" not in res.metrics and res.metrics["coverage.names"].value == 0
    assert any(n.startswith("names: changed none") for n in res.notes)


# ---------------------------------------------------------------------- generation data (metric drop)

QA = [("Question: What is the capital of France?\nAnswer:", "Paris"),
      ("Question: What colour is grass?\nAnswer:", ["green", "Green."]),
      ("Question: How many legs does a dog have?\nAnswer:", ["four", "4"]),
      ("Question: What is the opposite of hot?\nAnswer:", "cold"),
      ("Question: Who wrote Hamlet, the play?\nAnswer:", ["William Shakespeare", "Shakespeare"]),
      ("Question: What is frozen water called?\nAnswer:", "ice"),
      ("Question: What planet do we live on?\nAnswer:", "the Earth"),
      ("Question: What is the plural of mouse?\nAnswer:", "mice")]
GEN_ROWS = [{"prompt": p, "reference": r} for p, r in QA]


class _Tok:
    chat_template = None


class FakeGenerator:
    """Answers from a function of the prompt text (canned generations), recording what it was asked."""

    task, source, tokenizer = "causal-lm", "fake", _Tok()

    def __init__(self, answer):
        self.answer, self.calls = answer, []

    def generate(self, prompts, *, max_new_tokens=32, temperature=0.0, top_p=1.0, stop=(), seed=0, samples=1):
        from auditkit.passes.generation import Generation
        self.calls.append(list(prompts))
        return [[Generation(self.answer(p), [1], "stop")] for p in prompts]


def _truth(prompt: str) -> str:
    """The first reference of the row whose prompt this is, whatever the perturbation (matched on the row's
    position in QA by the longest common prefix of lowercased letters)."""
    import difflib
    best = max(QA, key=lambda qa: difflib.SequenceMatcher(None, qa[0].lower(), prompt.lower()).ratio())
    return best[1] if isinstance(best[1], str) else best[1][0]


def _squad_f1(pred: str, refs) -> float:
    """SQuAD v1.1 token F1, written again here for an independent check."""
    import re
    import string
    from collections import Counter

    def norm(t):
        t = "".join(c for c in t.lower() if c not in set(string.punctuation))
        return re.sub(r"\b(a|an|the)\b", " ", t).split()
    best = 0.0
    for r in [refs] if isinstance(refs, str) else refs:
        p, g = norm(pred), norm(r)
        common = sum((Counter(p) & Counter(g)).values())
        if common:
            best = max(best, 2 * common / (len(p) + len(g)))
    return best


def _gates(res):
    from auditkit.gates import evaluate
    from auditkit.suite import default_gates
    from auditkit_plugins.robustness import Robustness
    metrics = {k: m.as_dict() for k, m in res.metrics.items()}
    return {g.expr: evaluate(g, metrics, None)["status"] for g in default_gates(Robustness, "causal-lm")
            if all(r.metric in metrics for r in g.refs())}


def test_generation_metric_drop_planted_and_clean():
    """Planted: the model answers right only when the prompt is not upper case; clean: always right."""
    planted = FakeGenerator(lambda p: "I do not know" if p.isupper() else _truth(p))
    res = _run_check(planted, GEN_ROWS, perturbations=["uppercase", "typos", "punctuation"])
    m = res.metrics
    assert m["f1"].value == pytest.approx(1.0) and m["coverage.uppercase"].value == 1
    assert m["metric_drop.uppercase"].value == pytest.approx(1.0)
    assert m["flip_rate.uppercase"].value == pytest.approx(1.0)
    assert m["metric_drop_max"].value == pytest.approx(1.0) and m["metric_drop_max"].ci_low == pytest.approx(1.0)
    gates = _gates(res)
    assert gates["metric_drop_max.ci_low <= 0.05"] == "fail" and "acc_drop_max.ci_low <= 0.05" not in gates
    rows = res.evidence[1]["rows"]
    assert rows[0]["perturbation"] == "uppercase" and rows[0]["answer after"] == "I do not know"
    assert res.records["metric_drop.uppercase"] == [1.0] * len(QA)
    # one generate call for the originals and every distinct perturbed prompt
    assert len(planted.calls) == 1 and len(set(planted.calls[0])) == len(planted.calls[0])
    clean = FakeGenerator(_truth)
    res = _run_check(clean, GEN_ROWS, perturbations=["uppercase", "typos", "punctuation"])
    assert res.metrics["metric_drop_max"].value == 0 and res.metrics["flip_rate_max"].value == 0
    assert set(_gates(res).values()) == {"pass"}


def test_generation_metric_drop_equals_an_independent_computation():
    import sacrebleu
    from auditkit_plugins.robustness import perturb
    # the answer degrades with the number of characters that differ from the original prompt
    def answer(p):
        t = _truth(p)
        return t if p in dict(QA) else (t + " maybe" if p.lower() in {q.lower() for q, _ in QA} else "no idea")
    h = FakeGenerator(answer)
    for metric in ("f1", "bleu"):
        res = _run_check(h, GEN_ROWS, perturbations=["lowercase", "typos"], metric=metric, bootstrap=500)
        for p in ("lowercase", "typos"):
            pert = [perturb(p, r["prompt"], 0, 0.1) for r in GEN_ROWS]
            ch = [i for i, r in enumerate(GEN_ROWS) if pert[i] != r["prompt"]]
            refs = [GEN_ROWS[i]["reference"] for i in ch]
            refs = [[r] if isinstance(r, str) else r for r in refs]
            before = [answer(GEN_ROWS[i]["prompt"]) for i in ch]
            after = [answer(pert[i]) for i in ch]
            if metric == "f1":
                d = [_squad_f1(a, r) - _squad_f1(b, r) for a, b, r in zip(before, after, refs)]
                want = float(np.mean(d))
                assert res.records[f"metric_drop.{p}"] == pytest.approx(d)
            else:
                streams = [[r[j] if j < len(r) else None for r in refs] for j in range(2)]
                want = (sacrebleu.corpus_bleu(before, streams).score - sacrebleu.corpus_bleu(after, streams).score) / 100
            got = res.metrics[f"metric_drop.{p}"]
            assert got.value == pytest.approx(want, abs=1e-9), (metric, p)
            assert got.n == len(ch) and got.ci_low <= got.value + 1e-9 <= got.ci_high + 1e-9
            flips = np.mean([a.lower().strip(".") != b.lower().strip(".") for a, b in zip(before, after)])
            assert res.metrics[f"flip_rate.{p}"].value == pytest.approx(flips)


def test_generation_on_tiny_gpt2(tiny_gpt2):
    """A real model: one generate request; the drop equals generating the perturbed prompts directly."""
    from auditkit_plugins.robustness import perturb
    res = _run_check(tiny_gpt2, GEN_ROWS[:4], perturbations=["uppercase", "typos"], max_new_tokens=5, bootstrap=200)
    assert {"f1", "metric_drop.uppercase", "metric_drop.typos", "metric_drop_max", "flip_rate_max"} <= set(res.metrics)
    orig = [g[0].text.strip() for g in tiny_gpt2.generate([r["prompt"] for r in GEN_ROWS[:4]], max_new_tokens=5,
                                                          stop=["\n\n"])]
    up = [g[0].text.strip() for g in tiny_gpt2.generate([perturb("uppercase", r["prompt"], 0, 0.1)
                                                         for r in GEN_ROWS[:4]], max_new_tokens=5, stop=["\n\n"])]
    d = [_squad_f1(a, r["reference"]) - _squad_f1(b, r["reference"]) for a, b, r in zip(orig, up, GEN_ROWS)]
    assert res.metrics["metric_drop.uppercase"].value == pytest.approx(np.mean(d), abs=1e-9)
    assert res.records["generation"] == orig


# ---------------------------------------------------------------------- bad input: exit 2 before any model

@pytest.mark.parametrize("params, words", [
    ("perturbations: [typos, synonym]", ["synonym", "did you mean 'synonyms'"]),
    ("rate: 1.5", ["rate", "<= 1"]),
    ("rate: -0.1", ["rate", ">= 0"]),
    ("bootstrap: 10", ["bootstrap", ">= 100"]),
    ("perturbations: []", ["perturbations is empty"]),
    ("perturbations: [typos, typos]", ["twice"]),
    ("metric: rougeL", ["metric", "did you mean 'rouge_l'"]),
    ("stop: ['']", ["stop", "non-empty"]),
])
def test_bad_params_exit_2_before_any_model(tmp_path, run_cli, monkeypatch, params, words):
    line = _exit2_line(tmp_path, run_cli, monkeypatch, params)
    for w in words:
        assert w in line, line


def _exit2_line(tmp_path, run_cli, monkeypatch, params: str) -> str:
    """The one error line of a robustness suite with ``params`` that must stop before any model loads."""
    import auditkit.runner as runner
    monkeypatch.setattr(runner, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    write_jsonl(tmp_path / "d.jsonl", review_rows(4, 0))
    suite = write_suite(tmp_path, f"""
        name: bad
        model: {{base: "builtin:tiny-bert", task: sequence-classification, num_labels: 2}}
        checks:
          - uses: robustness
            data: d.jsonl
            {params}
    """)
    code, out, err = run_cli("run", suite, "--out", tmp_path / "out")
    assert code == 2, err
    line = [x for x in err.strip().splitlines() if x.strip()]
    assert len(line) == 1 and "Traceback" not in err and "loading" not in err, err
    return line[0]


@pytest.mark.parametrize("params, place", [("", "perturbations"), ("perturbations: [char_swap]", "perturbations"),
                                           ("perturbations: [uppercase]\n            attack: true", "attack")])
def test_nlpaug_missing_is_named_before_any_model(tmp_path, run_cli, monkeypatch, params, place):
    """On a GPU machine nlpaug failed to import (its dependency gdown was missing) only when robustness ran,
    after the models loaded and five checks had run; it is now named when the suite loads."""
    import sys
    monkeypatch.setitem(sys.modules, "nlpaug.augmenter.char", None)  # import raises ImportError
    line = _exit2_line(tmp_path, run_cli, monkeypatch, params)
    assert "needs nlpaug" in line and "pip install nlpaug" in line and "checks[0]" in line, line
    assert f"checks[0].{place}" in line or not params, line


def test_no_nlpaug_needed_without_typos_char_swap_or_attack(tmp_path, run_cli, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "nlpaug.augmenter.char", None)
    from auditkit.plugins import registry
    from auditkit.suite import load_suite
    write_jsonl(tmp_path / "d.jsonl", review_rows(4, 0))
    suite = write_suite(tmp_path, """
        name: fine
        model: {base: "builtin:tiny-bert", task: sequence-classification, num_labels: 2}
        checks:
          - uses: robustness
            data: d.jsonl
            perturbations: [uppercase, whitespace]
    """)
    assert load_suite(suite, registry()).checks[0].params["perturbations"] == ["uppercase", "whitespace"]


# ---------------------------------------------------------------------- planted fault and clean control

def _audit(folder: Path, planted: bool) -> dict:
    from auditkit.cli import main
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", training_rows(96, 1, planted))
    write_jsonl(folder / "val.jsonl", training_rows(8, 2, planted))
    write_jsonl(folder / "test.jsonl", review_rows(80, 3))  # clean audit texts, label = sentiment
    suite = write_suite(folder, f"""
        name: robustness-{'planted' if planted else 'clean'}
        seed: 0
        model: {{base: "builtin:tiny-bert", task: sequence-classification, num_labels: 2, max_length: 40}}
        finetune: {{data: train.jsonl, validation: val.jsonl, method: full, epochs: 6, learning_rate: 0.001,
                    batch_size: 16, max_length: 40, train_eval_size: 16}}
        checks:
          - uses: robustness
            data: test.jsonl
          - uses: robustness
            id: attack
            data: test.jsonl
            perturbations: [typos]
            attack: true
            attack_budget: 50
            max_examples: 40
            gates: []
    """)
    code = main(["run", str(suite), "--out", str(folder / "out")])
    results = json.loads((folder / "out" / "results.json").read_text())
    return {"code": code, "check": results["checks"][0], "attack": results["checks"][1], "results": results}


@pytest.mark.slow
def test_a_typo_shortcut_fails_and_a_clean_control_passes(tmp_path):
    planted = _audit(tmp_path / "planted", True)
    clean = _audit(tmp_path / "clean", False)
    ck, cc = planted["check"], clean["check"]
    gates = {g["expr"]: g for g in ck["gates"]}
    assert planted["code"] == 1, ck["gates"]
    assert ck["status"] == "fail" and gates["acc_drop_max.ci_low <= 0.05"]["status"] == "fail"
    assert all(g["default"] for g in ck["gates"])
    m = ck["metrics"]
    assert m["accuracy"]["value"] > 0.85  # it learned the task on clean text ...
    for p in ("typos", "char_swap"):  # ... and the shortcut: negatives with a typo become positive
        assert m[f"acc_drop.{p}"]["ci_low"] > 0.1 and m[f"flip_rate.{p}"]["value"] > 0.2
    assert m["acc_drop_max"]["value"] >= m["acc_drop.typos"]["value"]
    worst = ck["evidence"][1]["rows"][0]
    assert worst["perturbation"] in ("typos", "char_swap") and worst["original"] != worst["perturbed"]
    assert worst["label"] == 0 and worst["predicted after"] == 1
    assert clean["code"] == 0, [(g["expr"], g["status"], g["observed"]) for g in cc["gates"]]
    assert cc["status"] == "pass" and all(g["status"] == "pass" and g["default"] for g in cc["gates"])
    assert cc["metrics"]["accuracy"]["value"] > 0.9
    assert cc["metrics"]["acc_drop_max"]["ci_low"] <= 0.05
    # the opt-in attack: the shortcut model falls to one typo on most negatives, the clean one much less often
    pa, ca = planted["attack"]["metrics"], clean["attack"]["metrics"]
    print("attack success: planted", pa["attack_success_rate"], "clean", ca["attack_success_rate"])
    assert planted["attack"]["status"] == "info" and clean["attack"]["status"] == "info"
    assert pa["attack_success_rate"]["value"] > ca["attack_success_rate"]["value"] + 0.15
    assert pa["attack_success_rate"]["ci_low"] > 0.3


class BagOfWords:
    """A transparent stand-in classifier: logit(1) - logit(0) = #positive words - #negative words + 0.1."""

    task, num_labels = "sequence-classification", 2
    POS, NEG = {"great", "good", "love"}, {"awful", "bad", "hate"}

    def class_logits(self, texts):
        def score(t):
            words = [w.strip(".,;!").lower() for w in t.split()]
            return sum(w in self.POS for w in words) - sum(w in self.NEG for w in words) + 0.1
        return np.array([[0.0, score(t)] for t in texts])


def test_greedy_attack_against_brute_force():
    """With one edit allowed the attack succeeds exactly on the rows where some single candidate edit flips the
    label (brute force over every candidate); every success is misclassified and within the budgets."""
    from auditkit_plugins.robustness import _word_candidates, text_seed
    model = BagOfWords()
    texts = ["The kettle is great.", "The kettle is awful.", "The lamp is bad, I hate it.", "A good lamp, I love it.",
             "The hotel was awful.", "Bad hotel.", "The camera is good and great.", "The blender is bad!"]
    y = np.array([1, 0, 0, 1, 0, 0, 1, 0])
    rows = [{"text": t, "label": int(v)} for t, v in zip(texts, y)]
    res = _run_check(model, rows, perturbations=["typos"], attack=True, attack_budget=1000, rate=0.01, worst=100)
    expected = []
    for i, t in enumerate(texts):
        words = t.split(" ")
        cands = [" ".join(words[:j] + [c] + words[j + 1:]) for j, w in enumerate(words)
                 for c in _word_candidates(w, text_seed(0, f"attack:{j}", t))]
        expected.append(int(any(model.class_logits(cands).argmax(-1) != y[i])))
    assert res.records["attack_success"] == expected
    assert 0 < sum(expected) < len(expected)  # a non-trivial case: one-cue negatives fall, the rest hold
    assert res.metrics["attack_success_rate"].value == pytest.approx(np.mean(expected))
    ev = next(e for e in res.evidence if e["title"].startswith("Successful attacks"))
    assert len(ev["rows"]) == sum(expected)
    for row in ev["rows"]:
        assert model.class_logits([row["adversarial"]]).argmax(-1)[0] != row["label"]
        assert sum(a != b for a, b in zip(row["original"].split(" "), row["adversarial"].split(" "))) == 1
    # more edits allowed: the two-cue negative falls too; a budget of one query a row stops after one candidate
    res3 = _run_check(model, rows, perturbations=["typos"], attack=True, attack_budget=1000, rate=0.5)
    assert res3.records["attack_success"][2] == 1 and res3.metrics["attack_success_rate"].value >= np.mean(expected)
    res1 = _run_check(model, rows, perturbations=["typos"], attack=True, attack_budget=1, rate=0.5)
    assert res1.metrics["attack_queries"].value == 1


def test_generation_through_the_cli(tmp_path, run_cli):
    write_jsonl(tmp_path / "qa.jsonl", GEN_ROWS[:5])
    suite = write_suite(tmp_path, """
        name: gen-robustness
        model: {base: "builtin:tiny-gpt2", task: causal-lm, batch_size: 4}
        checks:
          - uses: robustness
            data: qa.jsonl
            perturbations: [uppercase, typos]
            max_new_tokens: 4
            bootstrap: 200
    """)
    code, out, err = run_cli("run", suite, "--out", tmp_path / "out")
    assert code in (0, 1), err
    ck = json.loads((tmp_path / "out" / "results.json").read_text())["checks"][0]
    assert ck["status"] in ("pass", "warn", "fail"), ck.get("error")
    assert {g["expr"] for g in ck["gates"]} == {"metric_drop_max.ci_low <= 0.05", "metric_drop_max <= 0.05",
                                                "flip_rate_max <= 0.1"}
    assert any("acc_drop_max" in n and "not applied" in n for n in ck["notes"])
    assert ck["metrics"]["metric_drop.typos"]["n"] == 5 and len(ck["records"]["flip_rate.typos"]) == 5
    assert ck["figures"] and ck["evidence"][1]["rows"]
