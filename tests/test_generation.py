"""The ``generation`` check (issue 11, item 1): generation-based accuracy.

- Each metric equals an independent computation: SQuAD EM/F1 on hand-worked examples (articles,
  punctuation, case, several references), ROUGE-L by rouge_score directly, BLEU and chrF by
  sacrebleu.corpus_bleu / corpus_chrf directly (and the sentence-level scores by sentence_bleu/chrf).
- The metrics load as local ``evaluate`` modules with the hub unreachable (offline variables set).
- Bootstrap CIs bracket the value; BLEU/chrF resampled from sufficient statistics equal a recomputation.
- Per-example records are there and feed ``compare``'s paired tests.
- Prompts: chat messages when the tokenizer has a template (few-shot as earlier turns), text otherwise.
- Bad input is exit 2 with one line: a missing reference column, a non-text reference, an unknown
  metric (did-you-mean), a classifier model.
- End to end on builtin:tiny-gpt2 with builtin:qa.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, write_jsonl, write_suite

MODULE = "auditkit_plugins.generation"


@pytest.fixture(autouse=True, scope="module")
def _registered():
    """Until auditkit/plugins.py lists the module in DEFAULT_PLUGINS, register it for these tests."""
    import auditkit.plugins as plugins
    old = plugins.DEFAULT_PLUGINS
    if MODULE not in old:
        plugins.DEFAULT_PLUGINS = tuple(old) + (MODULE,)
        plugins.registry(refresh=True)
    yield
    if plugins.DEFAULT_PLUGINS is not old:
        plugins.DEFAULT_PLUGINS = old
        plugins.registry(refresh=True)


# ---------------------------------------------------------------------- the metrics

def test_squad_exact_match_and_f1_by_hand():
    from auditkit_plugins import generation_metrics as gm
    preds = ["The Eiffel Tower!", "Paris, France", "a cat", "", "blue blue sky", "George Washington"]
    refs = [["Eiffel tower"], ["Paris"], ["the cat", "dog"], ["an"], ["the blue sky"], ["Washington", "G. Washington"]]
    r = gm.compute(["exact_match", "f1"], preds, refs)
    # 1: normalised "eiffel tower" both -> EM 1, F1 1
    # 2: "paris france" vs "paris": P = 1/2, R = 1 -> F1 2/3; EM 0
    # 3: "cat" vs "cat" (article dropped) -> EM 1
    # 4: "" vs "" (article only): EM 1 (equal strings) but F1 0 (no common token, SQuAD v1.1)
    # 5: "blue blue sky" vs "blue sky": common = 2 (bag), P = 2/3, R = 1 -> 0.8
    # 6: "george washington" vs "washington": P = 1/2, R = 1 -> 2/3; vs "g washington": P = 1/2, R = 1/2 -> 1/2
    assert r["exact_match"]["per_example"] == [1.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    assert r["f1"]["per_example"] == pytest.approx([1.0, 2 / 3, 1.0, 0.0, 0.8, 2 / 3])
    assert r["exact_match"]["value"] == pytest.approx(0.5)
    assert r["f1"]["value"] == pytest.approx(np.mean([1.0, 2 / 3, 1.0, 0.0, 0.8, 2 / 3]))


def test_rouge_l_equals_rouge_score():
    from rouge_score import rouge_scorer
    from auditkit_plugins import generation_metrics as gm
    preds = ["the cat sat on the mat", "a quick brown fox", "nothing in common", "Paris"]
    refs = [["the cat is on the mat"], ["the quick brown dog jumps", "a brown fox"], ["zzz"], ["Paris", "paris france"]]
    r = gm.compute(["rouge_l"], preds, refs)["rouge_l"]
    sc = rouge_scorer.RougeScorer(["rougeL"])
    want = [max(sc.score(t, p)["rougeL"].fmeasure for t in rs) for p, rs in zip(preds, refs)]
    assert r["per_example"] == pytest.approx(want)
    assert r["value"] == pytest.approx(np.mean(want))
    assert want[2] == 0.0 and 0 < want[1] < 1


def test_bleu_and_chrf_equal_sacrebleu_with_uneven_references():
    import sacrebleu
    from auditkit_plugins import generation_metrics as gm
    preds = ["the cat sat on the mat", "a dog barks at night", "hello there my friend", "it is raining today"]
    refs = [["the cat is on the mat", "a cat sat on the mat"], ["the dog barks at night"],
            ["hello my friend", "hi there friend", "hello there"], ["today it rains"]]
    streams = [[r[j] if j < len(r) else None for r in refs] for j in range(3)]
    r = gm.compute(["bleu", "chrf"], preds, refs)
    assert r["bleu"]["value"] == pytest.approx(sacrebleu.corpus_bleu(preds, streams).score)
    assert r["chrf"]["value"] == pytest.approx(sacrebleu.corpus_chrf(preds, streams).score)
    assert r["bleu"]["per_example"] == pytest.approx([sacrebleu.sentence_bleu(p, rs).score
                                                       for p, rs in zip(preds, refs)])
    assert r["chrf"]["per_example"] == pytest.approx([sacrebleu.sentence_chrf(p, rs).score
                                                       for p, rs in zip(preds, refs)])
    # the sufficient statistics sum back to the corpus score, also on a resample with repeats
    idx = [0, 0, 2, 3]
    for name, fn in (("bleu", sacrebleu.corpus_bleu), ("chrf", sacrebleu.corpus_chrf)):
        st = np.asarray(r[name]["stats"])
        sub = [[s[i] for i in idx] for s in streams]
        assert gm.corpus_from_stats(name, st[idx].sum(0)) == pytest.approx(fn([preds[i] for i in idx], sub).score)


def test_metrics_load_offline_as_local_evaluate_modules(tmp_path):
    """A fresh process with the hub unreachable (offline variables, no proxy) loads and computes them."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_EVALUATE_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               HF_MODULES_CACHE=str(tmp_path / "modules"), HTTPS_PROXY="http://127.0.0.1:9",
               HTTP_PROXY="http://127.0.0.1:9")
    code = ("from auditkit_plugins import generation_metrics as gm; import evaluate;"
            "r = gm.compute(gm.METRICS, ['Paris'], [['Paris']]);"
            "print({k: round(v['value'], 6) for k, v in r.items()});"
            "print(all(isinstance(gm.load(m), evaluate.Metric) for m in "
            "{'auditkit_squad', 'auditkit_rouge_l', 'auditkit_bleu', 'auditkit_chrf'}))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert eval(lines[0]) == {"exact_match": 1.0, "f1": 1.0, "rouge_l": 1.0, "bleu": 0.0, "chrf": 100.0}
    assert lines[1] == "True"


def test_builtin_qa_dataset():
    from auditkit.data import load_dataset
    from auditkit.errors import AuditInputError
    from auditkit.plugins import registry
    from auditkit_plugins.generation import validate_rows
    reg = registry()
    test, train, both = (load_dataset(s, reg) for s in ("builtin:qa", "builtin:qa#train", "builtin:qa#all"))
    assert (len(test), len(train), len(both)) == (56, 8, 64)
    assert not {r["prompt"] for r in test.rows} & {r["prompt"] for r in train.rows}
    for ds in (test, train):
        validate_rows(ds)
    assert load_dataset("builtin:qa#test", reg).rows == test.rows  # the default split is test
    again, other = load_dataset("builtin:qa", reg, seed=0), load_dataset("builtin:qa", reg, seed=1)
    assert again.rows == test.rows and other.rows != test.rows
    assert sorted(map(str, other.rows)) == sorted(map(str, test.rows))  # the seed only shuffles
    assert any(isinstance(r["reference"], list) for r in test.rows)
    with pytest.raises(AuditInputError, match="no split 'dev'"):
        load_dataset("builtin:qa#dev", reg)


# ---------------------------------------------------------------------- the check with canned generations

class _Tok:
    def __init__(self, template=None):
        self.chat_template = template


class FakeHandle:
    """A generative handle whose ``generate`` answers from a table (prompt text, or the last user turn)."""

    def __init__(self, answers: dict, task="causal-lm", template=None):
        self.answers, self.task, self.tokenizer, self.source = answers, task, _Tok(template), "fake"
        self.calls = []

    def generate(self, prompts, *, max_new_tokens=32, temperature=0.0, top_p=1.0, stop=(), seed=0, samples=1):
        from auditkit.passes.generation import Generation
        self.calls.append({"prompts": list(prompts), "max_new_tokens": max_new_tokens, "stop": list(stop),
                           "temperature": temperature, "seed": seed})
        out = []
        for p in prompts:
            key = p[-1]["content"] if isinstance(p, list) else p.split("\n\n")[-1]
            text = self.answers.get(key, "")
            out.append([Generation(" " + text + " ", list(range(len(text.split()))),
                                   "length" if text == "LONG" else "stop")])
        return out


ROWS = [
    {"prompt": "Q: capital of France?", "reference": "Paris"},
    {"prompt": "Q: two plus two?", "reference": ["four", "4"]},
    {"prompt": "Q: colour of grass?", "reference": "green"},
    {"prompt": "Q: largest ocean?", "reference": "the Pacific Ocean"},
    {"prompt": "Q: author of Hamlet?", "reference": ["William Shakespeare", "Shakespeare"]},
    {"prompt": "Q: opposite of hot?", "reference": "cold"},
]
ANSWERS = {"Q: capital of France?": "Paris.", "Q: two plus two?": "4", "Q: colour of grass?": "blue",
           "Q: largest ocean?": "Pacific", "Q: author of Hamlet?": "it was William Shakespeare",
           "Q: opposite of hot?": "LONG"}


def _run(handle, rows=ROWS, **params):
    from auditkit.api import CheckContext
    from auditkit.data import Dataset
    from auditkit_plugins.generation import GenerationAccuracy
    base = params.pop("_base", None)
    prm = {k: p.default for k, p in GenerationAccuracy.params.items()}
    prm.update(params)
    ds = Dataset(spec="g.jsonl", rows=[dict(r) for r in rows], file="g.jsonl")
    return GenerationAccuracy().run(CheckContext(model=handle, params=prm, seed=0, device="cpu", data=ds,
                                                 check_id="generation", base_dir=base))


def test_check_metrics_cis_and_records_on_canned_answers():
    import sacrebleu
    from rouge_score import rouge_scorer
    h = FakeHandle(ANSWERS)
    res = _run(h, max_new_tokens=7, stop=["\n"])
    assert h.calls[0]["max_new_tokens"] == 7 and h.calls[0]["stop"] == ["\n"] and h.calls[0]["temperature"] == 0
    preds = [ANSWERS[r["prompt"]] for r in ROWS]
    refs = [[r["reference"]] if isinstance(r["reference"], str) else r["reference"] for r in ROWS]
    m = res.metrics
    em = [1, 1, 0, 0, 0, 0]
    f1 = [1, 1, 0, 2 * (1 * 0.5) / 1.5, 2 * (2 / 4 * 1) / (2 / 4 + 1), 0]  # "pacific" vs "pacific ocean"
    assert res.records["exact_match"] == em
    assert res.records["f1"] == pytest.approx(f1)
    assert m["exact_match"].value == pytest.approx(np.mean(em)) and m["f1"].value == pytest.approx(np.mean(f1))
    sc = rouge_scorer.RougeScorer(["rougeL"])
    rl = [max(sc.score(t, p)["rougeL"].fmeasure for t in rs) for p, rs in zip(preds, refs)]
    assert m["rouge_l"].value == pytest.approx(np.mean(rl))
    streams = [[r[j] if j < len(r) else None for r in refs] for j in range(2)]
    assert m["bleu"].value == pytest.approx(sacrebleu.corpus_bleu(preds, streams).score)
    assert m["chrf"].value == pytest.approx(sacrebleu.corpus_chrf(preds, streams).score)
    assert res.records["sentence_chrf"] == pytest.approx([sacrebleu.sentence_chrf(p, rs).score
                                                          for p, rs in zip(preds, refs)])
    for name in ("exact_match", "f1", "rouge_l", "bleu", "chrf"):
        assert m[name].ci_low <= m[name].value + 1e-9 <= m[name].ci_high + 2e-9, name
        assert m[name].ci_low < m[name].ci_high and m[name].n == len(ROWS)
    assert m["truncated"].value == pytest.approx(1 / 6) and m["gen_tokens"].value == pytest.approx(
        np.mean([len(a.split()) for a in preds]))
    assert res.records["generation"] == preds and res.records["references"] == refs
    assert res.records["prompt"] == [r["prompt"] for r in ROWS]
    worst = res.evidence[0]["rows"]
    assert worst[0]["f1"] == 0 and worst[0]["generation"] == "blue" and worst[-1]["f1"] == 1


def test_bootstrap_ci_of_corpus_bleu_matches_a_recomputation():
    """The CI from summed statistics equals scipy's percentile bootstrap of sacrebleu.corpus_bleu itself."""
    import sacrebleu
    from scipy.stats import bootstrap
    rng = np.random.default_rng(3)
    words = "the a cat dog sat ran on under mat rug red blue big small".split()
    refs = [" ".join(rng.choice(words, 6)) for _ in range(30)]
    preds = [" ".join(w if rng.random() < 0.7 else rng.choice(words) for w in r.split()) for r in refs]
    from auditkit_plugins.generation import score
    s = score(["bleu"], preds, [[r] for r in refs], seed=5, n_resamples=300)["bleu"]

    def direct(idx):
        idx = idx.astype(int)
        return sacrebleu.corpus_bleu([preds[i] for i in idx], [[refs[i] for i in idx]]).score
    ref = bootstrap((np.arange(30),), direct, vectorized=False, n_resamples=300, method="percentile",
                    rng=np.random.default_rng(5)).confidence_interval
    assert s["ci"] == pytest.approx((ref.low, ref.high))
    assert s["ci"][0] <= s["value"] <= s["ci"][1]


def test_per_example_metric_cis_are_the_shared_mean_ci():
    """exact_match, f1 and rouge_l: ``auditkit.stats.mean_ci`` of the per-example scores (seed, resamples)."""
    from auditkit.stats import mean_ci
    from auditkit_plugins.generation import score
    preds = ["Paris", "4", "blue", "Pacific", "William Shakespeare", "hot", "green", "the cat"]
    refs = [["Paris"], ["four", "4"], ["green"], ["the Pacific Ocean"], ["Shakespeare"], ["cold"], ["green"],
            ["a cat"]]
    s = score(["exact_match", "f1", "rouge_l"], preds, refs, seed=7, n_resamples=250)
    for name in ("exact_match", "f1", "rouge_l"):
        assert s[name]["ci"] == mean_ci(s[name]["per_example"], 7, 250), name
        assert s[name]["ci"][0] < s[name]["ci"][1]
    same = score(["exact_match"], ["x", "y"], [["a"], ["b"]], seed=7, n_resamples=250)["exact_match"]
    assert same["ci"] == (0.0, 0.0)  # no answer right: a zero-width interval


def test_records_feed_the_paired_tests_of_compare():
    from auditkit.compare import paired_tests
    a = _run(FakeHandle(ANSWERS))
    b = _run(FakeHandle(dict(ANSWERS, **{"Q: colour of grass?": "green"})))
    tests, _ = paired_tests(a.records, b.records)
    assert {"exact_match", "f1", "rouge_l", "sentence_bleu", "sentence_chrf"} <= set(tests)
    assert tests["exact_match"]["test"].startswith("McNemar") and tests["exact_match"]["c"] == 1
    assert tests["f1"]["delta"] == pytest.approx(1 / 6)
    assert "generation" not in tests  # text records are kept for readers, not tested


def test_chat_template_and_few_shot_prompts(tmp_path):
    write_jsonl(tmp_path / "shots.jsonl", [{"prompt": "Q: capital of Italy?", "reference": ["Rome", "Roma"]},
                                           {"prompt": "Q: one plus one?", "reference": "two"},
                                           {"prompt": "Q: unused?", "reference": "x"}])
    chat = FakeHandle(ANSWERS, template="{{ messages }}")
    _run(chat, few_shot="shots.jsonl", n_shot=2, _base=str(tmp_path))
    p = chat.calls[0]["prompts"][0]
    assert p == [{"role": "user", "content": "Q: capital of Italy?"}, {"role": "assistant", "content": "Rome"},
                 {"role": "user", "content": "Q: one plus one?"}, {"role": "assistant", "content": "two"},
                 {"role": "user", "content": ROWS[0]["prompt"]}]
    _run(chat, chat_template=False)
    assert chat.calls[-1]["prompts"][0] == ROWS[0]["prompt"]
    plain = FakeHandle(ANSWERS)
    res = _run(plain, few_shot="shots.jsonl", n_shot=1, _base=str(tmp_path))
    assert plain.calls[0]["prompts"][0] == "Q: capital of Italy? Rome\n\n" + ROWS[0]["prompt"]
    assert res.metrics["exact_match"].value == pytest.approx(2 / 6)
    from auditkit.errors import AuditInputError
    with pytest.raises(AuditInputError, match="no chat template"):
        _run(plain, chat_template=True)


def test_classifier_is_refused():
    from auditkit.errors import AuditInputError
    with pytest.raises(AuditInputError, match="generation needs a causal-lm or seq2seq-lm model"):
        _run(FakeHandle(ANSWERS, task="sequence-classification"))


@pytest.mark.parametrize("rows, words", [
    ([{"prompt": "Q?", "answer": "x"}], ["missing column 'reference'", "row 1", "columns:"]),
    ([{"question": "Q?", "reference": "x"}], ["missing column 'prompt'", "row 1"]),
    ([{"prompt": "Q?", "reference": "x"}, {"prompt": "Q2?", "reference": 3}],
     ["row 2", "'reference' must be a non-empty string or a non-empty list of strings"]),
    ([{"prompt": "Q?", "reference": ["x", None]}], ["row 1", "reference"]),
    ([{"prompt": "", "reference": "x"}], ["row 1", "'prompt' must be non-empty text"]),
])
def test_bad_data_is_found_without_a_model(tmp_path, rows, words):
    from auditkit.data import load_dataset
    from auditkit.errors import AuditInputError
    from auditkit.plugins import registry
    from auditkit_plugins.generation import GenerationAccuracy
    write_jsonl(tmp_path / "d.jsonl", rows)
    ds = load_dataset(str(tmp_path / "d.jsonl"), registry())
    with pytest.raises(AuditInputError) as err:
        GenerationAccuracy.validate_data(ds, {})
    line = err.value.line()
    for w in words:
        assert w in line, line


# ---------------------------------------------------------------------- the CLI: exit 2, one line

def _suite(tmp_path, entry: str, task="causal-lm", base="builtin:tiny-gpt2"):
    return write_suite(tmp_path, f"""
        name: gen
        model: {{base: "{base}", task: {task}}}
        checks:
          - uses: generation
            data: d.jsonl
            {entry}
    """)


@pytest.mark.parametrize("rows, entry, task, words", [
    ([{"prompt": "Q?", "answer": "x"}], "max_new_tokens: 2", "causal-lm", ["d.jsonl", "reference", "row 1"]),
    ([{"prompt": "Q?", "reference": 7}], "max_new_tokens: 2", "causal-lm", ["d.jsonl", "row 1", "reference"]),
    ([{"prompt": "Q?", "reference": "x"}], "metrics: [f1, rougeL]", "causal-lm",
     ["rougeL", "did you mean 'rouge_l'"]),
    ([{"prompt": "Q?", "reference": "x"}], "metrics: []", "causal-lm", ["metrics is empty"]),
    ([{"prompt": "Q?", "reference": "x"}], "few_shot: nope.jsonl", "causal-lm", ["nope.jsonl", "does not exist"]),
    ([{"prompt": "Q?", "reference": "x"}], "n_shot: 2", "causal-lm", ["n_shot", "few_shot"]),
    ([{"prompt": "Q?", "reference": "x"}], "max_new_tokens: 0", "causal-lm", ["max_new_tokens", ">= 1"]),
    ([{"prompt": "Q?", "reference": "x"}], "chat_template: maybe", "causal-lm", ["chat_template", "bool"]),
    ([{"prompt": "Q?", "reference": "x"}], "max_new_tokens: 2", "sequence-classification",
     ["generation", "causal-lm", "seq2seq-lm"]),
])
def test_bad_input_exits_2_with_one_line(tmp_path, run_cli, rows, entry, task, words):
    write_jsonl(tmp_path / "d.jsonl", rows)
    base = "builtin:tiny-bert" if task == "sequence-classification" else "builtin:tiny-gpt2"
    code, out, err = run_cli("run", _suite(tmp_path, entry, task, base), "--out", tmp_path / "out")
    assert code == 2, err
    lines = [x for x in err.strip().splitlines() if x.strip() and not x.startswith(("loading", "  "))]
    assert "Traceback" not in err
    msg = [x for x in lines if any(w in x for w in words)]
    assert msg, err
    for w in words:
        assert w in msg[-1], msg[-1]


# ---------------------------------------------------------------------- end to end on a tiny random GPT-2

def test_end_to_end_on_tiny_gpt2(tmp_path, run_cli):
    suite = write_suite(tmp_path, """
        name: gen-e2e
        model: {base: "builtin:tiny-gpt2", task: causal-lm, batch_size: 4}
        checks:
          - uses: generation
            data: builtin:qa
            few_shot: "builtin:qa#train"
            n_shot: 2
            max_new_tokens: 6
            max_examples: 10
            bootstrap: 200
    """)
    code, out, err = run_cli("run", suite, "--out", tmp_path / "a")
    assert code in (0, 1), err
    res = json.loads((tmp_path / "a" / "results.json").read_text())
    ck = res["checks"][0]
    assert ck["status"] in ("pass", "warn"), ck.get("error")
    assert {"exact_match", "f1", "rouge_l", "bleu", "chrf", "gen_tokens", "truncated"} <= set(ck["metrics"])
    assert ck["metrics"]["f1"]["n"] == 10 and len(ck["records"]["generation"]) == 10
    assert all(isinstance(t, str) for t in ck["records"]["generation"])
    assert [g["expr"] for g in ck["gates"]] == ["f1 > 0"]  # no base model: the baseline gates are dropped
    assert any("no base model" in n for n in ck["notes"])
    # the same run again gives the same generations, and compare pairs them
    code2, _, err2 = run_cli("run", suite, "--out", tmp_path / "b")
    assert code2 == code, err2
    res_b = json.loads((tmp_path / "b" / "results.json").read_text())
    assert res_b["checks"][0]["records"] == ck["records"]
    code3, out3, err3 = run_cli("compare", tmp_path / "a" / "results.json", tmp_path / "b" / "results.json",
                                "--out", tmp_path / "cmp")
    assert code3 == 0, err3
    cmp = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert any(t["record"] == "f1" for t in cmp["tests"])
