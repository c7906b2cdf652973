"""Membership inference: is an example in the fine-tuning data? Every score is "higher = member".

- LOSS (Yeom et al. 2018, "Privacy Risk in Machine Learning"): the mean token log-prob (causal LMs)
  or minus the cross-entropy of the true label (classifiers).
- zlib ratio (Carlini et al. 2021, "Extracting Training Data from Large Language Models"): minus the
  log-perplexity (mean token NLL, nats) divided by the zlib entropy (bytes of ``zlib.compress``).
- Min-K% (Shi et al. 2024, "Detecting Pretraining Data from Large Language Models"): the mean of the
  k% lowest token log-probs.
- Min-K%++ (Zhang et al. 2024, "Min-K%++: Improved Baseline for Detecting Pre-Training Data from
  Large Language Models"): each token log-prob standardized by the mean and standard deviation of the
  log-prob under the model's next-token distribution at that position,
  ``(log p(x_t|x_<t) - mu_t) / sigma_t`` with ``mu_t = E_{z~p(.|x_<t)} log p(z|x_<t)`` and
  ``sigma_t^2 = E_z (log p(z|x_<t) - mu_t)^2``; then the mean of the k% lowest.
- Reference-model difference (Carlini et al. 2021; Watson et al. 2022, "On the Importance of
  Difficulty Calibration in Membership Inference Attacks"): the target's mean token log-prob minus the
  reference (base) model's.

Short texts: Min-K% and Min-K%++ average the ``max(1, floor(k * T))`` lowest of ``T`` tokens, so a
text with ``k * T < 1`` still uses its single lowest token. Texts with no scored token are dropped.
Metrics: ROC AUC (``sklearn.metrics.roc_auc_score``, bootstrap 95% CI) and the TPR at 1% and 0.1%
FPR, read off ``roc_curve`` as the highest TPR whose FPR does not exceed the target.

``mia_auc_max`` (the strongest attack) is the maximum over attacks, whose confidence interval must allow
for having picked the winner after seeing the data (the winner's own bootstrap CI is too high: with five
attacks at chance, its lower bound lies above 0.5 far more often than 2.5% of the time). ``max_auc_ci``
gives simultaneous bounds by the max-statistic bootstrap (Westfall & Young 1993, "Resampling-Based
Multiple Testing"; Romano & Wolf 2005): members and non-members are resampled separately (stratified, so
every resample has both), the rows jointly for every attack; with ``d_b = max_a (AUC*_a,b - AUC_a)`` and
``u_b = max_a (AUC_a - AUC*_a,b)``, every attack's AUC lies in ``[AUC_a - q97.5(d), AUC_a + q97.5(u)]``
with about 95% joint coverage, so the maximum of the true AUCs lies in
``[max_a AUC_a - q97.5(d), max_a AUC_a + q97.5(u)]``.
"""
from __future__ import annotations

import math
import zlib
from typing import Sequence

import numpy as np

FPR_TARGETS = {"1pct": 0.01, "0_1pct": 0.001}


def min_k(values: np.ndarray, k: float) -> float:
    """Mean of the ``max(1, floor(k * T))`` lowest values (Min-K%, with the short-text guard)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return float("nan")
    n = max(1, int(math.floor(k * v.size)))
    return float(np.mean(np.sort(v)[:n]))


def zlib_entropy(text: str) -> int:
    """Bytes of the zlib-compressed UTF-8 text (Carlini et al. 2021)."""
    return len(zlib.compress(text.encode("utf-8")))


def next_token_moments(handle, texts: Sequence[str]) -> dict:
    """Per text, the token log-probs and the mean ``mu_t`` and standard deviation ``sigma_t`` of
    ``log p(z|x_<t)`` under ``z ~ p(.|x_<t)``: the handle's ``next_token_moments`` request (one batched,
    memoized pass that keeps three numbers per position, never the ``[T, V]`` distributions; its token
    log-probs are shared as the handle's ``token_logprobs`` pass of the same texts)."""
    return handle.next_token_moments(list(texts))


def min_k_plus_plus(token_lp: np.ndarray, mu: np.ndarray, sigma: np.ndarray, k: float) -> float:
    """Min-K%++: the mean of the k% lowest standardized token log-probs ``(lp - mu) / sigma``."""
    z = (np.asarray(token_lp) - np.asarray(mu)) / np.maximum(np.asarray(sigma), 1e-6)
    return min_k(z, k)


def _mean_logprobs(lps) -> np.ndarray:
    """The mean token log-prob of each text (NaN where a text has no scored token)."""
    return np.array([float(np.mean(lp)) if len(lp) else np.nan for lp in lps])


def logprob_scores(texts: Sequence[str], lps, k: float, *, moments: dict | None = None,
                   reference_lps=None) -> dict:
    """Every attack score (higher = member) from per-text token log-probs ``lps``: LOSS (mean log-prob),
    zlib ratio (of ``texts``), Min-K%; Min-K%++ where the next-token ``moments`` (``{"mu", "sigma"}`` per
    text) are given; the reference difference where the reference model's token log-probs of the same
    texts are given. NaN where a text has no scored token. Shared by the causal-LM and seq2seq scores."""
    mean_lp = _mean_logprobs(lps)
    scores = {
        "loss": mean_lp,
        "zlib": np.array([m / zlib_entropy(t) for m, t in zip(mean_lp, texts)]),
        "mink": np.array([min_k(lp, k) for lp in lps]),
    }
    if moments is not None:
        scores["minkpp"] = np.array([min_k_plus_plus(lp, mu, sd, k) if len(lp) else np.nan
                                     for lp, mu, sd in zip(lps, moments["mu"], moments["sigma"])])
    if reference_lps is not None:
        scores["ref"] = mean_lp - _mean_logprobs(reference_lps)
    return scores


def lm_scores(handle, texts: Sequence[str], k: float, reference=None, minkpp: bool = True) -> dict:
    """Every attack score (higher = member) for causal-LM texts; NaN where a text has no scored token."""
    texts = list(texts)
    mom = next_token_moments(handle, texts) if minkpp else None
    lps = mom["token_logprobs"] if minkpp else handle.token_logprobs(texts)
    ref = reference.token_logprobs(texts) if reference is not None else None
    return logprob_scores(texts, lps, k, moments=mom, reference_lps=ref)


def seq2seq_scores(handle, texts: Sequence[str], pairs, k: float, reference=None) -> dict:
    """LOSS, zlib, Min-K% (and the reference difference) for a seq2seq LM: the token log-probs are the
    completion's given the prompt in the encoder when ``pairs`` (prompt, completion) are given (the loss of
    the training target), else the decoder's log-probs of each text (``token_logprobs``). Min-K%++ needs
    a causal LM's next-token moments and is left out; zlib reads the whole text (prompt + completion)."""
    texts = list(texts)

    def logprobs(h):
        return h.continuation_logprobs(list(pairs)) if pairs is not None else h.token_logprobs(texts)

    return logprob_scores(texts, logprobs(handle), k,
                          reference_lps=logprobs(reference) if reference is not None else None)


def classifier_scores(handle, texts: Sequence[str], labels: Sequence[int]) -> dict:
    """LOSS attack for classifiers: minus the cross-entropy of the true label (shared class_logits)."""
    from scipy.special import log_softmax
    logits = np.asarray(handle.class_logits(list(texts)), dtype=float)
    lp = log_softmax(logits, axis=-1)
    return {"loss": lp[np.arange(len(labels)), np.asarray(labels, dtype=int)]}


def tpr_at_fpr(labels, scores, target: float) -> float:
    """Highest TPR on the ROC curve whose FPR is at most ``target`` (all thresholds kept)."""
    from sklearn.metrics import roc_curve
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    ok = fpr <= target + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def auc_mann_whitney(labels, scores) -> float:
    """ROC AUC through the Mann-Whitney identity ``(R_1 - n_1 (n_1 + 1) / 2) / (n_1 n_0)`` with mid-ranks
    (``scipy.stats.rankdata``), equal to ``roc_auc_score`` (ties count one half) and ~50x faster, for the
    bootstrap resamples; NaN when a resample lacks a class."""
    from scipy.stats import rankdata
    y = np.asarray(labels, dtype=bool)
    n1 = int(y.sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=float))
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def attack_metrics(labels, scores, seed: int = 0, ci: bool = True) -> dict:
    """ROC AUC (``roc_auc_score``, with a paired percentile-bootstrap 95% CI) and the TPR at the low-FPR
    targets for one attack; texts whose score is NaN are left out."""
    from sklearn.metrics import roc_auc_score
    from auditkit.stats import bootstrap_ci
    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=float)
    ok = np.isfinite(s)
    y, s = y[ok], s[ok]
    if len(np.unique(y)) < 2:
        return {"auc": float("nan"), "auc_ci": None, "n": int(y.size),
                **{f"tpr_at_{k}_fpr": float("nan") for k in FPR_TARGETS}}
    out = {"auc": float(roc_auc_score(y, s)), "n": int(y.size),
           "auc_ci": bootstrap_ci(auc_mann_whitney, y, s, seed=seed) if ci else None}
    for name, target in FPR_TARGETS.items():
        out[f"tpr_at_{name}_fpr"] = tpr_at_fpr(y, s, target)
    return out


def stratified_indices(labels, n_resamples: int, seed: int = 0) -> np.ndarray:
    """``[n_resamples, n]`` row indices: each resample draws the members (label 1) with replacement from the
    members and the non-members from the non-members, keeping each group's size and position."""
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    idx = np.empty((n_resamples, y.size), dtype=np.int64)
    for cls in (1, 0):
        where = np.flatnonzero(y == cls)
        if where.size:
            idx[:, where] = where[rng.integers(0, where.size, size=(n_resamples, where.size))]
    return idx


def auc_rows(labels, scores: np.ndarray) -> np.ndarray:
    """Mann-Whitney ROC AUC (mid-ranks, ties one half) of each row of ``[B, n]`` score matrices, given the
    ``[n]`` or ``[B, n]`` labels; every row must hold both classes."""
    from scipy.stats import rankdata
    s = np.atleast_2d(np.asarray(scores, dtype=float))
    y = np.broadcast_to(np.asarray(labels, dtype=bool), s.shape)
    n1 = y.sum(axis=1)
    n0 = y.shape[1] - n1
    ranks = rankdata(s, axis=1)
    return (np.where(y, ranks, 0.0).sum(axis=1) - n1 * (n1 + 1) / 2.0) / (n1 * n0)


def max_auc_ci(labels, scores: dict, seed: int = 0, n_resamples: int = 1000,
               confidence: float = 0.95) -> dict | None:
    """The highest ROC AUC over the attacks in ``scores`` (``{attack: [n] scores}``) with the max-statistic
    bootstrap's simultaneous interval (see the module docstring).

    Rows where any attack's score is not finite are left out (for every attack, so the attacks are compared
    on the same rows); an attack whose scores are constant still counts (AUC 0.5). Returns ``{"auc",
    "ci_low", "ci_high", "attack", "n", "aucs"}`` or None when fewer than one member or non-member remains.
    """
    names = list(scores)
    if not names:
        return None
    y = np.asarray(labels, dtype=int)
    mat = np.vstack([np.asarray(scores[a], dtype=float) for a in names])  # [A, n]
    ok = np.all(np.isfinite(mat), axis=0)
    y, mat = y[ok], mat[:, ok]
    if y.size == 0 or y.min() == y.max():
        return None
    point = auc_rows(y, mat)  # [A]
    idx = stratified_indices(y, n_resamples, seed)
    boot = np.vstack([auc_rows(y[idx], mat[a][idx]) for a in range(len(names))])  # [A, B]; y[idx] == y per row
    alpha = (1.0 - confidence) / 2.0
    over = np.max(boot - point[:, None], axis=0)   # d_b
    under = np.max(point[:, None] - boot, axis=0)  # u_b
    best = int(np.argmax(point))
    top = float(point[best])
    return {"auc": top, "ci_low": top - float(np.quantile(over, 1.0 - alpha)),
            "ci_high": top + float(np.quantile(under, 1.0 - alpha)), "attack": names[best], "n": int(y.size),
            "aucs": {a: float(v) for a, v in zip(names, point)}}
