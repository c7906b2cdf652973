"""The ``data_quality`` check: leakage, duplicates, conflicting labels, label issues and contamination.

It reads data only (``needs_model = False``): a suite of data checks loads no model and may omit
``model:``. The training data is ``train:`` (a data spec) or, by default, the suite's fine-tuning data
(``finetune.data``); the evaluation sets are the check's ``data:`` (named ``eval``) and every spec in
``eval:`` (named after its file or built-in split as a metric-name part, ``auditkit.api.metric_part``: a
file ``value.jsonl`` is ``value_``, a repeated name gets ``-2``). Without training data the run stops
with exit 2.

Definitions (DESIGN.md, "Data quality"):

- **Text of a row**: ``text``; else ``prompt`` + " " + ``completion``; else ``question``.
  **Normalised text** (the key of exact duplicates and conflicts): the words ``\\w+`` of the NFKC,
  case-folded text, joined by one space, so rows equal up to case, punctuation and whitespace match.
- **Near-duplicates**: MinHash (datasketch, ``num_perm`` permutations, seeded with the suite seed) of the
  set of word ``shingle``-grams (5 by default; a text with fewer words is one shingle), candidates from
  MinHash LSH, each candidate pair verified by its true Jaccard similarity ``|A & B| / |A | B|`` of the
  shingle sets: a pair is a near-duplicate when that is ``>= jaccard`` (0.8 unless set). The LSH bands
  ``(b, r)`` are chosen so that a pair at exactly the threshold is a candidate with probability
  ``1 - (1 - t^r)^b >= 0.99`` (datasketch's own default optimum gives only ~0.4 at the threshold); the
  verification removes every false positive, so the reported pairs are exact and the recall is >= 0.99
  per pair at the threshold and higher above it.
- ``leakage_rate``: share of evaluation rows (all evaluation sets pooled) with an exact or near duplicate
  in the training data; ``leakage_rate.{split}`` per set; ``exact_leakage_rate`` counts exact ones only.
- ``duplicate_rate.{split}``: share of a split's rows that are redundant copies, i.e. (rows - clusters) /
  rows where clusters are the connected components of the exact/near-duplicate pairs inside the split
  (what deduplication would remove).
- ``conflicting_labels``: number of normalised texts that carry more than one label across all labelled
  rows (training and evaluation sets together); ``conflicting_label_rate`` = share of labelled rows in
  such a group.
- **Label issues** by confident learning (Northcutt, Jiang & Chuang 2021, JAIR 70) with cleanlab's
  ``find_label_issues`` (``filter_by='prune_by_noise_rate'``) on out-of-sample class probabilities.
  ``label_model: tfidf`` (default, no language model needed): a TF-IDF (word 1-2 grams, sublinear tf)
  + logistic-regression pipeline from scikit-learn; training rows get out-of-fold probabilities from
  ``cross_val_predict(method="predict_proba")`` over ``cv_folds`` stratified folds shuffled with the
  suite seed; evaluation rows get the probabilities of the pipeline fitted on all training rows (they are
  out of sample by construction). ``label_model: model`` uses the audited classifier's own softmax
  probabilities instead (needs a loaded model; on the rows it was fine-tuned on they are in-sample, so
  confident learning finds fewer issues there). ``label_issue_rate`` = flagged / labelled rows (pooled),
  ``label_issue_rate.{split}`` per split.
- **Contamination** as lm-eval's decontamination defines it (lm_eval/decontamination/janitor.py:
  ``Janitor.normalize_string`` maps ASCII upper case to lower case and deletes ``string.punctuation``;
  ``word_ngrams`` splits on whitespace, ``str.split()``, and joins each run of ``n`` words with one space;
  decontaminate.py ``get_train_overlap``: a document is contaminated when any of its ``n``-grams occurs
  among the training set's ``n``-grams). ``n`` is ``ngram`` (13 as lm-eval). A row of fewer than ``n``
  words has no ``n``-gram and is never contaminated by this definition (a note says how many).
  ``contamination_rate`` = contaminated / evaluation rows (pooled), ``contamination_rate.{split}``.
- Class balance and length per split: ``class_imbalance.{split}`` = largest / smallest class count
  among the classes present, ``label_share.{split}.{label}`` (one ``metric_parts`` name per label across
  all splits, so labels that sanitise alike get ``-2``, ``-3``), ``length_mean.{split}`` and
  ``length_p95.{split}`` in whitespace words, ``rows.{split}``; a figure of each and an evidence table.

Confidence intervals of rates are exact (Clopper-Pearson) 95% binomial intervals.

Default gates. Every rate here is counted over the whole evaluation set, not estimated from a sample, so
the gates decide on the value itself (the CI is reported for readers who treat the set as a sample):

- ``leakage_rate <= 0.01`` (fail): a leaked row can be answered from memory, so leakage inflates an
  accuracy measured on that set by up to the leakage rate; above one point that is as large as the
  regression the accuracy check warns about. Any leak at all warns (``leakage_rate == 0``).
- ``conflicting_label_rate <= 0.01`` (fail) and ``conflicting_labels == 0`` (warn): in a conflict at
  least one label is wrong; a few among many rows happen in crowd-labelled data, more than 1% does not.
- ``contamination_rate <= 0.01`` (warn only): a shared 13-gram is weaker evidence than a duplicate
  (quotations and boilerplate share them), so it warns and the evidence shows the shared 13-gram.
Label issues are reported without a default gate: a TF-IDF model flags hard-but-correct rows too.
"""
from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from auditkit.api import Check, CheckContext, CheckResult, MetricSpec, Param, metric_part, metric_parts
from auditkit.errors import AuditInputError
from auditkit.hookspecs import hookimpl

#: the metrics reports show first
HEADLINE = ("leakage_rate", "conflicting_label_rate", "contamination_rate", "label_issue_rate", "conflicting_labels",
            "exact_leakage_rate", "leaked_rows")
#: LSH candidate probability wanted for a pair at exactly the Jaccard threshold
LSH_RECALL = 0.99
_WORD = re.compile(r"\w+")
#: lm-eval's Janitor.translation_table: ASCII upper case -> lower case, string.punctuation deleted
_LM_EVAL_TABLE = str.maketrans(string.ascii_lowercase + string.ascii_uppercase, string.ascii_lowercase * 2,
                               string.punctuation)


# ---------------------------------------------------------------------- definitions (tested directly)

def normalise(text: str) -> str:
    """The key of exact duplicates and conflicts: ``\\w+`` words of the NFKC case-folded text, one space apart."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    words = _WORD.findall(folded)
    return " ".join(words) if words else " ".join(folded.split())


def shingles(text: str, k: int = 5) -> set[str]:
    """The set of word ``k``-shingles of the normalised text (the whole text when it has fewer than k words)."""
    words = normalise(text).split(" ")
    if len(words) < k:
        return {" ".join(words)}
    return {" ".join(words[i:i + k]) for i in range(len(words) - k + 1)}


def jaccard(a: set, b: set) -> float:
    """|A & B| / |A | B| (1.0 for two empty sets)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def lm_eval_normalize(text: str) -> str:
    """lm-eval's ``Janitor.normalize_string``: ASCII lower-casing and deletion of ``string.punctuation``."""
    return text.translate(_LM_EVAL_TABLE)


def lm_eval_ngrams(text: str, n: int = 13) -> list[str]:
    """lm-eval's ``word_ngrams(normalize_string(text), n)``: whitespace words, each run of n joined by a space."""
    words = lm_eval_normalize(text).split()
    return [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]


def lsh_bands(threshold: float, num_perm: int, recall: float = LSH_RECALL) -> tuple[int, int]:
    """LSH (bands, rows) with bands * rows <= num_perm: the most rows per band (fewest false candidates)
    such that a pair of Jaccard ``threshold`` is a candidate with probability ``>= recall``."""
    best = (num_perm, 1)
    for r in range(1, num_perm + 1):
        b = num_perm // r
        if b < 1:
            break
        if 1.0 - (1.0 - threshold ** r) ** b >= recall:
            best = (b, r)
    return best


def binomial_ci(k: int, n: int) -> tuple[float, float]:
    """Exact (Clopper-Pearson) 95% interval of a proportion k / n."""
    if n <= 0:
        return float("nan"), float("nan")
    from scipy.stats import binomtest
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=0.95, method="exact")
    return float(ci.low), float(ci.high)


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


class NearDuplicates:
    """MinHash LSH over word shingles, each candidate verified by its true Jaccard similarity."""

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, k: int = 5, seed: int = 0):
        self.threshold, self.num_perm, self.k, self.seed = threshold, num_perm, k, seed
        self.bands = lsh_bands(threshold, num_perm)

    def sketch(self, texts: list[str]) -> tuple[list[set], list]:
        from datasketch import MinHash
        sets = [shingles(t, self.k) for t in texts]
        hashes = MinHash.bulk([[s.encode("utf-8") for s in sorted(x)] for x in sets], num_perm=self.num_perm,
                              seed=self.seed)
        return sets, hashes

    def _index(self, hashes) -> "object":
        from datasketch import MinHashLSH
        lsh = MinHashLSH(num_perm=self.num_perm, params=self.bands)
        with lsh.insertion_session() as session:
            for i, h in enumerate(hashes):
                session.insert(i, h, check_duplication=False)
        return lsh

    def across(self, a: tuple[list[set], list], b: tuple[list[set], list]) -> dict[int, tuple[int, float]]:
        """For each row j of ``b``: its most similar row i of ``a`` at Jaccard >= threshold, as {j: (i, J)}."""
        lsh = self._index(a[1])
        out = {}
        for j, (s, h) in enumerate(zip(*b)):
            best = None
            for i in sorted(lsh.query(h)):
                sim = jaccard(a[0][i], s)
                if sim >= self.threshold and (best is None or sim > best[1]):
                    best = (i, sim)
            if best is not None:
                out[j] = best
        return out

    def within(self, a: tuple[list[set], list]) -> list[tuple[int, int, float]]:
        """Every pair (i, j), i < j, of rows of ``a`` at Jaccard >= threshold."""
        lsh = self._index(a[1])
        pairs = []
        for j, (s, h) in enumerate(zip(*a)):
            for i in sorted(lsh.query(h)):
                if i < j:
                    sim = jaccard(a[0][i], s)
                    if sim >= self.threshold:
                        pairs.append((i, j, sim))
        return pairs


# ---------------------------------------------------------------------- data of one split

@dataclass
class Split:
    name: str
    spec: str
    ds: object  # auditkit.data.Dataset
    texts: list[str]
    labels: list | None
    keys: list[str] = field(default_factory=list)
    sketch: tuple | None = None

    def row(self, i: int) -> str:
        return self.ds.place(i)


def _texts(ds) -> list[str]:
    if ds.has("text"):
        ds.require("text")
        return [r["text"] for r in ds.rows]
    if ds.has("prompt", "completion"):
        ds.require("prompt", "completion", fmt="prompt-completion")
        return [f"{r['prompt']} {r['completion']}" for r in ds.rows]
    if ds.has("question"):
        ds.require("question")
        return [r["question"] for r in ds.rows]
    ds.require("text")  # raises: missing column 'text', naming the row and the columns present
    return []


def _class_label(v):
    """A label read as ``Dataset.require_labels`` reads it: a digit string ("1", " -2") or an integral
    float (1.0) is that integer, so "1" and 1 are one class everywhere (conflicts, TF-IDF, the model)."""
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        try:
            v = int(v)
        except ValueError:  # a Unicode digit int() does not read ("²"): stays a class name
            pass
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return v


def _labels(ds) -> list | None:
    """Class labels (``label`` of rows without ``choices``), or None for unlabelled data."""
    if not ds.has("label") or ds.has("choices"):
        return None
    ds.require("label")
    out = []
    for i, r in enumerate(ds.rows):
        v = _class_label(r["label"])
        if not isinstance(v, (int, str)) or isinstance(v, bool):
            raise ds.error(f"label must be an integer or a string class name, got {v!r}", i, "label")
        out.append(v)
    return out


def _split_name(spec: str, used: set) -> str:
    """The split's metric-name part (``auditkit.api.metric_part``: ``value.jsonl`` gives ``value_``, never a
    gate field), made distinct from the names in ``used`` with ``-2``, ``-3``, ...; added to ``used``."""
    if spec.startswith("builtin:"):
        base = spec[len("builtin:"):].replace("#", "-")
    else:
        base = Path(spec).stem
    base = metric_part(base) if re.search(r"[A-Za-z0-9-]", base) else "eval"
    name, k = base, 2
    while name in used:
        name, k = f"{base}-{k}", k + 1
    used.add(name)
    return name


def _add_rate(res: CheckResult, name: str, flags: list[int], record: bool = True) -> tuple[int, int]:
    """Metric ``name`` = share of the 0/1 ``flags`` that are 1, with its Clopper-Pearson CI (lower is
    better), and ``flags`` as its per-row records unless ``record`` is False; returns (k, n)."""
    k, n = int(sum(flags)), len(flags)
    res.add(name, k / n, binomial_ci(k, n), n, False)
    if record:
        res.records[name] = flags
    return k, n


def _short(text: str, n: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


# ---------------------------------------------------------------------- the check

class DataQuality(Check):
    name = "data_quality"
    description = ("Data quality without a model: train-to-test leakage (exact and MinHash near-duplicates), "
                   "duplicates within a split, conflicting labels, label issues by confident learning "
                   "(cleanlab), 13-gram contamination as lm-eval defines it, class balance and length.")
    needs_model = False

    @classmethod
    def needs_for(cls, params: dict, task: str) -> frozenset[str]:
        """Only ``label_model: model`` asks the model for anything: its class probabilities."""
        return frozenset({"logits"}) if params.get("label_model") == "model" else frozenset()
    needs_data = False
    params = {
        "train": Param("str", "", "the training data (builtin:NAME#split or a file); default: finetune.data"),
        "train_columns": Param("dict", {}, "columns: mapping for the train: data (e.g. {text: review})"),
        "eval": Param("list", [], "more evaluation sets (data specs) besides the check's data:"),
        "jaccard": Param("float", 0.8, "near-duplicate threshold on the Jaccard similarity of word shingles",
                         gt=0.0, le=1.0),
        "num_perm": Param("int", 128, "MinHash permutations", ge=16, le=1024),
        "shingle": Param("int", 5, "words per shingle for near-duplicates", ge=1, le=50),
        "ngram": Param("int", 13, "n of the contamination n-grams (13 as lm-eval)", ge=1, le=100),
        "label_issues": Param("bool", True, "look for label issues by confident learning (cleanlab)"),
        "label_model": Param("str", "tfidf", "class probabilities for confident learning: tfidf (out-of-fold "
                             "TF-IDF + logistic regression) or model (the audited classifier)",
                             choices=("tfidf", "model")),
        "cv_folds": Param("int", 5, "cross-validation folds for the out-of-fold probabilities", ge=2, le=50),
        "max_evidence": Param("int", 25, "rows shown per evidence table", ge=1, le=10000),
    }
    metrics = {
        "leakage_rate": MetricSpec("share of evaluation rows with an exact or near duplicate in the training "
                                   "data (all evaluation sets)", False),
        "leakage_rate.{split}": MetricSpec("leakage rate of one evaluation set", False),
        "exact_leakage_rate": MetricSpec("share of evaluation rows whose normalised text is in the training data",
                                         False),
        "leaked_rows": MetricSpec("number of evaluation rows with a duplicate in the training data", False),
        "contamination_rate": MetricSpec("share of evaluation rows sharing a 13-gram with the training data "
                                         "(lm-eval decontamination)", False),
        "contamination_rate.{split}": MetricSpec("contamination rate of one evaluation set", False),
        "duplicate_rate.{split}": MetricSpec("share of a split's rows that are redundant exact/near copies", False),
        "conflicting_labels": MetricSpec("normalised texts that carry more than one label", False),
        "conflicting_label_rate": MetricSpec("share of labelled rows whose text carries another label elsewhere",
                                             False),
        "label_issue_rate": MetricSpec("share of labelled rows flagged by confident learning", False),
        "label_issue_rate.{split}": MetricSpec("label issue rate of one split", False),
        "class_imbalance.{split}": MetricSpec("largest / smallest class count of a split", False),
        "label_share.{split}.{label}": MetricSpec("share of a split's rows with that label", None),
        "length_mean.{split}": MetricSpec("mean text length in words", None),
        "length_p95.{split}": MetricSpec("95th percentile of the text length in words", None),
        "rows.{split}": MetricSpec("number of rows", None),
    }
    # see the module docstring: rates over the whole set, gated on their value
    default_gates = [
        "leakage_rate <= 0.01",
        {"when": "leakage_rate == 0", "severity": "warn"},
        "conflicting_label_rate <= 0.01",
        {"when": "conflicting_labels == 0", "severity": "warn"},
        {"when": "contamination_rate <= 0.01", "severity": "warn"},
    ]

    # ------------------------------------------------------------------ input checks
    @classmethod
    def validate_params(cls, params: dict, base_dir: str | None = None, prefix: str = "") -> None:
        """Every ``train:`` / ``eval:`` data spec must load (exit 2 before any model, placed at the parameter)."""
        from auditkit.data import load_dataset
        from auditkit.plugins import registry
        specs = []
        if params.get("train"):
            specs.append(("train", params["train"], params.get("train_columns") or None))
        for item in params.get("eval") or []:
            if not isinstance(item, str) or not item.strip():
                raise AuditInputError(f"each item of eval must be a data spec (builtin:NAME or a file), got {item!r}",
                                      place=f"{prefix}eval")
            specs.append(("eval", item, None))
        cols = params.get("train_columns") or {}
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in cols.items()):
            raise AuditInputError("train_columns must map our column names to yours, e.g. {text: review}",
                                  place=f"{prefix}train_columns")
        for param, spec, columns in specs:
            try:
                load_dataset(spec, registry(), columns=columns, base_dir=Path(base_dir) if base_dir else None,
                             file=None, place=param)
            except AuditInputError as exc:
                where = f"{exc.file}:{exc.place}: " if exc.file and exc.place not in (None, param) else \
                    (f"{exc.file}: " if exc.file else "")
                raise AuditInputError(f"{where}{exc.message}", place=f"{prefix}{param}", fix=exc.fix) from None

    @classmethod
    def validate_suite(cls, params: dict, *, has_finetune: bool, data: str | None = None, prefix: str = "") -> None:
        """What the entry needs from the rest of the suite: training data (``train:`` or a ``finetune:``)."""
        if not params.get("train") and not has_finetune:
            raise AuditInputError("data_quality needs training data to compare the evaluation sets with",
                                  place=f"{prefix}train",
                                  fix="set train: (builtin:NAME#split or a file) or add a finetune: section")

    # ------------------------------------------------------------------ run
    def run(self, ctx: CheckContext) -> CheckResult:
        p = ctx.params
        cid = ctx.check_id or self.name
        ft = (ctx.artifacts or {}).get("finetune_data")
        self.validate_suite(p, has_finetune=bool(ft), prefix=f"{cid}.")
        if p["train"]:
            train_spec, train_cols = p["train"], p.get("train_columns") or None
        else:
            train_spec, train_cols = ft
        loader = ctx.load_data
        used = {"train"}
        splits = [self._split("train", train_spec, loader(train_spec, train_cols))]
        if ctx.data is not None:
            used.add("eval")
            splits.append(self._split("eval", ctx.data.spec, ctx.data))
        for spec in p["eval"]:
            splits.append(self._split(_split_name(spec, used), spec, loader(spec)))
        train, evals = splits[0], splits[1:]
        res = CheckResult()
        nd = NearDuplicates(p["jaccard"], p["num_perm"], p["shingle"], ctx.seed)
        for s in splits:
            s.keys = [normalise(t) for t in s.texts]
            s.sketch = nd.sketch(s.texts)
        ctx.progress(0.2)
        if evals:
            self._leakage(res, nd, train, evals, p)
            self._contamination(res, train, evals, p)
        else:
            res.notes.append("no evaluation set (data: or eval:): leakage and contamination were not measured")
        ctx.progress(0.45)
        self._duplicates(res, nd, splits, p)
        self._conflicts(res, splits, p)
        ctx.progress(0.6)
        if p["label_issues"]:
            self._label_issues(res, ctx, splits, p)
        ctx.progress(0.9)
        self._balance(res, splits)
        res.notes.append(f"near-duplicates: MinHash LSH (num_perm={p['num_perm']}, bands x rows = "
                         f"{nd.bands[0]} x {nd.bands[1]}) over word {p['shingle']}-shingles, verified at Jaccard "
                         f">= {p['jaccard']:g}")
        # the headline metrics first (reports show the first few as key metrics)
        head = [m for m in HEADLINE if m in res.metrics]
        res.metrics = {**{m: res.metrics[m] for m in head},
                       **{k: v for k, v in res.metrics.items() if k not in head}}
        ctx.progress(1.0)
        return res

    def _split(self, name: str, spec: str, ds) -> Split:
        return Split(name=name, spec=spec, ds=ds, texts=_texts(ds), labels=_labels(ds))

    # ------------------------------------------------------------------ leakage
    def _leakage(self, res: CheckResult, nd: NearDuplicates, train: Split, evals: list[Split], p) -> None:
        by_key = {}
        for i, k in enumerate(train.keys):
            by_key.setdefault(k, i)
        rows, pooled, exact_pooled = [], [], []
        for ev in evals:
            near = nd.across(train.sketch, ev.sketch)
            flags = []
            for j, key in enumerate(ev.keys):
                if key in by_key:
                    i = by_key[key]
                    kind = "exact" if train.texts[i].strip() == ev.texts[j].strip() else "exact (normalised)"
                    hit = (i, 1.0, kind)
                elif j in near:
                    hit = (near[j][0], near[j][1], "near")
                else:
                    hit = None
                flags.append(0 if hit is None else 1)
                exact_pooled.append(1 if hit is not None and hit[2] != "near" else 0)
                if hit is not None:
                    i, sim, kind = hit
                    rows.append({"eval_set": ev.name, "eval_row": ev.row(j), "eval_text": _short(ev.texts[j]),
                                 "train_row": train.row(i), "train_text": _short(train.texts[i]), "match": kind,
                                 "jaccard": round(sim, 4)})
            _add_rate(res, f"leakage_rate.{ev.name}", flags)
            pooled += flags
        k, n = _add_rate(res, "leakage_rate", pooled)
        _add_rate(res, "exact_leakage_rate", exact_pooled, record=False)
        res.add("leaked_rows", k, None, n, False)
        shown = rows[: p["max_evidence"]]
        title = f"Leaked rows: evaluation rows with a duplicate in the training data ({k} of {n})"
        if len(rows) > len(shown):
            title += f", first {len(shown)} shown"
        res.evidence.append({"title": title, "rows": shown})

    # ------------------------------------------------------------------ contamination (lm-eval)
    def _contamination(self, res: CheckResult, train: Split, evals: list[Split], p) -> None:
        n_gram = p["ngram"]
        train_grams = set()
        for t in train.texts:
            train_grams.update(lm_eval_ngrams(t, n_gram))
        rows, pooled, short = [], [], 0
        for ev in evals:
            flags = []
            for j, t in enumerate(ev.texts):
                grams = lm_eval_ngrams(t, n_gram)
                if not grams:
                    short += 1
                hit = next((g for g in grams if g in train_grams), None)
                flags.append(0 if hit is None else 1)
                if hit is not None:
                    rows.append({"eval_set": ev.name, "eval_row": ev.row(j), "eval_text": _short(ev.texts[j]),
                                 "shared_ngram": hit})
            _add_rate(res, f"contamination_rate.{ev.name}", flags)
            pooled += flags
        k, n = _add_rate(res, "contamination_rate", pooled)
        if short:
            res.notes.append(f"contamination: {short} of {n} evaluation rows have fewer than {n_gram} words, so no "
                             f"{n_gram}-gram, and cannot be contaminated by lm-eval's definition (near-duplicate "
                             f"leakage still covers them)")
        shown = rows[: p["max_evidence"]]
        res.evidence.append({"title": f"Contaminated evaluation rows: a {n_gram}-gram shared with the training data "
                                      f"(lm-eval decontamination; {k} of {n})", "rows": shown})

    # ------------------------------------------------------------------ duplicates within a split
    def _duplicates(self, res: CheckResult, nd: NearDuplicates, splits: list[Split], p) -> None:
        rows = []
        for s in splits:
            n = len(s.texts)
            uf = _UnionFind(n)
            first = {}
            pair_of: dict[int, tuple[int, float, str]] = {}
            for j, key in enumerate(s.keys):
                if key in first:
                    uf.union(first[key], j)
                    pair_of.setdefault(j, (first[key], 1.0, "exact"))
                else:
                    first[key] = j
            for i, j, sim in nd.within(s.sketch):
                uf.union(i, j)
                pair_of.setdefault(j, (i, sim, "near"))
            roots = [uf.find(i) for i in range(n)]
            # a row is redundant when an earlier row is in its cluster (the cluster's first row is kept)
            redundant = [0 if roots[i] == i else 1 for i in range(n)]
            _add_rate(res, f"duplicate_rate.{s.name}", redundant)
            for j in range(n):
                if redundant[j]:
                    i, sim, kind = pair_of.get(j, (roots[j], jaccard(s.sketch[0][roots[j]], s.sketch[0][j]), "near"))
                    rows.append({"split": s.name, "row": s.row(j), "text": _short(s.texts[j]),
                                 "duplicate_of": s.row(i), "match": kind, "jaccard": round(sim, 4)})
        res.evidence.append({"title": "Duplicates within a split (exact or near; the first row of each cluster is "
                                      "kept)", "rows": rows[: p["max_evidence"]]})

    # ------------------------------------------------------------------ conflicting labels
    def _conflicts(self, res: CheckResult, splits: list[Split], p) -> None:
        labelled = [s for s in splits if s.labels is not None]
        if not labelled:
            res.notes.append("no split has labels: conflicting labels and label issues were not measured")
            return
        groups: dict[str, list[tuple[Split, int]]] = defaultdict(list)
        for s in labelled:
            for i, key in enumerate(s.keys):
                groups[key].append((s, i))
        bad = {key for key, members in groups.items() if len({str(m[0].labels[m[1]]) for m in members}) > 1}
        flags = [1 if key in bad else 0 for s in labelled for key in s.keys]
        res.add("conflicting_labels", len(bad), None, len(flags), False)
        k, _ = _add_rate(res, "conflicting_label_rate", flags)
        rows = []
        for key in sorted(bad, key=lambda k_: min((splits.index(s), i) for s, i in groups[k_])):
            members = groups[key]
            s0, i0 = members[0]
            rows.append({"text": _short(s0.texts[i0]),
                         "labels": "; ".join(f"{s.name} {s.row(i)}: {s.labels[i]}" for s, i in members[:12])
                         + (f"; and {len(members) - 12} more" if len(members) > 12 else "")})
        res.evidence.append({"title": f"Conflicting labels: the same normalised text with different labels "
                                      f"({len(bad)} texts, {k} rows)", "rows": rows[: p["max_evidence"]]})

    # ------------------------------------------------------------------ label issues (cleanlab)
    def _label_issues(self, res: CheckResult, ctx: CheckContext, splits: list[Split], p) -> None:
        labelled = [s for s in splits if s.labels is not None]
        if not labelled:
            return
        train = splits[0]
        if p["label_model"] == "model":
            probs = self._model_probs(ctx, labelled)
            classes = list(range(probs[0].shape[1])) if probs else []
        else:
            classes = sorted({lab for s in labelled for lab in s.labels}, key=lambda x: (str(type(x)), x))
            probs = self._tfidf_probs(res, ctx, train if train.labels is not None else None, labelled, classes, p)
        index = {c: k for k, c in enumerate(classes)}
        rows, pooled, any_done = [], [], False
        for s, pr in zip(labelled, probs):
            if pr is None:
                continue
            y = np.array([index[lab] for lab in s.labels])
            mask, scores = _cleanlab_issues(y, pr)
            if mask is None:
                res.notes.append(f"label issues: {s.name} has fewer than two classes or too few rows; skipped")
                continue
            any_done = True
            flags = mask.astype(int).tolist()
            _add_rate(res, f"label_issue_rate.{s.name}", flags)
            pooled += flags
            for i in np.argsort(scores, kind="stable"):
                if mask[i]:
                    rows.append((float(scores[i]), {"split": s.name, "row": s.row(int(i)),
                                                    "text": _short(s.texts[i]), "label": s.labels[i],
                                                    "suggested": classes[int(np.argmax(pr[i]))],
                                                    "p_label": round(float(pr[i, y[i]]), 4)}))
        if not any_done:
            return
        k, n = _add_rate(res, "label_issue_rate", pooled)
        rows.sort(key=lambda r: r[0])
        how = ("the audited model's probabilities" if p["label_model"] == "model" else
               f"out-of-sample TF-IDF + logistic regression ({p['cv_folds']}-fold on train)")
        res.evidence.append({"title": f"Label issues by confident learning (cleanlab, {how}; {k} of {n} rows, "
                                      f"lowest probability of the given label first)",
                             "rows": [r for _, r in rows[: p["max_evidence"]]]})

    def _tfidf_probs(self, res, ctx, train: Split | None, labelled: list[Split], classes: list, p) -> list:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold, cross_val_predict
        from sklearn.pipeline import make_pipeline

        def pipeline():
            return make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                                 LogisticRegression(max_iter=2000))
        out: list = [None] * len(labelled)
        if train is None:
            res.notes.append("label issues: the training data has no labels, so no out-of-sample probabilities")
            return out
        index = {c: k for k, c in enumerate(classes)}
        y = np.array([index[lab] for lab in train.labels])
        counts = np.bincount(y, minlength=len(classes))
        present = counts[counts > 0]
        folds = int(min(p["cv_folds"], present.min())) if present.size else 0
        if present.size < 2 or folds < 2:
            res.notes.append("label issues: the training data needs two classes with at least two rows each")
            return out
        if folds < p["cv_folds"]:
            res.notes.append(f"label issues: {folds} folds instead of {p['cv_folds']} (the smallest class has "
                             f"{int(present.min())} rows)")
        cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=ctx.seed)
        train_probs = cross_val_predict(pipeline(), train.texts, y, cv=cv, method="predict_proba")
        seen = np.flatnonzero(counts)  # columns of predict_proba: the classes present in train, in order
        full = np.zeros((len(y), len(classes)))
        full[:, seen] = train_probs
        fitted = None
        for k, s in enumerate(labelled):
            if s is train:
                out[k] = full
                continue
            if any(counts[index[lab]] == 0 for lab in s.labels):
                res.notes.append(f"label issues: {s.name} has a label the training data lacks; skipped")
                continue
            if fitted is None:
                fitted = pipeline().fit(train.texts, y)
            pr = np.zeros((len(s.texts), len(classes)))
            pr[:, fitted.classes_] = fitted.predict_proba(s.texts)
            out[k] = pr
        return out

    def _model_probs(self, ctx, labelled: list[Split]) -> list:
        from scipy.special import softmax
        cid = ctx.check_id or self.name
        model = ctx.model
        if model is None or getattr(model, "task", None) != "sequence-classification":
            raise AuditInputError("label_model: model needs a loaded sequence classifier, and this run has none "
                                  "(a suite of data-only checks loads no model)", place=f"{cid}.label_model",
                                  fix="use label_model: tfidf, or audit a classifier in a suite that loads it "
                                      "(finetune:, or a check such as accuracy)")
        out = []
        for s in labelled:
            s.ds.require_labels(model.num_labels)
            out.append(softmax(np.asarray(model.class_logits(s.texts), dtype=float), axis=-1))
        return out

    # ------------------------------------------------------------------ balance and length
    def _balance(self, res: CheckResult, splits: list[Split]) -> None:
        # one metric-name part per label for all splits: distinct labels get distinct parts (a clash -2, -3, ...)
        label_part = metric_parts(sorted({lab for s in splits if s.labels is not None for lab in s.labels},
                                         key=lambda x: (str(x), str(type(x)))))
        rows = []
        for s in splits:
            n = len(s.texts)
            lengths = np.array([len(t.split()) for t in s.texts], dtype=float)
            res.add(f"rows.{s.name}", n, None, n, None)
            res.add(f"length_mean.{s.name}", float(lengths.mean()), None, n, None)
            res.add(f"length_p95.{s.name}", float(np.percentile(lengths, 95)), None, n, None)
            row = {"split": s.name, "data": s.spec, "rows": n, "words_mean": round(float(lengths.mean()), 2),
                   "words_median": float(np.median(lengths)), "words_p95": float(np.percentile(lengths, 95)),
                   "words_max": int(lengths.max())}
            if s.labels is not None:
                counts = Counter(s.labels)
                res.add(f"class_imbalance.{s.name}", max(counts.values()) / min(counts.values()), None, n, False)
                for lab, c in sorted(counts.items(), key=lambda kv: str(kv[0])):
                    res.add(f"label_share.{s.name}.{label_part[lab]}", c / n, binomial_ci(c, n), n, None)
                row["classes"] = ", ".join(f"{lab}: {c}" for lab, c in sorted(counts.items(), key=lambda kv: str(kv[0])))
            rows.append(row)
        res.evidence.append({"title": "Class balance and text length (words) per split", "rows": rows})
        res.figures["class balance"] = _balance_svg(splits)
        res.figures["text length"] = _length_svg(splits)


def _cleanlab_issues(y: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """cleanlab's confident-learning mask (prune_by_noise_rate) and self-confidence scores, or (None, None)."""
    import warnings
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    if len(np.unique(y)) < 2 or len(y) < 4:
        return None, None
    probs = np.clip(probs, 1e-12, None)
    probs = probs / probs.sum(axis=1, keepdims=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mask = find_label_issues(y, probs, filter_by="prune_by_noise_rate", n_jobs=1)
        scores = get_label_quality_scores(y, probs, method="self_confidence")
    return np.asarray(mask, dtype=bool), np.asarray(scores, dtype=float)


def _balance_svg(splits: list[Split]) -> str:
    from auditkit.figures import new_figure, to_svg
    labelled = [s for s in splits if s.labels is not None]
    fig, ax = new_figure(5.6, 2.8)
    if not labelled:
        ax.text(0.5, 0.5, "no labels", ha="center", va="center")
        ax.set_axis_off()
        return to_svg(fig)
    classes = sorted({str(lab) for s in labelled for lab in s.labels})
    width = 0.8 / len(labelled)
    for k, s in enumerate(labelled):
        counts = Counter(str(lab) for lab in s.labels)
        ax.bar(np.arange(len(classes)) + k * width, [counts.get(c, 0) / len(s.labels) for c in classes], width,
               label=s.name)
    ax.set_xticks(np.arange(len(classes)) + width * (len(labelled) - 1) / 2, classes)
    ax.set_xlabel("label")
    ax.set_ylabel("share of rows")
    ax.legend(fontsize=8)
    return to_svg(fig)


def _length_svg(splits: list[Split]) -> str:
    from auditkit.figures import new_figure, to_svg
    fig, ax = new_figure(5.6, 2.8)
    lengths = [[len(t.split()) for t in s.texts] for s in splits]
    top = max(max(x) for x in lengths)
    bins = np.linspace(0, top + 1, min(40, top + 2))
    for s, x in zip(splits, lengths):
        ax.hist(x, bins=bins, density=True, histtype="step", label=s.name)
    ax.set_xlabel("words per row")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    return to_svg(fig)


@hookimpl
def auditkit_register_checks(register):
    register(DataQuality)
