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
from scipy.stats import DegenerateDataWarning

from auditkit.api import Check, CheckContext, CheckResult, MetricSpec, Param
from auditkit.stats import bootstrap_ci, mean_ci

from .swaps import make_swapper


def group_rates(y: np.ndarray, p: np.ndarray, correct: np.ndarray, codes: np.ndarray, k: int) -> dict:
    """Per-group selection rate, TPR, FPR and accuracy (fairlearn's definitions) by bincount."""
    codes = np.asarray(codes).astype(int)
    n = np.bincount(codes, minlength=k).astype(float)
    pos = np.bincount(codes, weights=y, minlength=k)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "selection_rate": np.bincount(codes, weights=p, minlength=k) / n,
            "tpr": np.bincount(codes, weights=y * p, minlength=k) / pos,
            "fpr": np.bincount(codes, weights=(1 - y) * p, minlength=k) / (n - pos),
            "accuracy": np.bincount(codes, weights=correct, minlength=k) / n,
        }


def _spread(v: np.ndarray) -> float:
    v = v[np.isfinite(v)]
    return float(v.max() - v.min()) if v.size else float("nan")


def _stats(y, p, correct, codes, k) -> dict[str, float]:
    r = group_rates(y, p, correct, codes, k)
    sr = r["selection_rate"][np.isfinite(r["selection_rate"])]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = float(sr.min() / sr.max()) if sr.size and sr.max() > 0 else float("nan")
    acc = r["accuracy"][np.isfinite(r["accuracy"])]
    return {"dp_difference": _spread(r["selection_rate"]), "dp_ratio": ratio,
            "eo_difference": max(_spread(r["tpr"]), _spread(r["fpr"])),
            "worst_group_accuracy": float(acc.min()) if acc.size else float("nan"),
            "accuracy_difference": _spread(r["accuracy"])}


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
        for name, value in point.items():
            with warnings.catch_warnings():  # a constant statistic (e.g. DP = 0 everywhere) is a valid CI
                warnings.simplefilter("ignore", DegenerateDataWarning)
                ci = bootstrap_ci(lambda a, b, c, d, name=name: _stats(a, b, c, d, k)[name], yg, pg, cg, codes,
                                  seed=ctx.seed, n_resamples=prm["bootstrap"])
            res.add(name, value, ci, n, self.metrics[name].higher_is_better)
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
