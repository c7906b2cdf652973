"""The ``cost`` check: what the candidate costs to serve, measured beside its baseline in the same run.

Everything is measured through the model handle's own scoring request (``ModelHandle.score_ids``, which
is not memoized, so every timed call is a real forward pass), on seeded synthetic inputs: ``seq_len``
token ids drawn from each model's vocabulary (special tokens left out), every input the same length, so
a batch of ``b`` inputs holds exactly ``b * seq_len`` tokens and no padding.

- ``parameters``: the number of distinct parameters (tied weights counted once);
  ``non_embedding_parameters``: less the ``nn.Embedding`` modules (token, position, token-type), as
  Kaplan et al. (2020) count N; ``trainable_parameters``: from the fine-tune record (LoRA: the adapter's
  trainable weights), else all parameters; ``weights_mb``: bytes of parameters and buffers.
- ``flops_per_token``: floating-point operations of one forward pass over one input of ``seq_len``
  tokens, counted by ``torch.utils.flop_counter.FlopCounterMode`` (matrix products, attention, and
  convolutions; a multiply-add is 2 FLOPs), divided by ``seq_len``. Beside it
  ``flops_per_token_kaplan`` = 2 x non-embedding parameters (Kaplan et al. 2020, C_forward ~ 2N; it
  leaves out the attention's context term and, for a causal LM, the unembedding).
- Latency per batch size ``b`` (``latency_p50.bs{b}``, ``latency_p95.bs{b}``, seconds per batch) and
  throughput ``tokens_per_s.bs{b}`` = b * seq_len / median latency: ``warmup`` untimed calls, then
  ``repeats`` timed calls. The candidate and the baseline are timed interleaved, call by call, in
  alternating order (ABBA), so both see the same load of the machine. Percentiles are numpy's
  (linear interpolation); their 95% CIs are a seeded percentile bootstrap over the repeats. The headline
  ``latency_p50``, ``latency_p95`` and ``tokens_per_s`` are those at the largest batch size.
- ``latency_ratio`` (with a baseline): the median over repeats of candidate time / baseline time of the
  same repeat at the largest batch size, measured side by side, with a bootstrap CI. Machine load that
  slows both models cancels out of it.
- ``peak_memory_mb``: on CUDA, the model's weights plus the peak memory allocated above what was
  allocated before one pass at the largest batch size (``torch.cuda.max_memory_allocated`` after
  ``reset_peak_memory_stats``), for candidate and baseline each. On CPU, the peak resident set size of
  the process (``resource.getrusage``): both models live in one process, so it is not per model and no
  ``baseline.peak_memory_mb`` is reported.
- ``train_tokens``, ``train_steps``, and where the record carries them ``train_time_s`` and
  ``train_tokens_per_s`` of the fine-tune (the runner keeps wall times out of the training record: see
  the note the check leaves when they are missing).
- Energy and CO2: not estimated. codecarbon 3.3.2's ``OfflineEmissionsTracker`` does run offline, but it
  pulls in 15 packages (cryptography, authlib, questionary, prometheus-client among them), logs to stderr
  whatever its ``log_level``, accepts an unknown country code silently, and its per-task figures
  (``start_task``/``stop_task``, needed to separate two interleaved models) disagreed with wall time;
  without RAPL its CPU power is a TDP-based guess, so its energy would only restate the latency.

Default gates (applied when the suite entry has no ``gates:``; every one compares with the base model,
so all are dropped, with a note, when there is none): timing on a shared CPU is noisy, so the hard
failures are on what does not vary between runs, and on latency only when it is beyond doubt.

- ``flops_per_token <= baseline.flops_per_token * 1.1`` (fail): a fine-tune does not change the
  compute of a forward pass (LoRA merges into the same shapes); a counted 10% more is a bigger model.
- ``parameters <= baseline.parameters * 1.1`` (fail): the same for memory and storage; the only
  legitimate growth, a new classification head, is far below 10%.
- ``latency_ratio.ci_low <= 1.5`` (fail): the candidate is slower than 1.5x its base with the whole 95%
  CI of the side-by-side ratio, so noise alone does not fail it.
- ``latency_p95 <= baseline.latency_p95 * 1.2`` (warn): the form the issue names, on the point estimate,
  as a warning.
- ``peak_memory_mb <= baseline.peak_memory_mb * 1.2`` (warn): on CUDA only (on CPU there is no per-model
  figure and the gate is dropped with a note).

Bad input (exit 2): ``memory: cuda`` where no CUDA device is available (at suite load) or where the run
is on CPU; a run on a device other than cpu or cuda (its time and memory cannot be read); a model handle
with no local torch model (an API model); a process whose peak memory cannot be read with ``memory: rss``.
"""
from __future__ import annotations

import time

import numpy as np

from auditkit.api import Check, CheckContext, CheckResult, MetricSpec, Param
from auditkit.errors import AuditInputError
from auditkit.hookspecs import hookimpl

MB = 2.0 ** 20


# ---------------------------------------------------------------------- measurements

def parameter_counts(model) -> dict:
    """Distinct parameters (tied counted once), those outside ``nn.Embedding`` modules, weight bytes."""
    import torch
    params = list(model.parameters())  # deduplicated by identity: a tied LM head is counted once
    total = sum(p.numel() for p in params)
    emb_ids = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    embedding = sum(p.numel() for p in params if id(p) in emb_ids)
    nbytes = sum(p.numel() * p.element_size() for p in params)
    seen = set()
    for b in model.buffers():
        if id(b) not in seen:
            seen.add(id(b))
            nbytes += b.numel() * b.element_size()
    return {"parameters": int(total), "non_embedding_parameters": int(total - embedding),
            "weights_mb": nbytes / MB}


def synthetic_ids(tokenizer, n: int, length: int, seed: int) -> list[list[int]]:
    """``n`` inputs of ``length`` token ids drawn (seeded) from the vocabulary, special tokens left out."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    vocab = sorted(set(tokenizer.get_vocab().values()) - special)
    if not vocab:
        vocab = sorted(set(tokenizer.get_vocab().values()))
    rng = np.random.default_rng(seed)
    pool = np.asarray(vocab, dtype=np.int64)
    return [pool[rng.integers(0, len(pool), size=length)].tolist() for _ in range(n)]


def flops_per_token(handle, ids: list[int]) -> float:
    """FLOPs of one forward pass over ``ids`` (FlopCounterMode, through the handle) / len(ids)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    # the counter knows the flash/efficient/cudnn attention kernels but not every fused CPU kernel
    # (torch 2.13 leaves _scaled_dot_product_flash_attention_for_cpu uncounted): count on the math
    # backend, whose matrix products it does count; the FLOPs are those of the same attention
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        handle.score_ids([ids])
    return float(counter.get_total_flops()) / len(ids)


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch
        torch.cuda.synchronize()


def timed_call(handle, batch: list[list[int]]) -> float:
    """Seconds of one scoring request over ``batch`` in one forward pass (batch_size set to its size)."""
    saved = handle.batch_size
    handle.batch_size = len(batch)
    try:
        _sync(handle.device)
        t0 = time.perf_counter()
        handle.score_ids(batch)  # returns numpy: the device has finished
        _sync(handle.device)
        return time.perf_counter() - t0
    finally:
        handle.batch_size = saved


def quantile_ci(x, q: float, seed: int, n_resamples: int = 1000) -> tuple[float, float]:
    """Percentile-bootstrap 95% CI of the ``q``-th percentile of ``x`` (vectorized, seeded)."""
    x = np.asarray(x, dtype=float)
    if x.size < 2:
        v = float(np.percentile(x, q)) if x.size else float("nan")
        return v, v
    rng = np.random.default_rng(seed)
    samples = x[rng.integers(0, x.size, size=(n_resamples, x.size))]
    stats = np.percentile(samples, q, axis=1)
    return float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))


def cuda_peak_mb(handle, batch: list[list[int]], weights_mb: float) -> float:
    """The model's weights plus the CUDA memory allocated above the pre-pass level during one pass."""
    import torch
    dev = torch.device(handle.device)
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    before = torch.cuda.memory_allocated(dev)
    timed_call(handle, batch)
    peak = torch.cuda.max_memory_allocated(dev)
    return weights_mb + max(peak - before, 0) / MB


def process_peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    try:
        import resource
        import sys
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / MB if sys.platform == "darwin" else peak / 1024.0
    except (ImportError, OSError, AttributeError):
        pass
    try:
        import psutil
        info = psutil.Process().memory_info()
        peak = getattr(info, "peak_wset", None)  # Windows
        if peak:
            return peak / MB
    except (ImportError, OSError):
        pass
    raise AuditInputError("cost cannot read the peak memory of this process on this platform "
                          "(no resource.getrusage, no psutil peak_wset)", place="memory",
                          fix="set memory: none, or pip install psutil")


def _device_kind(device) -> str:
    return str(device).split(":")[0]


# ---------------------------------------------------------------------- the check

class Cost(Check):
    name = "cost"
    description = ("What the candidate costs against its baseline: parameters (trainable for LoRA), FLOPs per "
                   "token, latency p50/p95 and tokens/s per batch size, peak memory, the fine-tune's tokens and "
                   "time; the two models timed interleaved in one run.")
    needs_data = False
    uses_baseline = True
    params = {
        "batch_sizes": Param("list", [1, 8], "batch sizes to time (inputs per forward pass)", ge=1, le=4096),
        "seq_len": Param("int", 32, "tokens per synthetic input (at most the model's max_length)", ge=2, le=1 << 16),
        "repeats": Param("int", 10, "timed calls per model and batch size (after the warm-up)", ge=3, le=10000),
        "warmup": Param("int", 2, "untimed calls per model and batch size before timing", ge=0, le=1000),
        "memory": Param("str", "auto", "peak memory: auto (cuda on a CUDA run, else rss), rss (process peak "
                        "resident set), cuda (max allocated), none", choices=("auto", "rss", "cuda", "none")),
        "bootstrap": Param("int", 1000, "bootstrap resamples for the percentile CIs", ge=1, le=100000),
    }
    metrics = {
        "parameters": MetricSpec("distinct parameters (tied weights once)", False),
        "non_embedding_parameters": MetricSpec("parameters outside nn.Embedding modules (Kaplan's N)", False),
        "trainable_parameters": MetricSpec("parameters the fine-tune trained (LoRA: the adapter), else all", False),
        "weights_mb": MetricSpec("MiB of parameters and buffers", False),
        "flops_per_token": MetricSpec("forward FLOPs per token counted by torch FlopCounterMode", False),
        "flops_per_token_kaplan": MetricSpec("2 x non-embedding parameters (Kaplan et al. 2020)", False),
        "latency_p50": MetricSpec("median seconds per batch at the largest batch size", False),
        "latency_p95": MetricSpec("95th percentile seconds per batch at the largest batch size", False),
        "tokens_per_s": MetricSpec("tokens per second at the largest batch size (from the median)", True),
        "latency_p50.bs{batch_size}": MetricSpec("median seconds per batch at this batch size", False),
        "latency_p95.bs{batch_size}": MetricSpec("95th percentile seconds per batch at this batch size", False),
        "tokens_per_s.bs{batch_size}": MetricSpec("tokens per second at this batch size (from the median)", True),
        "latency_ratio": MetricSpec("median over repeats of candidate / baseline seconds, timed side by side, "
                                    "at the largest batch size", False),
        "peak_memory_mb": MetricSpec("CUDA: weights + peak allocated in a pass; CPU: process peak RSS (MiB)",
                                     False),
        "train_tokens": MetricSpec("tokens the fine-tune trained on", None),
        "train_steps": MetricSpec("optimizer steps of the fine-tune", None),
        "train_time_s": MetricSpec("wall time of the fine-tune in seconds", False),
        "train_tokens_per_s": MetricSpec("training throughput of the fine-tune", True),
    }
    # see the module docstring: deterministic counts fail, latency fails only beyond its CI, else warns
    default_gates = [
        "flops_per_token <= baseline.flops_per_token * 1.1",
        "parameters <= baseline.parameters * 1.1",
        "latency_ratio.ci_low <= 1.5",
        {"when": "latency_p95 <= baseline.latency_p95 * 1.2", "severity": "warn"},
        {"when": "peak_memory_mb <= baseline.peak_memory_mb * 1.2", "severity": "warn"},
    ]

    @classmethod
    def validate_params(cls, params: dict, base_dir: str | None = None, prefix: str = "") -> None:
        if params.get("memory") == "cuda":
            import torch
            if not torch.cuda.is_available():
                raise AuditInputError("memory: cuda was asked for but no CUDA device is available, so CUDA "
                                      "memory cannot be measured", place=prefix + "memory",
                                      fix="use memory: auto (process RSS on CPU) or memory: none")
        sizes = params.get("batch_sizes") or []
        if not sizes or any(not isinstance(b, int) or isinstance(b, bool) for b in sizes):
            raise AuditInputError(f"batch_sizes must be a non-empty list of integers, got {sizes!r}",
                                  place=prefix + "batch_sizes", fix="e.g. batch_sizes: [1, 8]")

    # ------------------------------------------------------------------ run
    def _measurable(self, ctx: CheckContext, memory: str) -> str:
        kind = _device_kind(ctx.device)
        if kind not in ("cpu", "cuda"):
            raise AuditInputError(f"cost cannot measure time and memory on device {ctx.device!r}",
                                  place="device", fix="run the cost check with device: cpu or device: cuda")
        for role, h in (("model", ctx.model), ("baseline", ctx.baseline)):
            if h is None:
                continue
            if not hasattr(getattr(h, "model", None), "parameters") or not hasattr(h, "score_ids"):
                raise AuditInputError(f"cost needs a local torch model, but the {role} {h.source} has none "
                                      "(parameters and FLOPs cannot be counted)", place="model.base",
                                      fix="audit cost on a local model folder, hub id or builtin:NAME")
            if _device_kind(h.device) != kind:
                raise AuditInputError(f"the {role} runs on {h.device} but the run on {ctx.device}: timings "
                                      "would not compare", place="device", fix="load both models on one device")
        if memory == "auto":
            memory = "cuda" if kind == "cuda" else "rss"
        if memory == "cuda" and kind != "cuda":
            raise AuditInputError(f"memory: cuda was asked for but the run is on {ctx.device}",
                                  place="memory", fix="use memory: auto or rss on CPU, or run with device: cuda")
        return memory

    def run(self, ctx: CheckContext) -> CheckResult:
        p = ctx.params
        memory = self._measurable(ctx, p["memory"])
        res = CheckResult()
        models = [("", ctx.model)] + ([("baseline.", ctx.baseline)] if ctx.baseline is not None else [])
        sizes = sorted(set(int(b) for b in p["batch_sizes"]))
        top = sizes[-1]
        seq = {}
        for prefix, h in models:
            cfg = getattr(h.model, "config", None)
            positions = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
            limit = min(int(h.max_length), int(positions)) if positions else int(h.max_length)
            seq[prefix] = min(int(p["seq_len"]), limit)
            if seq[prefix] < p["seq_len"]:
                res.notes.append(f"{'baseline' if prefix else 'model'}: seq_len {p['seq_len']} is over what the "
                                 f"model reads (model.max_length {h.max_length}, {positions} positions); timed "
                                 f"{seq[prefix]} tokens per input")
        inputs = {prefix: synthetic_ids(h.tokenizer, top, seq[prefix], ctx.seed) for prefix, h in models}

        # sizes and FLOPs: deterministic
        counts = {}
        for prefix, h in models:
            c = parameter_counts(h.model)
            counts[prefix] = c
            res.add(prefix + "parameters", c["parameters"], higher_is_better=False)
            res.add(prefix + "non_embedding_parameters", c["non_embedding_parameters"], higher_is_better=False)
            res.add(prefix + "weights_mb", c["weights_mb"], higher_is_better=False)
            res.add(prefix + "flops_per_token", flops_per_token(h, inputs[prefix][0]), higher_is_better=False)
            res.add(prefix + "flops_per_token_kaplan", 2.0 * c["non_embedding_parameters"], higher_is_better=False)
        ctx.progress(0.1)
        self._training(ctx, res, counts[""]["parameters"])

        # latency: warm-up, then repeats, candidate and baseline interleaved call by call (ABBA)
        times = {(prefix, b): [] for prefix, _ in models for b in sizes}
        rounds = p["warmup"] + p["repeats"]
        for r in range(rounds):
            order = models if r % 2 == 0 else models[::-1]
            for b in sizes:
                for prefix, h in order:
                    t = timed_call(h, inputs[prefix][:b])
                    if r >= p["warmup"]:
                        times[(prefix, b)].append(t)
            ctx.progress(0.1 + 0.8 * (r + 1) / rounds)
        nb = p["bootstrap"]
        rows = []
        for prefix, _ in models:
            for b in sizes:
                x = np.asarray(times[(prefix, b)])
                tokens = b * seq[prefix]
                p50, p95 = float(np.percentile(x, 50)), float(np.percentile(x, 95))
                ci50 = quantile_ci(x, 50, ctx.seed, nb)
                ci95 = quantile_ci(x, 95, ctx.seed, nb)
                tps_ci = (tokens / ci50[1], tokens / ci50[0])
                n = len(x)
                res.add(f"{prefix}latency_p50.bs{b}", p50, ci50, n, False)
                res.add(f"{prefix}latency_p95.bs{b}", p95, ci95, n, False)
                res.add(f"{prefix}tokens_per_s.bs{b}", tokens / p50, tps_ci, n, True)
                if b == top:
                    res.add(f"{prefix}latency_p50", p50, ci50, n, False)
                    res.add(f"{prefix}latency_p95", p95, ci95, n, False)
                    res.add(f"{prefix}tokens_per_s", tokens / p50, tps_ci, n, True)
                q25, q75 = np.percentile(x, [25, 75])
                rows.append({"model": "baseline" if prefix else "candidate", "batch_size": b,
                             "tokens_per_batch": tokens, "p50_ms": round(p50 * 1e3, 3),
                             "p95_ms": round(p95 * 1e3, 3), "iqr_ms": round(float(q75 - q25) * 1e3, 3),
                             "min_ms": round(float(x.min()) * 1e3, 3), "max_ms": round(float(x.max()) * 1e3, 3),
                             "tokens_per_s": round(tokens / p50, 1)})
        if ctx.baseline is not None:
            ratio = np.asarray(times[("", top)]) / np.asarray(times[("baseline.", top)])
            res.add("latency_ratio", float(np.median(ratio)), quantile_ci(ratio, 50, ctx.seed, nb), len(ratio),
                    False)
        res.records = {"latency_s": [float(t) for t in times[("", top)]]}

        # peak memory
        if memory == "cuda":
            for prefix, h in models:
                res.add(prefix + "peak_memory_mb", cuda_peak_mb(h, inputs[prefix][:top], counts[prefix]["weights_mb"]),
                        higher_is_better=False)
        elif memory == "rss":
            res.add("peak_memory_mb", process_peak_rss_mb(), higher_is_better=False)
            res.notes.append("peak_memory_mb is the peak resident set of the whole process (every model loaded "
                             "in this run): it is not per model, so there is no baseline.peak_memory_mb on CPU")

        res.evidence = [
            {"title": "Size and compute", "rows": [
                {"model": "baseline" if prefix else "candidate", "parameters": counts[prefix]["parameters"],
                 "non_embedding_parameters": counts[prefix]["non_embedding_parameters"],
                 "weights_mb": round(counts[prefix]["weights_mb"], 3),
                 "flops_per_token": round(res.metrics[prefix + "flops_per_token"].value, 1),
                 "flops_per_token_kaplan": round(res.metrics[prefix + "flops_per_token_kaplan"].value, 1)}
                for prefix, _ in models]},
            {"title": f"Latency per batch ({p['repeats']} timed calls after {p['warmup']} warm-up, "
                      f"seq_len {p['seq_len']}, device {ctx.device})", "rows": rows},
        ]
        if ctx.data is not None:
            res.notes.append("cost times seeded synthetic inputs of seq_len tokens: the data: given is not read")
        if ctx.baseline is None:
            res.notes.append("no base model: nothing to compare the cost with (the default gates compare with one)")
        res.figures["latency per batch size"] = _latency_svg(times, models, sizes)
        # headline figures first (reports show the first few metrics as the key ones)
        first = ["latency_p95", "latency_ratio", "tokens_per_s", "flops_per_token", "parameters",
                 "trainable_parameters", "peak_memory_mb", "latency_p50"]
        res.metrics = {k: res.metrics[k] for k in sorted(res.metrics, key=lambda k: (
            k.startswith("baseline."), first.index(k) if k in first else len(first)))}
        ctx.progress(1.0)
        return res

    def _training(self, ctx: CheckContext, res: CheckResult, total: int) -> None:
        rec = ctx.training or {}
        timing = dict(ctx.artifacts.get("train_time") or {}) if isinstance(ctx.artifacts, dict) else {}
        res.add("trainable_parameters", rec.get("trainable_parameters", total), higher_is_better=False)
        if not rec:
            return
        if rec.get("tokens") is not None:
            res.add("train_tokens", rec["tokens"], higher_is_better=None)
        if rec.get("steps"):
            res.add("train_steps", len(rec["steps"]), higher_is_better=None)
        t = rec.get("train_time_s", timing.get("train_time_s"))
        tps = rec.get("tokens_per_s", timing.get("tokens_per_s"))
        if t is not None:
            res.add("train_time_s", t, higher_is_better=False)
        if tps is not None:
            res.add("train_tokens_per_s", tps, higher_is_better=True)
        if t is None:
            res.notes.append("the fine-tune's wall time is not in the training record the check receives (the "
                             "runner keeps times in results.run.training); it is reported there")


def _latency_svg(times: dict, models: list, sizes: list) -> str:
    from auditkit.figures import new_figure, to_svg
    fig, ax = new_figure(max(3.6, 1.4 * len(sizes) * len(models)), 3.0)
    data, labels, colors = [], [], []
    for b in sizes:
        for prefix, _ in models:
            data.append(np.asarray(times[(prefix, b)]) * 1e3)
            labels.append(f"{'base' if prefix else 'cand'} bs{b}")
            colors.append("#999999" if prefix else "#1f77b4")
    box = ax.boxplot(data, patch_artist=True, widths=0.6)
    for patch, c in zip(box["boxes"], colors):
        patch.set_facecolor(c)
    ax.set_xticks(range(1, len(labels) + 1), labels, rotation=30)
    ax.set_ylabel("ms per batch")
    ax.set_title("latency per batch size (candidate vs base)")
    return to_svg(fig)


@hookimpl
def auditkit_register_checks(register):
    register(Cost)
