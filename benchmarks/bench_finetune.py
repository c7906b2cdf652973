"""Issue 3 speed figure: fine-tuning throughput (tokens/s) of auditkit's loop vs transformers' Trainer,
same model, data, hyperparameters and device, measured side by side in one run (target: ours >= 1.0x).

    .venv/bin/python benchmarks/bench_finetune.py [--method lora|full] [--n 512] [--device cpu]

Tokens are the non-padding tokens of the training examples times the epochs; time is the wall time of
training alone (no evaluation, no saving) in both.
"""
from __future__ import annotations

import argparse
import time

import _common  # noqa: F401  (offline env)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="lora", choices=("lora", "full"))
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="builtin:minilm", help="a BERT-style encoder (builtin:NAME or a dir)")
    args = ap.parse_args()

    import torch
    from auditkit.data import Dataset, load_dataset
    from auditkit.finetune import FinetuneConfig, apply_lora, train
    from auditkit.models import load_model
    from auditkit.plugins import registry

    reg = registry()
    rows = load_dataset("builtin:reviews", reg).rows[: args.n]
    ds = Dataset("bench", rows, "bench")
    lr = 5e-4 if args.method == "lora" else 2e-5
    cfg = FinetuneConfig(data="bench", method=args.method, epochs=args.epochs, learning_rate=lr,
                         batch_size=args.batch, max_length=args.max_length, eval_every=10 ** 9, seed=0,
                         schedule="linear", train_eval_size=0)

    torch.manual_seed(0)
    handle = load_model(args.model, "sequence-classification", reg, device=args.device, num_labels=2)
    tok = handle.tokenizer
    enc = tok([r["text"] for r in rows], truncation=True, max_length=args.max_length)
    n_tokens = sum(len(ids) for ids in enc["input_ids"]) * args.epochs

    # warm both code paths once (thread pools, allocator) so neither pays a first-call cost
    import dataclasses
    train(handle, Dataset("warm", rows[:64], "warm"), None, dataclasses.replace(cfg, epochs=1))

    # ---- ours: the training loop's own clock (tokenizing, copying the base and wrapping LoRA excluded)
    res = train(handle, ds, None, cfg)
    ours = res.record["train_time_s"]

    # ---- transformers' Trainer, same settings
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments
    import copy
    torch.manual_seed(0)
    model = copy.deepcopy(handle.model)
    if args.method == "lora":
        model = apply_lora(model, "sequence-classification", cfg.lora)
    train_set = [{"input_ids": ids, "attention_mask": [1] * len(ids), "labels": r["label"]}
                 for ids, r in zip(enc["input_ids"], rows)]
    targs = TrainingArguments(output_dir="/tmp/auditkit-bench-trainer", per_device_train_batch_size=args.batch,
                              num_train_epochs=args.epochs, learning_rate=lr, lr_scheduler_type="linear",
                              weight_decay=0.0, max_grad_norm=1.0, save_strategy="no", eval_strategy="no",
                              logging_strategy="no", report_to=[], seed=0, use_cpu=args.device == "cpu",
                              dataloader_num_workers=0, disable_tqdm=True,
                              bf16=args.device.startswith("cuda"))
    warm = Trainer(model=copy.deepcopy(model), args=targs, train_dataset=train_set[:64],
                   data_collator=DataCollatorWithPadding(tok))
    warm.train()
    trainer = Trainer(model=model, args=targs, train_dataset=train_set, data_collator=DataCollatorWithPadding(tok))
    t0 = time.perf_counter()
    trainer.train()
    theirs = time.perf_counter() - t0

    print(f"MiniLM {args.method}, {len(rows)} examples x {args.epochs} epoch(s), batch {args.batch}, "
          f"max_length {args.max_length}, device {args.device}, {n_tokens} tokens")
    print(f"auditkit loop: {ours:7.2f} s  {n_tokens / ours:8.0f} tok/s  (final loss {res.record['steps'][-1]['loss']:.4f})")
    print(f"HF Trainer:    {theirs:7.2f} s  {n_tokens / theirs:8.0f} tok/s")
    print(f"throughput ours / Trainer: {theirs / ours:.2f}x  (target >= 1.0x)")


if __name__ == "__main__":
    main()
