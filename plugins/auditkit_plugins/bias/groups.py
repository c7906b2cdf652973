"""``bias.groups``: group fairness of a classifier's predictions.

Per group, fairlearn's ``MetricFrame`` gives selection rate, accuracy, true- and false-positive rate.
The gated numbers are fairlearn's own functions (Agarwal et al. 2018; fairlearn.metrics):

- demographic parity difference = max - min selection rate P(pred = pos | group) between groups,
  demographic parity ratio = min / max (``demographic_parity_difference`` / ``_ratio``);
- equalized odds difference = max(TPR difference, FPR difference) between groups
  (``equalized_odds_difference``, Hardt et al. 2016);
- worst-group accuracy and the accuracy difference between groups.

Groups smaller than ``min_group_size`` are shown but left out of the gated numbers. 95% CIs are
percentile bootstraps (``auditkit.stats.bootstrap_ci``) resampling rows; inside the bootstrap the same
definitions are computed with ``numpy.bincount`` (a fairlearn call per resample costs ~0.1 s), and
the point estimates are fairlearn's. Predictions come from the handle's cached ``class_logits`` pass
(the one the ``accuracy`` check uses on the same texts). Groups come from a ``group`` column, or are
inferred from the lexicon's term lists (rows that name exactly one group of one attribute).
"""
from __future__ import annotations

import warnings

import numpy as np

from auditkit.api import Check, CheckContext, CheckResult, MetricSpec, Param
from auditkit.stats import mean_ci

from .swaps import make_swapper


def resampled_stats(y, p, correct, codes, k: int, idx: np.ndarray) -> dict[str, np.ndarray]:
    """The gated statistics (fairlearn's definitions: selection rate, TPR, FPR, accuracy per group, then
    DP difference/ratio, equalized odds difference, worst-group accuracy, accuracy spread) for each row
    of resample indices ``idx`` [B, n]: one bincount over (resample, group) cells per rate."""
    n_resamples = idx.shape[0]
    cells = (np.asarray(codes)[idx] + k * np.arange(n_resamples)[:, None]).ravel()

    def total(w=None):
        weights = None if w is None else np.asarray(w, dtype=float)[idx].ravel()
        return np.bincount(cells, weights=weights, minlength=n_resamples * k).reshape(n_resamples, k)

    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    size, pos = total(), total(y)
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample may miss a group: that cell is NaN
        sel, acc = total(p) / size, total(correct) / size
        tpr, fpr = total(y * p) / pos, total((1 - y) * p) / (size - pos)

        def spread(v):
            return np.nanmax(v, axis=1) - np.nanmin(v, axis=1)
        return {"dp_difference": spread(sel), "dp_ratio": np.nanmin(sel, axis=1) / np.nanmax(sel, axis=1),
                "eo_difference": np.fmax(spread(tpr), spread(fpr)),
                "worst_group_accuracy": np.nanmin(acc, axis=1), "accuracy_difference": spread(acc)}


def bootstrap_stats(y, p, correct, codes, k: int, n_resamples: int, seed: int) -> dict[str, tuple[float, float]]:
    """Percentile-bootstrap 95% CIs of every gated statistic, all resamples vectorized."""
    idx = np.random.default_rng(seed).integers(0, len(y), size=(n_resamples, len(y)))
    return {name: tuple(float(x) for x in np.nanpercentile(v, [2.5, 97.5]))
            for name, v in resampled_stats(y, p, correct, codes, k, idx).items()}


class BiasGroups(Check):
    name = "bias.groups"
    description = ("Group fairness of a classifier (fairlearn MetricFrame): selection rate, accuracy, TPR and FPR "
                   "per group; demographic parity difference/ratio and equalized odds difference with bootstrap CIs.")
    tasks = ("sequence-classification",)
    default_data = "builtin:reviews#test"
    params = {
        "group_column": Param("str", "group", "column naming each row's group (inferred from the lexicon if absent)"),
        "attribute": Param("str", "auto", "attribute to infer groups for when there is no group column "
                                          "(auto = the one most rows name)"),
        "lexicon": Param("str", "", "lexicon JSON for group inference (default: the built-in one)"),
        "extend_lexicon": Param("bool", False, "add the lexicon file to the built-in lexicons instead of replacing"),
        "pos_label": Param("int", 1, "the favourable class (selection = predicting it)"),
        "min_group_size": Param("int", 30, "smaller groups are reported but not gated"),
        "max_examples": Param("int", 0, "score at most this many rows (0 = all)"),
        "bootstrap": Param("int", 1000, "bootstrap resamples for the 95% CIs"),
    }
    metrics = {
        "dp_difference": MetricSpec("demographic parity difference: max - min selection rate (fairlearn)", False),
        "dp_ratio": MetricSpec("demographic parity ratio: min / max selection rate (fairlearn)", True),
        "eo_difference": MetricSpec("equalized odds difference: max(TPR gap, FPR gap) (fairlearn)", False),
        "worst_group_accuracy": MetricSpec("lowest accuracy over gated groups", True),
        "accuracy_difference": MetricSpec("max - min accuracy over gated groups", False),
        "n_groups": MetricSpec("number of groups large enough to gate", None),
    }

    def run(self, ctx: CheckContext) -> CheckResult:
        from fairlearn.metrics import (MetricFrame, count, demographic_parity_difference,
                                       demographic_parity_ratio, equalized_odds_difference, false_positive_rate,
                                       selection_rate, true_positive_rate)
        from sklearn.metrics import accuracy_score

        ds, prm = ctx.data, ctx.params
        ds.require("text", fmt="classification")
        rows = ds.rows[: prm["max_examples"]] if prm["max_examples"] else ds.rows
        labels = np.array(ds.require_labels(ctx.model.num_labels)[: len(rows)])
        texts = [r["text"] for r in rows]
        notes: list[str] = []
        groups, source = self._groups(ctx, rows, notes)
        logits = ctx.model.class_logits(texts)  # the cached pass shared with `accuracy`
        ctx.progress(0.6)
        keep = np.array([g is not None for g in groups])
        pred = logits.argmax(-1)
        pos = prm["pos_label"]
        y = (labels == pos).astype(int)[keep]
        p = (pred == pos).astype(int)[keep]
        correct = (pred == labels).astype(float)[keep]
        g = np.array([str(x) for x in groups if x is not None], dtype=object)

        frame = MetricFrame(metrics={"n": count, "selection_rate": selection_rate, "tpr": true_positive_rate,
                                     "fpr": false_positive_rate},
                            y_true=y, y_pred=p, sensitive_features=g)
        acc_frame = MetricFrame(metrics=accuracy_score, y_true=labels[keep], y_pred=pred[keep], sensitive_features=g)
        by = frame.by_group
        names = [str(n) for n in by.index]
        sizes = {n: int(by.loc[n, "n"]) for n in names}
        gated = [n for n in names if sizes[n] >= prm["min_group_size"]]
        small = [n for n in names if n not in gated]
        if small:
            notes.append(f"not gated (fewer than {prm['min_group_size']} rows): "
                         + ", ".join(f"{n} (n={sizes[n]})" for n in small))
        if len(gated) < 2:
            raise ds.error(f"bias.groups needs at least two groups with {prm['min_group_size']}+ rows; "
                           f"found {', '.join(f'{n} (n={sizes[n]})' for n in names) or 'none'}",
                           col=prm["group_column"], fix="lower min_group_size or add rows for more groups")
        sel = np.isin(g, gated)
        yg, pg, cg, gg = y[sel], p[sel], correct[sel], g[sel]
        res = CheckResult(notes=notes)
        n = int(sel.sum())
        point = {
            "dp_difference": demographic_parity_difference(yg, pg, sensitive_features=gg),
            "dp_ratio": demographic_parity_ratio(yg, pg, sensitive_features=gg),
            "eo_difference": equalized_odds_difference(yg, pg, sensitive_features=gg),
            "worst_group_accuracy": min(float(acc_frame.by_group[k]) for k in gated),
            "accuracy_difference": max(float(acc_frame.by_group[k]) for k in gated)
            - min(float(acc_frame.by_group[k]) for k in gated),
        }
        order = {name: i for i, name in enumerate(gated)}
        codes = np.array([order[x] for x in gg], dtype=int)
        k = len(gated)
        cis = bootstrap_stats(yg, pg, cg, codes, k, prm["bootstrap"], ctx.seed)
        for name, value in point.items():
            res.add(name, value, cis[name], n, self.metrics[name].higher_is_better)
        res.add("n_groups", k, None, n, None)
        ctx.progress(0.8)

        table, bars = [], []
        for name in names:
            idx = g == name
            sr, acc = p[idx].astype(float), correct[idx]
            sr_ci, acc_ci = mean_ci(sr, ctx.seed), mean_ci(acc, ctx.seed)
            table.append({"group": name, "n": sizes[name], "gated": "yes" if name in gated else "no (too small)",
                          "selection_rate": round(float(by.loc[name, "selection_rate"]), 4),
                          "selection_rate_ci": f"[{sr_ci[0]:.3f}, {sr_ci[1]:.3f}]",
                          "accuracy": round(float(acc_frame.by_group[name]), 4),
                          "accuracy_ci": f"[{acc_ci[0]:.3f}, {acc_ci[1]:.3f}]",
                          "tpr": _r(by.loc[name, "tpr"]), "fpr": _r(by.loc[name, "fpr"])})
            bars.append((name, name in gated, float(by.loc[name, "selection_rate"]), sr_ci,
                         float(acc_frame.by_group[name]), acc_ci))
        res.evidence = [{"title": f"Per-group rates (groups from {source}; favourable class {pos})", "rows": table}]
        res.figures["per-group selection rate and accuracy"] = _bars_svg(bars)
        res.records = {"pred": pred.astype(int).tolist(), "group": [None if x is None else str(x) for x in groups]}
        ctx.progress(1.0)
        return res

    def _groups(self, ctx: CheckContext, rows: list[dict], notes: list[str]) -> tuple[list, str]:
        prm, ds = ctx.params, ctx.data
        col = prm["group_column"]
        if ds.has(col):
            ds.require(col)
            out = [r[col] if str(r[col]).strip() else None for r in rows]
            return out, f"column {col!r}"
        swapper = make_swapper({"lexicon": prm["lexicon"], "extend_lexicon": prm["extend_lexicon"]}, ctx.base_dir)
        found = [swapper.groups_in(r["text"]) for r in rows]
        attr = prm["attribute"]
        if attr == "auto":
            counts = {a: sum(1 for f in found if len(f.get(a, ())) == 1) for a in swapper.attributes}
            attr = max(counts, key=lambda a: (counts[a], -swapper.attributes.index(a)))
        elif attr not in swapper.attributes:
            raise ds.error(f"attribute {attr!r} is not in the lexicon",
                           fix=f"use one of: {', '.join(swapper.attributes)}")
        out = [next(iter(f[attr])) if len(f.get(attr, ())) == 1 else None for f in found]
        skipped = sum(1 for x in out if x is None)
        notes.append(f"no {col!r} column: groups inferred from the {attr} lexicon terms"
                     + (f"; {skipped} rows naming no single {attr} group left out" if skipped else ""))
        return out, f"the {attr} lexicon"


def _r(x) -> float | None:
    x = float(x)
    return None if np.isnan(x) else round(x, 4)


def _bars_svg(bars: list) -> str:
    from auditkit.figures import new_figure, to_svg
    fig, ax = new_figure(max(4.0, 0.9 * len(bars) + 2), 3.2)
    x = np.arange(len(bars))
    w = 0.38
    for off, (label, val_i, ci_i, color) in enumerate([("selection rate", 2, 3, "#4c72b0"),
                                                       ("accuracy", 4, 5, "#55a868")]):
        vals = np.array([b[val_i] for b in bars])
        lo = np.array([b[ci_i][0] for b in bars])
        hi = np.array([b[ci_i][1] for b in bars])
        err = np.vstack([np.clip(vals - lo, 0, None), np.clip(hi - vals, 0, None)])
        alphas = [1.0 if b[1] else 0.35 for b in bars]
        for i in range(len(bars)):
            ax.bar(x[i] + (off - 0.5) * w, vals[i], w, color=color, alpha=alphas[i],
                   yerr=err[:, i:i + 1], capsize=3, label=label if i == 0 else None)
    ax.set_xticks(x, [b[0] + ("" if b[1] else "*") for b in bars], rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("rate (95% CI)")
    ax.legend(fontsize=8, loc="lower right")
    if not all(b[1] for b in bars):
        ax.set_title("* too small to gate", fontsize=8, loc="left")
    return to_svg(fig)
