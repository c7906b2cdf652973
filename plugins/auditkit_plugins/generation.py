"""The ``generation`` check: accuracy of what a causal or seq2seq LM generates, against references.

Data rows ``{"prompt", "reference"}``; ``reference`` is one string or a list of accepted strings. The model
answers each prompt by greedy decoding (``handle.generate``, temperature 0) up to ``max_new_tokens`` tokens
or a ``stop`` sequence (default ``"\\n\\n"``, lm-eval's ``generate_until`` default); the answer is stripped of
surrounding whitespace and scored against the references:

- ``exact_match`` and ``f1``: SQuAD v1.1 (normalise case, punctuation and the articles a/an/the; token F1
  over the bag of normalised tokens), the maximum over the references; in [0, 1];
- ``rouge_l``: ROUGE-L F-measure (``rouge_score``), the maximum over the references; in [0, 1];
- ``bleu`` and ``chrf``: sacreBLEU's corpus BLEU and chrF over all the references; 0-100, as sacreBLEU
  reports them.

The metrics are local ``evaluate`` modules (``auditkit_plugins/generation_metrics``): nothing is downloaded.
95% CIs: percentile bootstrap over examples (``auditkit.stats``); for BLEU and chrF each resample sums the
examples' sufficient statistics (n-gram matches and totals, lengths) and recomputes the corpus score, as
sacreBLEU's own paired bootstrap does. Per-example records (the scores, and ``sentence_bleu`` /
``sentence_chrf``, plus the prompt, references and generation) let ``auditkit compare`` pair two runs.

Prompts: with a chat template (``chat_template`` true, or unset and the tokenizer has one) each prompt
becomes chat messages, the few-shot examples as earlier user/assistant turns; without one, few-shot
examples are written before the prompt as ``prompt + delimiter + reference + fewshot_delimiter`` (lm-eval's
``target_delimiter`` and ``fewshot_delimiter``). Few-shot examples come from ``few_shot`` (a file or
``builtin:NAME`` of ``{prompt, reference}`` rows; the first ``n_shot``, 0 = all; the first reference of a list).

Default gates: WARN when ``f1`` is 0 (the model gets no answer token right: a broken prompt format or chat
template looks like this); against a base model, FAIL when even the upper CI bound of ``f1`` is below the
base's value and WARN on a point drop of more than 5 points. The baseline gates are dropped, with a note,
when the run has no base model.
"""
from __future__ import annotations

import numpy as np

from auditkit.api import (Check, CheckContext, CheckResult, MetricSpec, Param, check_distinct_names,
                          check_stop_sequences)
from auditkit.errors import AuditInputError
from auditkit.hookspecs import hookimpl
from auditkit.stats import bootstrap_ci, mean_ci
from auditkit_plugins import generation_metrics as gm

GENERATIVE = ("causal-lm", "seq2seq-lm")
#: the default gate's tolerance against the base model (points of F1)
MAX_F1_DROP = 0.05


# ---------------------------------------------------------------------- data

def validate_rows(ds, params: dict | None = None) -> None:
    """``prompt`` is non-empty text and ``reference`` a non-empty string or a non-empty list of strings, in
    every row; else an AuditInputError naming the file, the row and the fix."""
    if not ds.rows:
        raise ds.error("the dataset is empty", fix="give it at least one row")
    for i, row in enumerate(ds.rows):
        for col in ("prompt", "reference"):
            if col not in row:
                have = ", ".join(sorted(map(str, row))) or "none"
                raise ds.error(f"missing column {col!r} for generation data {{prompt, reference}} (columns: {have})",
                               i, col, fix="rename it with columns: {%s: YOUR_COLUMN} in the suite" % col)
        p = row["prompt"]
        if not isinstance(p, str) or not p.strip():
            raise ds.error(f"column 'prompt' must be non-empty text, got {p!r}", i, "prompt",
                           fix="give every row a prompt, or remove the row")
        ref = row["reference"]
        if isinstance(ref, str):
            ok = bool(ref.strip())
        elif isinstance(ref, list):
            ok = bool(ref) and all(isinstance(r, str) and r.strip() for r in ref)
        else:
            ok = False
        if not ok:
            raise ds.error(f"column 'reference' must be a non-empty string or a non-empty list of strings, got "
                           f"{ref!r}", i, "reference", fix="write the expected answer as text, e.g. \"Paris\", or "
                           "a list of accepted answers")


def references(row: dict) -> list[str]:
    ref = row["reference"]
    return [ref] if isinstance(ref, str) else list(ref)


def _load_few_shot(spec: str, base_dir: str | None, place: str):
    from auditkit.data import load_dataset
    from auditkit.plugins import registry
    ds = load_dataset(spec, registry(), base_dir=base_dir, file=None, place=place)
    validate_rows(ds)
    return ds


# ---------------------------------------------------------------------- prompts

def build_prompts(rows: list[dict], shots: list[dict], chat: bool, delimiter: str, fewshot_delimiter: str) -> list:
    """Each row's prompt: chat messages (few-shot examples as earlier turns) or one text (examples first)."""
    out = []
    for row in rows:
        if chat:
            msgs = []
            for ex in shots:
                msgs += [{"role": "user", "content": ex["prompt"]},
                         {"role": "assistant", "content": references(ex)[0]}]
            out.append(msgs + [{"role": "user", "content": row["prompt"]}])
        else:
            head = "".join(ex["prompt"] + delimiter + references(ex)[0] + fewshot_delimiter for ex in shots)
            out.append(head + row["prompt"])
    return out


def use_chat_template(handle, setting) -> bool:
    """``setting`` True/False as given; None (auto): when the tokenizer has a chat template (and the handle
    does not carry the suite's ``model.chat_template: false``)."""
    has = getattr(handle, "has_chat_template", None)  # an API model: its server holds the template
    if has is None:
        has = bool(getattr(getattr(handle, "tokenizer", None), "chat_template", None))
    if setting is None:
        return has and getattr(handle, "chat_template", True) is not False
    if setting and not has:
        raise AuditInputError(f"chat_template is true but the tokenizer of {getattr(handle, 'source', 'the model')} "
                              "has no chat template", place="chat_template",
                              fix="leave chat_template out (auto) or set it to false")
    return bool(setting)


# ---------------------------------------------------------------------- scoring

def score(metrics, predictions: list[str], refs: list[list[str]], seed: int, n_resamples: int) -> dict:
    """Per metric: value, 95% CI, per-example scores (see the module docstring)."""
    raw = gm.compute(metrics, predictions, refs)
    out = {}
    for name in metrics:
        r = raw[name]
        per = np.asarray(r["per_example"], dtype=float)
        if name in gm.CORPUS_LEVEL:
            stats = np.asarray(r["stats"], dtype=np.int64)

            def corpus(idx, stats=stats, name=name):
                return gm.corpus_from_stats(name, stats[np.asarray(idx, dtype=int)].sum(axis=0))
            idx = np.arange(len(predictions))
            if len(idx) > 1:
                ci = bootstrap_ci(corpus, idx, seed=seed, n_resamples=n_resamples)
            else:
                ci = (r["value"], r["value"])
        else:
            ci = mean_ci(per, seed=seed, n_resamples=n_resamples)  # constant sample: zero width
        out[name] = {"value": r["value"], "ci": ci, "per_example": per, "signature": r.get("signature")}
    return out


# ---------------------------------------------------------------------- the check

class GenerationAccuracy(Check):
    name = "generation"
    description = ("Generation-based accuracy: the model's greedy answers scored against references by exact "
                   "match and token F1 (SQuAD), ROUGE-L, BLEU and chrF (sacreBLEU), with bootstrap CIs.")
    tasks = GENERATIVE
    needs = frozenset({"generate"})
    params = {
        "metrics": Param("list", list(gm.METRICS), "metrics to compute (default: all)", members=gm.METRICS),
        "max_new_tokens": Param("int", 32, "most tokens generated per answer", ge=1, le=4096),
        "stop": Param("list", ["\n\n"], "stop sequences: the answer ends before the first one (lm-eval's default "
                      "'\\n\\n'); [] for none"),
        "few_shot": Param("str", None, "few-shot examples: a .jsonl/.csv/.parquet file (relative to the suite) or "
                          "builtin:NAME of {prompt, reference} rows"),
        "n_shot": Param("int", 0, "how many few-shot examples to use, from the top of few_shot (0 = all)", ge=0),
        "chat_template": Param("bool", None, "true: always apply the tokenizer's chat template; false: never; "
                               "unset: when the tokenizer has one"),
        "delimiter": Param("str", " ", "without a chat template: text between a few-shot prompt and its answer"),
        "fewshot_delimiter": Param("str", "\n\n", "without a chat template: text after each few-shot example"),
        "max_examples": Param("int", 0, "score at most this many rows (0 = all)", ge=0),
        "bootstrap": Param("int", 1000, "bootstrap resamples for the 95% CIs", ge=100),
        "worst": Param("int", 10, "how many lowest-scoring examples to show", ge=0),
    }
    metrics = {
        "exact_match": MetricSpec("SQuAD exact match after normalisation (case, punctuation, articles), best "
                                  "reference; 0-1"),
        "f1": MetricSpec("SQuAD token F1 after normalisation, best reference; 0-1"),
        "rouge_l": MetricSpec("ROUGE-L F-measure (rouge_score), best reference; 0-1"),
        "bleu": MetricSpec("sacreBLEU corpus BLEU over all references; 0-100"),
        "chrf": MetricSpec("sacreBLEU corpus chrF over all references; 0-100"),
        "gen_tokens": MetricSpec("mean number of generated tokens per answer", None),
        "truncated": MetricSpec("share of answers cut by max_new_tokens (no stop sequence or end of text)", None),
    }
    default_gates = [
        {"when": "f1 > 0", "severity": "warn"},
        "f1.ci_high >= baseline.f1",
        {"when": f"f1 >= baseline.f1 - {MAX_F1_DROP}", "severity": "warn"},
    ]

    @classmethod
    def validate_params(cls, params: dict, base_dir: str | None = None, prefix: str = "") -> None:
        """Metrics named once, at least one; stop sequences non-empty text; the few-shot file loads and holds
        ``{prompt, reference}`` rows, at least ``n_shot`` of them."""
        check_distinct_names(params, "metrics", gm.METRICS, "metric", prefix)
        check_stop_sequences(params, prefix)
        n_shot = params.get("n_shot") or 0
        spec = params.get("few_shot")
        if spec is None:
            if n_shot:
                raise AuditInputError(f"n_shot is {n_shot} but there is no few_shot file", place=f"{prefix}n_shot",
                                      fix="add few_shot: FILE of {prompt, reference} examples, or drop n_shot")
            return
        try:
            ds = _load_few_shot(spec, base_dir, f"{prefix}few_shot")
        except AuditInputError as exc:
            if exc.file is None:
                exc.place = exc.place or f"{prefix}few_shot"
            raise
        if n_shot > len(ds.rows):
            raise AuditInputError(f"n_shot is {n_shot} but {spec} holds {len(ds.rows)} examples",
                                  place=f"{prefix}n_shot", fix=f"use n_shot <= {len(ds.rows)} (0 = all)")

    @classmethod
    def validate_data(cls, ds, params: dict | None = None) -> None:
        """Model-free check of the check's data (``{prompt, reference}`` in every row)."""
        validate_rows(ds, params)

    def run(self, ctx: CheckContext) -> CheckResult:
        prm, handle = ctx.params, ctx.model
        if handle.task not in GENERATIVE:
            raise AuditInputError(f"generation needs a causal-lm or seq2seq-lm model, not {handle.task}",
                                  place="model.task", fix="audit a causal-lm or seq2seq-lm model with this check")
        ds = ctx.data
        self.validate_data(ds, prm)
        rows = ds.rows[: prm["max_examples"]] if prm["max_examples"] else ds.rows
        shots = []
        if prm["few_shot"]:
            fs = _load_few_shot(prm["few_shot"], ctx.base_dir, f"{ctx.check_id or self.name}.few_shot")
            shots = fs.rows[: prm["n_shot"]] if prm["n_shot"] else fs.rows
        chat = use_chat_template(handle, prm["chat_template"])
        prompts = build_prompts(rows, shots, chat, prm["delimiter"], prm["fewshot_delimiter"])
        ctx.progress(0.05)
        gens = handle.generate(prompts, max_new_tokens=prm["max_new_tokens"], temperature=0.0,
                               stop=list(prm["stop"] or []), seed=ctx.seed)
        ctx.progress(0.8)
        texts = [g[0].text.strip() for g in gens]
        refs = [references(r) for r in rows]
        metrics = [m for m in gm.METRICS if m in prm["metrics"]]
        scores = score(metrics, texts, refs, ctx.seed, prm["bootstrap"])
        n = len(rows)
        res = CheckResult()
        for name in metrics:
            s = scores[name]
            res.add(name, s["value"], s["ci"], n)
            rec = f"sentence_{name}" if name in gm.CORPUS_LEVEL else name
            res.records[rec] = [round(float(x), 10) for x in s["per_example"]]
        lengths = np.array([len(g[0].token_ids) for g in gens], dtype=float)
        if lengths.any():  # an API server returns text without token ids: no length to report
            res.add("gen_tokens", float(lengths.mean()), None, n, None)
        res.add("truncated", float(np.mean([g[0].finish_reason == "length" for g in gens])), None, n, None)
        res.records.update(prompt=[r["prompt"] for r in rows], references=refs, generation=texts)
        self._evidence(res, rows, refs, texts, scores, metrics, prm["worst"])
        sig = "; ".join(f"{m}: {scores[m]['signature']}" for m in metrics if scores[m].get("signature"))
        res.notes.append(f"greedy decoding, at most {prm['max_new_tokens']} new tokens, stop "
                         f"{list(prm['stop'] or [])!r}; {'chat template' if chat else 'plain-text prompts'}"
                         f"{f', {len(shots)}-shot' if shots else ', zero-shot'}; 95% CIs: percentile bootstrap over "
                         f"examples ({prm['bootstrap']} resamples)" + (f"; sacreBLEU {sig}" if sig else ""))
        ctx.progress(1.0)
        return res

    @staticmethod
    def _evidence(res, rows, refs, texts, scores, metrics, worst) -> None:
        key = "f1" if "f1" in metrics else metrics[0]
        per = {m: scores[m]["per_example"] for m in metrics}
        order = sorted(range(len(rows)), key=lambda i: (per[key][i], i))[:worst]
        ev = []
        for i in order:
            row = {"row": i, "prompt": rows[i]["prompt"][:300], "references": " | ".join(refs[i])[:300],
                   "generation": texts[i][:300]}
            for m in metrics:
                row[m if m not in gm.CORPUS_LEVEL else f"sentence_{m}"] = round(float(per[m][i]), 4)
            ev.append(row)
        res.evidence = [{"title": f"Lowest-scoring answers (by {key if key not in gm.CORPUS_LEVEL else 'sentence_' + key})",
                         "rows": ev}]


@hookimpl
def auditkit_register_checks(register):
    register(GenerationAccuracy)
