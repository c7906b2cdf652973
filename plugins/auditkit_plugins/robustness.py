"""The ``robustness`` check: seeded perturbations of the check's data and what they do to the model.

Perturbations (``perturbations:``, default all of them):

- ``typos``: keyboard typos, nlpaug's ``KeyboardAug`` (QWERTY neighbours, letters only): ``rate`` of the
  words (at least one per text) get one character replaced by a neighbouring key.
- ``char_swap``: nlpaug's ``RandomCharAug(action="swap")``: ``rate`` of the words (at least one) get one
  character swapped with its neighbour.
- ``uppercase`` / ``lowercase``: the whole text upper / lower case.
- ``punctuation``: every punctuation mark removed (``.,!?;:`` and quotes; apostrophes and hyphens inside a
  word, and marks between two digits, are kept).
- ``whitespace``: ``rate`` of the spaces between words (at least one) become two or three spaces or a tab.
- ``contractions``: every contraction expanded ("don't" -> "do not") and every expandable pair contracted
  ("it is" -> "it's"), from the list in ``builtin_data/robustness_lexicon.json``.
- ``names`` / ``places``: each person name / city / country of the lexicon in the text is swapped for
  another one of the same kind (the same replacement for every occurrence).
- ``synonyms``: ``rate`` of the words that have a synonym in the lexicon (at least one) are replaced by
  one (case kept). WordNet would need NLTK data downloaded at run time, so the lists ship with auditkit.

Every random choice is drawn from ``numpy.random.default_rng(blake2b(seed, perturbation, text))``, so a text
gets the same perturbed version whatever the batch size, the order of the rows or the other rows. nlpaug
draws from Python's and numpy's global generators: they are seeded per text that way and restored after.

Per perturbation, over the rows it changed (a text it leaves as it was does not count):

- ``acc_drop.{perturbation}`` = acc(original) - acc(perturbed) on the same rows (the robustness definition
  in DESIGN.md), with a paired bootstrap 95% CI (percentile; rows resampled with both their results);
- ``flip_rate.{perturbation}`` = share of those rows whose prediction changes, with a bootstrap CI from the
  same resamples; ``coverage.{perturbation}`` = share of rows the perturbation changed.
- Classifiers predict the argmax of ``class_logits``; causal LMs answer multiple choice
  ``{question, choices, label}`` as lm-eval's ``acc`` does (argmax of the summed log-likelihood of
  ``delimiter + choice``), with only the question perturbed.
- ``acc_drop_max`` / ``flip_rate_max``: the worst perturbation. Their value is the largest point estimate and
  each CI bound is the largest bound over the perturbations: if every per-perturbation interval holds, the
  maximum lies between them (no correction for multiplicity), so a gate on ``acc_drop_max.ci_low`` fails
  when any perturbation's CI lies above the tolerance.

Default gates: FAIL when the accuracy drop of some perturbation is clearly above 5 points
(``acc_drop_max.ci_low <= 0.05``: the whole 95% CI above a 5-point loss, so noise alone does not fail a
release) and WARN on the point estimate (``acc_drop_max <= 0.05``); WARN when more than 10% of the
predictions flip under some perturbation (``flip_rate_max <= 0.1``); flips that cancel out leave accuracy
unchanged but show a model whose answers hang on spelling. Five points is the usual "material" regression
in release gates (the accuracy check warns at one point against its base); a rate of 0.1 changes about one
word in ten, far below what makes a text unreadable.

Optional attack (``attack: true``, classifiers): a greedy word-substitution attack in TextAttack's shape
(transformation: lexicon synonyms and keyboard typos; constraints: at most ``rate`` of the words, at least
one, each word once; search: greedy, every candidate edit scored in one batched pass per step; goal:
untargeted misclassification) under ``attack_budget`` model queries per row, on the rows the model gets
right: ``attack_success_rate`` with a bootstrap CI, ``attack_queries``, ``attack_words``, and the successful
attacks as evidence. TextAttack itself is not used: its recipes load word embeddings and sentence encoders
from the network at run time. No default gate reads the attack (it is opt-in).

Generation data (``{prompt, reference}``, causal and seq2seq LMs): the prompts are perturbed (the same seeded
perturbations), the model answers the original and every perturbed prompt by greedy decoding (``max_new_tokens``,
``stop``, ``chat_template`` as in the ``generation`` check), and each answer is scored against the row's
references by ``metric`` (default ``f1``; any metric of the ``generation`` check). Per perturbation, over the rows
it changed:

- ``metric_drop.{perturbation}`` = metric(original answers) - metric(perturbed answers) on the same rows, on a
  0-1 scale (BLEU and chrF divided by 100), with a paired bootstrap 95% CI: for the per-example metrics (EM, F1,
  ROUGE-L) the mean of the per-row differences; for BLEU and chrF the difference of the two corpus scores,
  each resample summing both sides' sufficient statistics over the same rows;
- ``flip_rate.{perturbation}``: share of those rows whose answer changes (compared after SQuAD normalisation:
  case, punctuation and articles do not count); ``coverage.{perturbation}`` as above;
- ``metric_drop_max`` / ``flip_rate_max`` as the maxima above; the metric itself on the original prompts
  (e.g. ``f1``) with a bootstrap CI; the worst examples (largest fall of the per-row score) as evidence.

Default gate for generation: FAIL when ``metric_drop_max.ci_low`` is above 0.05 (five points of F1, the same
tolerance as the accuracy drop), WARN on the point estimate and on ``flip_rate_max`` as for accuracy. The
default gates of the other kind of data are not measured and are dropped with a note.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import re
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np

from auditkit.api import (Check, CheckContext, CheckResult, MetricSpec, Param, check_distinct_names,
                          check_stop_sequences)
from auditkit.errors import AuditInputError
from auditkit.hookspecs import hookimpl

PERTURBATIONS = ("typos", "char_swap", "uppercase", "lowercase", "punctuation", "whitespace", "contractions",
                 "names", "places", "synonyms")
#: the perturbations whose strength ``rate`` sets; the others change every place they apply to
RATED = ("typos", "char_swap", "whitespace", "synonyms")
LEXICON = Path(__file__).parent / "builtin_data" / "robustness_lexicon.json"
#: default-gate tolerances
MAX_ACC_DROP = 0.05
MAX_FLIP_RATE = 0.1
#: generation data: the largest tolerated drop of the metric (0-1 scale)
MAX_METRIC_DROP = 0.05
#: the metrics a generation robustness run can use (those of the ``generation`` check)
GEN_METRICS = ("exact_match", "f1", "rouge_l", "bleu", "chrf")


# ---------------------------------------------------------------------- seeding

def text_seed(seed: int, perturbation: str, text: str) -> int:
    """A 64-bit seed from (run seed, perturbation name, text): the same text always gets the same draw."""
    h = hashlib.blake2b(f"{int(seed)}\x00{perturbation}\x00{text}".encode("utf-8"), digest_size=8)
    return int.from_bytes(h.digest(), "little")


@contextmanager
def _global_rng(seed: int):
    """Seed Python's and numpy's global generators (nlpaug draws from them), then restore them."""
    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def _n_chosen(rate: float, n: int) -> int:
    """ceil(rate * n), at least one when rate > 0 and n > 0 (nlpaug's count of words to change)."""
    if rate <= 0 or n == 0:
        return 0
    return min(n, max(1, math.ceil(rate * n)))


# ---------------------------------------------------------------------- lexicon

@lru_cache(maxsize=1)
def lexicon() -> dict:
    """The shipped word lists, with the regexes built once."""
    raw = json.loads(LEXICON.read_text(encoding="utf-8"))
    contractions = {k.lower(): v for k, v in raw["contractions"].items()}
    expansions = {v.lower(): k for k, v in contractions.items()}
    both = {**{k: v for k, v in contractions.items()}, **expansions}
    keys = sorted(both, key=lambda s: (-len(s), s))
    # an apostrophe may be typed as ' or the typographic ’
    alt = "|".join(re.escape(k).replace("'", "['’]") for k in keys)
    synonyms: dict[str, list[str]] = {}
    for group in raw["synonyms"]:
        for w in group:
            synonyms.setdefault(w.lower(), [])
            synonyms[w.lower()] += [o for o in group if o.lower() != w.lower() and o not in synonyms[w.lower()]]

    def names_re(items):
        return re.compile(r"(?<![\w'’-])(" + "|".join(re.escape(x) for x in sorted(items, key=lambda s: (-len(s), s)))
                          + r")(?![\w-])")
    return {"contractions": both, "contractions_re": re.compile(r"(?<![\w'’])(" + alt + r")(?![\w'’])", re.I),
            "names": list(raw["names"]), "names_re": names_re(raw["names"]),
            "places": list(raw["cities"]) + list(raw["countries"]),
            "places_re": names_re(list(raw["cities"]) + list(raw["countries"])),
            "pools": {**{x: "names" for x in raw["names"]}, **{x: "cities" for x in raw["cities"]},
                      **{x: "countries" for x in raw["countries"]}},
            "cities": list(raw["cities"]), "countries": list(raw["countries"]),
            "synonyms": synonyms,
            "synonyms_re": re.compile(r"(?<![\w'’-])("
                                      + "|".join(re.escape(w) for w in sorted(synonyms, key=lambda s: (-len(s), s)))
                                      + r")(?![\w'’-])", re.I)}


def _match_case(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


# ---------------------------------------------------------------------- perturbations

class _KeepSpaces:
    """nlpaug tokenizer/reverse pair that splits on whitespace and puts the same whitespace back."""

    def __init__(self):
        self.parts: tuple[str, list[str], str] = ("", [], "")

    def tokenize(self, text: str) -> list[str]:
        lead = text[: len(text) - len(text.lstrip())]
        trail = text[len(text.rstrip()):]
        self.parts = (lead, re.findall(r"\s+", text.strip()), trail)
        return text.split()

    def join(self, tokens: list[str]) -> str:
        lead, seps, trail = self.parts
        if len(seps) != max(len(tokens) - 1, 0):
            return " ".join(tokens)
        out = [lead]
        for i, tok in enumerate(tokens):
            out.append(tok)
            if i < len(seps):
                out.append(seps[i])
        return "".join(out) + trail


@lru_cache(maxsize=8)
def _nlpaug(kind: str, rate: float):
    try:
        import nlpaug.augmenter.char as nac
    except ImportError as exc:  # pragma: no cover - a dependency of auditkit_plugins
        raise AuditInputError(f"the robustness perturbation {kind!r} needs nlpaug, which is not installed ({exc})",
                              place="perturbations", fix="pip install nlpaug==1.1.11") from None
    tok = _KeepSpaces()
    common = dict(aug_char_min=1, aug_char_max=1, aug_char_p=0.01, aug_word_p=rate, aug_word_min=1,
                  aug_word_max=None, min_char=3, tokenizer=tok.tokenize, reverse_tokenizer=tok.join)
    if kind == "typos":
        return nac.KeyboardAug(include_special_char=False, include_numeric=False, include_upper_case=False, **common)
    return nac.RandomCharAug(action="swap", swap_mode="adjacent", **common)


def _via_nlpaug(kind: str, text: str, rate: float, seed: int) -> str:
    if rate <= 0 or not text.strip():
        return text
    aug = _nlpaug(kind, float(rate))
    with _global_rng(seed):
        out = aug.augment(text)
    if isinstance(out, list):
        out = out[0] if out else text
    return out


_PUNCT = re.compile(r"""(?<=\d)[.,:](?=\d)|(?<=\w)['’\-](?=\w)|([.,!?;:"“”‘’'()\[\]…]|--)""")


def _strip_punctuation(text: str) -> str:
    out = _PUNCT.sub(lambda m: "" if m.group(1) is not None else m.group(0), text)
    return re.sub(r"[ \t]{2,}", " ", out).strip() if out != text else text


def _whitespace(text: str, rate: float, rng: np.random.Generator) -> str:
    gaps = [m.start() for m in re.finditer(r"(?<=\S) (?=\S)", text)]
    k = _n_chosen(rate, len(gaps))
    if not k:
        return text
    chosen = set(rng.choice(len(gaps), size=k, replace=False).tolist())
    fills = ("  ", "   ", "\t")
    out, last = [], 0
    for j, pos in enumerate(gaps):
        if j in chosen:
            out.append(text[last:pos])
            out.append(fills[int(rng.integers(len(fills)))])
            last = pos + 1
    out.append(text[last:])
    return "".join(out)


def _contractions(text: str) -> str:
    lex = lexicon()

    def sub(m):
        key = m.group(0).lower().replace("’", "'")
        target = lex["contractions"][key]
        if target.startswith(("I ", "I'")):
            return target
        return _match_case(target, m.group(0))
    return lex["contractions_re"].sub(sub, text)


def _swap_entities(text: str, kind: str, rng: np.random.Generator) -> str:
    lex = lexicon()
    found = list(dict.fromkeys(m.group(1) for m in lex[f"{kind}_re"].finditer(text)))
    if not found:
        return text
    mapping = {}
    for name in found:  # a city for a city, a country for a country
        others = [x for x in lex[lex["pools"][name]] if x not in found and x not in mapping.values()]
        mapping[name] = others[int(rng.integers(len(others)))]
    return lex[f"{kind}_re"].sub(lambda m: mapping[m.group(1)], text)


def _synonyms(text: str, rate: float, rng: np.random.Generator) -> str:
    lex = lexicon()
    spots = list(lex["synonyms_re"].finditer(text))
    k = _n_chosen(rate, len(spots))
    if not k:
        return text
    chosen = sorted(rng.choice(len(spots), size=k, replace=False).tolist())
    out, last = [], 0
    for j in chosen:
        m = spots[j]
        options = lex["synonyms"][m.group(1).lower()]
        out += [text[last:m.start()], _match_case(options[int(rng.integers(len(options)))], m.group(1))]
        last = m.end()
    out.append(text[last:])
    return "".join(out)


def perturb(name: str, text: str, seed: int, rate: float) -> str:
    """``text`` under perturbation ``name``; every random choice seeded by (seed, name, text)."""
    s = text_seed(seed, name, text)
    if name in ("typos", "char_swap"):
        return _via_nlpaug(name, text, rate, s)
    if name == "uppercase":
        return text.upper()
    if name == "lowercase":
        return text.lower()
    if name == "punctuation":
        return _strip_punctuation(text)
    if name == "contractions":
        return _contractions(text)
    rng = np.random.default_rng(s)
    if name == "whitespace":
        return _whitespace(text, rate, rng)
    if name in ("names", "places"):
        return _swap_entities(text, name, rng)
    if name == "synonyms":
        return _synonyms(text, rate, rng)
    raise ValueError(f"unknown perturbation {name!r}")


# ---------------------------------------------------------------------- statistics

def paired_bootstrap_ci(series: dict[str, np.ndarray], seed: int, n_resamples: int) -> dict:
    """Per named series of per-row values: (mean, 2.5th, 97.5th percentile of the resampled means).

    Every series is resampled with the SAME row indices (a paired bootstrap: a row keeps its original and
    perturbed result together); a constant series, or one row, gives a zero-width interval.
    """
    n = len(next(iter(series.values())))
    idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n)) if n > 1 else None
    out = {}
    for name, x in series.items():
        x = np.asarray(x, dtype=float)
        value = float(x.mean())
        if idx is None or np.all(x == x[0]):
            out[name] = (value, value, value)
            continue
        lo, hi = np.percentile(x[idx].mean(axis=1), [2.5, 97.5])
        out[name] = (value, float(lo), float(hi))
    return out


# ---------------------------------------------------------------------- the check

class Robustness(Check):
    name = "robustness"
    description = ("Robustness to seeded perturbations (keyboard typos, character swaps, case, punctuation, "
                   "whitespace, contractions, name/place swaps, synonyms): accuracy drop with a paired bootstrap CI "
                   "and flip rate per perturbation, for classifiers and multiple choice; the drop of a generation "
                   "metric (default F1) for generation data.")
    _ACC_GATES = [
        f"acc_drop_max.ci_low <= {MAX_ACC_DROP}",
        {"when": f"acc_drop_max <= {MAX_ACC_DROP}", "severity": "warn"},
        {"when": f"flip_rate_max <= {MAX_FLIP_RATE}", "severity": "warn"},
    ]
    # LMs read multiple choice (accuracy drop) or generation data (metric drop): the gates of the kind not
    # measured are dropped with a note
    default_gates = {
        "sequence-classification": _ACC_GATES,
        "*": _ACC_GATES + [f"metric_drop_max.ci_low <= {MAX_METRIC_DROP}",
                           {"when": f"metric_drop_max <= {MAX_METRIC_DROP}", "severity": "warn"}],
    }
    params = {
        "perturbations": Param("list", list(PERTURBATIONS), "perturbations to apply (default: all)",
                               members=PERTURBATIONS),
        "rate": Param("float", 0.1, "share of the words changed by typos, char_swap and synonyms and of the spaces "
                      "changed by whitespace (at least one per text; 0 turns them off)", ge=0.0, le=1.0),
        "max_examples": Param("int", 0, "use at most this many rows (0 = all)", ge=0),
        "bootstrap": Param("int", 1000, "bootstrap resamples for the 95% CIs", ge=100),
        "worst": Param("int", 10, "how many worst examples to show", ge=0),
        "delimiter": Param("str", " ", "multiple choice: text between question and choice "
                           "(lm-eval's target_delimiter)"),
        "attack": Param("bool", False, "classifiers: also run a greedy word-substitution attack (synonyms and keyboard "
                        "typos) on the rows the model gets right"),
        "attack_budget": Param("int", 100, "attack: most model queries per row", ge=1),
        "metric": Param("str", "f1", "generation data: the metric whose drop is measured", choices=GEN_METRICS),
        "max_new_tokens": Param("int", 32, "generation data: most tokens generated per answer", ge=1, le=4096),
        "stop": Param("list", ["\n\n"], "generation data: stop sequences (the answer ends before the first one)"),
        "chat_template": Param("bool", None, "generation data: true: always apply the tokenizer's chat template; "
                               "false: never; unset: when the tokenizer has one"),
    }
    metrics = {
        "accuracy": MetricSpec("accuracy on the original rows (acc for multiple choice)"),
        "acc_drop.{perturbation}": MetricSpec("acc(original) - acc(perturbed) on the rows the perturbation changed",
                                              False),
        "flip_rate.{perturbation}": MetricSpec("share of the changed rows whose prediction changes", False),
        "coverage.{perturbation}": MetricSpec("share of rows the perturbation changed", None),
        "acc_drop_max": MetricSpec("largest accuracy drop over the perturbations (each CI bound: the largest bound)",
                                   False),
        "attack_success_rate": MetricSpec("attack: share of correctly predicted rows the greedy attack turns wrong "
                                          "within the query budget", False),
        "attack_queries": MetricSpec("attack: mean model queries per attacked row", None),
        "attack_words": MetricSpec("attack: mean share of words changed in the successful attacks", None),
        "flip_rate_max": MetricSpec("largest flip rate over the perturbations (each CI bound: the largest bound)",
                                    False),
        "metric_drop.{perturbation}": MetricSpec("generation: metric(original) - metric(perturbed) on the rows the "
                                                 "perturbation changed, 0-1 scale (BLEU, chrF / 100)", False),
        "metric_drop_max": MetricSpec("generation: largest metric drop over the perturbations (each CI bound: the "
                                      "largest bound)", False),
        **{m: MetricSpec(f"generation: {m} of the answers to the original prompts "
                         f"({'0-100' if m in ('bleu', 'chrf') else '0-1'})") for m in GEN_METRICS},
    }

    @classmethod
    def validate_params(cls, params: dict, base_dir: str | None = None, prefix: str = "") -> None:
        """An empty or repeated ``perturbations`` list is bad input (members are checked by Param)."""
        check_distinct_names(params, "perturbations", PERTURBATIONS, "perturbation", prefix)
        check_stop_sequences(params, prefix)
        # typos, char_swap and the adversarial search's typo candidates are nlpaug's: a missing (or
        # broken) install is named when the suite loads, not after the models load and other checks ran
        chosen = params.get("perturbations") or list(PERTURBATIONS)
        needing = [k for k in ("typos", "char_swap") if k in chosen] + (["attack"] if params.get("attack") else [])
        if needing:
            try:
                import nlpaug.augmenter.char  # noqa: F401
            except ImportError as exc:
                raise AuditInputError(f"robustness {needing[0]!r} needs nlpaug, which cannot be imported ({exc})",
                                      place=f"{prefix}{'attack' if needing == ['attack'] else 'perturbations'}",
                                      fix="pip install nlpaug==1.1.11 (it needs gdown too), or run without typos, "
                                          "char_swap and attack") from None

    def run(self, ctx: CheckContext) -> CheckResult:
        ds, prm = ctx.data, ctx.params
        rows = ds.rows[: prm["max_examples"]] if prm["max_examples"] else ds.rows
        mc = ctx.model.task in ("causal-lm", "seq2seq-lm")
        if mc and ds.has("prompt", "reference") and not ds.has("choices"):
            return run_generation(ctx, rows)
        if mc:
            ds.require_choices()
            labels = np.array([int(r["label"]) for r in rows])
            field = "question"
        else:
            ds.require("text", fmt="classification")
            labels = np.array(ds.require_labels(ctx.model.num_labels)[: len(rows)])
            field = "text"
        originals = [r[field] for r in rows]
        chosen = [p for p in PERTURBATIONS if p in prm["perturbations"]]
        variants = {p: [perturb(p, t, ctx.seed, prm["rate"]) for t in originals] for p in chosen}
        ctx.progress(0.15)
        if mc:
            pred, score = self._multiple_choice(ctx, rows, variants, labels)
        else:
            pred, score = self._classify(ctx, list(dict.fromkeys(originals + [t for p in chosen for t in variants[p]])),
                                         labels)
        ctx.progress(0.7 if prm["attack"] else 0.85)
        res = self._report(ctx, rows, originals, variants, chosen, labels, pred, score, mc)
        if prm["attack"]:
            if mc:
                res.notes.append("attack: only for classifiers; skipped for multiple choice")
            else:
                attack(ctx, originals, labels, res)
        ctx.progress(1.0)
        return res

    # ------------------------------------------------------------------ scoring
    def _classify(self, ctx, texts, labels):
        """pred(text) and p(label | text) for every unique text, in one batched pass."""
        from scipy.special import softmax
        logits = ctx.model.class_logits(texts)
        probs = softmax(np.asarray(logits, dtype=float), axis=-1)
        where = {t: k for k, t in enumerate(texts)}

        def pred(text, i):
            return int(np.argmax(logits[where[text]]))

        def score(text, i):  # probability of the true label
            return float(probs[where[text], labels[i]])
        return pred, score

    def _multiple_choice(self, ctx, rows, variants, labels):
        """Summed log-likelihood of each choice after each question variant (lm-eval's acc), one batched pass."""
        delim = ctx.params["delimiter"]
        # the variants of row i's question are scored against row i's choices
        pairs = list(dict.fromkeys((q, delim + c) for i, r in enumerate(rows)
                                   for q in [r["question"]] + [v[i] for v in variants.values()]
                                   for c in r["choices"]))
        lps = ctx.model.continuation_logprobs(pairs)
        ll = {p: float(np.sum(lp)) for p, lp in zip(pairs, lps)}

        def lls(text, i):
            return np.array([ll[(text, delim + c)] for c in rows[i]["choices"]])

        def pred(text, i):
            return int(np.argmax(lls(text, i)))

        def score(text, i):  # margin of the gold choice over the best other one
            x = lls(text, i)
            other = np.delete(x, labels[i])
            return float(x[labels[i]] - (other.max() if other.size else 0.0))
        return pred, score

    # ------------------------------------------------------------------ reporting
    def _report(self, ctx, rows, originals, variants, chosen, labels, pred, score, mc) -> CheckResult:
        res = CheckResult()
        n_rows = len(rows)
        p0 = np.array([pred(t, i) for i, t in enumerate(originals)])
        c0 = (p0 == labels).astype(float)
        acc_ci = paired_bootstrap_ci({"a": c0}, ctx.seed, ctx.params["bootstrap"])["a"][1:]
        res.add("accuracy", c0.mean(), acc_ci, n_rows)
        res.records["correct"] = c0.astype(int).tolist()
        summary, worst, stats = [], [], {}
        for name in chosen:
            changed = [i for i in range(n_rows) if variants[name][i] != originals[i]]
            res.add(f"coverage.{name}", len(changed) / n_rows if n_rows else 0.0, None, n_rows, None)
            if not changed:
                res.notes.append(f"{name}: changed none of the {n_rows} rows, so it has no accuracy drop or flip rate")
                summary.append({"perturbation": name, "rows changed": 0})
                continue
            idx = np.array(changed)
            p1 = np.array([pred(variants[name][i], i) for i in changed])
            c1 = (p1 == labels[idx]).astype(float)
            flips = (p1 != p0[idx]).astype(float)
            seed = text_seed(ctx.seed, name, "bootstrap") % 2 ** 32
            b = paired_bootstrap_ci({"acc_drop": c0[idx] - c1, "flip_rate": flips}, seed, ctx.params["bootstrap"])
            stats[name] = b
            res.add(f"acc_drop.{name}", b["acc_drop"][0], b["acc_drop"][1:], len(changed), False)
            res.add(f"flip_rate.{name}", b["flip_rate"][0], b["flip_rate"][1:], len(changed), False)
            res.records[f"acc_drop.{name}"] = (c0[idx] - c1).astype(int).tolist()
            res.records[f"flip_rate.{name}"] = flips.astype(int).tolist()
            summary.append({"perturbation": name, "rows changed": len(changed),
                            "accuracy before": round(float(c0[idx].mean()), 4),
                            "accuracy after": round(float(c1.mean()), 4),
                            "acc_drop": round(b["acc_drop"][0], 4),
                            "acc_drop CI": f"[{b['acc_drop'][1]:.4f}, {b['acc_drop'][2]:.4f}]",
                            "flip_rate": round(b["flip_rate"][0], 4),
                            "flip_rate CI": f"[{b['flip_rate'][1]:.4f}, {b['flip_rate'][2]:.4f}]"})
            for k, i in enumerate(changed):
                before, after = score(originals[i], i), score(variants[name][i], i)
                # correct -> wrong first, then other flips, then the largest fall of the gold label's score
                rank = 0 if (c0[i] == 1 and c1[k] == 0) else 1 if p1[k] != p0[i] else 2
                worst.append(((rank, -(before - after)), name, int(i), int(p0[i]), int(p1[k]), before, after))
        if not stats:
            raise ctx.data.error(f"no perturbation ({', '.join(chosen)}) changed any of the {n_rows} rows, so "
                                 "there is nothing to measure", col="question" if mc else "text",
                                 fix="add perturbations (typos changes every text), raise rate, or use other data")
        _add_maxima(res, stats, ("acc_drop", "flip_rate"), n_rows)
        worst_p = max(stats, key=lambda p: (stats[p]["acc_drop"][0], stats[p]["flip_rate"][0]))
        res.notes.append(f"worst perturbation: {worst_p} (acc_drop {stats[worst_p]['acc_drop'][0]:.4f}, flip_rate "
                         f"{stats[worst_p]['flip_rate'][0]:.4f}); metrics per perturbation are over the rows it "
                         "changed")
        res.notes.append(f"rate {ctx.params['rate']:g} for {', '.join(p for p in chosen if p in RATED) or 'none'}; "
                         f"95% CIs: paired percentile bootstrap over rows ({ctx.params['bootstrap']} resamples); "
                         f"character noise by nlpaug {_nlpaug_version()}")
        unit = "log-likelihood margin of the gold choice" if mc else "p(label)"
        worst.sort(key=lambda w: (w[0], w[1], w[2]))
        ev_rows = []
        for _, name, i, a, b_, before, after in worst[: ctx.params["worst"]]:
            row = {"perturbation": name, "row": i, "original": originals[i][:300], "perturbed": variants[name][i][:300],
                   "label": int(labels[i]), "predicted before": a, "predicted after": b_,
                   f"{unit} before": round(before, 4), f"{unit} after": round(after, 4)}
            if mc:
                ch = rows[i]["choices"]
                row.update({"label": ch[int(labels[i])][:80], "predicted before": ch[a][:80],
                            "predicted after": ch[b_][:80]})
            ev_rows.append(row)
        res.evidence = [{"title": "Accuracy drop and flip rate per perturbation", "rows": summary},
                        {"title": f"Worst examples (correct -> wrong first, then other flips, then the largest fall "
                                  f"in the {unit})", "rows": ev_rows}]
        res.figures["accuracy drop and flip rate per perturbation"] = _bars_svg(stats)
        return res


# ---------------------------------------------------------------------- generation data

def _corpus_drop(name: str, st0: np.ndarray, st1: np.ndarray, idx: np.ndarray | None) -> tuple[float, float, float]:
    """BLEU/chrF: (corpus(original) - corpus(perturbed)) / 100 and its percentile CI over the resampled rows
    ``idx`` (``[B, n]``; both sides summed over the same rows)."""
    from auditkit_plugins import generation_metrics as gm
    value = (gm.corpus_from_stats(name, st0.sum(0)) - gm.corpus_from_stats(name, st1.sum(0))) / 100.0
    if idx is None:
        return value, value, value
    boot = np.array([(gm.corpus_from_stats(name, st0[r].sum(0)) - gm.corpus_from_stats(name, st1[r].sum(0))) / 100.0
                     for r in idx])
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return value, float(lo), float(hi)


def run_generation(ctx: CheckContext, rows: list[dict]) -> CheckResult:
    """Robustness on generation data: the metric drop per perturbation (see the module docstring)."""
    from auditkit_plugins import generation_metrics as gm
    from auditkit_plugins.generation import build_prompts, references, use_chat_template, validate_rows
    from auditkit_plugins.generation_metrics.auditkit_squad.auditkit_squad import normalize_answer
    prm, handle = ctx.params, ctx.model
    validate_rows(ctx.data)
    metric, corpus = prm["metric"], prm["metric"] in gm.CORPUS_LEVEL
    scale = 100.0 if corpus else 1.0
    originals = [r["prompt"] for r in rows]
    refs = [references(r) for r in rows]
    chosen = [p for p in PERTURBATIONS if p in prm["perturbations"]]
    variants = {p: [perturb(p, t, ctx.seed, prm["rate"]) for t in originals] for p in chosen}
    ctx.progress(0.1)
    unique = list(dict.fromkeys(originals + [t for p in chosen for t in variants[p]]))
    chat = use_chat_template(handle, prm["chat_template"])
    prompts = build_prompts([{"prompt": t} for t in unique], [], chat, " ", "\n\n")
    gens = handle.generate(prompts, max_new_tokens=prm["max_new_tokens"], temperature=0.0,
                           stop=list(prm["stop"] or []), seed=ctx.seed)
    answer = {t: g[0].text.strip() for t, g in zip(unique, gens)}
    ctx.progress(0.75)
    # every (prompt, row) pair scored once: the originals, then each perturbation's changed rows
    changed = {p: [i for i in range(len(rows)) if variants[p][i] != originals[i]] for p in chosen}
    pairs = [(originals[i], i) for i in range(len(rows))] + [(variants[p][i], i) for p in chosen for i in changed[p]]
    sc = gm.compute([metric], [answer[t] for t, _ in pairs], [refs[i] for _, i in pairs])[metric]
    per = np.asarray(sc["per_example"], dtype=float)
    stats_all = np.asarray(sc["stats"], dtype=np.int64) if corpus else None
    n_rows = len(rows)
    res = CheckResult()
    s0, st0 = per[:n_rows], (stats_all[:n_rows] if corpus else None)
    if corpus:
        idx = np.random.default_rng(ctx.seed).integers(0, n_rows, size=(prm["bootstrap"], n_rows)) \
            if n_rows > 1 else None
        base = [gm.corpus_from_stats(metric, st0.sum(0))]
        ci = (base[0], base[0]) if idx is None else tuple(
            float(x) for x in np.percentile([gm.corpus_from_stats(metric, st0[r].sum(0)) for r in idx], [2.5, 97.5]))
        res.add(metric, base[0], ci, n_rows)
        res.records[f"sentence_{metric}"] = [round(float(x), 10) for x in s0]
    else:
        b = paired_bootstrap_ci({"m": s0}, ctx.seed, prm["bootstrap"])["m"]
        res.add(metric, b[0], b[1:], n_rows)
        res.records[metric] = [round(float(x), 10) for x in s0]
    res.records["generation"] = [answer[t] for t in originals]
    norm0 = [normalize_answer(answer[t]) for t in originals]
    summary, worst, stats = [], [], {}
    pos = n_rows
    for name in chosen:
        rows_p = changed[name]
        k = len(rows_p)
        res.add(f"coverage.{name}", k / n_rows if n_rows else 0.0, None, n_rows, None)
        if not k:
            res.notes.append(f"{name}: changed none of the {n_rows} rows, so it has no metric drop or flip rate")
            summary.append({"perturbation": name, "rows changed": 0})
            continue
        s1 = per[pos:pos + k]
        st1 = stats_all[pos:pos + k] if corpus else None
        pos += k
        ix = np.array(rows_p)
        flips = np.array([float(normalize_answer(answer[variants[name][i]]) != norm0[i]) for i in rows_p])
        d = (s0[ix] - s1) / scale
        seed = text_seed(ctx.seed, name, "bootstrap") % 2 ** 32
        b = paired_bootstrap_ci({"metric_drop": d, "flip_rate": flips}, seed, prm["bootstrap"])
        if corpus:
            rix = np.random.default_rng(seed).integers(0, k, size=(prm["bootstrap"], k)) if k > 1 else None
            b["metric_drop"] = _corpus_drop(metric, st0[ix], st1, rix)
        stats[name] = b
        res.add(f"metric_drop.{name}", b["metric_drop"][0], b["metric_drop"][1:], k, False)
        res.add(f"flip_rate.{name}", b["flip_rate"][0], b["flip_rate"][1:], k, False)
        res.records[f"{'sentence_drop' if corpus else 'metric_drop'}.{name}"] = [round(float(x), 10) for x in d]
        res.records[f"flip_rate.{name}"] = flips.astype(int).tolist()
        summary.append({"perturbation": name, "rows changed": k,
                        f"{metric} before": round(float(s0[ix].mean()), 4), f"{metric} after": round(float(s1.mean()), 4),
                        "metric_drop": round(b["metric_drop"][0], 4),
                        "metric_drop CI": f"[{b['metric_drop'][1]:.4f}, {b['metric_drop'][2]:.4f}]",
                        "flip_rate": round(b["flip_rate"][0], 4),
                        "flip_rate CI": f"[{b['flip_rate'][1]:.4f}, {b['flip_rate'][2]:.4f}]"})
        for j, i in enumerate(rows_p):
            worst.append(((-float(d[j]), -flips[j]), name, int(i), float(s0[i]), float(s1[j])))
    if not stats:
        raise ctx.data.error(f"no perturbation ({', '.join(chosen)}) changed any of the {n_rows} prompts, so "
                             "there is nothing to measure", col="prompt",
                             fix="add perturbations (typos changes every text), raise rate, or use other data")
    _add_maxima(res, stats, ("metric_drop", "flip_rate"), n_rows)
    worst_p = max(stats, key=lambda p: (stats[p]["metric_drop"][0], stats[p]["flip_rate"][0]))
    res.notes.append(f"worst perturbation: {worst_p} ({metric} drop {stats[worst_p]['metric_drop'][0]:.4f}, flip_rate "
                     f"{stats[worst_p]['flip_rate'][0]:.4f}); metrics per perturbation are over the rows it changed; "
                     f"drops on a 0-1 scale{' (BLEU/chrF divided by 100)' if corpus else ''}")
    res.notes.append(f"greedy decoding, at most {prm['max_new_tokens']} new tokens, stop {list(prm['stop'] or [])!r}, "
                     f"{'chat template' if chat else 'plain-text prompts'}; rate {prm['rate']:g} for "
                     f"{', '.join(p for p in chosen if p in RATED) or 'none'}; 95% CIs: paired percentile bootstrap "
                     f"over rows ({prm['bootstrap']} resamples); character noise by nlpaug {_nlpaug_version()}")
    worst.sort(key=lambda w: (w[0], w[1], w[2]))
    unit = f"sentence {metric}" if corpus else metric
    ev = [{"perturbation": name, "row": i, "original": originals[i][:300], "perturbed": variants[name][i][:300],
           "references": " | ".join(refs[i])[:300], "answer before": answer[originals[i]][:300],
           "answer after": answer[variants[name][i]][:300], f"{unit} before": round(a, 4), f"{unit} after": round(b_, 4)}
          for _, name, i, a, b_ in worst[: prm["worst"]]]
    res.evidence = [{"title": f"{metric} drop and flip rate per perturbation", "rows": summary},
                    {"title": f"Worst examples (largest fall of the per-row {unit}, then changed answers)", "rows": ev}]
    res.figures[f"{metric} drop and flip rate per perturbation"] = _bars_svg(stats, "metric_drop",
                                                                            f"{metric} drop and flip rate")
    if prm["attack"]:
        res.notes.append("attack: only for classifiers; skipped for generation")
    ctx.progress(1.0)
    return res


# ---------------------------------------------------------------------- adversarial attack

def _word_candidates(word: str, seed: int) -> list[str]:
    """Replacements for one whitespace-separated token: its lexicon synonyms (case kept, punctuation around
    it kept) and one keyboard typo (nlpaug, seeded)."""
    lex = lexicon()
    m = re.fullmatch(r"([^\w]*)([\w'’-]+)([^\w]*)", word)
    out = []
    if m:
        core = m.group(2)
        for syn in lex["synonyms"].get(core.lower(), []):
            out.append(m.group(1) + _match_case(syn, core) + m.group(3))
    if len(word) >= 3:
        typo = _via_nlpaug("typos", word, 1.0, seed)
        if typo != word:
            out.append(typo)
    return list(dict.fromkeys(out))


def attack(ctx: CheckContext, originals: list[str], labels: np.ndarray, res: CheckResult) -> None:
    """Greedy word substitution under a query budget (the TextAttack recipe's shape: transformation = lexicon
    synonyms + keyboard typos, constraint = at most ``rate`` of the words (at least one) and each word once,
    search = greedy, goal = untargeted misclassification). Each step scores every candidate edit of every row
    still standing in one batched pass and keeps the edit that lowers p(label) most."""
    from scipy.special import softmax
    prm = ctx.params
    budget = prm["attack_budget"]
    logits0 = ctx.model.class_logits(originals)
    ok = [i for i in range(len(originals)) if int(np.argmax(logits0[i])) == labels[i]]
    state = {}
    for i in ok:
        words = originals[i].split(" ")
        state[i] = {"words": words, "done": set(), "queries": 0, "success": False,
                    "max_edits": max(1, math.ceil(prm["rate"] * len([w for w in words if w])))}
    active = [i for i in ok]
    while active:
        batch, owners = [], []
        for i in active:
            st = state[i]
            cands = []
            for j, w in enumerate(st["words"]):
                if j in st["done"] or not w:
                    continue
                for c in _word_candidates(w, text_seed(ctx.seed, f"attack:{j}", originals[i])):
                    cands.append((j, c))
            cands = cands[: budget - st["queries"]]
            for j, c in cands:
                words = list(st["words"])
                words[j] = c
                batch.append(" ".join(words))
                owners.append((i, j, c))
            st["queries"] += len(cands)
        if not batch:
            break
        probs = softmax(np.asarray(ctx.model.class_logits(batch), dtype=float), axis=-1)
        best: dict[int, tuple] = {}
        for k, (i, j, c) in enumerate(owners):
            p = float(probs[k, labels[i]])
            if i not in best or p < best[i][0]:
                best[i] = (p, j, c, int(np.argmax(probs[k])))
        nxt = []
        for i in active:
            st = state[i]
            if i not in best:
                continue
            p, j, c, pr = best[i]
            st["words"][j] = c
            st["done"].add(j)
            st["p"] = p
            if pr != labels[i]:
                st["success"] = True
            elif len(st["done"]) < st["max_edits"] and st["queries"] < budget:
                nxt.append(i)
        active = nxt
    if not ok:
        res.notes.append("attack: the model gets no row right, so there is nothing to attack")
        return
    success = np.array([float(state[i]["success"]) for i in ok])
    seed = text_seed(ctx.seed, "attack", "bootstrap") % 2 ** 32
    b = paired_bootstrap_ci({"s": success}, seed, prm["bootstrap"])["s"]
    res.add("attack_success_rate", b[0], b[1:], len(ok), False)
    res.add("attack_queries", float(np.mean([state[i]["queries"] for i in ok])), None, len(ok), None)
    won = [i for i in ok if state[i]["success"]]
    if won:
        res.add("attack_words", float(np.mean([len(state[i]["done"]) / max(1, len(state[i]["words"])) for i in won])),
                None, len(won), None)
    res.records["attack_success"] = success.astype(int).tolist()
    p0 = softmax(np.asarray(logits0, dtype=float), axis=-1)
    res.evidence.append({"title": f"Successful attacks (greedy word substitution, budget {budget} queries a row)",
                         "rows": [{"row": i, "original": originals[i][:300],
                                   "adversarial": " ".join(state[i]["words"])[:300], "label": int(labels[i]),
                                   "p(label) before": round(float(p0[i, labels[i]]), 4),
                                   "p(label) after": round(state[i]["p"], 4), "queries": state[i]["queries"]}
                                  for i in won[: prm["worst"]]]})
    res.notes.append(f"attack: {len(won)} of {len(ok)} correctly predicted rows turned wrong; at most "
                     f"{prm['rate']:g} of the words (at least one) changed, {budget} queries a row")


def _nlpaug_version() -> str:
    try:
        from importlib.metadata import version
        return version("nlpaug")
    except Exception:  # pragma: no cover
        return "?"


def _bars_svg(stats: dict, drop: str = "acc_drop", title: str = "accuracy drop and flip rate") -> str:
    from auditkit.figures import new_figure, to_svg
    names = list(stats)
    fig, ax = new_figure(max(4.0, 0.7 * len(names) + 2), 3.2)
    x = np.arange(len(names))
    tol_drop = MAX_ACC_DROP if drop == "acc_drop" else MAX_METRIC_DROP
    for off, metric, colour, tol in ((-0.2, drop, "#c0392b", tol_drop),
                                     (0.2, "flip_rate", "#2c7fb8", MAX_FLIP_RATE)):
        v = np.array([stats[p][metric][0] for p in names])
        lo = np.array([stats[p][metric][1] for p in names])
        hi = np.array([stats[p][metric][2] for p in names])
        ax.bar(x + off, v, width=0.4, color=colour, label=metric.replace("_", " "),
               yerr=np.vstack([np.maximum(v - lo, 0), np.maximum(hi - v, 0)]), capsize=2)
        ax.axhline(tol, color=colour, linestyle=":", linewidth=1)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks(x, names, rotation=35, ha="right", fontsize=7)
    ax.set_ylabel("share of changed rows")
    ax.set_title(f"{title} (95% CI; dotted: default gate)", fontsize=8)
    ax.legend(fontsize=7)
    return to_svg(fig)



def _add_maxima(res: CheckResult, stats: dict, metrics: tuple, n_rows: int) -> None:
    """``{metric}_max`` over the perturbations: the largest value, and the largest of each CI bound."""
    for metric in metrics:
        vals = [stats[p][metric] for p in stats]
        res.add(f"{metric}_max", max(v[0] for v in vals), (max(v[1] for v in vals), max(v[2] for v in vals)),
                n_rows, False)

@hookimpl
def auditkit_register_checks(register):
    register(Robustness)
