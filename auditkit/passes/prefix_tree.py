"""Requests: scoring many continuations that share prefixes, and moments of the next-token distribution.

- :meth:`PrefixTreeRequests.prefix_tree_logprobs`: the total log-prob of every row of a token-id table
  (a secret space of 10^6 candidates, for Secret Sharer exposure: Carlini et al. 2019, section 4.2),
  scored through a token trie. The rows are sorted into the trie; the common prefix and each subtree's
  first token run as one sequence, then level by level each node runs its last token against its
  parent's KV cache, so shared prefixes are scored once. The subtrees are the units of
  :meth:`~auditkit.models.ModelHandle.map_batches` (one per batch, dealt to the processes by size);
  inside one, a level runs in chunks that keep its KV cache under a byte budget.
- :meth:`PrefixTreeRequests.next_token_moments`: per position the token log-prob and the mean and
  standard deviation of ``log p(z | x_<t)`` under ``z ~ p(. | x_<t)`` (Min-K%++: Zhang et al. 2024), the LM
  head applied through the handle's ``_lm_logits`` at the non-padding positions only, and reduced inside
  the batch so no ``[T, V]`` distribution outlives it.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

#: memory the trie's KV caches and log-probs may hold at once (rows are split into chunks below this); on a
#: GPU the budget grows with the device: a quarter of what its memory leaves beside the model's weights,
#: between the "cuda" figure and CUDA_BUDGET_MAX (see :func:`_device_budget`)
KV_BUDGET_BYTES = {"cpu": 512 << 20, "cuda": 2 << 30}
CUDA_BUDGET_MAX = 16 << 30
#: the most rows one step of the trie runs at once, and the fewest (where the budget allows fewer)
MAX_CHUNK, MIN_CHUNK = 1 << 16, 16
#: plan the chunks from the memory budget on the CPU too (tests; the CPU keeps its fixed rule otherwise)
PLAN_ON_CPU = False
#: logits one slice of a moments batch may hold: its kept positions (those predicting a real token) times the
#: vocabulary (a batch's rows are split below this, one row at least)
MOMENT_LOGITS = 8_000_000


def _kv_rows(cache, idx):
    """A new cache holding the rows ``idx`` of ``cache`` (None where the cache is not plain key/value)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer
    layers = getattr(cache, "layers", None)
    if not layers or not all(type(layer) is DynamicLayer and layer.keys is not None for layer in layers):
        return None
    return DynamicCache([(layer.keys[idx], layer.values[idx]) for layer in layers])


def _device_budget(model, device) -> int:
    """The trie's memory budget on this device (bytes): fixed on the CPU; on a GPU a quarter of the
    device's total memory less what this process's tensors hold there (the model, and a base model or
    anything else the run loaded beside it), between ``KV_BUDGET_BYTES["cuda"]`` and ``CUDA_BUDGET_MAX``.
    It reads this process's own allocations, never the driver's free memory, so the same run plans the
    same chunks (other processes on the GPU do not change the numbers)."""
    if not str(device).startswith("cuda"):
        return KV_BUDGET_BYTES["cpu"]
    import torch
    try:
        dev = torch.device(device)
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        total = torch.cuda.get_device_properties(index).total_memory
        held = max(torch.cuda.memory_allocated(index), sum(t.numel() * t.element_size() for t in model.parameters()))
    except Exception:  # noqa: BLE001  (an unusual placement: keep the fixed figure)
        return KV_BUDGET_BYTES["cuda"]
    return int(min(CUDA_BUDGET_MAX, max(KV_BUDGET_BYTES["cuda"], (total - held) // 4)))


def _trie_levels(s: np.ndarray, p: int, units: list[tuple[int, int]]) -> list[tuple[int, int, bool]]:
    """The shape of the trie under the units, for planning its memory: per node length ``L`` (the tokens
    a node's KV cache holds, ``p + 1`` for a unit), ``(L, nodes, single)``: the most nodes of that length
    that run a step in any one unit, and whether every such node has at most one child that runs one."""
    n, width = s.shape
    rows = np.concatenate([np.arange(a, b) for a, b in units])
    t = s[rows]
    unit = np.repeat(np.arange(len(units)), [b - a for a, b in units])
    new = np.r_[True, unit[1:] != unit[:-1]]  # a new node of length p + 1: a new unit
    out = []
    prev_ids = None
    for length in range(p + 1, width):
        if length > p + 1:
            new = new | np.r_[True, t[1:, length - 1] != t[:-1, length - 1]]
        live = t[:, length] >= 0  # rows that go on past this node: its node runs a step
        # a node's rows that end here sort first, so its first live row starts a run of live rows
        first_live = live & (new | ~np.r_[False, live[:-1]])
        if not first_live.any():
            break
        node_id = np.cumsum(new)
        per_unit = np.bincount(unit[first_live], minlength=len(units))
        if prev_ids is not None and out:
            parents = prev_ids[first_live]  # the node of length - 1 above each running node
            out[-1] = (out[-1][0], out[-1][1], bool(np.unique(parents).size == parents.size))
        out.append((length, int(per_unit.max()), True))
        prev_ids = node_id
    return out


def _plan_chunk(levels, token_bytes: float, logits_bytes: float, budget: int) -> int:
    """The most rows one step may run (``MIN_CHUNK`` .. ``MAX_CHUNK``) so that the trie's peak memory stays
    under ``budget``, the peak bounded from the trie's shape (``_trie_levels``): a node of length L holds
    ``L * token_bytes`` of cache per row; a level whose nodes may have more children than one chunk keeps
    its cache while they expand (its chunk of nodes at most), any other lets it go; and one step at a time
    holds its parents' cache, the rows it gathered, their grown cache and its logits."""
    def peak(c: int) -> float:
        held, step = 0.0, 0.0
        for (length, nodes, single), (_, kids, _) in zip(levels, levels[1:]):
            f, k = min(c, nodes), min(c, kids)
            keeps = not single and kids > c
            held += f * length * token_bytes if keeps else 0.0
            step = max(step, (0.0 if keeps else f * length * token_bytes)
                       + k * (2 * length + 1) * token_bytes + k * logits_bytes)
        return held + step

    sizes = sorted({int(MIN_CHUNK * 1.25 ** i) for i in range(60)} | {nodes for _, nodes, _ in levels})
    best = MIN_CHUNK
    for c in sizes:
        if MIN_CHUNK <= c <= MAX_CHUNK and peak(c) <= budget:
            best = max(best, c)
    return best


class PrefixTreeRequests:
    """Mixin of ModelHandle: scoring many continuations that share prefixes (causal LMs)."""

    def prefix_tree_logprobs(self, ids: np.ndarray, *, budget_bytes: int | None = None,
                             fallback: bool = True) -> np.ndarray | None:
        """Total log-prob (natural log, every token after the first, as ``token_logprobs`` scores them)
        of each row of ``ids`` (``[N, L]`` token ids, right-padded with -1), through a token trie with a
        shared KV cache (Secret Sharer exact exposure, Carlini et al. 2019). Where the model's cache is
        not a plain per-layer key/value cache, or the rows share no prefix, the rows are scored whole
        through :meth:`score_ids` (``fallback=False`` returns None instead). Memoized in memory on the
        table's content and the budget."""
        self._require("causal-lm", "prefix_tree_logprobs")
        ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64))
        if ids.ndim != 2 or ids.shape[0] == 0:
            raise ValueError("prefix_tree_logprobs takes a non-empty [N, L] table of token ids")
        digest = hashlib.blake2b(ids.tobytes(), digest_size=16).hexdigest()

        def compute():
            return self._trie_pass(ids, budget_bytes)

        lp = self.memo("prefix_tree_logprobs", [digest, list(ids.shape)], compute, budget_bytes=budget_bytes)
        if lp is None and fallback:
            return self.full_sequence_logprobs(ids)
        return lp

    def full_sequence_logprobs(self, ids: np.ndarray, chunk: int = 20_000) -> np.ndarray:
        """The same totals as :meth:`prefix_tree_logprobs` from the rows scored whole (any causal LM),
        through the batched, memoized :meth:`score_ids`, ``chunk`` rows at a time."""
        ids = np.asarray(ids)
        out = np.empty(len(ids), dtype=np.float64)
        for s in range(0, len(ids), chunk):
            rows = [[int(t) for t in r[r >= 0]] for r in ids[s:s + chunk]]
            out[s:s + len(rows)] = [float(np.sum(lp, dtype=np.float64)) for lp in self.score_ids(rows)]
        return out

    def _trie_pass(self, ids: np.ndarray, budget_bytes: int | None) -> np.ndarray | None:
        import torch
        model, device = self.model, self.device
        n, width = ids.shape
        order = np.lexsort(ids.T[::-1])
        s = ids[order]
        same = (s == s[0]) & (s[0] >= 0)
        p = int(np.argmin(same.all(axis=0))) if not same.all() else width
        if p == 0 or p >= width:
            return None
        budget = budget_bytes or _device_budget(model, device)
        # the units: the subtrees under the common prefix, one per distinct token at depth p (rows that
        # end with the prefix score the prefix alone)
        tok_p = s[:, p]
        first = np.r_[True, tok_p[1:] != tok_p[:-1]]
        starts = np.flatnonzero(first)
        ends = np.r_[starts[1:], n]
        ended = tok_p[starts] < 0
        units = [(int(a), int(b)) for a, b, e in zip(starts, ends, ended) if not e]
        unit_ids = [[int(t) for t in s[a, :p + 1]] for a, _ in units]
        on_gpu = str(device).startswith("cuda") or PLAN_ON_CPU
        levels = _trie_levels(s, p, units) if units and on_gpu else None
        self.stats["forward_passes"] += 1

        def run_unit(idx, inp, mask):
            """Score every row under each unit of this batch; returns one score array per unit."""
            with torch.inference_mode():
                out = model(input_ids=inp, attention_mask=mask, use_cache=True)
                if _kv_rows(out.past_key_values, torch.tensor([0], device=inp.device)) is None:
                    return [None] * len(idx)
                lp_all = torch.log_softmax(out.logits.float(), dim=-1)  # [B, p+1, V]
                # log-probs of the prefix and of the unit's own token (positions 0..p-1 predict 1..p)
                head = lp_all[:, :p].gather(-1, inp[:, 1:p + 1].unsqueeze(-1)).squeeze(-1)  # [B, p]
                top = {"cache": out.past_key_values, "lp": lp_all[:, p].contiguous()}  # each unit's next token
                per_token = sum(layer.keys[0].numel() * layer.keys.element_size() * 2
                                for layer in top["cache"].layers) / (p + 1)
                logit_bytes = out.logits.element_size() + 8  # the logits, their float copy, the log-softmax
                vocab = int(out.logits.shape[-1])
                del lp_all, out
                if on_gpu:  # the most rows the memory allows: far fewer steps, each a fuller batch
                    chunk = _plan_chunk(levels, per_token, vocab * logit_bytes, budget)
                else:  # the CPU is compute-bound: its fixed chunks (and their exact numbers) are kept
                    chunk = int(max(MIN_CHUNK, min(8192, budget // max(1.0, per_token * width * max(1, width - p)))))
                lo = np.array([units[i][0] for i in idx])
                hi = np.array([units[i][1] for i in idx])
                base = head.double().sum(-1).cpu().numpy()
                score = np.zeros(n, dtype=np.float64)  # indexed by sorted row; only this batch's rows are set
                score[np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)])] = \
                    np.repeat(base, hi - lo)
                # the token log-probs each step gathers stay on the device until the unit is done (one host
                # sync per unit, not one per step); added to the rows' totals in step order, so every row's
                # float64 sum runs over its tokens in the same order as it would step by step
                pending: list = []

                def run(tokens, sub):
                    o = model(input_ids=tokens, past_key_values=sub, use_cache=True)
                    return {"cache": o.past_key_values, "lp": torch.log_softmax(o.logits[:, -1].float(), dim=-1)}

                def expand(frame: dict, lo: np.ndarray, hi: np.ndarray, depth: int) -> None:
                    """Score token ``depth`` of the rows under each node ``[lo, hi)`` (sorted rows; node k's
                    next-token log-probs are ``frame["lp"][k]``, its cache row k), then expand the children.
                    The frame is this call's own: its log-probs are let go once read, its cache once the last
                    chunk of children has taken its rows, so a level whose children run as one chunk no longer
                    holds memory while they expand."""
                    lp = frame.pop("lp")
                    sizes = hi - lo
                    rows = np.repeat(np.arange(len(lo)), sizes)
                    ridx = np.arange(int(sizes.sum())) + np.repeat(lo - np.r_[0, np.cumsum(sizes)[:-1]], sizes)
                    tok = s[ridx, depth]
                    live = np.flatnonzero(tok >= 0)
                    if not live.size:
                        return
                    key_r, key_t = rows[live], tok[live]
                    r_t = torch.as_tensor(key_r, device=lp.device).long()
                    t_t = torch.as_tensor(key_t, device=lp.device).long()
                    pending.append((ridx[live], lp[r_t, t_t]))
                    del lp
                    if depth + 1 >= width:
                        return
                    # children: runs of equal (node, token) among the live rows; expand those with longer rows
                    first = np.r_[True, (key_r[1:] != key_r[:-1]) | (key_t[1:] != key_t[:-1])]
                    start = np.flatnonzero(first)
                    end = np.r_[start[1:], live.size] - 1
                    c_lo, c_hi = ridx[live[start]], ridx[live[end]] + 1
                    more = s[c_hi - 1, depth + 1] >= 0  # rows ending at this child sort first within it
                    if not more.any():
                        return
                    parent, token, c_lo, c_hi = key_r[start][more], key_t[start][more], c_lo[more], c_hi[more]
                    cache = frame.pop("cache")
                    for k in range(0, len(parent), chunk):
                        sl = slice(k, k + chunk)
                        if len(lo) == len(parent) <= chunk and (parent == np.arange(len(lo))).all():
                            sub = cache  # one child per node, in order: the frame's cache itself, not a copy
                        else:
                            sub = _kv_rows(cache, torch.as_tensor(parent[sl], device=device).long())
                        if k + chunk >= len(parent):
                            cache = None  # the last chunk: the frame's cache is no longer needed
                        child = run(torch.as_tensor(token[sl], device=device).long()[:, None], sub)
                        del sub
                        expand(child, c_lo[sl], c_hi[sl], depth + 1)

                # a unit's rows that end at its token are done; the rest continue at depth p + 1
                if p + 1 < width:
                    expand(top, lo, hi, p + 1)
                del top
                if pending:
                    values = torch.cat([v.reshape(-1) for _, v in pending]).double().cpu().numpy()
                    at = 0
                    for rows_, _ in pending:
                        score[rows_] += values[at:at + rows_.size]
                        at += rows_.size
                return [score[a:b].copy() for a, b in zip(lo, hi)]

        # one subtree per batch: the units are dealt to the processes by how many rows they hold, and a
        # unit's numbers never depend on what else its batch holds
        parts = self.map_batches(unit_ids, run_unit, batch_size=1, costs=[b - a for a, b in units]) if units else []
        if any(part is None for part in parts):
            return None
        score = np.zeros(n, dtype=np.float64)
        if ended.any():  # rows that are the common prefix itself: score it once, whole
            a, b = int(starts[ended][0]), int(ends[ended][0])
            lp = self.score_ids([[int(t) for t in s[a, :p]]])[0]
            score[a:b] = float(np.sum(lp, dtype=np.float64))
        for (a, b), part in zip(units, parts):
            score[a:b] = part
        result = np.empty(n, dtype=np.float64)
        result[order] = score
        return result

    def next_token_moments(self, texts: Sequence[str]) -> dict:
        """Per text (as :meth:`token_logprobs` tokenizes and scores it): the token log-probs and, per
        position, the mean ``mu_t`` and standard deviation ``sigma_t`` of ``log p(z|x_<t)`` under
        ``z ~ p(.|x_<t)`` (Min-K%++, Zhang et al. 2024). The LM head runs through :meth:`_lm_logits` at the
        positions that predict a real token only (``t < len - 1``, no padding), as :meth:`token_logprobs`
        applies it; only three numbers per position leave the batch, and a batch is split into slices of
        consecutive rows whose kept positions hold at most ``MOMENT_LOGITS`` logits (one row at least).
        Memoized (also on disk); the token log-probs are also stored as the shared ``token_logprobs`` pass of
        the same texts."""
        self._require("causal-lm", "next_token_moments")
        texts = list(texts)

        def compute():
            import torch
            ids = self.token_ids(texts)
            vocab = int(getattr(self.model.config, "vocab_size", 0) or 32000)
            per_slice = max(1, MOMENT_LOGITS // vocab)  # kept positions one slice may hold
            self.stats["forward_passes"] += 1

            def run(idx, inp, mask):
                scored = [max(0, len(ids[i]) - 1) for i in idx]  # positions that predict a real token
                slices, a = [], 0
                while a < len(idx):
                    b, held = a + 1, scored[a]
                    while b < len(idx) and held + scored[b] <= per_slice:
                        held += scored[b]
                        b += 1
                    slices.append((a, b))
                    a = b
                rows = []
                with torch.inference_mode():
                    for a, b in slices:
                        # the slice's rows only, less the padding columns none of them needs (right padding)
                        width = max(len(ids[i]) for i in idx[a:b])
                        sub_inp, sub_mask = inp[a:b, :width], mask[a:b, :width]
                        logits, target, counts, _ = self._next_token_logits(sub_inp, sub_mask)  # [K, V]
                        # token log-probs as token_logprobs computes them (float32); the moments in float64,
                        # since float32 sums over the vocabulary move by a few ulps with the batch's padding
                        lp = self._target_logprobs(logits, target)
                        logp = torch.log_softmax(logits.double(), dim=-1)
                        del logits
                        p = logp.exp()
                        mu = (p * logp).sum(-1)
                        var = (p * (logp - mu.unsqueeze(-1)).pow(2)).sum(-1)
                        del logp, p
                        sd = var.clamp_min(0).sqrt().float()
                        for r_lp, r_mu, r_sd in zip(torch.split(lp, counts), torch.split(mu.float(), counts),
                                                    torch.split(sd, counts)):
                            rows.append((r_lp.cpu().numpy(), r_mu.cpu().numpy(), r_sd.cpu().numpy()))
                return rows

            out = self.map_batches(ids, run)
            return {"token_logprobs": [r[0] for r in out], "mu": [r[1] for r in out],
                    "sigma": [r[2] for r in out]}

        res = self.memo("next_token_moments", texts, compute, persist=True)
        self.memo("token_logprobs", texts, lambda: res["token_logprobs"], persist=True)
        return res
