"""Benchmark: the API backend's requests/s at concurrency 8 against concurrency 1.

Starts the OpenAI-compatible test server (tests/openai_server.py) on 127.0.0.1 serving
builtin:tiny-gpt2, with a simulated network latency per request (default 50 ms: a real API is
latency-bound, and a local server without it would measure the tiny model, not the client), and sends
``--n`` distinct completion requests through :class:`auditkit.remote.APIModelHandle` at each
concurrency, the client's request cache off (every request goes to the server). Two server modes:

- ``latency-bound`` (the headline): the server answers from memory (each body computed once in an
  untimed warm-up), so its compute is negligible beside the latency, as for a real batched GPU server;
  this measures the client (thread pool, connection reuse, HTTP) against the latency;
- ``with-compute``: every request runs the tiny model on this CPU, one forward at a time under a lock,
  so on a busy 2-core machine the server's ~10-20 ms per forward caps the ratio, not the client.

Prints requests/s per concurrency and the ratio of the highest to concurrency 1 (issue 11's target:
>= 4x at 8).

    .venv/bin/python benchmarks/bench_api.py                          # 64 requests, 50 ms latency
    .venv/bin/python benchmarks/bench_api.py --n 16 --latency-ms 20   # a smoke run
    .venv/bin/python benchmarks/bench_api.py --kind logprobs          # echo/logprobs scoring requests
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import _common  # noqa: E402,F401  (offline env, AUDITKIT_CACHE)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="requests per concurrency level (default 64)")
    ap.add_argument("--latency-ms", type=float, default=50.0, help="simulated network latency per request")
    ap.add_argument("--concurrency", default="1,8", help="comma-separated levels (default 1,8)")
    ap.add_argument("--kind", choices=("generate", "logprobs"), default="generate",
                    help="completion requests (1 new token) or prompt log-prob requests")
    ap.add_argument("--max-new-tokens", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=1, help="runs per level; the best is kept")
    ap.add_argument("--modes", default="latency-bound,with-compute", help="server modes to measure")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    os.environ["AUDITKIT_DISK_CACHE"] = "0"  # every request reaches the server

    import torch
    torch.set_num_threads(1)
    from auditkit.remote import open_api_model
    from auditkit.suite import ModelSpec
    from tests.openai_server import tiny_server

    levels = [int(c) for c in args.concurrency.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    server = tiny_server(delay_s=args.latency_ms / 1000)
    results = {}
    try:
        for mode in modes:
            server.memoize = mode == "latency-bound"
            rows = []
            for level in levels:
                best = None
                for r in range(args.repeat):
                    spec = ModelSpec(base="openai-compatible", task="causal-lm", endpoint=server.url,
                                     name="tiny-gpt2", concurrency=level)
                    handle = open_api_model(spec, file="bench_api")
                    tag = "" if server.memoize else f"{level} {r} "  # computed afresh in with-compute mode
                    prompts = [f"benchmark request {tag}{i}: the quick brown fox" for i in range(args.n)]

                    def send(h):
                        if args.kind == "generate":
                            h.generate(prompts, max_new_tokens=args.max_new_tokens)
                        else:
                            h.token_logprobs(prompts)

                    if server.memoize and not server._answers:  # untimed warm-up: the server computes once
                        send(open_api_model(spec, file="bench_api"))
                    before = server.posts
                    t0 = time.perf_counter()
                    send(handle)
                    dt = time.perf_counter() - t0
                    assert server.posts - before == args.n, "every request must reach the server"
                    best = dt if best is None else min(best, dt)
                rows.append({"concurrency": level, "requests": args.n, "seconds": best,
                             "requests_per_s": args.n / best})
            results[mode] = rows
    finally:
        server.stop()

    print(f"API backend: {args.kind} requests to a local OpenAI-compatible server (builtin:tiny-gpt2), "
          f"simulated latency {args.latency_ms:g} ms per request, client request cache off")
    for mode, rows in results.items():
        base = next((r for r in rows if r["concurrency"] == 1), rows[0])
        print(f"\n[{mode}]")
        ref = "vs c=" + str(base["concurrency"])
        print(f"{'concurrency':>11} {'requests':>8} {'seconds':>8} {'req/s':>8} {ref:>8}")
        for r in rows:
            r["speedup"] = r["requests_per_s"] / base["requests_per_s"]
            print(f"{r['concurrency']:>11} {r['requests']:>8} {r['seconds']:>8.3f} {r['requests_per_s']:>8.1f} "
                  f"{r['speedup']:>7.2f}x")
        top = max(rows, key=lambda r: r["concurrency"])
        if top is not base:
            verdict = "meets" if top["concurrency"] >= 8 and top["speedup"] >= 4 else "is below"
            print(f"ratio c={top['concurrency']} / c={base['concurrency']}: {top['speedup']:.2f}x "
                  f"({verdict} the issue's target of >= 4x at concurrency 8)")
    if args.json:
        Path(args.json).write_text(json.dumps({"latency_ms": args.latency_ms, "kind": args.kind, "results": results},
                                              indent=2))


if __name__ == "__main__":
    main()
