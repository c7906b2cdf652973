"""The ``data_quality`` check: each measure against an independent computation, planted faults through the
default gates, a model-free run that loads no model, and bad input as exit 2."""
from __future__ import annotations

import contextlib
import io
import itertools
import json
import random
import re
from collections import Counter

import numpy as np
import pytest

from auditkit.api import CheckContext
from auditkit.data import load_dataset
from auditkit_plugins import data_quality as dq
from tests.conftest import write_jsonl, write_suite

VOCAB = [f"w{i}" for i in range(400)]


def random_text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(n_words))


def edit(rng: random.Random, text: str, n_changes: int) -> str:
    words = text.split()
    for _ in range(n_changes):
        words[rng.randrange(len(words))] = rng.choice(VOCAB)
    return " ".join(words)


def ref_shingles(text: str, k: int = 5) -> set:
    """Word k-shingles computed independently of the module (lower-cased alphanumeric words as tuples)."""
    words = re.findall(r"[0-9a-z_]+", text.lower())
    if len(words) < k:
        return {tuple(words)}
    return {tuple(words[i:i + k]) for i in range(len(words) - k + 1)}


def run_check(registry, params: dict, data: str | None, seed: int = 0, artifacts: dict | None = None):
    def load(spec, columns=None):
        return load_dataset(spec, registry, columns=columns)
    full = {k: p.default for k, p in dq.DataQuality.params.items()}
    full.update(params)
    ctx = CheckContext(model=None, params=full, seed=seed, device="cpu", data=load(data) if data else None,
                       load_data=load, check_id="data_quality", artifacts=artifacts or {})
    return dq.DataQuality().run(ctx)


# ---------------------------------------------------------------------- near-duplicate leakage vs brute force

@pytest.fixture(scope="module")
def leak_case(tmp_path_factory):
    """Train and eval texts with planted copies, edits at Jaccard around the threshold, and strangers."""
    rng = random.Random(7)
    tmp = tmp_path_factory.mktemp("leak")
    train = [random_text(rng, rng.randint(20, 30)) for _ in range(60)]
    evals = []
    for i in range(60):
        src = train[i]
        kind = i % 6
        if kind == 0:
            evals.append(src.upper() + "!")  # exact after normalisation
        elif kind in (1, 2, 3, 4):
            evals.append(edit(rng, src, kind))  # 1-4 substitutions: Jaccard from ~0.45 to ~0.85
        else:
            evals.append(random_text(rng, 25))
    # duplicates within the training data: an exact copy and a one-word edit
    train += [train[3], edit(rng, train[4], 1)]
    write_jsonl(tmp / "train.jsonl", [{"text": t, "label": i % 2} for i, t in enumerate(train)])
    write_jsonl(tmp / "eval.jsonl", [{"text": t, "label": i % 2} for i, t in enumerate(evals)])
    return tmp, train, evals


def test_minhash_leakage_matches_brute_force(registry, leak_case):
    tmp, train, evals = leak_case
    res = run_check(registry, {"train": str(tmp / "train.jsonl"), "label_issues": False}, str(tmp / "eval.jsonl"))
    tsh = [ref_shingles(t) for t in train]
    sims = [max(len(a & b) / len(a | b) for a in tsh) for b in (ref_shingles(e) for e in evals)]
    truth = [1 if s >= 0.8 else 0 for s in sims]
    # the case exercises the threshold from both sides
    assert any(0.8 <= s < 0.95 for s in sims) and any(0.5 <= s < 0.8 for s in sims)
    assert res.records["leakage_rate.eval"] == truth
    assert res.metrics["leakage_rate"].value == pytest.approx(sum(truth) / len(truth))
    assert res.metrics["leaked_rows"].value == sum(truth)
    # exact: equal up to case and punctuation
    exact = [1 if any(re.findall(r"\w+", e.lower()) == t.split() for t in train) else 0 for e in evals]
    assert res.metrics["exact_leakage_rate"].value == pytest.approx(sum(exact) / len(exact))
    lo, hi = res.metrics["leakage_rate"].ci_low, res.metrics["leakage_rate"].ci_high
    from scipy.stats import beta
    k, n = sum(truth), len(truth)
    assert lo == pytest.approx(beta.ppf(0.025, k, n - k + 1)) and hi == pytest.approx(beta.ppf(0.975, k + 1, n - k))
    # every leaked row is in the evidence with the true Jaccard of its pair
    ev = next(e for e in res.evidence if e["title"].startswith("Leaked rows"))
    assert len(ev["rows"]) == min(sum(truth), 25)
    for row in ev["rows"]:
        j = int(row["eval_row"].split()[-1]) - 1
        i = int(row["train_row"].split()[-1]) - 1
        a, b = ref_shingles(train[i]), ref_shingles(evals[j])
        assert row["jaccard"] == pytest.approx(1.0 if row["match"] != "near" else len(a & b) / len(a | b), abs=1e-4)


def test_duplicates_within_split_match_brute_force(registry, leak_case):
    tmp, train, evals = leak_case
    res = run_check(registry, {"train": str(tmp / "train.jsonl"), "label_issues": False}, str(tmp / "eval.jsonl"))
    for name, texts in (("train", train), ("eval", evals)):
        sh = [ref_shingles(t) for t in texts]
        parent = list(range(len(texts)))

        def find(i):
            while parent[i] != i:
                i = parent[i]
            return i
        for i, j in itertools.combinations(range(len(texts)), 2):
            if len(sh[i] & sh[j]) / len(sh[i] | sh[j]) >= 0.8:
                parent[max(find(i), find(j))] = min(find(i), find(j))
        clusters = len({find(i) for i in range(len(texts))})
        assert res.metrics[f"duplicate_rate.{name}"].value == pytest.approx((len(texts) - clusters) / len(texts))
    assert res.metrics["duplicate_rate.train"].value > 0


def test_lsh_bands_reach_the_recall_at_the_threshold():
    for t, perm in ((0.8, 128), (0.5, 64), (0.95, 256)):
        b, r = dq.lsh_bands(t, perm)
        assert b * r <= perm and 1 - (1 - t ** r) ** b >= 0.99
        # one more row per band would miss the recall target
        assert 1 - (1 - t ** (r + 1)) ** (perm // (r + 1)) < 0.99


# ---------------------------------------------------------------------- 13-gram contamination (lm-eval)

def test_ngrams_match_a_hand_computation():
    assert dq.lm_eval_ngrams("The Quick, brown fox!  JUMPS", 2) == ["the quick", "quick brown", "brown fox",
                                                                     "fox jumps"]
    # punctuation is deleted, not turned into a space; only ASCII letters are lower-cased
    assert dq.lm_eval_ngrams("don't STOP-now Ärger", 2) == ["dont stopnow", "stopnow Ärger"]
    assert dq.lm_eval_ngrams("one two", 3) == []


def test_ngrams_match_lm_eval(capfd):
    with contextlib.redirect_stdout(io.StringIO()):
        janitor = pytest.importorskip("lm_eval.decontamination.janitor")
    capfd.readouterr()
    jan = janitor.Janitor(ngram_n=13)
    rng = random.Random(3)
    pieces = ["Hello", "WORLD", "it's", "a", "(test)", "e.g.", "naïve", "Ünïcode", "--", "x\ty", "\n", "42%"]
    for _ in range(50):
        text = " ".join(rng.choice(pieces) for _ in range(rng.randint(5, 40)))
        for n in (1, 3, 13):
            assert dq.lm_eval_ngrams(text, n) == list(janitor.word_ngrams(jan.normalize_string(text), n))


def test_contamination_rate(registry, tmp_path):
    rng = random.Random(1)
    base = [random_text(rng, 30) for _ in range(10)]
    evals = [
        "Intro words " + " ".join(base[0].split()[5:18]) + " and more",  # 13 shared words: contaminated
        " ".join(base[1].split()[:12]) + " zzz",  # 12 shared words only
        "short text",  # fewer than 13 words: never contaminated
        base[2].upper().replace(" ", " , "),  # case and punctuation do not matter
    ]
    write_jsonl(tmp_path / "train.jsonl", [{"text": t} for t in base])
    write_jsonl(tmp_path / "eval.jsonl", [{"text": t} for t in evals])
    res = run_check(registry, {"train": str(tmp_path / "train.jsonl")}, str(tmp_path / "eval.jsonl"))
    assert res.records["contamination_rate.eval"] == [1, 0, 0, 1]
    assert res.metrics["contamination_rate"].value == pytest.approx(0.5)
    assert any("fewer than 13 words" in n for n in res.notes)
    # brute force over the lm-eval definition
    grams = {g for t in base for g in dq.lm_eval_ngrams(t)}
    assert [int(any(g in grams for g in dq.lm_eval_ngrams(e))) for e in evals] == [1, 0, 0, 1]


# ---------------------------------------------------------------------- labels

def labelled_rows(rng: random.Random, n_per_class: int = 60) -> list[dict]:
    own = {0: [f"bad{i}" for i in range(30)], 1: [f"good{i}" for i in range(30)]}
    shared = [f"the{i}" for i in range(40)]
    rows = []
    for i in range(2 * n_per_class):
        y = i % 2
        words = [rng.choice(own[y]) if rng.random() < 0.6 else rng.choice(shared) for _ in range(12)]
        rows.append({"text": " ".join(words), "label": y})
    return rows


def test_cleanlab_finds_planted_label_flips(registry, tmp_path):
    rng = random.Random(0)
    rows = labelled_rows(rng)
    flipped = sorted(rng.sample(range(len(rows)), 6))
    for i in flipped:
        rows[i]["label"] = 1 - rows[i]["label"]
    write_jsonl(tmp_path / "train.jsonl", rows)
    res = run_check(registry, {"train": str(tmp_path / "train.jsonl")}, None)
    found = [i for i, f in enumerate(res.records["label_issue_rate.train"]) if f]
    # confident learning from TF-IDF probabilities: most flips found, few correct rows flagged
    assert len(set(flipped) & set(found)) >= 5 and len(set(found) - set(flipped)) <= 2, (flipped, found)
    ev = next(e for e in res.evidence if e["title"].startswith("Label issues"))
    assert {int(r["row"].split()[-1]) - 1 for r in ev["rows"]} == set(found)
    assert all(r["suggested"] != r["label"] for r in ev["rows"] if int(r["row"].split()[-1]) - 1 in flipped)
    # no evaluation set: leakage is not measured (its default gates drop with a note)
    assert "leakage_rate" not in res.metrics and any("no evaluation set" in n for n in res.notes)


def test_clean_labels_have_few_issues(registry, tmp_path):
    write_jsonl(tmp_path / "train.jsonl", labelled_rows(random.Random(5)))
    write_jsonl(tmp_path / "eval.jsonl", labelled_rows(random.Random(6), 20))
    res = run_check(registry, {"train": str(tmp_path / "train.jsonl")}, str(tmp_path / "eval.jsonl"))
    assert res.metrics["label_issue_rate.train"].value <= 0.03
    assert res.metrics["label_issue_rate.eval"].n == 40


def test_conflicting_labels_and_balance(registry, tmp_path):
    train = [{"text": "Great product!", "label": 1}, {"text": "great   PRODUCT", "label": 0},
             {"text": "awful", "label": 0}, {"text": "fine", "label": 1}, {"text": "fine.", "label": 1},
             {"text": "meh", "label": 0}, {"text": "ok then", "label": 0}]
    evals = [{"text": "Awful!", "label": 1}, {"text": "new one", "label": 1}, {"text": "another", "label": 0}]
    write_jsonl(tmp_path / "train.jsonl", train)
    write_jsonl(tmp_path / "eval.jsonl", evals)
    res = run_check(registry, {"train": str(tmp_path / "train.jsonl"), "label_issues": False},
                    str(tmp_path / "eval.jsonl"))
    # brute force: group by lower-cased words
    groups: dict = {}
    for r in train + evals:
        groups.setdefault(" ".join(re.findall(r"\w+", r["text"].lower())), set()).add(r["label"])
    bad = {k for k, v in groups.items() if len(v) > 1}
    assert res.metrics["conflicting_labels"].value == len(bad) == 2
    rows_in_conflict = sum(" ".join(re.findall(r"\w+", r["text"].lower())) in bad for r in train + evals)
    assert res.metrics["conflicting_label_rate"].value == pytest.approx(rows_in_conflict / 10)
    ev = next(e for e in res.evidence if e["title"].startswith("Conflicting labels"))
    assert len(ev["rows"]) == 2 and "eval row 1: 1" in ev["rows"][1]["labels"]
    counts = Counter(r["label"] for r in train)
    assert res.metrics["class_imbalance.train"].value == pytest.approx(max(counts.values()) / min(counts.values()))
    assert res.metrics["label_share.train.0"].value == pytest.approx(counts[0] / len(train))
    lengths = [len(r["text"].split()) for r in train]
    assert res.metrics["length_mean.train"].value == pytest.approx(np.mean(lengths))
    assert res.metrics["length_p95.train"].value == pytest.approx(np.percentile(lengths, 95))
    assert set(res.figures) == {"class balance", "text length"} and all("<svg" in f for f in res.figures.values())


def test_digit_string_labels_are_the_integer_classes(registry, tmp_path):
    """Labels written "0" / "1" (and 1.0) are the classes 0 / 1, as Dataset.require_labels reads them: a mix of
    "1" and 1 is one class for TF-IDF label issues, conflicts and balance, not two."""
    rng = random.Random(0)
    rows = labelled_rows(rng)
    for i in sorted(rng.sample(range(len(rows)), 6)):
        rows[i]["label"] = 1 - rows[i]["label"]
    write_jsonl(tmp_path / "ints.jsonl", rows)
    mixed = [dict(r, label=[r["label"], str(r["label"]), float(r["label"])][i % 3]) for i, r in enumerate(rows)]
    write_jsonl(tmp_path / "mixed.jsonl", mixed)
    # the eval row repeats train row 1 (label "y") with the label as the integer y: the same label, no conflict
    write_jsonl(tmp_path / "eval.jsonl", [{"text": rows[1]["text"], "label": rows[1]["label"]}])
    ref = run_check(registry, {"train": str(tmp_path / "ints.jsonl")}, None)
    res = run_check(registry, {"train": str(tmp_path / "mixed.jsonl")}, str(tmp_path / "eval.jsonl"))
    assert res.records["label_issue_rate.train"] == ref.records["label_issue_rate.train"]
    assert sum(ref.records["label_issue_rate.train"]) >= 4  # the planted flips are there to be found
    ev = next(e for e in res.evidence if e["title"].startswith("Label issues"))
    assert {r["suggested"] for r in ev["rows"]} <= {0, 1} and {r["label"] for r in ev["rows"]} <= {0, 1}
    assert res.metrics["conflicting_labels"].value == 0
    counts = Counter(r["label"] for r in rows)
    assert {m for m in res.metrics if m.startswith("label_share.train.")} == {"label_share.train.0",
                                                                               "label_share.train.1"}
    assert res.metrics["label_share.train.1"].value == pytest.approx(counts[1] / len(rows))
    assert res.metrics["class_imbalance.train"].value == pytest.approx(max(counts.values()) / min(counts.values()))


def test_split_and_label_names_are_distinct_metric_parts(registry, tmp_path):
    """A split file named value / ci_low is not read as a gate field of leakage_rate; labels that sanitise
    to the same part keep distinct names (-2) instead of losing the second silently."""
    from auditkit.gates import parse_gate
    labels = ["a b", "a_b", "a-b", "a b", "a_b", "a-b", "a b", "a b"]
    write_jsonl(tmp_path / "train.jsonl", [{"text": f"training row number {i} here", "label": lab}
                                           for i, lab in enumerate(labels)])
    write_jsonl(tmp_path / "value.jsonl", [{"text": "training row number 0 here"}, {"text": "something else"}])
    write_jsonl(tmp_path / "ci_low.jsonl", [{"text": "nothing shared at all"}])
    (tmp_path / "sub").mkdir()
    write_jsonl(tmp_path / "sub" / "value.jsonl", [{"text": "training row number 1 here"}])
    res = run_check(registry, {"train": str(tmp_path / "train.jsonl"), "label_issues": False,
                               "eval": [str(tmp_path / "value.jsonl"), str(tmp_path / "ci_low.jsonl"),
                                        str(tmp_path / "sub" / "value.jsonl")]}, None)
    assert res.metrics["leakage_rate.value_"].value == pytest.approx(1 / 2)
    assert res.metrics["leakage_rate.ci_low_"].value == 0
    assert res.metrics["leakage_rate.value_-2"].value == 1
    assert not any(m.endswith((".value", ".ci_low", ".ci_high")) for m in res.metrics)
    gate = parse_gate("leakage_rate.value_ <= 0.01")
    assert (gate.left.metric, gate.left.field) == ("leakage_rate.value_", "value")
    # "a b" and "a_b" both sanitise to a_b: sorted by the label, "a b" keeps a_b and "a_b" becomes a_b-2
    counts = Counter(labels)
    shares = {m[len("label_share.train."):]: v.value for m, v in res.metrics.items()
              if m.startswith("label_share.train.")}
    assert shares == pytest.approx({"a_b": counts["a b"] / 8, "a_b-2": counts["a_b"] / 8, "a-b": counts["a-b"] / 8})
    spec = dq.DataQuality.metrics["label_share.{split}.{label}"]
    from auditkit.api import find_metric
    assert all(find_metric(dq.DataQuality.metrics, f"label_share.train.{k}") is spec for k in shares)


def test_finetune_data_is_the_default_train(registry, leak_case):
    tmp, train, evals = leak_case
    res = run_check(registry, {"label_issues": False}, str(tmp / "eval.jsonl"),
                    artifacts={"finetune_data": (str(tmp / "train.jsonl"), None)})
    assert res.metrics["rows.train"].value == len(train) and res.metrics["leakage_rate"].value > 0
    # records: one per evaluation row, their mean is the metric (compare's paired tests read them)
    rec = res.records["leakage_rate"]
    assert len(rec) == len(evals) and np.mean(rec) == pytest.approx(res.metrics["leakage_rate"].value)


# ---------------------------------------------------------------------- end to end, through default gates

def _split_files(tmp_path, leak: bool):
    rng = random.Random(11)
    train = [{"text": random_text(rng, 18), "label": i % 2} for i in range(80)]
    test = [{"text": random_text(rng, 18), "label": i % 2} for i in range(30)]
    if leak:  # the planted fault: the test set copied into the training data
        train = train + test
    write_jsonl(tmp_path / "train.jsonl", train)
    write_jsonl(tmp_path / "test.jsonl", test)


@pytest.fixture
def no_model(monkeypatch):
    import auditkit.runner

    def refuse(*a, **k):
        raise AssertionError("a model-free suite loaded a model")
    monkeypatch.setattr(auditkit.runner, "load_model", refuse)


@pytest.mark.parametrize("leak", [True, False])
def test_planted_leak_fails_and_clean_split_passes(run_cli, tmp_path, no_model, leak):
    _split_files(tmp_path, leak)
    suite = write_suite(tmp_path, """
        name: dq
        checks:
          - uses: data_quality
            train: train.jsonl
            data: test.jsonl
        """)
    code, out, err = run_cli("run", suite, "--out", tmp_path / "out", "--device", "cpu")
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    check = res["checks"][0]
    gates = {g["expr"]: g["status"] for g in check["gates"]}
    assert all(g["default"] for g in check["gates"])
    if leak:
        assert code == 1, (out, err)
        assert check["status"] == "fail" and gates["leakage_rate <= 0.01"] == "fail"
        assert check["metrics"]["leakage_rate"]["value"] == 1.0
        ev = check["evidence"][0]
        assert ev["title"].startswith("Leaked rows") and ev["rows"][0]["match"] == "exact"
    else:
        assert code == 0, (out, err)
        assert check["status"] == "pass", gates
        assert check["metrics"]["leakage_rate"]["value"] == 0.0
    assert res["model"] in (None, {}) or not res["model"].get("fingerprint")


# ---------------------------------------------------------------------- bad input: exit 2, one line

def _exit2(run_cli, tmp_path, body: str, *expect: str):
    suite = write_suite(tmp_path, body)
    code, out, err = run_cli("run", suite, "--out", tmp_path / "out", "--device", "cpu")
    assert code == 2, (code, out, err)
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("auditkit: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for e in expect:
        assert re.search(e, lines[0]), (e, lines[0])
    return lines[0]


def test_no_training_data_is_exit_2(run_cli, tmp_path, no_model):
    write_jsonl(tmp_path / "test.jsonl", [{"text": "a b c", "label": 0}])
    _exit2(run_cli, tmp_path, """
        name: dq
        checks:
          - uses: data_quality
            data: test.jsonl
        """, "needs training data", "train:", "finetune:")


def test_missing_train_file_is_exit_2_at_its_line(run_cli, tmp_path, no_model):
    write_jsonl(tmp_path / "test.jsonl", [{"text": "a b c", "label": 0}])
    _exit2(run_cli, tmp_path, """
        name: dq
        checks:
          - uses: data_quality
            data: test.jsonl
            train: nowhere.jsonl
        """, r"line 5\b", "nowhere.jsonl", "does not exist")


def test_bad_train_row_is_exit_2(run_cli, tmp_path, no_model):
    (tmp_path / "train.jsonl").write_text('{"text": "ok", "label": 0}\n{"text": null, "label": 1}\n')
    write_jsonl(tmp_path / "test.jsonl", [{"text": "a b c", "label": 0}])
    _exit2(run_cli, tmp_path, """
        name: dq
        checks:
          - uses: data_quality
            data: test.jsonl
            train: train.jsonl
        """, "train.jsonl", "row 2", "null")


@pytest.mark.parametrize("param, value, expect", [
    ("jaccard", "0", "must be > 0"), ("jaccard", "1.5", "<= 1"), ("num_perm", "4", ">= 16"),
    ("cv_folds", "1", ">= 2"), ("label_model", "bert", "tfidf"), ("eval", "[nowhere.csv]", "does not exist"),
])
def test_bad_params_are_exit_2(run_cli, tmp_path, no_model, param, value, expect):
    write_jsonl(tmp_path / "test.jsonl", [{"text": "a b c", "label": 0}])
    _exit2(run_cli, tmp_path, f"""
        name: dq
        checks:
          - uses: data_quality
            data: test.jsonl
            train: test.jsonl
            {param}: {value}
        """, r"line 6\b", param, expect)


def test_label_model_without_a_model_is_exit_2(run_cli, tmp_path, no_model):
    write_jsonl(tmp_path / "test.jsonl", [{"text": f"text {i}", "label": i % 2} for i in range(8)])
    _exit2(run_cli, tmp_path, """
        name: dq
        checks:
          - uses: data_quality
            data: test.jsonl
            train: test.jsonl
            label_model: model
        """, "label_model", "sequence classifier")


def test_label_model_uses_the_models_probabilities(registry, tiny_bert, tmp_path):
    from scipy.special import softmax
    rows = labelled_rows(random.Random(2), 12)
    write_jsonl(tmp_path / "train.jsonl", rows)
    full = {k: p.default for k, p in dq.DataQuality.params.items()}
    full.update(train=str(tmp_path / "train.jsonl"), label_model="model")
    ctx = CheckContext(model=tiny_bert, params=full, seed=0, device="cpu", data=None, check_id="data_quality",
                       load_data=lambda s, c=None: load_dataset(s, registry, columns=c))
    res = dq.DataQuality().run(ctx)
    probs = softmax(np.asarray(tiny_bert.class_logits([r["text"] for r in rows]), dtype=float), axis=-1)
    from cleanlab.filter import find_label_issues
    expect = find_label_issues(np.array([r["label"] for r in rows]), probs, n_jobs=1)
    assert res.records["label_issue_rate.train"] == expect.astype(int).tolist()
    assert "audited model" in next(e for e in res.evidence if e["title"].startswith("Label issues"))["title"]


def test_label_model_reads_digit_string_labels(registry, tiny_bert, tmp_path):
    """label_model: model with labels written "0" / "1": the model's classes 0 / 1 (it crashed with exit 3)."""
    from cleanlab.filter import find_label_issues
    from scipy.special import softmax
    rows = labelled_rows(random.Random(2), 12)
    write_jsonl(tmp_path / "train.jsonl", [dict(r, label=str(r["label"])) for r in rows])
    full = {k: p.default for k, p in dq.DataQuality.params.items()}
    full.update(train=str(tmp_path / "train.jsonl"), label_model="model")
    ctx = CheckContext(model=tiny_bert, params=full, seed=0, device="cpu", data=None, check_id="data_quality",
                       load_data=lambda s, c=None: load_dataset(s, registry, columns=c))
    res = dq.DataQuality().run(ctx)
    probs = softmax(np.asarray(tiny_bert.class_logits([r["text"] for r in rows]), dtype=float), axis=-1)
    expect = find_label_issues(np.array([r["label"] for r in rows]), probs, n_jobs=1)
    assert res.records["label_issue_rate.train"] == expect.astype(int).tolist()


@pytest.mark.slow
def test_finetune_data_leak_fails_through_the_runner(run_cli, tmp_path):
    """Without train:, the suite's fine-tuning data is the training data (the runner fine-tunes tiny-bert)."""
    _split_files(tmp_path, leak=True)
    suite = write_suite(tmp_path, """
        name: dq-ft
        model: {base: "builtin:tiny-bert", max_length: 32}
        finetune: {data: train.jsonl, validation: test.jsonl, epochs: 1}
        checks:
          - uses: data_quality
            data: test.jsonl
            label_issues: false
        """)
    code, out, err = run_cli("run", suite, "--out", tmp_path / "out", "--device", "cpu")
    check = json.loads((tmp_path / "out" / "results.json").read_text())["checks"][0]
    assert code == 1, (out, err)
    assert check["metrics"]["rows.train"]["value"] == 110 and check["metrics"]["leakage_rate"]["value"] == 1.0


# ---------------------------------------------------------------------- with the core's validate_suite hook

from auditkit.api import Check  # noqa: E402

needs_core_hook = pytest.mark.skipif(not hasattr(Check, "validate_suite"),
                                     reason="needs Check.validate_suite in the core (suite.py) and the runner's "
                                            "model-free path for fine-tune suites")


@needs_core_hook
def test_no_training_data_is_exit_2_before_a_model_loads(run_cli, tmp_path, no_model):
    write_jsonl(tmp_path / "test.jsonl", [{"text": "a b c", "label": 0}])
    _exit2(run_cli, tmp_path, """
        name: dq
        model: {base: "builtin:tiny-bert"}
        checks:
          - uses: accuracy
            data: test.jsonl
          - uses: data_quality
            data: test.jsonl
        """, r"line 6\b", "needs training data")


@needs_core_hook
def test_a_finetune_suite_of_data_checks_trains_nothing(run_cli, tmp_path, no_model):
    _split_files(tmp_path, leak=True)
    suite = write_suite(tmp_path, """
        name: dq-ft
        model: {base: "builtin:tiny-bert", max_length: 32}
        finetune: {data: train.jsonl, epochs: 1}
        checks:
          - uses: data_quality
            data: test.jsonl
            label_issues: false
        """)
    code, out, err = run_cli("run", suite, "--out", tmp_path / "out", "--device", "cpu")
    check = json.loads((tmp_path / "out" / "results.json").read_text())["checks"][0]
    assert code == 1, (out, err)
    assert check["metrics"]["rows.train"]["value"] == 110 and check["metrics"]["leakage_rate"]["value"] == 1.0
