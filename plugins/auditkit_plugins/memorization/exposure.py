"""Canary exposure (Carlini et al. 2019, "The Secret Sharer: Evaluating and Testing Unintended
Memorization in Neural Networks", USENIX Security).

For a canary ``s`` inserted into the training data, with log-perplexity
``Px(s) = -sum_i log2 p(s_i | s_<i)`` (every token but the first, as ``token_logprobs`` scores them):

- exact exposure (section 4.2 of the paper): ``exposure(s) = log2 |S| - log2 rank(s)``, where ``S`` is the
  whole secret space of the template (every ``digits``-digit secret) and ``rank(s)`` is the canary's
  position among all of them ordered by increasing log-perplexity (rank 1 = more likely than every other
  secret). Computed where the space has at most ``exact_max`` secrets (10^6 by default) by scoring every
  candidate through a token trie: the shared template prefix is run once, then each trie node extends
  its parent's KV cache by one token, so the whole space of 10^6 six-digit secrets costs ~2.2x10^5
  single-token steps instead of 10^6 full sequences (the handle's ``prefix_tree_logprobs`` request).
- rank-based estimate: the same formula with ``S`` replaced by a sample ``R`` of never-inserted
  references; capped at ``log2 |R|``.
- extrapolated estimate (section 4.3): fit a skew-normal distribution (``scipy.stats.skewnorm``) to the
  reference log-perplexities and take ``-log2 CDF(Px(s))``, capped at ``log2 |S|``.

Ties are mid-ranks everywhere: ``rank = 1 + #{r: Px(r) < Px(s)} + #{r != s: Px(r) = Px(s)} / 2``.
The skew-normal fit under-estimated the exposure of well-memorized canaries by up to 3.2 bits against
enumeration on a tiny GPT-2 (issue 13), so the figure that is gated (``exposure``) is the exact one where
the space was enumerated and otherwise the larger of the rank-based and the extrapolated estimates.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from auditkit.finetune import template_parts

LN2 = math.log(2.0)
#: enumerate the secret space (exact exposure) up to this many secrets by default
EXACT_MAX = 1_000_000


def log_perplexity_bits(token_logprobs: Sequence[np.ndarray]) -> np.ndarray:
    """Px(s) = -sum_i log2 p(s_i | s_<i) for each sequence (natural-log token log-probs in)."""
    return np.array([-float(np.sum(lp)) / LN2 for lp in token_logprobs], dtype=float)


def exposure_rank(canary_px, reference_px) -> tuple[np.ndarray, np.ndarray]:
    """(rank, exposure) of each canary log-perplexity among the reference log-perplexities.

    ``rank = 1 + #lower + #equal / 2`` (mid-rank ties); ``exposure = log2 |R| - log2 rank``.
    """
    ref = np.sort(np.asarray(reference_px, dtype=float))
    if ref.size == 0:
        raise ValueError("exposure needs at least one reference")
    c = np.atleast_1d(np.asarray(canary_px, dtype=float))
    lower = np.searchsorted(ref, c, side="left")
    equal = np.searchsorted(ref, c, side="right") - lower
    rank = 1.0 + lower + equal / 2.0
    return rank, math.log2(ref.size) - np.log2(rank)


def skewnorm_fit(reference_px) -> tuple[float, float, float]:
    """Maximum-likelihood skew-normal (a, loc, scale) of the reference log-perplexities."""
    from scipy.stats import skewnorm
    ref = np.asarray(reference_px, dtype=float)
    if ref.size < 3 or np.ptp(ref) == 0:
        return 0.0, float(ref.mean()) if ref.size else 0.0, 0.0
    a, loc, scale = skewnorm.fit(ref)
    return float(a), float(loc), float(scale)


def exposure_fit(canary_px, params: tuple[float, float, float], space_size: float | None = None) -> np.ndarray:
    """Extrapolated exposure ``-log2 CDF(Px)`` under the fitted skew-normal, capped at log2(space)."""
    from scipy.stats import skewnorm
    a, loc, scale = params
    c = np.atleast_1d(np.asarray(canary_px, dtype=float))
    if scale <= 0:
        out = np.where(c < loc, np.inf, np.where(c == loc, 1.0, 0.0))
    else:
        out = -skewnorm.logcdf(c, a, loc, scale) / LN2
    out = np.maximum(out, 0.0)
    if space_size:
        out = np.minimum(out, math.log2(space_size))
    return out


# ---------------------------------------------------------------------- the secret space

def secret_format(canaries: dict) -> tuple[int, str] | None:
    """(digits, separator) of the record's secrets, or None when they are not ``d<sep>d<sep>...`` digits."""
    sep = canaries.get("separator", "-")
    n = canaries.get("digits")
    cans = canaries.get("canaries") or []
    if n is None and cans:
        n = len(cans[0]["secret"].split(sep))
    if not n:
        return None
    for c in cans:
        parts = c["secret"].split(sep) if sep else list(c["secret"])
        if len(parts) != n or not all(len(p) == 1 and p.isdigit() for p in parts):
            return None
    return int(n), sep


def secret_index(secret: str, sep: str) -> int:
    """The position of a secret in the enumeration order (its digits read as a base-10 number)."""
    return int(secret.replace(sep, "") if sep else secret)


def _secret_of(text: str, head: str, tail: str) -> str:
    return text[len(head):len(text) - len(tail) if tail else None]


def _pack(rows: Sequence[Sequence[int]]) -> np.ndarray:
    width = max(len(r) for r in rows)
    out = np.full((len(rows), width), -1, dtype=np.int32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def _digit_tables(tok, template: str, digits: int, sep: str) -> list[np.ndarray]:
    """Per digit position, the token ids ``[10, w]`` (right-padded with -1) of its piece ``head + d1``,
    ``sep + d2``, ..., ``sep + dn + tail`` for each digit value (special tokens with the first piece)."""
    head, tail = template_parts(template)

    def enc(s: str, special: bool) -> list[int]:
        return list(tok(s, add_special_tokens=special)["input_ids"])

    tables = []
    for j in range(digits):
        pre = head if j == 0 else sep
        post = tail if j == digits - 1 else ""
        tables.append(_pack([enc(pre + str(d) + post, j == 0) for d in range(10)]))
    return tables


def _composed_row(tables: Sequence[np.ndarray], i: int, digits: int) -> list[int]:
    """The composed token ids of secret ``i`` (its pieces' ids, padding dropped)."""
    out: list[int] = []
    for j, ch in enumerate(f"{i:0{digits}d}"):
        piece = tables[j][int(ch)]
        out.extend(int(t) for t in piece[piece >= 0])
    return out


def compose_table(tables: Sequence[np.ndarray], digits: int) -> np.ndarray:
    """The ``[10**digits, L]`` table (right-padded with -1) of every secret's composed token ids, in
    enumeration order: the expensive step (about 0.5-0.9 s for 10^6 secrets), done once per distinct
    ``tables`` in a run (:func:`candidate_ids`' ``cache``)."""
    n = 10 ** digits
    dig = (np.arange(n, dtype=np.int64)[:, None] // 10 ** np.arange(digits - 1, -1, -1, dtype=np.int64)) % 10
    full = np.concatenate([tables[j][dig[:, j]] for j in range(digits)], axis=1)
    del dig
    order = np.argsort(full < 0, axis=1, kind="stable")  # move the -1 gaps to the end, keeping token order
    full = np.take_along_axis(full, order, axis=1)
    del order
    return full[:, :int((full >= 0).sum(axis=1).max())]


def candidate_ids(handle, template: str, digits: int, sep: str, probe: Sequence[int] = (),
                  cache: dict | None = None) -> tuple[np.ndarray, str]:
    """Token ids ``[10**digits, L]`` (right-padded with -1) of every secret of the template, in
    enumeration order, exactly as the handle tokenizes the texts; and how they were obtained.

    Tokenizing 10^6 texts one by one takes about a minute, so the ids are composed from the tokens of
    the pieces ``head + d1``, ``sep + d2``, ..., ``sep + dn + tail`` (10 variants each) and checked against
    the handle's own tokenization of a sample (``probe`` indices: the canaries and references, every
    repeated-digit secret and 512 seeded random ones). Where any differs (a tokenizer that merges across
    the pieces), every text is tokenized instead.

    ``cache`` (a dict the caller keeps, e.g. for the audited model and its base) holds the composed
    tables by the pieces' token ids: a second handle whose tokenizer gives the same pieces (and passes its
    own sample check) reuses the table instead of composing it again. The composed table is a function of
    the pieces alone, so the reuse changes no number.
    """
    n = 10 ** digits
    tables = _digit_tables(handle.tokenizer, template, digits, sep)

    def text(i: int) -> str:
        return template.format(digits=sep.join(f"{i:0{digits}d}"))

    rng = np.random.default_rng(0)
    sample = sorted(set(int(i) for i in probe)
                    | {int(str(d) * digits) for d in range(10)}
                    | set(rng.integers(0, n, size=min(n, 512)).tolist()))
    real = handle.token_ids([text(i) for i in sample])
    if all(_composed_row(tables, i, digits) == list(r) for i, r in zip(sample, real)):
        key = (digits, tuple((t.shape, t.tobytes()) for t in tables))
        full = cache.get(key) if cache is not None else None
        if full is None:
            full = compose_table(tables, digits)
            if cache is not None:
                cache[key] = full
        return full, "composed from per-digit tokens (checked on a sample)"
    rows: list[list[int]] = []
    for s in range(0, n, 50_000):
        rows.extend(handle.token_ids([text(i) for i in range(s, min(n, s + 50_000))]))
    return _pack(rows), "tokenized one by one"


def trie_logprobs(handle, ids: np.ndarray, budget_bytes: int | None = None) -> np.ndarray | None:
    """Total log-prob (natural log, every token after the first) of each row of ``ids`` (-1 = padding),
    through the handle's token-trie request (shared prefixes scored once, with the KV cache); None
    where the model's cache cannot be shared that way (then score full sequences)."""
    return handle.prefix_tree_logprobs(ids, budget_bytes=budget_bytes, fallback=False)


def full_logprobs(handle, ids: np.ndarray, chunk: int = 20_000) -> np.ndarray:
    """The same totals from full sequences through the handle's batched ``score_ids`` (any model)."""
    return handle.full_sequence_logprobs(ids, chunk=chunk)


def space_logprobs(handle, template: str, digits: int, sep: str, probe: Sequence[int] = (),
                   id_cache: dict | None = None) -> dict:
    """Log-prob of every secret of the template (enumeration order), memoized on the handle (and on disk,
    so a second audit of the same base model skips it): ``{"logprob", "tokens", "scoring"}``. ``id_cache``:
    :func:`candidate_ids`' cache of composed token tables, shared between handles."""
    def compute():
        ids, how = candidate_ids(handle, template, digits, sep, probe, cache=id_cache)
        lp = trie_logprobs(handle, ids)
        scoring = "token trie with a shared KV cache"
        if lp is None:
            lp, scoring = full_logprobs(handle, ids), "full sequences in batches"
        return {"logprob": lp, "tokens": how, "scoring": scoring}

    return handle.memo("memorization.secret_space", [template, str(digits), sep], compute, persist=True)


def exact_rank(space_lp: np.ndarray, indices) -> tuple[np.ndarray, np.ndarray]:
    """(rank, exposure) of the secrets at ``indices`` among the whole space (mid-rank ties, the secret
    itself not counted as a tie): ``exposure = log2 |S| - log2 rank``."""
    srt = np.sort(np.asarray(space_lp, dtype=np.float64))
    q = np.asarray(space_lp, dtype=np.float64)[np.asarray(indices, dtype=np.int64)]
    above = srt.size - np.searchsorted(srt, q, side="right")  # strictly more likely
    equal = np.searchsorted(srt, q, side="right") - np.searchsorted(srt, q, side="left") - 1
    rank = 1.0 + above + equal / 2.0
    return rank, math.log2(srt.size) - np.log2(rank)


# ---------------------------------------------------------------------- per canary

def canary_exposures(handle, canaries: dict, unseen: int = 20, exact_max: int = EXACT_MAX, score=None,
                     id_cache: dict | None = None) -> dict:
    """Exposure of every inserted canary and of ``unseen`` held-out never-inserted references.

    The canaries and references are scored in one batched pass through the handle's shared, cached
    ``token_logprobs``; the last ``unseen`` references are held out as never-inserted canaries (their
    exposure shows what chance looks like: about log2(e) = 1.44 bits on average). Where the secret
    space has at most ``exact_max`` secrets it is enumerated and ``exposure`` is exact; otherwise
    ``exposure`` is the larger of the rank-based and skew-normal estimates (``method`` says which).
    ``score`` (``texts -> per-token log-probs``) replaces the handle's ``token_logprobs`` (the black-box
    path scores the text after the template's head given the head). ``id_cache``: a dict shared by the
    calls for the audited model and its base, so the table of every secret's token ids is composed once
    where both tokenizers give the same ids (:func:`candidate_ids`).
    """
    refs = list(canaries.get("references") or [])
    cans = list(canaries.get("canaries") or [])
    unseen = max(0, min(int(unseen), len(refs) // 2))
    held, ranked = refs[len(refs) - unseen:] if unseen else [], refs[:len(refs) - unseen]
    if not ranked:
        raise ValueError("the canary record holds no references to rank against")
    texts = [c["text"] for c in cans] + held + ranked
    px = log_perplexity_bits((score or handle.token_logprobs)(texts))
    can_px, held_px, ref_px = px[:len(cans)], px[len(cans):len(cans) + len(held)], px[len(cans) + len(held):]
    space = canaries.get("space_size")
    params = skewnorm_fit(ref_px)
    rank, exp_rank = exposure_rank(can_px, ref_px)
    held_rank, held_exp_rank = exposure_rank(held_px, ref_px) if len(held) else (np.zeros(0), np.zeros(0))
    fit, held_fit = exposure_fit(can_px, params, space), exposure_fit(held_px, params, space)
    out = {
        "log_perplexity": can_px, "rank": rank, "exposure_rank": exp_rank, "exposure_fit": fit,
        "unseen_exposure_rank": held_exp_rank, "unseen_exposure_fit": held_fit,
        "reference_px": ref_px, "skewnorm": params, "n_references": int(ref_px.size),
        "max_possible_rank": math.log2(ref_px.size),
        "max_possible": math.log2(space) if space else math.log2(ref_px.size),
        "space_size": space, "exact": None, "method": "max(rank, skew-normal)",
        "exposure": np.maximum(exp_rank, fit), "unseen_exposure": np.maximum(held_exp_rank, held_fit),
    }
    fmt = secret_format(canaries)
    if fmt is not None and space and 10 ** fmt[0] == space and space <= exact_max:
        digits, sep = fmt
        head, tail = template_parts(canaries["template"])
        can_idx = [secret_index(c["secret"], sep) for c in cans]
        held_idx = [secret_index(_secret_of(t, head, tail), sep) for t in held]
        ref_idx = [secret_index(_secret_of(t, head, tail), sep) for t in ranked]
        try:
            sp = space_logprobs(handle, canaries["template"], digits, sep, can_idx + held_idx + ref_idx,
                                id_cache=id_cache)
        except Exception as exc:  # out of memory (host or torch's device OOM): keep the estimate, and say why
            if not (isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"):
                raise
            out["method"] = "max(rank, skew-normal): enumerating the space ran out of memory"
            return out
        ex_rank, ex = exact_rank(sp["logprob"], can_idx)
        held_ex = exact_rank(sp["logprob"], held_idx)[1] if held_idx else np.zeros(0)
        out.update(exposure=ex, exact_rank=ex_rank, unseen_exposure=held_ex, method="exact",
                   exact={"tokens": sp["tokens"], "scoring": sp["scoring"], "space_size": int(space)})
    return out
