"""``bias.groups``: group fairness of a classifier's predictions.

Per group: selection rate, accuracy, true- and false-positive rate (group sizes and selection rates
through fairlearn's ``MetricFrame``). The gated numbers follow fairlearn's definitions (Agarwal et al.
2018; fairlearn.metrics):

- demographic parity difference = max - min selection rate P(pred = pos | group) between groups,
  demographic parity ratio = min / max (``demographic_parity_difference`` / ``_ratio``);
- equalized odds difference = max(TPR difference, FPR difference) between groups
  (``equalized_odds_difference``, Hardt et al. 2016);
- worst-group accuracy and the accuracy difference between groups;
- ``base_rate_difference``: the demographic parity difference of the *labels* (max - min share of
  favourable labels), which a perfect classifier inherits;
- per group (names from the data, made metric-safe by ``auditkit.api.metric_part``):
  ``selection_rate.{group}``, ``accuracy.{group}``, ``tpr.{group}``, ``fpr.{group}``.

An undefined rate (TPR of a group with no favourable labels, FPR of a group with only favourable
labels) is not scored: that group is left out of that rate's gap in the equalized odds difference,
its ``tpr.``/``fpr.`` metric is not reported, and a note names it. This is where we differ from
fairlearn, whose ``equalized_odds_difference`` (through sklearn's confusion matrix) scores such a
rate as 0; on data where every gated group has both classes the numbers are fairlearn's.

Groups smaller than ``min_group_size`` are shown but left out of the gated differences. 95% CIs come
from a bootstrap stratified by group: each resample draws every gated group's rows with replacement
within the group, so group sizes stay as observed (``uncertainty.stratified_indices``). The per-group
rates are computed with ``numpy.bincount`` (``group_rates``; a fairlearn call per resample costs
~0.1 s), and the point estimates are the same computation on the observed rows (``gated_stats``), so a
point and its CI share one definition. A spread's interval is the projection of simultaneous max-t
intervals of all pairwise group differences (``simultaneous_cis``): a percentile interval of the
resampled max - min is biased upward with many small groups and would fail groups that do not
differ. Per-group CIs are percentile bootstraps of that group's rows.

Uncertainty policy (see the package docstring): the default gate FAILS when the CI's lower bound of
the equalized odds difference exceeds 0.1 and WARNS when its point estimate does; demographic parity
only warns, since it moves with each group's base rate. ``dp_difference_mde`` and
``eo_difference_mde`` are the smallest true differences the data would detect (two-sided z-test,
alpha 0.05, power 0.8, worst-case variance; for DP the two smallest gated groups, for EO the larger
of the TPR MDE over their positives and the FPR MDE over their negatives, each over the groups where
that rate is defined).

Predictions come from the handle's cached ``class_logits`` pass (the one the ``accuracy`` check uses
on the same texts). Groups come from a ``group`` column, or are inferred from the lexicon's term lists
(rows that name exactly one group of one attribute).
"""
from __future__ import annotations

import warnings

import numpy as np

from auditkit.api import Check, CheckContext, CheckResult, MetricSpec, Param, did_you_mean
from auditkit.errors import AuditInputError
from auditkit.stats import mean_ci

from .swaps import check_names, make_swapper, swapper_for
from auditkit.api import metric_parts

from .uncertainty import chunks, mde_smallest_pair, stratified_indices

#: the tolerance of the default gates on a difference between groups
TOLERANCE = 0.1


def group_rates(y, p, correct, codes, k: int, idx: np.ndarray) -> dict[str, np.ndarray]:
    """Per-group rates for each row of resample indices ``idx`` [B, n] as [B, k] arrays: selection rate
    (``sel``), TPR, FPR, accuracy (``acc``) and the labels' base rate (``base``), fairlearn's
    definitions, one ``numpy.bincount`` over (resample, group) cells per rate. A group without
    positives (negatives) has a NaN TPR (FPR)."""
    n_resamples = idx.shape[0]
    cells = (np.asarray(codes)[idx] + k * np.arange(n_resamples)[:, None]).ravel()

    def total(w=None):
        weights = None if w is None else np.asarray(w, dtype=float)[idx].ravel()
        return np.bincount(cells, weights=weights, minlength=n_resamples * k).reshape(n_resamples, k)

    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    size, pos = total(), total(y)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"sel": total(p) / size, "tpr": total(y * p) / pos, "fpr": total((1 - y) * p) / (size - pos),
                "acc": total(correct) / size, "base": pos / size}


def gated_stats(rates: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The gated statistics from per-group rates [B, k] (``group_rates``), one value per row: DP
    difference/ratio, equalized odds difference, worst-group accuracy, accuracy spread and base-rate
    spread. The check's point estimates are row 0 of the identity resample, so they and the CIs
    (``simultaneous_cis``) share one definition.

    NaN-aware: a group whose rate is undefined (TPR without positives, FPR without negatives) is left
    out of that rate's max - min, and a spread over fewer than two defined groups is NaN (no pair to
    compare), so ``eo_difference`` is the larger of the defined gaps. fairlearn's
    ``equalized_odds_difference`` scores an undefined rate as 0 instead; on data where every group has
    both classes the two agree."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows and 0 / 0 ratios: NaN

        def spread(v):
            d = np.nanmax(v, axis=1) - np.nanmin(v, axis=1)
            return np.where(np.isfinite(v).sum(axis=1) >= 2, d, np.nan)
        sel = rates["sel"]
        return {"dp_difference": spread(sel), "dp_ratio": np.nanmin(sel, axis=1) / np.nanmax(sel, axis=1),
                "eo_difference": np.fmax(spread(rates["tpr"]), spread(rates["fpr"])),
                "worst_group_accuracy": np.nanmin(rates["acc"], axis=1), "accuracy_difference": spread(rates["acc"]),
                "base_rate_difference": spread(rates["base"])}


def _max_t(boot: np.ndarray, point: np.ndarray) -> tuple[float, np.ndarray]:
    """The 95th percentile of max_j |boot_j - point_j| / se_j over resamples (the studentized maximum),
    and the bootstrap standard errors se_j; columns with se 0 never move and count as 0."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        se = np.nanstd(boot, axis=0, ddof=1)
        t = np.where(se > 0, np.abs(boot - point) / np.where(se > 0, se, 1.0), 0.0)
        t = np.nan_to_num(t, nan=0.0)
        return float(np.percentile(t.max(axis=1), 95)) if t.size else 0.0, np.nan_to_num(se, nan=0.0)


def simultaneous_cis(point: dict[str, np.ndarray], boot: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """95% CIs of the gated statistics from simultaneous intervals of the per-group rates.

    ``point`` holds [k] rates, ``boot`` [B, k] resampled rates (``group_rates``). A max - min spread
    is bounded through the simultaneous 95% intervals of all pairwise differences
    ``d_ij +/- c * se_ij`` (c: the bootstrap's studentized maximum over the pairs, Romano & Wolf
    2005): if every interval covers its difference, the true spread lies in
    ``[max(|d_ij| - c se_ij), max(|d_ij| + c se_ij)]`` (clipped to [0, 1]). For the equalized odds
    difference the TPR and FPR pairs share one c. The minimum (worst-group accuracy) and the
    min / max ratio use the simultaneous box ``r_j +/- c * se_j`` of the rates. A percentile interval
    of the resampled max - min itself is biased upward (the range of k noisy rates exceeds the true
    range), so its lower bound could fail groups that do not differ.
    """
    k = next(iter(point.values())).size
    i, j = np.triu_indices(k, 1)
    out = {}

    def spread_ci(families):
        d_hat = np.concatenate([point[f][i] - point[f][j] for f in families])
        d_boot = np.concatenate([boot[f][:, i] - boot[f][:, j] for f in families], axis=1)
        keep = np.isfinite(d_hat)
        c, se = _max_t(d_boot[:, keep], d_hat[keep])
        a = np.abs(d_hat[keep])
        if not a.size:
            return float("nan"), float("nan")
        return float(np.clip((a - c * se).max(), 0, 1)), float(np.clip((a + c * se).max(), 0, 1))

    for name, families in (("dp_difference", ["sel"]), ("eo_difference", ["tpr", "fpr"]),
                           ("accuracy_difference", ["acc"]), ("base_rate_difference", ["base"])):
        out[name] = spread_ci(families)
    for name, fam in (("worst_group_accuracy", "acc"), ("dp_ratio", "sel")):
        c, se = _max_t(boot[fam], point[fam])
        lo, hi = np.clip(point[fam] - c * se, 0, 1), np.clip(point[fam] + c * se, 0, 1)
        if name == "worst_group_accuracy":
            out[name] = (float(lo.min()), float(hi.min()))
        else:  # min / max: smallest with the lowest minimum over the highest maximum, and back
            out[name] = (float(lo.min() / hi.max()) if hi.max() > 0 else 0.0,
                         float(min(1.0, hi.min() / lo.max())) if lo.max() > 0 else 1.0)
    return out


def bootstrap_stats(y, p, correct, codes, k: int, n_resamples: int, seed: int) -> dict[str, tuple[float, float]]:
    """95% CIs of every gated statistic: the bootstrap resamples rows within each group (stratified;
    group sizes fixed as observed), in memory-bounded chunks, and ``simultaneous_cis`` turns the
    resampled per-group rates into intervals."""
    rng = np.random.default_rng(seed)
    point = observed_rates(y, p, correct, codes, k)
    parts = [group_rates(y, p, correct, codes, k, stratified_indices(codes, k, b, rng))
             for b in chunks(n_resamples, len(y))]
    boot = {f: np.concatenate([q[f] for q in parts]) for f in point}
    return simultaneous_cis(point, boot)


def observed_rates(y, p, correct, codes, k: int) -> dict[str, np.ndarray]:
    """The observed per-group rates as [k] arrays (``group_rates`` of the identity resample)."""
    identity = np.arange(len(y))[None, :]
    return {f: v[0] for f, v in group_rates(y, p, correct, codes, k, identity).items()}


def find_groups(ds, rows: list[dict], prm: dict, swapper=None) -> tuple[list, str, str | None]:
    """Each row's group (None: none) from the ``group_column``, else inferred with ``swapper`` from the
    lexicon's terms (rows naming exactly one group of ``attribute``; ``auto``: the attribute most rows
    name); also where they came from and, for inferred groups, a note. Data and lexicon only."""
    col = prm["group_column"]
    if ds.has(col):
        ds.require(col)
        out = [r[col] if r[col] is not None and str(r[col]).strip() else None for r in rows]
        return out, f"column {col!r}", None
    found = [swapper.groups_in(r["text"]) for r in rows]
    attr = prm["attribute"]
    if attr == "auto":
        counts = {a: sum(1 for f in found if len(f.get(a, ())) == 1) for a in swapper.attributes}
        attr = max(counts, key=lambda a: (counts[a], -swapper.attributes.index(a)))
    out = [next(iter(f[attr])) if len(f.get(attr, ())) == 1 else None for f in found]
    skipped = sum(1 for x in out if x is None)
    note = (f"no {col!r} column: groups inferred from the {attr} lexicon terms"
            + (f"; {skipped} rows naming no single {attr} group left out" if skipped else ""))
    return out, f"the {attr} lexicon", note


def gate_groups(ds, groups: list, prm: dict) -> tuple[list[str], dict[str, int], list[str]]:
    """Group names (sorted, as fairlearn's ``MetricFrame.by_group`` orders them), their sizes and those
    large enough to gate (``min_group_size``); an AuditInputError unless at least two are."""
    sizes: dict[str, int] = {}
    for x in groups:
        if x is not None:
            sizes[str(x)] = sizes.get(str(x), 0) + 1
    names = sorted(sizes)
    gated = [n for n in names if sizes[n] >= prm["min_group_size"]]
    if len(gated) < 2:
        raise ds.error(f"bias.groups needs at least two groups with {prm['min_group_size']}+ rows; "
                       f"found {', '.join(f'{n} (n={sizes[n]})' for n in names) or 'none'}",
                       col=prm["group_column"], fix="lower min_group_size or add rows for more groups")
    return names, sizes, gated


class BiasGroups(Check):
    name = "bias.groups"
    #: class predictions of a classifier
    needs = frozenset({"logits"})
    description = ("Group fairness of a classifier (fairlearn MetricFrame): selection rate, accuracy, TPR and FPR "
                   "per group; demographic parity difference/ratio and equalized odds difference with group-"
                   "stratified bootstrap CIs and the smallest difference the data could detect.")
    tasks = ("sequence-classification",)
    default_data = "builtin:reviews#test"
    # Uncertainty policy: fail only when the data show the gap beyond the tolerance (the CI's lower
    # bound), warn on the point estimate. Equalized odds compares error rates, so a perfect classifier
    # passes it whatever the base rates; demographic parity moves with each group's base rate (a
    # perfect classifier has dp_difference = base_rate_difference), so it only warns.
    default_gates = [
        f"eo_difference.ci_low <= {TOLERANCE}",
        {"when": f"eo_difference <= {TOLERANCE}", "severity": "warn"},
        {"when": f"dp_difference <= {TOLERANCE}", "severity": "warn"},
    ]
    params = {
        "group_column": Param("str", "group", "column naming each row's group (inferred from the lexicon if absent)"),
        "attribute": Param("str", "auto", "attribute to infer groups for when there is no group column "
                                          "(auto = the one most rows name)"),
        "lexicon": Param("str", "", "lexicon JSON for group inference (default: the built-in one)"),
        "extend_lexicon": Param("bool", False, "add the lexicon file to the built-in lexicons instead of replacing"),
        "pos_label": Param("int", 1, "the favourable class (selection = predicting it)", ge=0),
        "min_group_size": Param("int", 30, "smaller groups are reported but not gated", ge=2),
        "max_examples": Param("int", 0, "score at most this many rows (0 = all)", ge=0),
        "bootstrap": Param("int", 1000, "bootstrap resamples for the 95% CIs (stratified by group)", ge=100),
    }
    metrics = {
        "dp_difference": MetricSpec("demographic parity difference: max - min selection rate (fairlearn)", False),
        "dp_ratio": MetricSpec("demographic parity ratio: min / max selection rate (fairlearn)", True),
        "eo_difference": MetricSpec("equalized odds difference: max(TPR gap, FPR gap) (fairlearn)", False),
        "worst_group_accuracy": MetricSpec("lowest accuracy over gated groups", True),
        "accuracy_difference": MetricSpec("max - min accuracy over gated groups", False),
        "base_rate_difference": MetricSpec("max - min share of favourable labels over gated groups (the "
                                           "dp_difference a perfect classifier has)", None),
        "dp_difference_mde": MetricSpec("smallest DP difference the data would detect (alpha 0.05, power 0.8, "
                                        "two smallest gated groups, worst-case variance)", False),
        "eo_difference_mde": MetricSpec("smallest EO difference the data would detect (alpha 0.05, power 0.8; "
                                        "larger of the TPR and FPR MDEs)", False),
        "n_groups": MetricSpec("number of groups large enough to gate", None),
        "selection_rate.{group}": MetricSpec("share of the group's rows predicted favourable", None),
        "accuracy.{group}": MetricSpec("accuracy on the group's rows", True),
        "tpr.{group}": MetricSpec("true-positive rate on the group's rows", True),
        "fpr.{group}": MetricSpec("false-positive rate on the group's rows", False),
    }

    @classmethod
    def validate_params(cls, params: dict, base_dir: str | None = None, prefix: str = "") -> None:
        """Checks that need the lexicon: a lexicon file that loads, an ``attribute`` it has (did-you-mean).

        Raises AuditInputError placed at ``PREFIX + param``."""
        attr = params.get("attribute", "auto")
        if params.get("lexicon") or attr != "auto":
            swapper = make_swapper({"lexicon": params.get("lexicon"), "extend_lexicon": params.get("extend_lexicon")},
                                   base_dir, prefix)
            if attr != "auto":
                check_names([attr], swapper.attributes, f"{prefix}attribute")

    @classmethod
    def validate_data(cls, data, params: dict, base_dir: str | None = None) -> None:
        """Before any model loads, what the run would refuse from the data and lexicon alone: no
        ``text``, labels that are not integer class indices (their range needs the model), and fewer
        than two groups of ``min_group_size``+ rows among the rows the run reads (the first
        ``max_examples``), with the same messages as :meth:`run`. ``base_dir``: the suite's folder, from the
        runner; groups inferred through a relative lexicon on a folder not given are left to the run."""
        prm = {**{k: p.default for k, p in cls.params.items()}, **params}
        data.require("text", fmt="classification")
        data.require_labels()
        rows = data.rows[: prm["max_examples"]] if prm["max_examples"] else data.rows
        default_column = cls.params["group_column"].default
        if prm["group_column"] != default_column and not data.has(prm["group_column"]):
            # a column the suite names must be there: a misspelt name must not fall back to groups guessed
            # from the lexicon (that fallback is for data without the default column)
            columns = sorted(data.rows[0]) if data.rows else []
            raise data.error(f"no column {prm['group_column']!r} (group_column) in the data; "
                             f"{did_you_mean(prm['group_column'], columns)}",
                             fix="name the column that holds each row's group, or leave group_column out to "
                                 f"use {default_column!r} or infer groups from the lexicon")
        swapper = None
        if not data.has(prm["group_column"]):
            swapper = swapper_for({"lexicon": prm["lexicon"], "extend_lexicon": prm["extend_lexicon"]}, base_dir)
            if swapper is None:
                return
        groups, _, _ = find_groups(data, rows, prm, swapper)
        gate_groups(data, groups, prm)

    def run(self, ctx: CheckContext) -> CheckResult:
        from fairlearn.metrics import MetricFrame, count, selection_rate
        from sklearn.metrics import accuracy_score

        ds, prm = ctx.data, ctx.params
        prefix = f"{ctx.check_id or self.name}."
        self.validate_params(prm, ctx.base_dir, prefix)
        ds.require("text", fmt="classification")
        rows = ds.rows[: prm["max_examples"]] if prm["max_examples"] else ds.rows
        n_labels = ctx.model.num_labels
        pos = prm["pos_label"]
        if n_labels and not 0 <= pos < n_labels:
            raise AuditInputError(f"pos_label {pos} is out of range for a model with {n_labels} labels",
                                  place=f"{prefix}pos_label", fix=f"use 0..{n_labels - 1}")
        labels = np.array(ds.require_labels(n_labels)[: len(rows)])
        texts = [r["text"] for r in rows]
        notes: list[str] = []
        groups, source = self._groups(ctx, rows, notes, prefix)
        gate_groups(ds, groups, prm)  # refused before loading by validate_data; kept for direct callers
        logits = ctx.model.class_logits(texts)  # the cached pass shared with `accuracy`
        ctx.progress(0.6)
        keep = np.array([g is not None for g in groups])
        pred = logits.argmax(-1)
        y = (labels == pos).astype(int)[keep]
        p = (pred == pos).astype(int)[keep]
        correct = (pred == labels).astype(float)[keep]
        g = np.array([str(x) for x in groups if x is not None], dtype=object)

        frame = MetricFrame(metrics={"n": count, "selection_rate": selection_rate},
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
        sel = np.isin(g, gated)
        yg, pg, cg, gg = y[sel], p[sel], correct[sel], g[sel]
        res = CheckResult(notes=notes)
        n = int(sel.sum())
        order = {name: i for i, name in enumerate(gated)}
        codes = np.array([order[x] for x in gg], dtype=int)
        k = len(gated)
        # point estimates and CIs from the same NaN-aware per-group rates (see gated_stats)
        point = {name: float(v[0]) for name, v in
                 gated_stats({f: r[None, :] for f, r in observed_rates(yg, pg, cg, codes, k).items()}).items()}
        cis = bootstrap_stats(yg, pg, cg, codes, k, prm["bootstrap"], ctx.seed)
        for name, value in point.items():
            res.add(name, value, cis[name], n, self.metrics[name].higher_is_better)
        positives = {name: int(y[g == name].sum()) for name in names}
        negatives = {name: sizes[name] - c for name, c in positives.items()}
        parts = metric_parts(names)
        for rate, counts, why in (("tpr", positives, f"no row labelled {pos}, the favourable class"),
                                  ("fpr", negatives, f"every row labelled {pos}, the favourable class")):
            missing = [name for name in names if counts[name] == 0]
            if missing:
                in_gate = [name for name in missing if name in gated]
                notes.append(f"{rate.upper()} undefined for {', '.join(missing)} ({why}): "
                             + ", ".join(f"{rate}.{parts[name]}" for name in missing) + " not reported"
                             + (f"; {', '.join(in_gate)} left out of the {rate.upper()} gap of eo_difference "
                                f"(fairlearn's equalized_odds_difference would score the undefined rate as 0)"
                                if in_gate else ""))
        if np.isnan(point["eo_difference"]):
            notes.append("eo_difference undefined: fewer than two gated groups have a TPR, and fewer than two an "
                         "FPR (each group needs both classes of labels); its gate errors")
        # the MDE of a gap over the groups where the rate is defined
        mdes = {"dp_difference_mde": mde_smallest_pair(sizes[name] for name in gated),
                "eo_difference_mde": max(mde_smallest_pair(positives[name] for name in gated if positives[name]),
                                         mde_smallest_pair(negatives[name] for name in gated if negatives[name]))}
        for name, value in mdes.items():
            res.add(name, value, None, n, False)
            if value > TOLERANCE:
                metric = name[: -len("_mde")]
                notes.append(f"{name} = {value:.3f}: with these group sizes a true {metric} smaller than that is "
                             f"likely to go undetected (alpha 0.05, power 0.8), so a pass at {TOLERANCE} is weak "
                             f"evidence; more rows per group narrow it")
        res.add("n_groups", k, None, n, None)
        notes.append("95% CIs of the differences: simultaneous max-t intervals of all pairwise group differences "
                     f"from a bootstrap resampling rows within each group ({prm['bootstrap']} resamples)")
        ctx.progress(0.8)

        table, bars = [], []
        for name in names:
            idx = g == name
            sr, acc = p[idx].astype(float), correct[idx]
            sr_ci, acc_ci = mean_ci(sr, ctx.seed), mean_ci(acc, ctx.seed)
            part = parts[name]
            res.add(f"selection_rate.{part}", sr.mean(), sr_ci, int(idx.sum()), None)
            res.add(f"accuracy.{part}", acc.mean(), acc_ci, int(idx.sum()), True)
            rates = {}  # undefined without positives (TPR) / negatives (FPR): not emitted, None in the table
            for rate, mask, better in (("tpr", idx & (y == 1), True), ("fpr", idx & (y == 0), False)):
                if mask.any():
                    rates[rate] = round(float(p[mask].mean()), 4)
                    res.add(f"{rate}.{part}", p[mask].mean(), mean_ci(p[mask].astype(float), ctx.seed),
                            int(mask.sum()), better)
            table.append({"group": name, "n": sizes[name], "gated": "yes" if name in gated else "no (too small)",
                          "selection_rate": round(float(by.loc[name, "selection_rate"]), 4),
                          "selection_rate_ci": f"[{sr_ci[0]:.3f}, {sr_ci[1]:.3f}]",
                          "accuracy": round(float(acc_frame.by_group[name]), 4),
                          "accuracy_ci": f"[{acc_ci[0]:.3f}, {acc_ci[1]:.3f}]",
                          "tpr": rates.get("tpr"), "fpr": rates.get("fpr")})
            bars.append((name, name in gated, float(by.loc[name, "selection_rate"]), sr_ci,
                         float(acc_frame.by_group[name]), acc_ci))
        renamed = [f"{n} -> {parts[n]}" for n in names if parts[n] != n]
        if renamed:
            notes.append("group names in metric names: " + ", ".join(renamed))
        res.evidence = [{"title": f"Per-group rates (groups from {source}; favourable class {pos})", "rows": table}]
        res.figures["per-group selection rate and accuracy"] = _bars_svg(bars)
        res.records = {"pred": pred.astype(int).tolist(), "group": [None if x is None else str(x) for x in groups]}
        ctx.progress(1.0)
        return res

    def _groups(self, ctx: CheckContext, rows: list[dict], notes: list[str], prefix: str) -> tuple[list, str]:
        prm, ds = ctx.params, ctx.data
        swapper = None
        if not ds.has(prm["group_column"]):
            swapper = make_swapper({"lexicon": prm["lexicon"], "extend_lexicon": prm["extend_lexicon"]},
                                   ctx.base_dir, prefix)
        out, source, note = find_groups(ds, rows, prm, swapper)
        if note:
            notes.append(note)
        return out, source


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
