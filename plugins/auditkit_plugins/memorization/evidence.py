"""What the memorization check shows a reviewer: redacted evidence tables and figures.

Secrets are redacted by default: a canary is shown by its id, repeat count and exposure; its secret
and the model's continuation of its prefix appear only when the run was started with
``--show-secrets``. Extracted training text is shown (truncated to ``MAX_CHARS``; the HTML reporter
escapes it) only with ``--show-secrets`` too: without it a table names the training row.
"""
from __future__ import annotations

import math

import numpy as np

MAX_CHARS = 80
ATTACK_NAMES = {"loss": "LOSS", "zlib": "zlib ratio", "mink": "Min-K%", "minkpp": "Min-K%++",
                "ref": "reference-model difference"}


def truncate(text: str, limit: int = MAX_CHARS) -> str:
    """At most ``limit`` characters, with an ellipsis when cut; newlines flattened."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def r(x, nd: int = 3):
    """Round for a table cell (None for NaN)."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else round(x, nd)


def canary_rows(canaries: list[dict], exp: dict, extr: dict | None, base_exp: dict | None, show: bool,
                decode=None) -> list[dict]:
    """One row per inserted canary; the secret and the greedy continuation only when ``show``.

    ``exposure`` is the gated figure (exact where the space was enumerated: then ``rank`` is the rank
    among every secret of the template, else among the references), beside the rank-based and
    skew-normal estimates.
    """
    exact = exp.get("method") == "exact"
    rank = exp["exact_rank"] if exact else exp["rank"]
    rows = []
    for i, c in enumerate(canaries):
        row = {"canary": c["id"], "repeats": c["repeats"], "log-perplexity (bits)": r(exp["log_perplexity"][i]),
               ("rank in the space" if exact else "rank among references"): r(rank[i], 1),
               "exposure": r(exp["exposure"][i]), "exposure (rank among references)": r(exp["exposure_rank"][i]),
               "exposure (skew-normal)": r(exp["exposure_fit"][i])}
        if base_exp is not None:
            row["base exposure"] = r(base_exp["exposure"][i])
        if extr is not None:
            row["greedy extracted"] = bool(extr["greedy"][i])
            if extr["sampled"] is not None:
                row["P(extract)"] = r(extr["sampled"][i])
        if show:
            row["secret"] = c["secret"]
            if extr is not None and extr.get("greedy_text") is not None:  # the black-box path: text
                row["greedy continuation"] = truncate(extr["greedy_text"][i])
            elif extr is not None and decode is not None:
                row["greedy continuation"] = truncate(decode([t for t in extr["greedy_ids"][i] if t >= 0]))
        rows.append(row)
    return rows


def exposure_figure(canaries: list[dict], exp: dict) -> str:
    """Exposure against repeat count (log x): the gated figure, the rank-based and skew-normal estimates,
    never-inserted canaries at the left, the maxima drawn."""
    from auditkit.figures import new_figure, to_svg
    fig, ax = new_figure(6.4, 3.4)
    reps = np.array([c["repeats"] for c in canaries], dtype=float)
    label = "inserted canary (exact rank)" if exp.get("method") == "exact" else "inserted canary (max of the two)"
    ax.scatter(reps, exp["exposure"], color="#dc2626", label=label, zorder=4)
    ax.scatter(reps, exp["exposure_rank"], marker="o", facecolors="none", edgecolors="#2563eb",
               label="rank among references", zorder=3)
    ax.scatter(reps, exp["exposure_fit"], marker="x", color="#7c3aed", label="skew-normal estimate", zorder=3)
    unseen = exp["unseen_exposure"]
    if len(unseen):
        x0 = max(0.5, float(reps.min()) / 2) if reps.size else 0.5
        ax.scatter(np.full(len(unseen), x0), unseen, color="#6b7280", s=12, label="never inserted")
    ax.axhline(exp["max_possible"], color="#15803d", ls="--", lw=1, label="max (log2 of the space)")
    ax.axhline(exp["max_possible_rank"], color="#2563eb", ls=":", lw=1, label="max of the rank (log2 |R|)")
    ax.axhline(math.log2(math.e), color="#9ca3af", ls=":", lw=1, label="chance (log2 e)")
    ax.set_xscale("log")
    ax.set_xlabel("times inserted in the training data")
    ax.set_ylabel("exposure (bits)")
    ax.legend(fontsize=7, loc="upper left")
    return to_svg(fig)


def roc_figure(labels, scores: dict) -> str:
    """ROC curves of every attack on log-log axes (low FPR is what matters; Carlini et al. 2022)."""
    from sklearn.metrics import roc_auc_score, roc_curve
    from auditkit.figures import new_figure, to_svg
    fig, ax = new_figure(5.2, 4.2)
    y = np.asarray(labels, dtype=int)
    floor = 1.0 / max(2, int((y == 0).sum()))
    for name, s in scores.items():
        s = np.asarray(s, dtype=float)
        ok = np.isfinite(s)
        if len(np.unique(y[ok])) < 2:
            continue
        fpr, tpr, _ = roc_curve(y[ok], s[ok])
        auc = roc_auc_score(y[ok], s[ok])
        ax.plot(np.maximum(fpr, floor / 2), np.maximum(tpr, floor / 2), lw=1.2,
                label=f"{ATTACK_NAMES.get(name, name)} (AUC {auc:.3f})")
    grid = np.logspace(math.log10(floor / 2), 0, 50)
    ax.plot(grid, grid, color="#9ca3af", ls="--", lw=1, label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("false positive rate (non-members)")
    ax.set_ylabel("true positive rate (members)")
    ax.legend(fontsize=7, loc="lower right")
    return to_svg(fig)
