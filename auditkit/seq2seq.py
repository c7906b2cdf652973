"""Fine-tuning pieces for encoder-decoders (``model.task: seq2seq-lm``: T5, FLAN-T5, BART).

:mod:`auditkit.finetune` calls these where the task is ``seq2seq-lm``; everything else (the loop, the
curves, the base model kept, LoRA merging, data parallel) is shared with the other task kinds.

- Data: ``{"prompt", "completion"}`` rows give the encoder the prompt (the tokenizer's own special
  tokens, e.g. T5's closing ``</s>``) and the decoder the completion, closed by the end-of-sequence token
  (so the model learns to stop; the tokenizer's own EOS is not doubled). ``{"text"}`` rows are split in
  the middle (half of the text's tokens, at least one on each side): the first part goes to the encoder,
  the rest (then EOS) is the target, as T5's prefix-LM objective does. Canaries
  (``finetune.canaries``) are pairs whatever the data: the template's text before the secret in the
  encoder, the rest of the canary as the target (:func:`auditkit.finetune.canary_examples`).
- Labels are padded with -100 (ignored by the loss); the decoder's input is the labels shifted right
  behind the decoder start token (the model's own ``prepare_decoder_input_ids_from_labels``, as
  ``labels=`` does inside the model).
- Loss: the token cross-entropy of the decoder targets, summed, with the number of target tokens, so
  the trainer can weight micro-batches per token as it does for causal LMs.
- LoRA: task type ``SEQ_2_SEQ_LM``; the target modules are chosen as for every model
  (:func:`auditkit.finetune.default_target_modules`: peft's per-architecture defaults, T5's ``["q", "v"]``
  and BART's ``["q_proj", "v_proj"]`` among them).
"""
from __future__ import annotations

from typing import Any


def lora_task_type():
    """peft's task type for encoder-decoders."""
    from peft import TaskType
    return TaskType.SEQ_2_SEQ_LM


def _eos(tokenizer) -> int | None:
    return tokenizer.eos_token_id


def _close(ids: list[int], eos: int | None) -> list[int]:
    """``ids`` ending with EOS (added once, when the tokenizer did not)."""
    return list(ids) if eos is None or (ids and ids[-1] == eos) else list(ids) + [eos]


def examples(ds, tokenizer, max_length: int) -> list[dict]:
    """Training examples ``{"input_ids": encoder ids, "labels": decoder target ids}`` from a dataset of
    ``{"prompt","completion"}``, ``{"prompt","reference"}`` (generation data: the first reference) or
    ``{"text"}`` rows (see the module docstring); both sides are cut at
    ``max_length`` tokens (the target keeps its EOS)."""
    pairs = ds.prompt_pairs()
    if pairs is not None:
        return pair_examples(pairs, tokenizer, max_length)
    eos = _eos(tokenizer)
    rows = ds.rows
    out: list[dict] = []
    ds.require("text", fmt="seq2seq LM text")
    for ids in tokenizer([r["text"] for r in rows], add_special_tokens=False)["input_ids"]:
        ids = list(ids)
        if len(ids) < 2:
            continue  # nothing to split into an input and a target
        k = min(max(len(ids) // 2, 1), len(ids) - 1)
        src, tgt = ids[:k][-max_length:], ids[k:]
        out.append({"input_ids": src, "labels": _close(tgt[:max_length - 1] if eos is not None else
                                                        tgt[:max_length], eos)})
    if not out:
        raise ds.error("no text row has two tokens or more to split into an input and a target",
                       fix="give longer texts, or {prompt, completion} rows")
    return out


def pair_examples(pairs, tokenizer, max_length: int) -> list[dict]:
    """Training examples of ``(prompt, completion)`` pairs: the prompt in the encoder, the completion
    (without special tokens, closed by EOS) as the decoder's target, each cut at ``max_length`` tokens."""
    eos = _eos(tokenizer)
    enc = tokenizer([p for p, _ in pairs], truncation=True, max_length=max_length)["input_ids"]
    dec = tokenizer([c for _, c in pairs], add_special_tokens=False)["input_ids"]
    return [{"input_ids": list(e) or ([eos] if eos is not None else [0]),
             "labels": _close(d[:max_length - 1] if eos is not None else d[:max_length], eos)}
            for e, d in zip(enc, dec)]


def collate(batch: list[dict], pad_id: int, device: Any):
    """``(input_ids, attention_mask, labels)``: the encoder ids right-padded with ``pad_id`` (masked), the
    labels right-padded with -100, on ``device``."""
    import torch
    width = max(len(b["input_ids"]) for b in batch)
    dwidth = max(len(b["labels"]) for b in batch)
    inp = torch.full((len(batch), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), dwidth), -100, dtype=torch.long)
    for i, b in enumerate(batch):
        n, m = len(b["input_ids"]), len(b["labels"])
        inp[i, :n] = torch.tensor(b["input_ids"], dtype=torch.long)
        mask[i, :n] = 1
        labels[i, :m] = torch.tensor(b["labels"], dtype=torch.long)
    return inp.to(device), mask.to(device), labels.to(device)


def loss_sum(model, inp, mask, labels):
    """``(summed token cross-entropy, number of target tokens)`` of the decoder targets (torch scalar, int).

    The decoder reads the labels shifted right behind its start token; -100 positions are ignored."""
    import torch
    dec_in = _unwrap(model).prepare_decoder_input_ids_from_labels(labels=labels)
    logits = model(input_ids=inp, attention_mask=mask, decoder_input_ids=dec_in, use_cache=False).logits.float()
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                                             ignore_index=-100, reduction="sum")
    return loss, int((labels != -100).sum())


def _unwrap(model):
    """The transformers model inside a peft / DDP wrapper (which owns ``prepare_decoder_input_ids_from_labels``)."""
    seen = 0
    while not hasattr(model, "prepare_decoder_input_ids_from_labels") and seen < 5:
        model = getattr(model, "module", None) or getattr(model, "base_model", None) or getattr(model, "model")
        seen += 1
    return model
