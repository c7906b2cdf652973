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
- ``energy_j_per_token``: joules per token of the timed calls (warm-up left out), each model's own: the
  energy counter is read just before and just after every timed call, outside its clock, and the
  differences are summed per model over all batch sizes, then divided by the tokens those calls scored.
  Its 95% CI is a seeded percentile bootstrap of the mean over the repeats (``auditkit.stats.mean_ci``;
  a repeat = one timed call per batch size). The
  counters, by ``energy`` (auto: nvml on a CUDA run, rapl on CPU), are the offline methods codecarbon
  itself relies on, read by hand (codecarbon 3.3.2 pulls in 15 packages, and without RAPL its CPU figure
  is a TDP guess that would only restate the latency):

  - ``rapl``: the CPU's RAPL energy counters, ``/sys/class/powercap/intel-rapl:N/energy_uj`` (Intel, and
    AMD Zen under the same driver), package domains only (``name`` = ``package-N``): their sub-domains
    (``intel-rapl:N:M``: core, uncore, dram) and the ``psys`` domain overlap the packages and would count
    twice. A counter that wrapped between two reads (``after < before``) adds
    ``after + max_energy_range_uj - before``. The figure is the whole package's energy while the call
    ran: idle draw and whatever else ran on the package at the time are in it, DRAM and GPU are not.
  - ``nvml``: the GPU's total energy counter (``nvmlDeviceGetTotalEnergyConsumption``, mJ, Volta and
    newer) of the run's CUDA device, through ``pynvml`` (package nvidia-ml-py, optional): GPU energy only.

  When no counter can be read (no RAPL driver, a container that hides /sys/class/powercap, energy_uj
  readable by root only as on Linux >= 5.10, no pynvml) the energy metrics are absent and a note says
  why; the note ``energy_method: rapl | nvml | none`` is always left.
- ``co2_g_per_1k_tokens`` = ``energy_j_per_token`` x 1000 / 3.6e6 (J per kWh) x ``grid_g_per_kwh``. The
  default, 481 gCO2e/kWh, is the world average carbon intensity of electricity generation in 2023 (Ember,
  Yearly Electricity Data / Global Electricity Review 2024, life-cycle emissions); it is a world
  average only: set ``grid_g_per_kwh`` to your region's (or your provider's) figure.

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
- ``energy_j_per_token <= baseline.energy_j_per_token * 1.2`` (warn): energy is as noisy as latency and
  only some machines can measure it, so it only warns; where no counter is readable the gate is dropped
  with a note.

Bad input (exit 2): ``memory: cuda`` where no CUDA device is available (at suite load) or where the run
is on CPU; a run on a device other than cpu or cuda (its time and memory cannot be read); a model handle
with no local torch model (an API model); a process whose peak memory cannot be read with ``memory: rss``;
``energy: rapl`` or ``energy: nvml`` asked for where that counter cannot be read (at suite load, and at
run time), ``energy: nvml`` on a CPU run.
"""
from __future__ import annotations

import os
import re
import time

import numpy as np

from auditkit.api import Check, CheckContext, CheckResult, MetricSpec, Param
from auditkit.errors import AuditInputError
from auditkit.hookspecs import hookimpl
from auditkit.stats import mean_ci

MB = 2.0 ** 20
#: where Linux exposes the RAPL energy counters (a constant so tests can point it at a fake tree)
RAPL_ROOT = "/sys/class/powercap"
#: world average carbon intensity of electricity generation, 2023, gCO2e/kWh (Ember, Global Electricity
#: Review 2024 / Yearly Electricity Data, life-cycle emissions): a default only, set your region's
WORLD_GRID_G_PER_KWH = 481.0
J_PER_KWH = 3.6e6


# ---------------------------------------------------------------------- measurements

def parameter_counts(model) -> dict:
    """Distinct parameters (tied counted once; 4-bit weights unpacked), those outside ``nn.Embedding``
    modules, weight bytes (as stored)."""
    import torch

    from auditkit.models import unpacked_numel
    params = list(model.parameters())  # deduplicated by identity: a tied LM head is counted once
    total = sum(unpacked_numel(p) for p in params)
    emb_ids = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    embedding = sum(unpacked_numel(p) for p in params if id(p) in emb_ids)
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
    """FLOPs of one scoring pass over ``ids`` (FlopCounterMode, through the handle) / len(ids).

    For a causal LM the scoring pass applies the LM head at the T - 1 positions that predict a token.
    """
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


# ---------------------------------------------------------------------- energy counters

class EnergyUnavailable(Exception):
    """No energy counter can be read here; the message says why."""


_RAPL_PACKAGE = re.compile(r"^intel-rapl:\d+$")  # top-level domains; intel-rapl:N:M are their sub-domains


def rapl_delta_uj(before: int, after: int, max_range_uj: int) -> int:
    """Microjoules between two reads of one RAPL counter, which wraps to 0 after ``max_energy_range_uj``."""
    return after - before if after >= before else after + max_range_uj - before


class RaplMeter:
    """Sum of the CPU package domains' RAPL counters under ``RAPL_ROOT`` (sub-domains and psys left out)."""

    method = "rapl"

    def __init__(self, root: str | None = None):
        root = RAPL_ROOT if root is None else root
        try:
            entries = sorted(os.listdir(root))
        except OSError:
            raise EnergyUnavailable(f"no RAPL energy counters: {root} does not exist here (no powercap driver, "
                                    "or a container that hides it)") from None
        self.domains: list[tuple[str, str, int]] = []  # (name, energy_uj path, max_energy_range_uj)
        for d in entries:
            if not _RAPL_PACKAGE.match(d):
                continue
            folder = os.path.join(root, d)
            try:
                with open(os.path.join(folder, "name")) as f:
                    name = f.read().strip()
            except OSError:
                continue
            if not name.startswith("package"):
                continue  # psys (the whole SoC) overlaps the packages
            try:
                with open(os.path.join(folder, "max_energy_range_uj")) as f:
                    max_range = int(f.read().strip())
                with open(os.path.join(folder, "energy_uj")) as f:
                    int(f.read().strip())
            except PermissionError:
                raise EnergyUnavailable(f"the RAPL counter {folder}/energy_uj is readable by root only (Linux "
                                        ">= 5.10 restricts it, CVE-2020-8694); an administrator can allow it "
                                        "with chmod o+r") from None
            except (OSError, ValueError) as e:
                raise EnergyUnavailable(f"the RAPL counter {folder} cannot be read: {e}") from None
            self.domains.append((name, os.path.join(folder, "energy_uj"), max_range))
        if not self.domains:
            raise EnergyUnavailable(f"no RAPL package domain (intel-rapl:N named package-N) under {root}")

    def read(self) -> list[int]:
        out = []
        for _, path, _ in self.domains:
            with open(path) as f:
                out.append(int(f.read()))
        return out

    def joules(self, before: list[int], after: list[int]) -> float:
        return sum(rapl_delta_uj(b, a, m) for b, a, (_, _, m) in zip(before, after, self.domains)) / 1e6

    def describe(self) -> str:
        return (f"CPU package energy from RAPL ({', '.join(n for n, _, _ in self.domains)}): the whole "
                "package while each call ran, idle draw and other processes included, no DRAM or GPU")


def _nvml_module():
    try:
        import pynvml
    except ImportError:
        raise EnergyUnavailable("pynvml is not installed (pip install nvidia-ml-py), so the GPU energy "
                                "counter cannot be read") from None
    return pynvml


def _cuda_uuid(device: str) -> str:
    import torch
    dev = torch.device(device)
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    uuid = str(torch.cuda.get_device_properties(index).uuid)
    return uuid if uuid.startswith("GPU-") else "GPU-" + uuid


class NvmlMeter:
    """The GPU's total energy counter (NVML, millijoules since the driver loaded; Volta and newer).

    ``nvml`` is the pynvml module (a fake in tests); ``uuid`` the GPU's NVML UUID, by default that of
    the CUDA device ``device`` (by UUID, so CUDA_VISIBLE_DEVICES cannot mix up the numbering).
    """

    method = "nvml"

    def __init__(self, device: str = "cuda", nvml=None, uuid: str | None = None):
        self.nvml = _nvml_module() if nvml is None else nvml
        try:
            self.nvml.nvmlInit()
            uuid = _cuda_uuid(device) if uuid is None else uuid
            self.handle = self.nvml.nvmlDeviceGetHandleByUUID(uuid)
            self.name = str(self.nvml.nvmlDeviceGetName(self.handle))
            self.read()
        except EnergyUnavailable:
            raise
        except Exception as e:  # NVMLError_NotSupported (pre-Volta), no driver, ...
            raise EnergyUnavailable(f"the GPU energy counter cannot be read through NVML: "
                                    f"{type(e).__name__}: {e}") from None

    def read(self) -> int:
        return int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))

    def joules(self, before: int, after: int) -> float:
        return (after - before) / 1e3

    def describe(self) -> str:
        return f"GPU energy from NVML's total energy counter ({self.name}): the GPU only, no CPU or DRAM"


def energy_meter(choice: str, device: str):
    """The meter ``energy:`` asks for on ``device``, or (None, why not). Asked-for and unreadable: exit 2."""
    if choice == "none":
        return None, "energy: none was set"
    kind = _device_kind(device)
    if choice == "nvml" and kind != "cuda":
        raise AuditInputError(f"energy: nvml was asked for but the run is on {device}", place="energy",
                              fix="use energy: auto or rapl on CPU, or run with device: cuda")
    method = choice if choice != "auto" else ("nvml" if kind == "cuda" else "rapl")
    try:
        return (NvmlMeter(device) if method == "nvml" else RaplMeter()), ""
    except EnergyUnavailable as e:
        if choice != "auto":
            raise AuditInputError(f"energy: {choice} was asked for but {e}", place="energy",
                                  fix="use energy: auto (no energy figures where none can be read) or none") from None
        return None, str(e)


def co2_g_per_1k_tokens(j_per_token: float, grid_g_per_kwh: float) -> float:
    """Grams of CO2e per 1000 tokens: J/token x 1000 tokens / (3.6e6 J/kWh) x g/kWh."""
    return j_per_token * 1000.0 / J_PER_KWH * grid_g_per_kwh


# ---------------------------------------------------------------------- the check

class Cost(Check):
    name = "cost"
    #: counts parameters and times forward passes of the weights themselves
    needs = frozenset({"weights"})
    #: FLOPs per token are counted for encoders and decoders; an encoder-decoder's (seq2seq-lm) are not
    tasks = ("sequence-classification", "causal-lm")
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
        "energy": Param("str", "auto", "energy counter: auto (nvml on a CUDA run, rapl on CPU; none where "
                        "unreadable), rapl (CPU package counters), nvml (GPU counter, needs pynvml), none",
                        choices=("auto", "rapl", "nvml", "none")),
        "grid_g_per_kwh": Param("float", WORLD_GRID_G_PER_KWH, "carbon intensity of your electricity in "
                                "gCO2e/kWh for co2_g_per_1k_tokens (default: the 2023 world average, Ember; "
                                "set your region's)", ge=0, le=5000),
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
        "energy_j_per_token": MetricSpec("joules per token of the timed calls (RAPL CPU package or NVML GPU "
                                         "counter)", False),
        "co2_g_per_1k_tokens": MetricSpec("grams CO2e per 1000 tokens: energy_j_per_token at grid_g_per_kwh",
                                          False),
    }
    # see the module docstring: deterministic counts fail, latency fails only beyond its CI, else warns
    default_gates = [
        "flops_per_token <= baseline.flops_per_token * 1.1",
        "parameters <= baseline.parameters * 1.1",
        "latency_ratio.ci_low <= 1.5",
        {"when": "latency_p95 <= baseline.latency_p95 * 1.2", "severity": "warn"},
        {"when": "peak_memory_mb <= baseline.peak_memory_mb * 1.2", "severity": "warn"},
        {"when": "energy_j_per_token <= baseline.energy_j_per_token * 1.2", "severity": "warn"},
    ]

    @classmethod
    def validate_params(cls, params: dict, base_dir: str | None = None, prefix: str = "") -> None:
        if params.get("memory") == "cuda":
            import torch
            if not torch.cuda.is_available():
                raise AuditInputError("memory: cuda was asked for but no CUDA device is available, so CUDA "
                                      "memory cannot be measured", place=prefix + "memory",
                                      fix="use memory: auto (process RSS on CPU) or memory: none")
        energy = params.get("energy")
        if energy == "rapl":
            try:
                RaplMeter()
            except EnergyUnavailable as e:
                raise AuditInputError(f"energy: rapl was asked for but {e}", place=prefix + "energy",
                                      fix="use energy: auto (no energy figures where none can be read) or "
                                          "none") from None
        elif energy == "nvml":
            import torch
            why = None
            if not torch.cuda.is_available():
                why = "no CUDA device is available"
            else:
                try:
                    _nvml_module()
                except EnergyUnavailable as e:
                    why = str(e)
            if why:
                raise AuditInputError(f"energy: nvml was asked for but {why}", place=prefix + "energy",
                                      fix="use energy: auto or none, or pip install nvidia-ml-py on a CUDA "
                                          "machine")
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
            # XLNet (relative positions) says -1: no limit but max_length
            limit = min(int(h.max_length), int(positions)) if positions and positions > 0 else int(h.max_length)
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

        # latency: warm-up, then repeats, candidate and baseline interleaved call by call (ABBA); the
        # energy counter is read around each timed call, outside its clock
        meter, no_energy = energy_meter(p["energy"], ctx.device)
        times = {(prefix, b): [] for prefix, _ in models for b in sizes}
        joules = {prefix: [0.0] * p["repeats"] for prefix, _ in models}  # per repeat, summed over sizes
        rounds = p["warmup"] + p["repeats"]
        for r in range(rounds):
            order = models if r % 2 == 0 else models[::-1]
            for b in sizes:
                for prefix, h in order:
                    timed = r >= p["warmup"]
                    e0 = meter.read() if meter is not None and timed else None
                    t = timed_call(h, inputs[prefix][:b])
                    if e0 is not None:
                        joules[prefix][r - p["warmup"]] += meter.joules(e0, meter.read())
                    if timed:
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
        energy_rows = self._energy(ctx, res, meter, no_energy, models, joules, times, sizes, seq)

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
        if energy_rows:
            res.evidence.append({"title": f"Energy of the timed calls ({meter.method}, grid "
                                          f"{p['grid_g_per_kwh']:g} gCO2e/kWh)", "rows": energy_rows})
        if ctx.data is not None:
            res.notes.append("cost times seeded synthetic inputs of seq_len tokens: the data: given is not read")
        if ctx.baseline is None:
            res.notes.append("no base model: nothing to compare the cost with (the default gates compare with one)")
        res.figures["latency per batch size"] = _latency_svg(times, models, sizes)
        # headline figures first (reports show the first few metrics as the key ones)
        first = ["latency_p95", "latency_ratio", "tokens_per_s", "flops_per_token", "parameters",
                 "trainable_parameters", "peak_memory_mb", "energy_j_per_token", "co2_g_per_1k_tokens",
                 "latency_p50"]
        res.metrics = {k: res.metrics[k] for k in sorted(res.metrics, key=lambda k: (
            k.startswith("baseline."), first.index(k) if k in first else len(first)))}
        ctx.progress(1.0)
        return res

    def _energy(self, ctx, res, meter, no_energy, models, joules, times, sizes, seq) -> list[dict]:
        """energy_j_per_token and co2_g_per_1k_tokens per model (CI over repeats), the energy_method note."""
        p = ctx.params
        if meter is None:
            res.notes.append(f"energy_method: none ({no_energy}): energy_j_per_token and co2_g_per_1k_tokens "
                             "are not reported")
            return []
        grid = float(p["grid_g_per_kwh"])
        res.notes.append(f"energy_method: {meter.method}: {meter.describe()}; co2_g_per_1k_tokens at "
                         f"grid_g_per_kwh = {grid:g} gCO2e/kWh"
                         + (" (the 2023 world average: set your region's)" if grid == WORLD_GRID_G_PER_KWH
                            else ""))
        rows = []
        for prefix, _ in models:
            per_repeat = np.asarray(joules[prefix])
            tokens = sum(b * seq[prefix] for b in sizes)  # tokens of one repeat (one call per batch size)
            jpt = float(per_repeat.sum()) / (tokens * len(per_repeat))
            lo, hi = mean_ci(per_repeat / tokens, ctx.seed, p["bootstrap"])
            n = len(per_repeat)
            res.add(prefix + "energy_j_per_token", jpt, (lo, hi), n, False)
            res.add(prefix + "co2_g_per_1k_tokens", co2_g_per_1k_tokens(jpt, grid),
                    (co2_g_per_1k_tokens(lo, grid), co2_g_per_1k_tokens(hi, grid)), n, False)
            seconds = sum(sum(times[(prefix, b)]) for b in sizes)
            rows.append({"model": "baseline" if prefix else "candidate", "joules": round(float(per_repeat.sum()), 6),
                         "tokens": tokens * n, "seconds": round(seconds, 4),
                         "mean_power_w": round(float(per_repeat.sum()) / seconds, 2) if seconds > 0 else None,
                         "j_per_token": jpt, "co2_g_per_1k_tokens": co2_g_per_1k_tokens(jpt, grid)})
        return rows

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
