"""Issue 10 on a GPU: every big-model path of ``auditkit run`` on one causal LM, with peak GPU memory.

Runs the same fine-tune-and-audit suite (LoRA or QLoRA on ``builtin:reviews`` with canaries, then accuracy,
generation, forgetting, memorization, bias, robustness and explainability) once per loading mode, each
in its own ``auditkit run`` process so every peak is its own:

    bf16          the model in bf16 on one GPU, LoRA
    full          bf16 audit, full fine-tune (fp32 master weights, bf16 autocast)
    4bit-qlora    ``quantization: {bits: 4}`` (NF4) and ``finetune.method: qlora``
    8bit          ``quantization: {bits: 8}`` (LLM.int8), audit only (no memorization: nothing to read)
    device-map    ``device_map: auto`` (accelerate's placement), LoRA

and prints, per mode: exit code, verdict, each check's status (errors in full), wall time, fine-tune
tokens/s and ``run.peak_gpu_memory_bytes`` from results.json. The figure "peak GPU memory with and
without 4-bit" is the ``bf16`` row against the ``4bit-qlora`` row. Never asserts on time or memory.

    python benchmarks/bench_gpu_paths.py --model builtin:tiny-llama --modes all            # smoke
    python benchmarks/bench_gpu_paths.py --model /tmp/m17 --modes bf16,4bit-qlora --steps 40  # 1.7B
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT  # noqa: F401  (offline env)

MODES = {
    "bf16": ({}, "lora"),
    "full": ({}, "full"),
    "4bit-qlora": ({"quantization": {"bits": 4}}, "qlora"),
    "8bit": ({"quantization": {"bits": 8}}, None),
    "device-map": ({"device_map": "auto"}, "lora"),
}


def suite_for(model: str, mode: str, steps: int, batch_size: int, n: int) -> dict:
    extra, method = MODES[mode]
    suite = {
        "name": f"gpu-{mode}", "seed": 0,
        "model": {"base": model, "task": "causal-lm", "batch_size": batch_size, "max_length": 128, **extra},
        "checks": [
            {"uses": "accuracy", "data": "builtin:mc-general", "max_examples": n},
            {"uses": "generation", "data": "builtin:qa", "max_examples": n, "max_new_tokens": 16},
            {"uses": "forgetting", "max_examples": n},
            {"uses": "memorization", "max_members": n, "samples": 2},
            {"uses": "bias.pairs", "max_examples": n},
            {"uses": "bias.counterfactual", "data": "builtin:reviews#test", "max_examples": n},
            {"uses": "robustness", "data": "builtin:qa", "max_examples": min(n, 32)},
            {"uses": "explainability", "data": "builtin:reviews#test", "max_examples": 8},
        ],
    }
    if not method:  # audit only: the same model, loaded the same way, is the base to compare with;
        suite["model"]["baseline"] = model  # memorization has nothing to read without training data
        suite["checks"] = [c for c in suite["checks"] if c["uses"] != "memorization"]
    else:
        suite["finetune"] = {"data": "builtin:reviews", "method": method, "epochs": 1, "batch_size": 8,
                             "max_length": 64, "max_steps": steps,
                             "canaries": {"count": 2, "repeats": [1, 10], "template": "my PIN is {digits}",
                                          "references": 50}}
    return suite


def run_mode(model: str, mode: str, args, work: Path) -> dict:
    import yaml
    d = work / mode
    d.mkdir(parents=True, exist_ok=True)
    path = d / "suite.yaml"
    path.write_text(yaml.safe_dump(suite_for(model, mode, args.steps, args.batch_size, args.n), sort_keys=False))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "auditkit", "run", str(path), "--out", str(d / "out"),
                           "--device", args.device], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    row: dict = {"mode": mode, "exit": proc.returncode, "wall_s": round(wall, 1)}
    res = d / "out" / "results.json"
    if not res.exists():
        row["error"] = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return row
    r = json.loads(res.read_text())
    run = r.get("run") or {}
    row.update(status=r["status"], error=r.get("error"),
               peak_gib=round(run.get("peak_gpu_memory_bytes", 0) / 2**30, 2),
               train_tok_s=round((run.get("training") or {}).get("tokens_per_s") or 0, 1),
               params=(r.get("model") or {}).get("parameters"),
               quantization=(r.get("model") or {}).get("quantization"),
               checks={c["id"]: c["status"] for c in r["checks"]},
               check_errors={c["id"]: c["error"] for c in r["checks"] if c.get("error")},
               check_s=run.get("check_durations_s"))
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:tiny-llama")
    ap.add_argument("--modes", default="all", help="comma-separated, or all: " + ", ".join(MODES))
    ap.add_argument("--steps", type=int, default=10, help="fine-tune steps")
    ap.add_argument("--batch-size", type=int, default=32, help="audit batch size")
    ap.add_argument("--n", type=int, default=64, help="examples per check")
    ap.add_argument("--device", default="cuda", help="cuda (cpu only to try the suites)")
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--work", help="keep suites and reports here (default: a temporary folder)")
    args = ap.parse_args(argv)
    modes = list(MODES) if args.modes == "all" else args.modes.split(",")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="auditkit-gpu-"))
    rows = []
    for mode in modes:
        row = run_mode(args.model, mode, args, work)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
    print(f"\n{'mode':12} {'exit':>4} {'status':8} {'peak GiB':>8} {'train tok/s':>11} {'wall s':>7}")
    for r in rows:
        print(f"{r['mode']:12} {r['exit']:>4} {r.get('status', '-'):8} {r.get('peak_gib', '-'):>8} "
              f"{r.get('train_tok_s', '-'):>11} {r['wall_s']:>7}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
