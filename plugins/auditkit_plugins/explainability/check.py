"""The ``explainability`` check: why the model decided, and whether that explanation can be trusted.

Methods (one module each): attention rollout and gradient-weighted attention (``rollout.py``),
Integrated Gradients on the embedding layer with its convergence delta (``integrated_gradients.py``);
their faithfulness by ERASER comprehensiveness / sufficiency against a random rationale
(``faithfulness.py``), their mutual agreement (``agreement.py``) and attention entropy / special-token
heads (``attention_stats.py``). Targets are the model's own decisions (``targets.py``).
"""
from __future__ import annotations

import numpy as np

from auditkit.api import Check, CheckContext, CheckResult, MetricSpec, Param
from auditkit.errors import AuditInputError
from auditkit.stats import bootstrap_ci, mean_ci, paired_bootstrap
from auditkit_plugins.explainability.agreement import agreement
from auditkit_plugins.explainability.attention_stats import head_statistics_of
from auditkit_plugins.explainability.faithfulness import faithfulness, random_rankings, ranking
from auditkit_plugins.explainability.integrated_gradients import baseline_token, integrated_gradients
from auditkit_plugins.explainability.rollout import grad_rollout_scores, rollout_scores
from auditkit_plugins.explainability.targets import context_texts, prepare, query_position, token_texts

METHODS = ("rollout", "grad_rollout", "ig")
TITLES = {"rollout": "attention rollout", "grad_rollout": "gradient-weighted attention (Chefer 2021)",
          "ig": "Integrated Gradients", "random": "random rationale"}
PAIRS = [(METHODS[a], METHODS[b]) for a in range(len(METHODS)) for b in range(a + 1, len(METHODS))]


def _metric_specs() -> dict[str, MetricSpec]:
    specs = {
        "comprehensiveness": MetricSpec("AOPC comprehensiveness of the primary method (param primary)"),
        "sufficiency": MetricSpec("AOPC sufficiency of the primary method (lower = more sufficient)", False),
        "comprehensiveness_vs_random": MetricSpec("the primary method's comprehensiveness minus the random "
                                                  "rationale's (paired bootstrap CI)"),
    }
    for m in METHODS:
        specs[f"{m}.comprehensiveness"] = MetricSpec(f"{TITLES[m]}: ERASER comprehensiveness, AOPC over sizes")
        specs[f"{m}.sufficiency"] = MetricSpec(f"{TITLES[m]}: ERASER sufficiency, AOPC over sizes", False)
        specs[f"{m}.comprehensiveness_vs_random"] = MetricSpec(
            f"{TITLES[m]}: comprehensiveness minus the random rationale's (paired, bootstrap CI)")
        specs[f"{m}.top1_hit"] = MetricSpec(
            f"{TITLES[m]}: share of examples holding a target_tokens word whose top-ranked token is one")
    specs["random.comprehensiveness"] = MetricSpec("random rationale: comprehensiveness, AOPC (reference)", None)
    specs["random.sufficiency"] = MetricSpec("random rationale: sufficiency, AOPC (reference)", None)
    for a, b in PAIRS:
        specs[f"spearman.{a}.{b}"] = MetricSpec(f"mean Spearman rank correlation of {a} and {b} token scores", None)
        specs[f"topk_overlap.{a}.{b}"] = MetricSpec(f"mean top-k overlap of {a} and {b} token rankings", None)
    specs["ig_delta"] = MetricSpec("IG: mean |convergence delta| (completeness error, log-prob units)", False)
    specs["ig_delta_relative"] = MetricSpec("IG: mean |delta| / mean |F(x) - F(baseline)|", False)
    specs["attention_entropy"] = MetricSpec("mean normalised attention entropy over heads (1 = uniform)", None)
    specs["special_token_heads"] = MetricSpec("share of heads putting more than special_threshold of their "
                                              "attention on special tokens", None)
    return specs


#: methods a model type cannot serve, and why (the others still run; a note says what was left out)
UNSUPPORTED = {
    "xlnet": {"grad_rollout": "the attention maps XLNet returns are copies the output does not depend on, so "
                              "they have no gradient",
              "ig": "XLNet reads its inputs time-major, which captum's embedding-layer interpolation does not "
                    "follow"},
}

class Explainability(Check):
    name = "explainability"
    description = ("Token explanations of the model's decisions (attention rollout, gradient-weighted attention, "
                   "Integrated Gradients), their ERASER faithfulness against a random rationale, agreement "
                   "between methods and attention-head statistics.")
    params = {
        "max_examples": Param("int", 32, "explain at most this many rows (the first ones; 0 = all)", ge=0),
        "methods": Param("list", list(METHODS), f"methods to run, among {', '.join(METHODS)}", members=METHODS),
        "primary": Param("str", None, "the method the unprefixed comprehensiveness/sufficiency report "
                                      "(default: ig when it runs, else the first of methods)", choices=METHODS),
        "ig_steps": Param("int", 32, "Integrated Gradients interpolation steps (captum n_steps)", ge=2),
        "ig_batch_size": Param("int", 256, "IG rows (example x step) per forward (captum internal_batch_size)",
                               ge=1),
        "rationale_sizes": Param("list", [0.1, 0.2, 0.5], "rationale sizes (share of tokens) for ERASER AOPC",
                                 gt=0, le=1),
        "topk": Param("int", 3, "k of the top-k overlap between methods", ge=1),
        "target_tokens": Param("list", [], "words (whole tokens of the tokenizer) a method should rank first "
                                                "(top1_hit), e.g. a planted shortcut"),
        "examples": Param("list", [], "row indices to show as heat maps (besides the most/least confident)", ge=0),
        "heatmaps": Param("int", 2, "how many most and least confident examples to show as heat maps", ge=0),
        "special_threshold": Param("float", 0.5, "a head 'mostly attends to special tokens' above this mass",
                                   ge=0, le=1),
        "delimiter": Param("str", " ", "text between question and answer for multiple choice (as lm-eval)"),
        "answer_tokens": Param("int", 16, "seq2seq LMs: the greedy answer explained is at most this many tokens",
                               ge=1),
    }
    metrics = _metric_specs()
    tasks = ("sequence-classification", "causal-lm", "seq2seq-lm")
    #: the methods an encoder-decoder gets: IG on the encoder embeddings for log p(the model's own answer)
    SEQ2SEQ_METHODS = ("ig",)
    # The explanations must be more faithful than a random rationale of the same size: the primary method's
    # comprehensiveness (ERASER AOPC, DeYoung et al. 2020) minus the random rationale's on the same examples,
    # whose whole paired-bootstrap 95% CI must lie above 0. The unprefixed metric is the primary method's,
    # which the check always computes (primary defaults to ig when ig runs, else the first method listed),
    # so the gate holds whatever ``methods:`` lists. IG's convergence delta has no default gate: it exists
    # only when ig runs, and a default gate on a metric the run does not emit would be ERROR.
    default_gates = ["comprehensiveness_vs_random.ci_low > 0"]
    needs_data = True
    default_data = "builtin:reviews#test"
    #: what the check asks of the engine beyond plain scoring (a backend must serve both)
    needs = frozenset({"gradients", "attentions"})

    @classmethod
    def needs_for(cls, params: dict, task: str) -> frozenset[str]:
        """Attention maps always (rollout and the head statistics); gradients for grad_rollout and ig."""
        methods = set(params.get("methods") or METHODS)
        if task == "seq2seq-lm":
            return frozenset({"gradients"})
        return frozenset({"attentions"} | ({"gradients"} if methods & {"grad_rollout", "ig"} else set()))

    # ------------------------------------------------------------------ params
    @classmethod
    def validate_params(cls, params: dict, base_dir: str | None = None, prefix: str = "") -> None:
        """What the Param declarations cannot say, checked before any model loads: ``methods`` is not empty,
        ``primary`` is among the methods run, ``rationale_sizes`` is not empty. Raises AuditInputError placed
        at ``PREFIX + param``."""
        methods = [m for m in METHODS if m in (params.get("methods") or [])]
        if not methods:
            raise AuditInputError("explainability: methods is empty", place=f"{prefix}methods",
                                  fix=f"list some of {', '.join(METHODS)}, or leave methods out for all of them")
        primary = params.get("primary")
        if primary and primary not in methods:
            raise AuditInputError(f"explainability: primary method {primary!r} is not among the methods run "
                                  f"({', '.join(methods)})", place=f"{prefix}primary",
                                  fix=f"add {primary} to methods or set primary to one of {', '.join(methods)}")
        if not params.get("rationale_sizes"):
            raise AuditInputError("explainability: rationale_sizes is empty", place=f"{prefix}rationale_sizes",
                                  fix="e.g. rationale_sizes: [0.1, 0.2, 0.5]")

    def _validate(self, ctx: CheckContext) -> tuple[list[str], list[float], list[int], str]:
        p, ds = ctx.params, ctx.data
        where = f"{ctx.check_id or self.name}"
        self.validate_params(p, ctx.base_dir, f"{where}.")
        methods = [m for m in METHODS if m in p["methods"]]  # canonical order: metric names are fixed
        self.dropped: list[str] = []
        mtype = getattr(getattr(getattr(ctx.model, "model", None), "config", None), "model_type", "")
        for m, why in UNSUPPORTED.get(mtype, {}).items():
            if m in methods:
                methods = [x for x in methods if x != m]
                self.dropped.append(f"{m} is not run on {mtype}: {why}")
        if not methods:
            raise AuditInputError(f"explainability: none of the methods asked for runs on {mtype}",
                                  place=f"{where}.methods", fix="add rollout to methods")
        if ctx.model is not None and ctx.model.task == "seq2seq-lm":
            gone = [m for m in methods if m not in self.SEQ2SEQ_METHODS]
            if gone:
                self.dropped.append(f"{', '.join(gone)} not run on a seq2seq-lm model: attention rollout has no single "
                                    "query row across encoder and decoder")
            methods = [m for m in methods if m in self.SEQ2SEQ_METHODS]
            if not methods or (p["primary"] and p["primary"] not in methods):
                raise AuditInputError("explainability on a seq2seq-lm model runs Integrated Gradients only (attention "
                                      "rollout has no single query row across encoder and decoder)",
                                      place=f"{where}.methods", fix="set methods: [ig] (and primary: ig, or leave it out)")
        primary = p["primary"] if p["primary"] in methods else ("ig" if "ig" in methods else methods[0])
        sizes = p["rationale_sizes"]
        if not sizes or not all(isinstance(s, (int, float)) and not isinstance(s, bool) and 0 < s <= 1
                                for s in sizes):
            raise AuditInputError(f"explainability: rationale_sizes must be shares in (0, 1], got {sizes!r}",
                                  place=f"{where}.rationale_sizes", fix="e.g. rationale_sizes: [0.1, 0.2, 0.5]")
        named = p["examples"]
        for r in named:
            if not isinstance(r, int) or isinstance(r, bool) or not 0 <= r < len(ds):
                raise AuditInputError(f"explainability: examples holds {r!r}, not a row index of the data "
                                      f"(0..{len(ds) - 1})", place=f"{where}.examples",
                                      fix="list 0-based row indices of the check's data")
        return methods, [float(s) for s in sizes], list(dict.fromkeys(named)), primary

    # ------------------------------------------------------------------ run
    def run(self, ctx: CheckContext) -> CheckResult:
        p, handle, ds = ctx.params, ctx.model, ctx.data
        methods, sizes, named, prim = self._validate(ctx)
        all_texts, kind = context_texts(ds, handle.task)
        limit = p["max_examples"] if p["max_examples"] > 0 else len(ds)
        rows = list(range(min(limit, len(ds))))
        rows += [r for r in named if r not in rows]
        texts = [all_texts[r] for r in rows]
        s2s = handle.task == "seq2seq-lm"
        # one eager pass gives the rollout rows, the head statistics and (classifiers) the logits everything
        # reuses; the handle reduces the attention maps inside the pass, batch by batch
        if not s2s:
            handle.attention_rollout(texts, [query_position(handle, x) for x in handle.token_ids(texts)])
        examples = prepare(handle, ds, rows, texts, kind, p["delimiter"], p["answer_tokens"])
        if not examples:
            raise ds.error("no row has a token to explain", fix="give the check rows with text")
        ctx.progress(0.1)

        scores: dict[str, list[np.ndarray]] = {}
        res = CheckResult()
        res.notes.extend(self.dropped)
        for m in methods:
            if m == "rollout":
                scores[m] = rollout_scores(handle, examples, texts)
            elif m == "grad_rollout":
                scores[m] = grad_rollout_scores(handle, examples)
            else:
                scores[m], delta, diff = integrated_gradients(handle, examples, p["ig_steps"], p["ig_batch_size"])
                res.add("ig_delta", delta.mean(), mean_ci(delta, ctx.seed), len(delta), False)
                res.add("ig_delta_relative", _ratio(delta, diff), bootstrap_ci(_ratio, delta, diff, seed=ctx.seed),
                        len(delta), False)
            ctx.progress(0.1 + 0.6 * (len(scores) / len(methods)))

        rankings = {m: [ranking(s, e.candidates) for s, e in zip(scores[m], examples)] for m in methods}
        rankings["random"] = random_rankings(examples, ctx.seed)
        faith = faithfulness(handle, examples, rankings, sizes, baseline_token(handle))
        ctx.progress(0.9)

        n = len(examples)
        for m in list(methods) + ["random"]:
            for key, better in (("comprehensiveness", True), ("sufficiency", False)):
                v = faith[m][f"{key}_aopc"]
                res.add(f"{m}.{key}", v.mean(), mean_ci(v, ctx.seed), n, None if m == "random" else better)
        for key, better in (("comprehensiveness", True), ("sufficiency", False)):
            v = faith[prim][f"{key}_aopc"]
            res.add(key, v.mean(), mean_ci(v, ctx.seed), n, better)
        for m in methods:
            pb = paired_bootstrap(faith["random"]["comprehensiveness_aopc"], faith[m]["comprehensiveness_aopc"],
                                  seed=ctx.seed)
            res.add(f"{m}.comprehensiveness_vs_random", pb["delta"], (pb["ci_low"], pb["ci_high"]), n)
            if m == prim:
                res.add("comprehensiveness_vs_random", pb["delta"], (pb["ci_low"], pb["ci_high"]), n)

        hits = self._top1_hits(handle, examples, rankings, methods, p["target_tokens"])
        for m, h in hits.items():
            if h.size:
                res.add(f"{m}.top1_hit", h.mean(), mean_ci(h, ctx.seed), h.size)

        agree = agreement(examples, {m: scores[m] for m in methods}, p["topk"])
        for (a, b), d in agree.items():
            for key in ("spearman", "topk_overlap"):
                v = d[key][np.isfinite(d[key])]
                if v.size:
                    res.add(f"{key}.{a}.{b}", v.mean(), mean_ci(v, ctx.seed), v.size, None)

        stats = {} if s2s else head_statistics_of(handle, texts)
        if stats:
            special = stats["special_mass"] > p["special_threshold"]
            res.add("attention_entropy", stats["normalised_entropy"].mean(), None, stats["entropy"].size, None)
            res.add("special_token_heads", special.mean(), None, special.size, None)

        self._report(ctx, res, examples, scores, faith, sizes, agree, stats, hits, methods, kind, named)
        res.notes.append(f"primary method (the unprefixed comprehensiveness, sufficiency and "
                         f"comprehensiveness_vs_random): {TITLES[prim]}")
        ctx.progress(1.0)
        return res

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _top1_hits(handle, examples, rankings, methods, words) -> dict[str, np.ndarray]:
        """Per method, over the examples holding one of ``words``: is the top-ranked token one of them?"""
        wanted = {str(w).lower() for w in words}
        if not wanted:
            return {}
        hits: dict[str, list] = {m: [] for m in methods}
        for i, e in enumerate(examples):
            toks = [t.lower() for t in token_texts(handle.tokenizer, e.ids)]
            targets = {int(j) for j in e.candidates if toks[j] in wanted}
            if not targets:
                continue
            for m in methods:
                hits[m].append(1.0 if int(rankings[m][i][0]) in targets else 0.0)
        return {m: np.array(h) for m, h in hits.items()}

    def _report(self, ctx, res, examples, scores, faith, sizes, agree, stats, hits, methods, kind, named):
        p, tok = ctx.params, ctx.model.tokenizer
        evidence = []
        # faithfulness table
        rows = []
        for m in list(methods) + ["random"]:
            c, s = faith[m]["comprehensiveness_aopc"], faith[m]["sufficiency_aopc"]
            cl, ch = mean_ci(c, ctx.seed)
            sl, sh = mean_ci(s, ctx.seed)
            row = {"method": TITLES[m], "comprehensiveness (AOPC)": round(float(c.mean()), 4),
                   "comp. 95% CI": f"[{cl:.4f}, {ch:.4f}]", "sufficiency (AOPC)": round(float(s.mean()), 4),
                   "suff. 95% CI": f"[{sl:.4f}, {sh:.4f}]"}
            for j, size in enumerate(sizes):
                row[f"comp@{size:g}"] = round(float(faith[m]["comprehensiveness"][:, j].mean()), 4)
                row[f"suff@{size:g}"] = round(float(faith[m]["sufficiency"][:, j].mean()), 4)
            if m in hits and hits[m].size:
                row["top-1 hit"] = round(float(hits[m].mean()), 4)
            rows.append(row)
        evidence.append({"title": f"Faithfulness (ERASER, {len(examples)} examples; comprehensiveness: higher is "
                                  "more faithful, sufficiency: lower is)", "rows": rows})
        if agree:
            evidence.append({"title": f"Agreement between methods (Spearman over tokens, top-{p['topk']} overlap)",
                             "rows": [{"methods": f"{a} vs {b}",
                                       "spearman": _mean(d["spearman"]), "top-k overlap": _mean(d["topk_overlap"])}
                                      for (a, b), d in agree.items()]})
            res.figures["agreement matrix (Spearman)"] = _agreement_svg(methods, agree)
        # heat maps: most and least confident, then the rows the suite names
        order = sorted(range(len(examples)), key=lambda i: (-examples[i].prob, i))
        k = max(0, p["heatmaps"])
        picks = [(i, "most confident") for i in order[:k]]
        picks += [(i, "least confident") for i in order[::-1][:k] if i not in {j for j, _ in picks}]
        by_row = {e.row: i for i, e in enumerate(examples)}
        seen = {i for i, _ in picks}
        picks += [(by_row[r], "named in the suite") for r in named if r in by_row and by_row[r] not in seen]
        for i, why in picks:
            e = examples[i]
            texts = token_texts(tok, e.ids)
            for m in methods:
                s = np.asarray(scores[m][i], dtype=np.float64)[e.candidates]
                peak = float(np.max(np.abs(s))) if s.size else 0.0
                norm = s / peak if peak > 0 else s
                evidence.append({"kind": "tokens", "title": f"row {e.row} · {TITLES[m]}",
                                 "tokens": [{"text": texts[j], "score": round(float(v), 4)}
                                            for j, v in zip(e.candidates, norm)],
                                 "caption": f"{why}: explains {e.label} (p = {e.prob:.3f}); scores scaled by the "
                                            f"largest |score|" + ("; red = for, blue = against" if m == "ig" else "")})
        if stats:
            L, H = stats["entropy"].shape
            evidence.append({"title": f"Attention heads (mass on special tokens above {p['special_threshold']:g} "
                                      "marked)", "rows": [
                {"layer": l, "head": h, "entropy (nats)": round(float(stats["entropy"][l, h]), 4),
                 "normalised entropy": round(float(stats["normalised_entropy"][l, h]), 4),
                 "special-token mass": round(float(stats["special_mass"][l, h]), 4),
                 "mostly special": bool(stats["special_mass"][l, h] > p["special_threshold"])}
                for l in range(L) for h in range(H)]})
            res.figures["attention entropy per head"] = _matrix_svg(
                stats["normalised_entropy"], "normalised entropy", "viridis")
            res.figures["attention on special tokens per head"] = _matrix_svg(
                stats["special_mass"], "mass on special tokens", "magma")
        res.evidence = evidence
        # per-example values named as their metrics, for `auditkit compare`'s paired tests
        res.records = {**{f"{m}.comprehensiveness": [float(v) for v in faith[m]["comprehensiveness_aopc"]]
                          for m in list(methods) + ["random"]},
                       **{f"{m}.top1_hit": hits[m].astype(int).tolist() for m in hits if hits[m].size}}
        res.notes.append(f"explained {len(examples)} {kind} examples: targets are the model's own "
                         + ("answers (log p(answer | input), IG on the encoder embeddings)"
                            if ctx.model.task == "seq2seq-lm" else
                            "predicted classes" if kind == "classification" else
                            "chosen answers' first tokens" if kind == "mc" else "greedy next tokens"))
        if "ig" in methods:
            res.notes.append(f"IG: {p['ig_steps']} steps (Gauss-Legendre), baseline = padding token on every "
                             f"explained token, {p['ig_batch_size']} rows per forward")


def _ratio(num: np.ndarray, den: np.ndarray) -> float:
    """mean(num) / mean(den), 0 when both are 0 (IG's relative convergence delta)."""
    d = float(np.mean(den))
    return float(np.mean(num)) / d if d > 0 else (0.0 if float(np.mean(num)) == 0 else float("inf"))


def _mean(v: np.ndarray) -> float | None:
    v = v[np.isfinite(v)]
    return round(float(v.mean()), 4) if v.size else None


def _agreement_svg(methods, agree) -> str:
    from auditkit.figures import new_figure, to_svg
    k = len(methods)
    mat = np.eye(k)
    for (a, b), d in agree.items():
        i, j = methods.index(a), methods.index(b)
        v = d["spearman"][np.isfinite(d["spearman"])]
        mat[i, j] = mat[j, i] = v.mean() if v.size else np.nan
    fig, ax = new_figure(3.6, 3.0)
    im = ax.imshow(mat, cmap="RdBu_r", vmin=-1, vmax=1)
    for (i, j), v in np.ndenumerate(mat):
        ax.text(j, i, "n/a" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(k), methods, rotation=20)
    ax.set_yticks(range(k), methods)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return to_svg(fig)


def _matrix_svg(mat: np.ndarray, label: str, cmap: str) -> str:
    from auditkit.figures import new_figure, to_svg
    L, H = mat.shape
    fig, ax = new_figure(min(8.0, 1.6 + 0.45 * H), min(6.0, 1.2 + 0.45 * L))
    im = ax.imshow(mat, cmap=cmap, vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(H))
    ax.set_yticks(range(L))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    fig.colorbar(im, ax=ax, fraction=0.046, label=label)
    return to_svg(fig)
