"""The ``forgetting`` check: what did the fine-tune break? The candidate (``ctx.model``) is compared with
its base model (``ctx.baseline``) on retention data that has nothing to do with the fine-tuning task.

Causal LMs
- perplexity on a general-text corpus before (base) and after (candidate), PPL = exp(-sum log p / #tokens)
  over the corpus, and ``ppl_ratio`` = after / before (a paired bootstrap over texts gives the CIs);
- ``kl_neutral``: the mean over token positions of KL(p_base || p_cand) between the two models' full
  next-token distributions on neutral prompts (KL of a model against itself is 0), through the handle's
  ``next_token_kl`` request: both models run on the same token ids batch by batch, so memory stays
  bounded by one batch of logits per model;
- accuracy on a general multiple-choice set before and after (lm-eval ``acc``: argmax of the summed
  log-likelihood of each choice) and backward transfer for two tasks, BWT = acc_after - acc_before
  (Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory for Continual Learning"), with a paired bootstrap
  CI and McNemar's paired test (exact binomial when b + c <= 25).

Encoders (and any model with hidden states)
- linear CKA per layer between base and candidate mean-pooled hidden states on general text (Kornblith
  et al. 2019, "Similarity of Neural Network Representations Revisited"):
  CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with linear kernels K = X X^T, L = Y Y^T and
  HSIC(K, L) = <HKH, HLH>_F (H the centring matrix); equal to ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)
  for column-centred X, Y. ``cka_mean`` and ``cka_min`` summarise the layers (embeddings included); they
  carry no bootstrap CI (resampling duplicates examples, and CKA is biased upwards at small effective n);
- ``retention``: Spearman correlation between the base's and the candidate's cosine similarities of
  neutral sentence pairs (last layer, mean-pooled); ``similarity_before``/``after`` correlate each with
  the pairs' graded similarity scores.

Retention data (param ``retention``): a list whose entries are ``default`` (the built-in sets for the
model's task), ``{text: SPEC}``, ``{prompts: SPEC}``, ``{mc: SPEC}``, ``{pairs: SPEC}`` or
``{lm_eval: TASK}`` (optionally with ``limit``, ``num_fewshot``, ``batch_size``). lm-eval tasks run through
the ``lm_eval`` check on both models; their ``acc`` is pooled over the tasks into ``lm_eval_acc_before``,
``lm_eval_acc_after`` and ``lm_eval_bwt``.
The entries are checked when the suite loads, before any model (``parse_retention``): their keys, built-in
names and files; only a kind the model's task cannot take waits for the run.

Every pass over the base model goes through the model handle's cached primitives (on disk too), so a
second candidate audited against the same base does not recompute them.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np

from auditkit.api import Check, CheckContext, CheckResult, MetricSpec, Param
from auditkit.errors import AuditInputError
from auditkit.hookspecs import hookimpl
from auditkit.stats import bootstrap_ci, mcnemar, mean_ci, paired_bootstrap

#: the built-in retention sets per task
DEFAULT_RETENTION = {
    "causal-lm": [{"text": "builtin:general-text"}, {"prompts": "builtin:neutral-prompts"},
                  {"mc": "builtin:mc-general"}],
    "sequence-classification": [{"text": "builtin:general-text"}, {"pairs": "builtin:sentence-pairs"}],
    # encoder-decoders: perplexity of general text in the decoder (lm-eval's seq2seq rolling loglikelihood),
    # the decoder KL on neutral prompts and multiple choice (question in the encoder, choice in the decoder)
    "seq2seq-lm": [{"text": "builtin:general-text"}, {"prompts": "builtin:neutral-prompts"},
                   {"mc": "builtin:mc-general"}],
}
#: the check's default gates (``Forgetting.default_gates``), applied when a ``uses: forgetting`` entry has no
#: ``gates:``. Where a metric has a bootstrap CI, the failing gate reads the bound on the good side (fail only
#: when the data show the threshold crossed) and a warning reads the point estimate, so that sampling noise
#: on a few hundred retention texts warns but does not fail a release. Thresholds: perplexity on general text
#: up by more than 10%, a mean KL above 0.1 nats per token on neutral prompts, or general multiple-choice
#: accuracy down by more than 2 points; for encoders, similarity retention (Spearman) below 0.8 and a layer
#: whose representations are no longer linearly similar to the base's (CKA below 0.5; CKA has no CI, see
#: ``_cka``), with a warning when the mean CKA is below 0.8. A fine-tune that memorised noise or used a
#: destructive learning rate lands far beyond these (issue 13: retention 0.16, CKA min 0.13).
DEFAULT_GATES = {
    "causal-lm": [
        "ppl_ratio.ci_low <= 1.1", {"when": "ppl_ratio <= 1.1", "severity": "warn"},
        "kl_neutral.ci_low <= 0.1", {"when": "kl_neutral <= 0.1", "severity": "warn"},
        "bwt.ci_high >= -0.02", {"when": "bwt >= -0.02", "severity": "warn"},
    ],
    "seq2seq-lm": [
        "ppl_ratio.ci_low <= 1.1", {"when": "ppl_ratio <= 1.1", "severity": "warn"},
        "kl_neutral.ci_low <= 0.1", {"when": "kl_neutral <= 0.1", "severity": "warn"},
        "bwt.ci_high >= -0.02", {"when": "bwt >= -0.02", "severity": "warn"},
    ],
    "sequence-classification": [
        "retention.ci_high >= 0.8", {"when": "retention >= 0.8", "severity": "warn"},
        "cka_min >= 0.5", {"when": "cka_mean >= 0.8", "severity": "warn"},
    ],
}
KINDS = ("text", "prompts", "mc", "pairs", "lm_eval")
LM_EVAL_KEYS = ("lm_eval", "limit", "num_fewshot", "batch_size", "allow_code")


# ---------------------------------------------------------------------- measures

def linear_gram(x: np.ndarray) -> np.ndarray:
    """The linear kernel X X^T in float64."""
    x = np.asarray(x, dtype=np.float64)
    return x @ x.T


def _centre(k: np.ndarray) -> np.ndarray:
    """H K H with H = I - 11^T / n."""
    return k - k.mean(0, keepdims=True) - k.mean(1, keepdims=True) + k.mean()


def cka_from_grams(k: np.ndarray, l: np.ndarray) -> float:
    """Linear CKA from two Gram matrices (Kornblith et al. 2019, eq. 3 with linear kernels)."""
    kc, lc = _centre(k), _centre(l)
    denom = np.sqrt(np.sum(kc * kc) * np.sum(lc * lc))
    return float(np.sum(kc * lc) / denom) if denom > 0 else float("nan")


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA between representations ``x`` [N, D1] and ``y`` [N, D2] of the same N examples.

    Computed in whichever form is smaller: the feature form ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)
    on column-centred X, Y when N exceeds both widths, the Gram form otherwise (the two are equal).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape[0] <= max(x.shape[1], y.shape[1]):
        return cka_from_grams(linear_gram(x), linear_gram(y))
    x, y = x - x.mean(0), y - y.mean(0)
    denom = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(np.linalg.norm(y.T @ x) ** 2 / denom) if denom > 0 else float("nan")


def neutral_kl(base, cand, texts: list[str]) -> list[np.ndarray]:
    """Per text, KL(p_base || p_cand) of the next-token distributions at every position.

    The engine's :meth:`~auditkit.models.ModelHandle.next_token_kl` request: both models read the same
    token ids batch by batch, and the answer is cached on the candidate's handle under the base's
    fingerprint.
    """
    return cand.next_token_kl(base, texts)


def corpus_logprobs(handle, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per text: the summed token log-probability and the number of scored tokens."""
    lps = handle.token_logprobs(texts)
    return (np.array([float(np.sum(lp)) for lp in lps]), np.array([len(lp) for lp in lps], dtype=float))


def _ppl(sums: np.ndarray, counts: np.ndarray) -> float:
    return float(np.exp(-np.sum(sums) / max(np.sum(counts), 1.0)))


def _spearman(a, b) -> float:
    from scipy.stats import spearmanr
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def _boot(stat, *arrays, seed: int, n: int) -> tuple[float, float]:
    """Percentile-bootstrap 95% CI with ``n`` resamples (the ``bootstrap`` param, at least 100)."""
    return bootstrap_ci(stat, *arrays, seed=seed, n_resamples=n)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return np.sum(a * b, axis=1) / np.maximum(na * nb, 1e-12)


# ---------------------------------------------------------------------- figures

def _before_after_svg(rows: list[tuple[str, tuple, tuple]], ylabel: str) -> str:
    """Grouped bars (before, after) per measure with 95% CI whiskers."""
    from auditkit.figures import new_figure, to_svg
    fig, ax = new_figure(max(3.2, 1.6 + 1.3 * len(rows)), 3.0)
    x = np.arange(len(rows))
    for k, (label, colour) in enumerate((("before (base)", "#94a3b8"), ("after (candidate)", "#2563eb"))):
        vals = np.array([r[1 + k][0] for r in rows], dtype=float)
        lo = np.array([r[1 + k][1] if r[1 + k][1] is not None else r[1 + k][0] for r in rows], dtype=float)
        hi = np.array([r[1 + k][2] if r[1 + k][2] is not None else r[1 + k][0] for r in rows], dtype=float)
        err = np.vstack([np.clip(vals - lo, 0, None), np.clip(hi - vals, 0, None)])
        ax.bar(x + (k - 0.5) * 0.38, vals, 0.38, yerr=err, capsize=3, color=colour, label=label)
    ax.set_xticks(x, [r[0] for r in rows])
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8, frameon=False)
    return to_svg(fig)


def _cka_svg(per_layer: list[float]) -> str:
    from auditkit.figures import new_figure, to_svg
    fig, ax = new_figure(4.8, 2.8)
    ax.plot(range(len(per_layer)), per_layer, marker="o", color="#2563eb")
    ax.set_ylim(min(0.0, min(per_layer) - 0.05), 1.05)
    ax.set_xticks(range(len(per_layer)), ["emb"] + [str(i) for i in range(1, len(per_layer))])
    ax.set_xlabel("layer")
    ax.set_ylabel("linear CKA (base vs candidate)")
    ax.axhline(1.0, color="#94a3b8", lw=0.8, ls="--")
    return to_svg(fig)


# ---------------------------------------------------------------------- the check

class Forgetting(Check):
    name = "forgetting"
    description = ("Catastrophic forgetting against the base model on unrelated retention data: perplexity "
                   "ratio, KL on neutral prompts and backward transfer (causal LMs); per-layer linear CKA and "
                   "similarity retention (encoders); any lm-eval task as retention data.")
    params = {
        "retention": Param("list", None, "retention data: 'default' (built-in sets), {text|prompts|mc|pairs: "
                                         "SPEC}, {lm_eval: TASK, limit: N}; none = the built-in sets"),
        "max_examples": Param("int", 0, "use at most this many rows of each retention set (0 = all)", ge=0),
        "bootstrap": Param("int", 1000, "bootstrap resamples for the 95% CIs", ge=100),
        "layer": Param("int", -1, "hidden layer whose mean-pooled states give sentence similarities"),
    }
    metrics = {
        "ppl_before": MetricSpec("perplexity of the base model on general text", False),
        "ppl_after": MetricSpec("perplexity of the candidate on general text", False),
        "ppl_ratio": MetricSpec("ppl_after / ppl_before (1 = unchanged)", False),
        "kl_neutral": MetricSpec("mean KL(p_base || p_cand) per token on neutral prompts, in nats", False),
        "acc_before": MetricSpec("base accuracy on general multiple choice (lm-eval acc)"),
        "acc_after": MetricSpec("candidate accuracy on general multiple choice (lm-eval acc)"),
        "bwt": MetricSpec("backward transfer acc_after - acc_before (negative = forgotten)"),
        "mcnemar_p": MetricSpec("McNemar p-value of before vs after correctness", None),
        "cka_mean": MetricSpec("mean over layers of linear CKA between base and candidate hidden states"),
        "cka_min": MetricSpec("lowest per-layer linear CKA between base and candidate hidden states"),
        "retention": MetricSpec("Spearman of base vs candidate cosine similarities of neutral sentence pairs"),
        "similarity_before": MetricSpec("Spearman of base cosine similarities with the graded pair scores"),
        "similarity_after": MetricSpec("Spearman of candidate cosine similarities with the graded pair scores"),
        "lm_eval_acc_before": MetricSpec("base acc pooled over the lm-eval retention tasks"),
        "lm_eval_acc_after": MetricSpec("candidate acc pooled over the lm-eval retention tasks"),
        "lm_eval_bwt": MetricSpec("lm_eval_acc_after - lm_eval_acc_before"),
        "lm_eval_mcnemar_p": MetricSpec("McNemar p-value on the lm-eval retention tasks", None),
    }
    needs_data = False
    uses_baseline = True
    requires_baseline = True
    default_gates = DEFAULT_GATES

    def run(self, ctx: CheckContext) -> CheckResult:
        if ctx.baseline is None:
            raise AuditInputError(f"check {ctx.check_id or self.name!r} compares the candidate with its base model, "
                                  "but there is no base model", place=f"{ctx.check_id or self.name}",
                                  fix="add a finetune: section, model.baseline: or --baseline")
        plan = self._plan(ctx)
        res = CheckResult()
        bars: list[tuple[str, tuple, tuple]] = []
        steps = max(len(plan), 1)
        for k, (kind, spec) in enumerate(plan):
            if kind == "lm_eval":
                self._lm_eval(ctx, spec, res, bars)
            else:
                rows = self._rows(ctx, kind, spec)
                getattr(self, "_" + kind)(ctx, rows, spec, res, bars)
            ctx.progress((k + 1) / steps)
        ppl_bars = [b for b in bars if b[0] == "perplexity"]
        acc_bars = [b for b in bars if b[0] != "perplexity"]
        if ppl_bars:
            res.figures["perplexity before / after"] = _before_after_svg(ppl_bars, "perplexity")
        if acc_bars:
            res.figures["before / after"] = _before_after_svg(acc_bars, "score")
        return res

    # ------------------------------------------------------------------ planning
    @classmethod
    def validate_params(cls, params: dict, base_dir: str | None = None, prefix: str = "") -> None:
        """The ``retention`` entries, before any model loads: their shape and keys, built-in names that exist
        and files that exist (relative to the suite's folder), lm-eval entries as the ``lm_eval`` check
        validates its ``task``. What needs the model (a causal-only kind for an encoder) waits for the run.

        Raises AuditInputError placed at ``PREFIX + "retention"``."""
        parse_retention(params.get("retention"), base_dir, f"{prefix}retention")

    def _plan(self, ctx: CheckContext) -> list[tuple[str, object]]:
        """The retention entries as (kind, spec) pairs, validated, one dataset per kind."""
        where = f"{ctx.check_id or self.name}.retention"
        task = ctx.model.task
        plan: list[tuple[str, object]] = []
        for kind, spec in parse_retention(ctx.params.get("retention"), ctx.base_dir, where):
            if kind == "default":
                plan += [next(iter(e.items())) for e in DEFAULT_RETENTION[task]]
            else:
                plan.append((kind, spec))
        if ctx.data is not None:  # a check-level data: replaces the retention set of its kind
            plan.append((self._kind_of(ctx.data, task), ctx.data))
        seen: dict[str, object] = {}
        for kind, spec in plan:
            if kind != "lm_eval":
                seen[kind] = spec  # the last one of a kind wins (data: overrides the defaults)
        plan = [(k, s) for k, s in plan if k == "lm_eval" or seen.get(k) is s]
        plan = _dedupe(plan)
        lm_only = {"prompts", "mc"}  # causal and seq2seq LMs; lm_eval: causal LMs only
        for kind, _ in plan:
            if (kind in lm_only and task == "sequence-classification") or (kind == "lm_eval" and task != "causal-lm"):
                raise AuditInputError(f"retention kind {kind!r} needs a causal LM, but the model is {task}",
                                      place=where, fix="use text: and pairs: for encoders")
        if not plan:
            raise AuditInputError("no retention data", place=where, fix="leave retention unset for the built-in sets")
        return plan

    @staticmethod
    def _kind_of(ds, task: str) -> str:
        if ds.has("question", "choices"):
            return "mc"
        if ds.has("text_a", "text_b"):
            return "pairs"
        if ds.has("text"):
            return "text"
        raise ds.error("cannot tell what kind of retention data this is (columns: "
                       f"{', '.join(ds.columns) or 'none'})",
                       fix="give {text} rows, {question,choices,label} rows or {text_a,text_b[,similarity]} rows")

    def _rows(self, ctx: CheckContext, kind: str, spec) -> list[dict]:
        ds = spec if not isinstance(spec, str) else ctx.load_data(spec)
        if kind == "mc":
            ds.require_choices()
        elif kind == "pairs":
            ds.require("text_a", "text_b", fmt="sentence pairs")
        else:
            ds.require("text", fmt="text")
        n = ctx.params.get("max_examples") or 0
        return ds.rows[:n] if n else ds.rows

    # ------------------------------------------------------------------ causal LMs
    def _text(self, ctx: CheckContext, rows: list[dict], spec, res: CheckResult, bars: list) -> None:
        texts = [r["text"] for r in rows]
        if ctx.model.task == "sequence-classification":
            return self._cka(ctx, texts, res)
        sb, nb = corpus_logprobs(ctx.baseline, texts)
        sc, nc = corpus_logprobs(ctx.model, texts)
        if not np.array_equal(nb, nc):
            raise ValueError("the base and the candidate score different numbers of tokens on the same text")
        seed, b = ctx.seed, ctx.params["bootstrap"]
        before, after = _ppl(sb, nb), _ppl(sc, nc)
        ci_b = _boot(_ppl, sb, nb, seed=seed, n=b)
        ci_a = _boot(_ppl, sc, nc, seed=seed, n=b)
        ratio = lambda s0, s1, n: float(np.exp((np.sum(s0) - np.sum(s1)) / max(np.sum(n), 1.0)))  # noqa: E731
        ci_r = (1.0, 1.0) if np.array_equal(sb, sc) else _boot(ratio, sb, sc, nb, seed=seed, n=b)
        n = len(texts)
        res.add("ppl_before", before, ci_b, n, False)
        res.add("ppl_after", after, ci_a, n, False)
        res.add("ppl_ratio", ratio(sb, sc, nb), ci_r, n, False)
        bars.append(("perplexity", (before, *ci_b), (after, *ci_a)))
        per_tok = (sc - sb) / np.maximum(nb, 1.0)
        worst = np.argsort(per_tok, kind="stable")[:10]
        res.evidence.append({"title": "General text the candidate finds hardest, relative to the base", "rows": [
            {"row": int(i), "text": texts[i][:200], "nll_before": round(-sb[i] / max(nb[i], 1), 4),
             "nll_after": round(-sc[i] / max(nb[i], 1), 4)} for i in worst]})

    def _prompts(self, ctx: CheckContext, rows: list[dict], spec, res: CheckResult, bars: list) -> None:
        texts = [r["text"] for r in rows]
        kls = neutral_kl(ctx.baseline, ctx.model, texts)
        sums = np.array([float(np.sum(k)) for k in kls])
        counts = np.array([len(k) for k in kls], dtype=float)
        per_token = lambda s, c: float(np.sum(s) / max(np.sum(c), 1.0))  # noqa: E731
        value = per_token(sums, counts)
        ci = (value, value) if not np.any(sums) else _boot(per_token, sums, counts, seed=ctx.seed,
                                                           n=ctx.params["bootstrap"])
        res.add("kl_neutral", value, ci, len(texts), False)
        means = sums / np.maximum(counts, 1.0)
        top = np.argsort(-means, kind="stable")[:10]
        res.evidence.append({"title": "Neutral prompts whose next-token distributions moved most", "rows": [
            {"row": int(i), "prompt": texts[i][:200], "mean_kl": round(float(means[i]), 5),
             "kl_last_token": round(float(kls[i][-1]), 5) if len(kls[i]) else None} for i in top]})

    def _mc(self, ctx: CheckContext, rows: list[dict], spec, res: CheckResult, bars: list) -> None:
        from auditkit_plugins.accuracy import multiple_choice_scores
        before, _, ll_b = multiple_choice_scores(ctx.baseline, rows)
        after, _, ll_a = multiple_choice_scores(ctx.model, rows)
        self._paired_accuracy(ctx, before, after, res, bars, prefix="", label="multiple choice")
        res.records["correct"] = after.astype(int).tolist()
        res.records["correct_before"] = before.astype(int).tolist()
        forgotten = [i for i in range(len(rows)) if before[i] == 1 and after[i] == 0][:10]
        res.evidence.append({"title": "Multiple-choice items answered right before and wrong after", "rows": [
            {"row": i, "question": rows[i]["question"][:200], "answer": rows[i]["choices"][int(rows[i]["label"])],
             "chosen_after": rows[i]["choices"][int(np.argmax(ll_a[i]))]} for i in forgotten]})

    def _paired_accuracy(self, ctx, before: np.ndarray, after: np.ndarray, res: CheckResult, bars: list,
                         prefix: str, label: str) -> None:
        n = len(before)
        ci_b, ci_a = mean_ci(before, ctx.seed), mean_ci(after, ctx.seed)
        res.add(f"{prefix}acc_before", before.mean(), ci_b, n)
        res.add(f"{prefix}acc_after", after.mean(), ci_a, n)
        pb = paired_bootstrap(before, after, seed=ctx.seed, n_resamples=ctx.params["bootstrap"])
        res.add(f"{prefix}bwt", pb["delta"], (pb["ci_low"], pb["ci_high"]), n)
        res.add(f"{prefix}mcnemar_p", mcnemar(before, after)["p_value"], None, n, None)
        bars.append((label, (before.mean(), *ci_b), (after.mean(), *ci_a)))

    def _lm_eval(self, ctx: CheckContext, entry: dict, res: CheckResult, bars: list) -> None:
        """Run the lm_eval check on both models (its results cached on each handle) and pool acc."""
        from auditkit_plugins.lm_eval_task import LmEvalTask, task_file
        params = {name: p.default for name, p in LmEvalTask.params.items()}
        params["task"] = str(entry["lm_eval"])
        params["limit"] = int(entry.get("limit", ctx.params["max_examples"] or 0))
        for key in ("num_fewshot", "batch_size"):
            if key in entry:
                params[key] = int(entry[key])
        params["allow_code"] = bool(entry.get("allow_code", False))  # part of the memo key below
        task = params["task"]
        path = task_file(task, ctx.base_dir)
        # a task file's content is part of the cache key: editing the task re-runs it
        content = path.read_text() if task.endswith((".yaml", ".yml")) and path.exists() else None

        def run_on(handle):
            def compute():
                sub = dataclasses.replace(ctx, model=handle, baseline=None, data=None, params=dict(params),
                                          progress=lambda f: None)
                out = LmEvalTask().run(sub)
                if "acc" not in out.metrics or "correct" not in out.records:
                    raise ValueError(f"lm-eval task {task!r} reports no per-document acc; a retention task must "
                                     "be multiple choice")
                return {"acc": out.metrics["acc"].value, "correct": np.array(out.records["correct"], dtype=np.int64)}
            return handle.memo("forgetting.lm_eval", [task, content, ctx.seed], compute, persist=True,
                               **{k: v for k, v in params.items() if k != "task"})

        before, after = run_on(ctx.baseline), run_on(ctx.model)
        cb, ca = np.asarray(before["correct"], dtype=float), np.asarray(after["correct"], dtype=float)
        if cb.shape != ca.shape:
            raise ValueError(f"lm-eval task {task!r} scored different documents on the two models")
        pooled = res.records.setdefault("lm_eval_correct_before", [])
        pooled_after = res.records.setdefault("lm_eval_correct", [])
        pooled += cb.astype(int).tolist()
        pooled_after += ca.astype(int).tolist()
        table = next((e for e in res.evidence if e.get("title") == "lm-eval retention tasks"), None)
        if table is None:
            table = {"title": "lm-eval retention tasks", "rows": []}
            res.evidence.append(table)
        table["rows"].append({"task": task, "n": int(cb.size), "acc_before": round(float(cb.mean()), 4),
                              "acc_after": round(float(ca.mean()), 4),
                              "mcnemar_p": round(mcnemar(cb, ca)["p_value"], 4)})
        bars[:] = [b for b in bars if b[0] != "lm-eval"]
        self._paired_accuracy(ctx, np.array(pooled, dtype=float), np.array(pooled_after, dtype=float), res, bars,
                              prefix="lm_eval_", label="lm-eval")

    # ------------------------------------------------------------------ encoders
    def _cka(self, ctx: CheckContext, texts: list[str], res: CheckResult) -> None:
        hb = ctx.baseline.hidden_states(texts)
        hc = ctx.model.hidden_states(texts)
        if hb.shape[0] != hc.shape[0] or hb.shape[1] != hc.shape[1]:
            raise ValueError(f"the base has {hb.shape[0] - 1} layers and the candidate {hc.shape[0] - 1}: "
                             "per-layer CKA needs the same architecture")
        # no bootstrap CI: resampling with replacement duplicates examples, which lowers the effective
        # sample size and biases linear CKA upwards, so a percentile interval need not even cover the
        # estimate; the per-layer values are reported as they are
        per_layer = [linear_cka(hb[i], hc[i]) for i in range(hb.shape[0])]
        n = len(texts)
        res.add("cka_mean", float(np.mean(per_layer)), None, n)
        res.add("cka_min", float(np.min(per_layer)), None, n)
        res.figures["per-layer CKA"] = _cka_svg(per_layer)
        res.evidence.append({"title": "Linear CKA per layer (base vs candidate, general text)", "rows": [
            {"layer": "embeddings" if i == 0 else i, "cka": round(v, 5)} for i, v in enumerate(per_layer)]})

    def _pairs(self, ctx: CheckContext, rows: list[dict], spec, res: CheckResult, bars: list) -> None:
        a, b_ = [r["text_a"] for r in rows], [r["text_b"] for r in rows]
        texts = list(dict.fromkeys(a + b_))
        where = {t: i for i, t in enumerate(texts)}
        ia, ib = [where[t] for t in a], [where[t] for t in b_]
        layer = ctx.params["layer"]
        sims = []
        for handle in (ctx.baseline, ctx.model):
            h = handle.hidden_states(texts)
            if not -h.shape[0] <= layer < h.shape[0]:
                raise AuditInputError(f"layer {layer} does not exist (the model has {h.shape[0]} hidden states)",
                                      place=f"{ctx.check_id or self.name}.layer", fix="use -1 for the last layer")
            sims.append(_cosine(h[layer][ia], h[layer][ib]))
        sb, sc = sims
        seed, nb = ctx.seed, ctx.params["bootstrap"]
        n = len(rows)
        value = _spearman(sb, sc)
        ci = (value, value) if np.array_equal(sb, sc) else _boot(_spearman, sb, sc, seed=seed, n=nb)
        res.add("retention", value, ci, n)
        gold = [r.get("similarity") for r in rows]
        if all(isinstance(g, (int, float)) and not isinstance(g, bool) for g in gold):
            g = np.asarray(gold, dtype=float)
            before, after = _spearman(g, sb), _spearman(g, sc)
            ci_b = _boot(_spearman, g, sb, seed=seed, n=nb)
            ci_a = _boot(_spearman, g, sc, seed=seed, n=nb)
            res.add("similarity_before", before, ci_b, n)
            res.add("similarity_after", after, ci_a, n)
            bars.append(("similarity (Spearman)", (before, *ci_b), (after, *ci_a)))
        moved = np.argsort(-np.abs(sc - sb), kind="stable")[:10]
        res.evidence.append({"title": "Sentence pairs whose similarity moved most", "rows": [
            {"row": int(i), "text_a": a[i][:120], "text_b": b_[i][:120], "cos_before": round(float(sb[i]), 4),
             "cos_after": round(float(sc[i]), 4)} for i in moved]})


def _data_spec(spec, base_dir: str | None, where: str, kind: str) -> None:
    """A retention data spec that exists (checked as :func:`auditkit.data.check_data_spec` does, without reading
    it); the split and the rows are read when the check runs."""
    from auditkit.data import check_data_spec
    from auditkit.plugins import registry
    check_data_spec(spec, registry(), base_dir=base_dir, place=where, what=f"{kind} retention data")


def parse_retention(entries, base_dir: str | None, where: str) -> list[tuple[str, object]]:
    """The ``retention`` param as ``(kind, spec)`` pairs (``("default", None)`` for the built-in sets, the
    whole mapping for an lm-eval entry), checked without a model: one kind per entry and only its keys
    (did-you-mean), built-in names and files that exist, lm-eval tasks and options as the ``lm_eval`` check
    takes them. Raises AuditInputError placed at ``where``."""
    from auditkit.api import did_you_mean
    from auditkit_plugins.lm_eval_task import LmEvalTask, check_task
    if entries is None:
        return [("default", None)]
    if not isinstance(entries, list):
        entries = [entries]
    out: list[tuple[str, object]] = []
    for entry in entries:
        if entry == "default":
            out.append(("default", None))
            continue
        if isinstance(entry, str):
            raise AuditInputError(f"retention entry {entry!r} does not say what kind of data it is", place=where,
                                  fix=f"write {{text: {entry}}}, {{prompts: ...}}, {{mc: ...}}, {{pairs: ...}}, "
                                      "{lm_eval: TASK} or 'default'")
        if not isinstance(entry, dict) or not entry:
            raise AuditInputError(f"retention entries must be 'default' or mappings such as {{text: SPEC}}, "
                                  f"got {entry!r}", place=where)
        if "lm_eval" in entry:
            unknown = [k for k in entry if k not in LM_EVAL_KEYS]
            if unknown:
                raise AuditInputError(f"unknown key {unknown[0]!r} in an lm_eval retention entry", place=where,
                                      fix=f"{did_you_mean(unknown[0], LM_EVAL_KEYS[1:])} (allowed: "
                                          f"{', '.join(LM_EVAL_KEYS)})")
            for key in LM_EVAL_KEYS[1:]:
                if key in entry:
                    try:
                        LmEvalTask.params[key].coerce(entry[key], f"the lm_eval entry's {key}")
                    except ValueError as exc:
                        raise AuditInputError(str(exc), place=where) from None
            check_task(entry["lm_eval"], base_dir, where, allow_code=bool(entry.get("allow_code", False)))
            out.append(("lm_eval", entry))
            continue
        kinds = [k for k in entry if k in KINDS]
        others = [k for k in entry if k not in KINDS]
        if len(kinds) != 1 or others:
            if others:
                what = f"unknown key {others[0]!r}" if not kinds else f"key {others[0]!r} besides {kinds[0]!r}"
                fix = (did_you_mean(others[0], KINDS) if not kinds else
                       f"a {kinds[0]} entry has no other key (max_examples: limits the rows of every set)")
            else:
                what, fix = f"more than one kind ({', '.join(kinds)})", "write one entry per dataset"
            raise AuditInputError(f"retention entry {entry!r} has {what}: each entry has exactly one key of "
                                  f"{', '.join(KINDS)}", place=where, fix=fix)
        kind, spec = kinds[0], entry[kinds[0]]
        _data_spec(spec, base_dir, where, kind)
        out.append((kind, spec))
    return out


def _dedupe(plan: list[tuple[str, object]]) -> list[tuple[str, object]]:
    out, seen = [], set()
    for kind, spec in plan:
        key = (kind, json.dumps(spec, sort_keys=True, default=str) if not hasattr(spec, "rows") else id(spec))
        if key not in seen:
            seen.add(key)
            out.append((kind, spec))
    return out


@hookimpl
def auditkit_register_checks(register):
    register(Forgetting)
