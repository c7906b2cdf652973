"""``bias.counterfactual``: counterfactual token fairness by group-term substitution.

Each text's group terms are swapped for another group's terms (``swaps.Swapper``: whole words, case
kept, never the original sentence), per attribute and per (source group, target group) pair.

- Classifiers: the counterfactual token fairness gap of Garg et al. (2019),
  ``CF_gap = mean over (x, x') of |f(x) - f(x')|`` with ``f`` the probability of the favourable class,
  and the flip rate (share of swaps that change the predicted label); 95% bootstrap CIs over swaps.
- Causal LMs: the log-likelihood shift of the same continuation after the swap,
  ``(log p(cont | x') - log p(cont | x)) / |cont tokens|`` (nats per token), where for a
  ``{"prompt","completion"}`` row the prompt is swapped and the completion kept, and for a ``{"text"}``
  row the text is cut right after the last swapped word (the rest is the continuation);
  ``ll_gap`` is the mean absolute shift.

All counterfactuals go through the model handle's batched, cached pass in one call together with
the originals (``class_logits`` / ``continuation_logprobs``), so no text is scored twice.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from auditkit.api import Check, CheckContext, CheckResult, MetricSpec, Param
from auditkit.stats import mean_ci
from auditkit_plugins.builtin_data.lexicons import ATTRIBUTES

from .swaps import CONTEXT_TERMS, make_swapper


class BiasCounterfactual(Check):
    name = "bias.counterfactual"
    description = ("Counterfactual fairness: swap group terms (gender, race/ethnicity, religion, age, nationality, "
                   "disability) and measure the change in the prediction (classifiers: CF gap, flip rate) or in the "
                   "log-likelihood of the same continuation (causal LMs), per attribute and group pair.")
    default_data = "builtin:reviews#test"
    params = {
        "lexicon": Param("str", "", "lexicon JSON file replacing the built-in one (see builtin_data/lexicons.json)"),
        "extend_lexicon": Param("bool", False, "add the lexicon file to the built-in lexicons instead of replacing"),
        "attributes": Param("list", [], "attributes to swap (default: every attribute of the lexicon)"),
        "context_terms": Param("list", list(CONTEXT_TERMS),
                               "ambiguous terms (colours, adjectives) swapped only right before a person noun"),
        "pos_label": Param("int", 1, "classifiers: the class whose probability f(x) is compared"),
        "max_examples": Param("int", 0, "use at most this many rows (0 = all)"),
        "worst": Param("int", 10, "how many worst pairs to show"),
    }
    metrics = {
        "cf_gap": MetricSpec("classifiers: mean |f(x) - f(x')| of the favourable-class probability over swaps", False),
        "flip_rate": MetricSpec("classifiers: share of swaps that change the predicted label", False),
        "max_pair_gap": MetricSpec("largest mean gap over (source, target) group pairs", False),
        "ll_gap": MetricSpec("causal LMs: mean |log-likelihood shift| of the continuation, nats per token", False),
        "n_swaps": MetricSpec("number of (text, counterfactual) pairs scored", None),
        **{f"cf_gap_{a}": MetricSpec(f"classifiers: CF gap over {a} swaps", False) for a in ATTRIBUTES},
        **{f"ll_gap_{a}": MetricSpec(f"causal LMs: mean |log-likelihood shift| over {a} swaps", False)
           for a in ATTRIBUTES},
    }

    def run(self, ctx: CheckContext) -> CheckResult:
        ds, prm = ctx.data, ctx.params
        swapper = make_swapper(prm, ctx.base_dir)
        rows = ds.rows[: prm["max_examples"]] if prm["max_examples"] else ds.rows
        lm = ctx.model.task == "causal-lm"
        prompt_mode = lm and ds.has("prompt", "completion")
        if prompt_mode:
            ds.require("prompt", "completion", fmt="prompt-completion")
        else:
            ds.require("text")
        items = []  # (row index, original text, Counterfactual)
        for i, row in enumerate(rows):
            text = row["prompt"] if prompt_mode else row["text"]
            for cf in swapper.counterfactuals(text):
                items.append((i, text, cf))
        if not items:
            raise ds.error("no text names a group term of the lexicon, so there is nothing to swap",
                           col="prompt" if prompt_mode else "text",
                           fix="use texts that mention groups (e.g. builtin:reviews#test) or extend the lexicon")
        ctx.progress(0.1)
        if lm:
            scored = self._lm(ctx, rows, items, prompt_mode)
        else:
            scored = self._classifier(ctx, items)
        ctx.progress(0.8)
        return self._report(ctx, scored, lm)

    # ------------------------------------------------------------------ scoring
    def _classifier(self, ctx: CheckContext, items: list) -> list[dict]:
        from scipy.special import softmax
        originals = list(dict.fromkeys(t for _, t, _ in items))
        where = {t: k for k, t in enumerate(originals)}
        logits = ctx.model.class_logits(originals + [cf.text for _, _, cf in items])  # one batched pass
        probs = softmax(logits, axis=-1)
        pred = logits.argmax(-1)
        pos = ctx.params["pos_label"]
        if not 0 <= pos < probs.shape[1]:
            raise ctx.data.error(f"pos_label {pos} is out of range for a model with {probs.shape[1]} labels",
                                 fix=f"use 0..{probs.shape[1] - 1}")
        out = []
        for j, (i, text, cf) in enumerate(items):
            a, b = where[text], len(originals) + j
            out.append({"row": i, "text": text, "cf": cf, "before": float(probs[a, pos]),
                        "after": float(probs[b, pos]), "flip": float(pred[a] != pred[b])})
        for s in out:
            s["delta"] = s["after"] - s["before"]
            s["gap"] = abs(s["delta"])
        return out

    def _lm(self, ctx: CheckContext, rows: list, items: list, prompt_mode: bool) -> list[dict]:
        pairs, keep = [], []
        for i, text, cf in items:
            if prompt_mode:
                ctx_o, cont, ctx_c = text, rows[i]["completion"], cf.text
            else:
                ctx_o, cont = text[:cf.end], text[cf.end:]
                ctx_c = cf.text[: len(cf.text) - len(cont)]
                if not cont.strip():
                    continue  # the group term ends the text: no continuation to score
            pairs.append(((ctx_o, cont), (ctx_c, cont)))
            keep.append((i, text, cf))
        if not pairs:
            raise ctx.data.error("every group term ends its text, so there is no continuation to score",
                                 col="text", fix="use texts that go on after the group term, or prompt/completion rows")
        unique = list(dict.fromkeys(p for pr in pairs for p in pr))
        where = {p: k for k, p in enumerate(unique)}
        lps = ctx.model.continuation_logprobs(unique)  # originals and counterfactuals in one batched pass
        out = []
        for (po, pc), (i, text, cf) in zip(pairs, keep):
            lo, lc = lps[where[po]], lps[where[pc]]
            before, after = float(np.sum(lo)) / max(len(lo), 1), float(np.sum(lc)) / max(len(lc), 1)
            out.append({"row": i, "text": text, "cf": cf, "before": before, "after": after, "delta": after - before,
                        "gap": abs(after - before), "flip": 0.0, "continuation": po[1]})
        return out

    # ------------------------------------------------------------------ reporting
    def _report(self, ctx: CheckContext, scored: list[dict], lm: bool) -> CheckResult:
        res = CheckResult()
        gaps = np.array([s["gap"] for s in scored])
        n = len(scored)
        key = "ll_gap" if lm else "cf_gap"
        res.add(key, gaps.mean(), mean_ci(gaps, ctx.seed), n, False)
        if not lm:
            flips = np.array([s["flip"] for s in scored])
            res.add("flip_rate", flips.mean(), mean_ci(flips, ctx.seed), n, False)
        res.add("n_swaps", n, None, n, None)
        by_attr: dict[str, list[float]] = defaultdict(list)
        by_pair: dict[tuple, list[dict]] = defaultdict(list)
        for s in scored:
            by_attr[s["cf"].attribute].append(s["gap"])
            by_pair[(s["cf"].attribute, s["cf"].source, s["cf"].target)].append(s)
        for attr, g in by_attr.items():
            g = np.array(g)
            res.add(f"{key}_{attr}", g.mean(), mean_ci(g, ctx.seed), len(g), False)
        pair_rows, pair_means = [], []
        for (attr, src, tgt), ss in sorted(by_pair.items()):
            gp = np.array([s["gap"] for s in ss])
            dl = np.array([s["delta"] for s in ss])
            lo, hi = mean_ci(gp, ctx.seed)
            row = {"attribute": attr, "source": src, "target": tgt, "n": len(ss),
                   "mean_gap": round(float(gp.mean()), 4), "gap_ci": f"[{lo:.4f}, {hi:.4f}]",
                   "mean_shift": round(float(dl.mean()), 4)}
            pair_means.append(float(gp.mean()))
            if not lm:
                row["flip_rate"] = round(float(np.mean([s["flip"] for s in ss])), 4)
            pair_rows.append(row)
        res.add("max_pair_gap", max(pair_means), None, n, False)
        unit = "nats/token" if lm else f"P(class {ctx.params['pos_label']})"
        worst = sorted(range(n), key=lambda k: (-scored[k]["gap"], k))[: ctx.params["worst"]]
        res.evidence = [
            {"title": f"Worst counterfactual pairs ({'log-likelihood shift of the continuation' if lm else unit})",
             "rows": [{"row": scored[k]["row"], "original": scored[k]["text"][:300],
                       "counterfactual": scored[k]["cf"].text[:300],
                       "swap": f"{scored[k]['cf'].attribute}: {scored[k]['cf'].source} -> {scored[k]['cf'].target}",
                       "before": round(scored[k]["before"], 4), "after": round(scored[k]["after"], 4),
                       "gap": round(scored[k]["gap"], 4)} for k in worst]},
            {"title": f"Gap by group pair ({unit}; shift = after - before)", "rows": pair_rows},
        ]
        res.figures["counterfactual gap by group pair"] = _heatmap_svg(by_pair, lm)
        res.records = {"gap": [round(float(x), 8) for x in gaps]}
        res.notes.append(f"{n} swaps over {len({s['row'] for s in scored})} texts; attributes: "
                         + ", ".join(f"{a} ({len(g)})" for a, g in by_attr.items()))
        ctx.progress(1.0)
        return res


def _heatmap_svg(by_pair: dict, lm: bool) -> str:
    """One panel per attribute: rows = group named in the text, columns = group swapped in."""
    from auditkit.figures import new_figure, to_svg
    attrs = list(dict.fromkeys(a for a, _, _ in sorted(by_pair)))
    fig, ax0 = new_figure(min(3.2 * len(attrs) + 0.6, 16), 3.2)
    fig.delaxes(ax0)
    value = "mean shift" if lm else "mean |gap|"
    cells = [float(np.mean([x["delta" if lm else "gap"] for x in ss])) for ss in by_pair.values()]
    # one colour scale for every panel; a gap of 0.1 (twice the default gate) is already full red
    top = max(max(abs(c) for c in cells), 1e-3 if lm else 0.1)
    for k, attr in enumerate(attrs):
        ax = fig.add_subplot(1, len(attrs), k + 1)
        groups = sorted({g for a, s, t in by_pair if a == attr for g in (s, t)})
        m = np.full((len(groups), len(groups)), np.nan)
        for (a, s, t), ss in by_pair.items():
            if a == attr:
                m[groups.index(s), groups.index(t)] = np.mean([x["delta" if lm else "gap"] for x in ss])
        if lm:
            ax.imshow(m, cmap="RdBu", vmin=-top, vmax=top)
        else:
            ax.imshow(m, cmap="Reds", vmin=0, vmax=top)
        for (i, j), v in np.ndenumerate(m):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(groups)), groups, rotation=40, ha="right", fontsize=7)
        ax.set_yticks(range(len(groups)), groups, fontsize=7)
        ax.set_title(f"{attr}: {value}", fontsize=8)
        ax.set_xlabel("swapped to", fontsize=7)
        if k == 0:
            ax.set_ylabel("text names", fontsize=7)
    return to_svg(fig)
