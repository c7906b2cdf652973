"""Fine-tuning (full or LoRA with peft) with a training record; the base model is kept as baseline.

Classification trains cross-entropy on ``{"text","label"}``; causal LMs train next-token loss on
``{"text"}`` (all tokens) or ``{"prompt","completion"}`` (loss on the completion only). Validation loss
and the task metric are measured every epoch (or every N steps), together with the loss on a fixed
train subset in eval mode, so that the overfitting check compares like with like.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import random
import string
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from auditkit.api import did_you_mean
from auditkit.errors import AuditInputError, TrainingDiverged
from auditkit.results import write_text_atomic

FT_KEYS = ("data", "validation", "columns", "method", "epochs", "learning_rate", "schedule", "warmup_ratio",
           "batch_size", "grad_accum", "max_length", "weight_decay", "seed", "eval_every", "early_stopping",
           "lora", "canaries", "max_steps", "train_eval_size", "dropout")
LORA_KEYS = ("r", "alpha", "dropout", "target_modules")
#: full fine-tuning, LoRA (peft), or QLoRA: LoRA on a 4-bit NF4 base (Dettmers et al. 2023), which needs
#: ``model.quantization: {bits: 4}``, a CUDA GPU and bitsandbytes (checked by :func:`auditkit.backends.preflight`)
METHODS = ("full", "lora", "qlora")
CANARY_KEYS = ("count", "repeats", "template", "references", "digits")
DEFAULT_CANARY_TEMPLATE = "my PIN is {digits}"
#: a secret is this many random digits joined by CANARY_SEPARATOR ("4-8-1-5-9-2"): a space of 10**digits
DEFAULT_CANARY_DIGITS = 6
MAX_CANARY_DIGITS = 12
CANARY_SEPARATOR = "-"
#: the fine-tune stops (TrainingDiverged) when a step's loss exceeds this many times the first step's
EXPLOSION_FACTOR = 1000.0
#: ... with the first loss taken as at least this (a near-zero first loss is no yardstick)
EXPLOSION_FLOOR = 0.01


@dataclass
class FinetuneConfig:
    """The ``finetune:`` section of a suite, validated."""

    data: str
    method: str = "lora"
    validation: str | None = None
    columns: dict | None = None
    epochs: int = 3
    learning_rate: float | None = None  # default: 2e-5 full, 5e-4 lora
    schedule: str = "linear"
    warmup_ratio: float = 0.0
    batch_size: int = 16
    grad_accum: int = 1
    max_length: int = 128
    weight_decay: float = 0.0
    seed: int = 0
    eval_every: int | str = "epoch"
    early_stopping: dict | None = None
    lora: dict = field(default_factory=lambda: {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": None})
    canaries: dict | None = None
    max_steps: int | None = None
    train_eval_size: int = 256
    #: every dropout probability of the model (and of a LoRA adapter) while it trains; None keeps the model's
    dropout: float | None = None

    @property
    def validation_spec(self) -> str | None:
        """The validation data: ``validation:``, else the ``#validation`` split of built-in data, else none."""
        if self.validation is None and self.data.startswith("builtin:"):
            return self.data.split("#")[0] + "#validation"
        return self.validation

    @property
    def lr(self) -> float:
        return self.learning_rate if self.learning_rate is not None else \
            (5e-4 if self.method in ("lora", "qlora") else 2e-5)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["learning_rate"] = self.lr
        if d["dropout"] is None:  # unset keeps the fingerprint fine-tunes had before the option existed
            del d["dropout"]
        return d


def _number(cx, raw: dict, key: str, path: tuple, kind, *, ge=None, gt=None, le=None, lt=None, what=None):
    """``raw[key]`` typed (``int`` or ``(int, float)``) and inside its range, else exit 2 naming the suite line."""
    what = what or key
    v = cx.typed(raw[key], kind, path + (key,), what)
    if isinstance(v, float) and not math.isfinite(v):
        raise cx.fail(path + (key,), f"{what} must be a finite number, got {v}")
    bounds = [(ge, ">=", v >= ge if ge is not None else True), (gt, ">", v > gt if gt is not None else True),
              (le, "<=", v <= le if le is not None else True), (lt, "<", v < lt if lt is not None else True)]
    if not all(ok for _, _, ok in bounds):
        rule = " and ".join(f"{op} {b:g}" for b, op, _ in bounds if b is not None)
        if kind is int and ge == 1 and gt is le is lt is None:
            rule = "positive (>= 1)"
        raise cx.fail(path + (key,), f"{what} must be {rule}, got {v!r}")
    return v


NUM = (int, float)


def parse_finetune(raw, cx, suite_seed: int, task: str) -> FinetuneConfig:
    """Validate the ``finetune:`` mapping (cx is the suite's error context): every key's type and range is
    checked here, before any model loads, so a bad value is exit 2 naming the suite line."""
    path = ("finetune",)
    if not isinstance(raw, dict) or "data" not in raw:
        raise cx.fail(path, "finetune: needs data: (builtin:NAME or a file path)")
    cx.keys(raw, FT_KEYS, path)
    data = cx.typed(raw["data"], str, path + ("data",), "data")
    cfg = FinetuneConfig(data=data, seed=suite_seed)
    for k in ("epochs", "batch_size", "grad_accum", "max_length", "train_eval_size"):
        if k in raw:
            setattr(cfg, k, _number(cx, raw, k, path, int, ge=1))
    if "seed" in raw:
        cfg.seed = _number(cx, raw, "seed", path, int, ge=0)
    if "learning_rate" in raw:
        cfg.learning_rate = float(_number(cx, raw, "learning_rate", path, NUM, gt=0))
    if "warmup_ratio" in raw:
        cfg.warmup_ratio = float(_number(cx, raw, "warmup_ratio", path, NUM, ge=0, le=1))
    if "weight_decay" in raw:
        cfg.weight_decay = float(_number(cx, raw, "weight_decay", path, NUM, ge=0))
    if raw.get("max_steps") is not None:
        cfg.max_steps = _number(cx, raw, "max_steps", path, int, ge=1)
    if raw.get("dropout") is not None:
        cfg.dropout = float(_number(cx, raw, "dropout", path, NUM, ge=0, lt=1))
    cfg.method = raw.get("method", "lora")
    if cfg.method not in METHODS:
        raise cx.fail(path + ("method",), f"method must be full, lora or qlora, got {cfg.method!r}",
                      did_you_mean(str(cfg.method), METHODS))
    cfg.schedule = raw.get("schedule", "linear")
    if cfg.schedule not in ("linear", "cosine", "constant"):
        raise cx.fail(path + ("schedule",), f"schedule must be linear, cosine or constant, got {cfg.schedule!r}",
                      did_you_mean(cfg.schedule, ("linear", "cosine", "constant")))
    ev = raw.get("eval_every", "epoch")
    if not (ev == "epoch" or (isinstance(ev, int) and not isinstance(ev, bool) and ev > 0)):
        raise cx.fail(path + ("eval_every",), f"eval_every must be 'epoch' or a number of steps >= 1, got {ev!r}")
    cfg.eval_every = ev
    if raw.get("validation") is not None:
        cfg.validation = cx.typed(raw["validation"], str, path + ("validation",), "validation")
    cols = raw.get("columns")
    if cols is not None and not (isinstance(cols, dict) and all(isinstance(v, str) for v in cols.values())):
        raise cx.fail(path + ("columns",), "columns must map our column names to yours, e.g. {text: review}")
    cfg.columns = cols
    es = raw.get("early_stopping")
    if es is not None and es is not False:
        if es is True:
            es = {}
        if not isinstance(es, dict):
            raise cx.fail(path + ("early_stopping",), "early_stopping must be {patience: N, min_delta: X}")
        epath = path + ("early_stopping",)
        cx.keys(es, ("patience", "min_delta"), epath)
        cfg.early_stopping = {
            "patience": _number(cx, es, "patience", epath, int, ge=1, what="early_stopping.patience")
            if "patience" in es else 2,
            "min_delta": float(_number(cx, es, "min_delta", epath, NUM, ge=0, what="early_stopping.min_delta"))
            if "min_delta" in es else 0.0}
    lora = dict(cfg.lora)
    if raw.get("lora") is not None:
        lpath = path + ("lora",)
        if not isinstance(raw["lora"], dict):
            raise cx.fail(lpath, "lora must be a mapping {r, alpha, dropout, target_modules}")
        lr = raw["lora"]
        cx.keys(lr, LORA_KEYS, lpath)
        if "r" in lr:
            lora["r"] = _number(cx, lr, "r", lpath, int, ge=1, what="lora.r")
        if "alpha" in lr:
            lora["alpha"] = _number(cx, lr, "alpha", lpath, NUM, gt=0, what="lora.alpha")
        if "dropout" in lr:
            lora["dropout"] = float(_number(cx, lr, "dropout", lpath, NUM, ge=0, lt=1, what="lora.dropout"))
        if lr.get("target_modules") is not None:
            tm = lr["target_modules"]
            if isinstance(tm, str):
                tm = [tm]
            if not (isinstance(tm, list) and tm and all(isinstance(t, str) and t.strip() for t in tm)):
                raise cx.fail(lpath + ("target_modules",), f"lora.target_modules must be a list of module names, "
                              f"got {lr['target_modules']!r}", "e.g. target_modules: [q_proj, v_proj]")
            lora["target_modules"] = tm
    cfg.lora = lora
    can = raw.get("canaries")
    if can is not None:
        cpath = path + ("canaries",)
        if task not in ("causal-lm", "seq2seq-lm"):
            raise cx.fail(cpath, "canaries are inserted into the training text of language models only",
                          "use model.task: causal-lm or seq2seq-lm, or remove canaries:")
        if not isinstance(can, dict):
            raise cx.fail(cpath, "canaries must be {count, repeats, template, references, digits}")
        cx.keys(can, CANARY_KEYS, cpath)
        template = cx.typed(can.get("template", DEFAULT_CANARY_TEMPLATE), str, cpath + ("template",),
                            "canaries.template")
        try:
            fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
            ok = fields == [("digits", "", None)]
        except ValueError:
            ok = False
        if not ok:
            raise cx.fail(cpath + ("template",), f"the canary template {template!r} needs one {{digits}} slot and no "
                          "other {...} field", "write literal braces as {{ and }}")
        why = seq2seq_template_error(template) if task == "seq2seq-lm" else None
        if why:
            raise cx.fail(cpath + ("template",), why, "put text before {digits}, e.g. 'my PIN is {digits}'")
        count = _number(cx, can, "count", cpath, int, ge=1, what="canaries.count") if "count" in can else 3
        digits = (_number(cx, can, "digits", cpath, int, ge=1, le=MAX_CANARY_DIGITS, what="canaries.digits")
                  if "digits" in can else DEFAULT_CANARY_DIGITS)
        refs = (_number(cx, can, "references", cpath, int, ge=1, what="canaries.references")
                if "references" in can else 1000)
        repeats = can.get("repeats", [1, 10, 50])
        if isinstance(repeats, int) and not isinstance(repeats, bool):
            repeats = [repeats]
        rpath = cpath + ("repeats",)
        if not (isinstance(repeats, list) and repeats
                and all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in repeats)):
            raise cx.fail(rpath, f"canaries.repeats must be a list of whole numbers >= 1, got {can.get('repeats')!r}",
                          "e.g. repeats: [1, 10, 50]")
        if len(set(repeats)) != len(repeats):
            raise cx.fail(rpath, f"canaries.repeats lists a repeat count twice: {repeats}",
                          "list each count once and raise canaries.count for more canaries per count")
        need = count * len(repeats) + refs
        if need > 10 ** digits:
            raise cx.fail(cpath, f"{count * len(repeats)} canaries and {refs} references need {need} distinct "
                          f"secrets, but {digits} digits give only {10 ** digits}",
                          "raise canaries.digits or lower canaries.references")
        cfg.canaries = {"count": count, "repeats": list(repeats), "template": template, "references": refs,
                        "digits": digits}
    return cfg




# ---------------------------------------------------------------------- canaries

def template_parts(template: str) -> tuple[str, str]:
    """The text before and after a canary template's ``{digits}`` slot (as ``str.format`` renders it)."""
    marker = "\x00"
    head, _, tail = template.format(digits=marker).partition(marker)
    return head, tail


def canary_head(template: str) -> str:
    """The text a canary's secret follows (the template before ``{digits}``, trailing spaces dropped): a
    seq2seq LM learns the rest of the canary given it, and extraction prompts with it."""
    return template_parts(template)[0].rstrip()


def canary_pair(text: str, template: str) -> tuple[str, str]:
    """A canary text split at :func:`canary_head`: (the text the secret follows, the rest). The pair a
    seq2seq LM trains on, and the one memorization scores and prompts with."""
    head = canary_head(template)
    return head, text[len(head):]


def seq2seq_template_error(template: str) -> str | None:
    """Why a seq2seq LM cannot take canaries of ``template`` (no text before the secret), else None."""
    if canary_head(template):
        return None
    return (f"a seq2seq model is asked for a canary's secret given the text before it, and the template "
            f"{template!r} has none")


def canary_examples(canaries: dict | None, task: str, tokenizer, max_length: int) -> list[dict]:
    """Training examples of the canaries, each ``repeats`` times, whatever the training data's columns.

    A causal LM learns each canary's whole text, as a text row (Carlini et al. 2019, "The Secret Sharer");
    a seq2seq LM learns the rest of the text as the decoder's target for :func:`canary_head` in the
    encoder, the pair the memorization check scores and prompts with."""
    if not canaries:
        return []
    cans = canaries["canaries"]
    if task == "seq2seq-lm":
        from auditkit import seq2seq
        once = seq2seq.pair_examples([canary_pair(c["text"], canaries["template"]) for c in cans], tokenizer,
                                     max_length)
    else:
        once = _text_examples([c["text"] for c in cans], tokenizer, max_length)
    return [ex for c, ex in zip(cans, once) for _ in range(c["repeats"])]


def _text_examples(texts: list[str], tokenizer, max_length: int) -> list[dict]:
    """Causal-LM examples of plain texts: every token counts (labels = input ids), cut at ``max_length``."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    return [{"input_ids": list(ids), "labels": list(ids)} for ids in enc]


def make_canaries(cfg: dict, seed: int) -> dict:
    """Random secrets from a template, each to be inserted ``repeats`` times, plus never-inserted
    references from the same template (Carlini et al. 2019, "The Secret Sharer").

    A secret is ``digits`` random digits joined by ``CANARY_SEPARATOR``; the secret space (``space_size``)
    is every such string. Deterministic in ``(cfg, seed)``: a reused fine-tune regenerates its canaries
    instead of keeping them on disk.
    """
    rng = random.Random(f"canaries:{seed}")
    n_digits = int(cfg.get("digits", DEFAULT_CANARY_DIGITS))

    def secret() -> str:
        return CANARY_SEPARATOR.join(str(rng.randrange(10)) for _ in range(n_digits))

    used: set[str] = set()

    def fresh() -> str:
        while True:
            s = secret()
            if s not in used:
                used.add(s)
                return s

    template = cfg["template"]
    canaries = []
    for r in cfg["repeats"]:
        for k in range(cfg["count"]):
            digits = fresh()
            canaries.append({"id": f"canary-r{r}-{k}", "repeats": int(r), "secret": digits,
                             "text": template.format(digits=digits)})
    references = [template.format(digits=fresh()) for _ in range(cfg["references"])]
    return {"template": template, "space_size": 10 ** n_digits, "digits": n_digits, "separator": CANARY_SEPARATOR,
            "canaries": canaries, "references": references}


def canary_digest(canaries: dict) -> str:
    """A keyed digest of the whole canary set (every secret and reference, in order), to check that a
    regenerated set is the one trained on. One digest for the set, never one per secret: a 6-digit
    secret's own hash would be brute-forced in a second."""
    blob = json.dumps({"secrets": [c["secret"] for c in canaries["canaries"]], "references": canaries["references"],
                       "template": canaries["template"]}, sort_keys=True)
    return hashlib.blake2b(blob.encode(), key=b"auditkit.canaries/2", digest_size=16).hexdigest()


def redacted_canaries(canaries: dict, cfg: dict, seed: int) -> dict:
    """What ``model/canaries.json`` keeps without --show-secrets: ids, repeat counts, the config and seed
    that regenerate the set (``make_canaries``) and its digest; no secret and no canary text."""
    return {"format": "auditkit.canaries/2", "redacted": True, "config": dict(cfg), "seed": int(seed),
            "template": canaries["template"], "digits": canaries.get("digits"), "space_size": canaries["space_size"],
            "canaries": [{"id": c["id"], "repeats": c["repeats"]} for c in canaries["canaries"]],
            "n_references": len(canaries["references"]), "digest": canary_digest(canaries)}


def restore_canaries(stored: dict) -> dict | None:
    """The full canary set from a stored record: regenerated from its config and seed when redacted
    (None when the regenerated set does not match the digest), else the record itself."""
    if not stored.get("redacted"):
        return stored if stored.get("canaries") and "secret" in stored["canaries"][0] else None
    try:
        full = make_canaries(stored["config"], stored["seed"])
    except (KeyError, TypeError, ValueError):
        return None
    return full if canary_digest(full) == stored.get("digest") else None


# ---------------------------------------------------------------------- data

def _examples(ds, task: str, tokenizer, max_length: int, num_labels: int | None) -> list[dict]:
    """Tokenize a dataset into training examples (input_ids, labels)."""
    if task == "seq2seq-lm":  # encoder input and decoder target (auditkit.seq2seq)
        from auditkit import seq2seq
        return seq2seq.examples(ds, tokenizer, max_length)
    rows = ds.rows
    if task == "sequence-classification":
        ds.require("text", "label", fmt="classification")
        labels = ds.require_labels(num_labels)
        enc = tokenizer([r["text"] for r in rows], truncation=True, max_length=max_length)["input_ids"]
        return [{"input_ids": ids, "labels": lab} for ids, lab in zip(enc, labels)]
    if ds.has("prompt", "completion"):
        ds.require("prompt", "completion", fmt="prompt/completion")
        out = []
        for r in rows:
            p = tokenizer(r["prompt"])["input_ids"]
            whole = tokenizer(r["prompt"] + r["completion"])["input_ids"][:max_length]
            labels = [-100] * min(len(p), len(whole)) + whole[len(p):]
            out.append({"input_ids": whole, "labels": labels[:len(whole)]})
        return out
    ds.require("text", fmt="causal LM text")
    return _text_examples([r["text"] for r in rows], tokenizer, max_length)


def _collate(batch: list[dict], pad_id: int, task: str, device: str, left: bool = False):
    """Right-padded tensors; ``left`` pads classifier inputs on the left, for heads that read the last
    position (:func:`auditkit.models.reads_last_position`)."""
    import torch
    if task == "seq2seq-lm":
        from auditkit import seq2seq
        return seq2seq.collate(batch, pad_id, device)
    width = max(len(b["input_ids"]) for b in batch)
    inp = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    if task == "sequence-classification":
        labels = torch.tensor([b["labels"] for b in batch], dtype=torch.long)
        if left:
            for i, b in enumerate(batch):
                n = len(b["input_ids"])
                inp[i, width - n:] = torch.tensor(b["input_ids"])
                mask[i, width - n:] = 1
            return inp.to(device), mask.to(device), labels.to(device)
    else:
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for i, b in enumerate(batch):
        n = len(b["input_ids"])
        inp[i, :n] = torch.tensor(b["input_ids"])
        mask[i, :n] = 1
        if task != "sequence-classification":
            labels[i, :n] = torch.tensor(b["labels"])
    return inp.to(device), mask.to(device), labels.to(device)


# ---------------------------------------------------------------------- LoRA

def _linear_names(model) -> list[str]:
    import torch
    names = set()
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) or type(mod).__name__ == "Conv1D":
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def default_target_modules(model) -> list[str]:
    """LoRA targets: peft's per-architecture defaults, else attention-looking linear layers."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as MAP
    mtype = getattr(model.config, "model_type", "")
    if mtype in MAP:
        return list(MAP[mtype])
    names = _linear_names(model)
    # DistilBERT's attention projections, the T5 family's (UMT5, LongT5); XLNet keeps its q/k/v as bare
    # parameters, so LoRA takes its feed-forward layers (layer_1, layer_2)
    for pair in (["q_proj", "v_proj"], ["query", "value"], ["c_attn"], ["q_lin", "v_lin"], ["q", "v"],
                 ["layer_1", "layer_2"]):
        if all(p in names for p in pair):
            return pair
    raise AuditInputError(f"no default LoRA target modules for model type {mtype!r}", place="finetune.lora",
                          fix=f"set finetune.lora.target_modules from: {', '.join(names)}")


def apply_lora(model, task: str, lora: dict, file: str | None = None):
    from peft import LoraConfig, TaskType, get_peft_model
    from auditkit import seq2seq
    s2s = task == "seq2seq-lm"
    targets = lora.get("target_modules") or default_target_modules(model)
    if isinstance(targets, str):
        targets = [targets]
    have = _linear_names(model)
    missing = [t for t in targets if t not in have]
    if missing:
        raise AuditInputError(f"LoRA target module {missing[0]!r} is not in this model", file=file,
                              place="finetune.lora.target_modules",
                              fix=f"the model's linear modules are: {', '.join(have)}")
    alpha = lora.get("alpha", 16)
    alpha = int(alpha) if float(alpha).is_integer() else float(alpha)  # scaling = alpha / r
    cfg = LoraConfig(r=int(lora.get("r", 8)), lora_alpha=alpha,
                     lora_dropout=float(lora.get("dropout", 0.05)), target_modules=list(targets),
                     task_type=seq2seq.lora_task_type() if s2s else
                     TaskType.SEQ_CLS if task == "sequence-classification" else TaskType.CAUSAL_LM)
    return get_peft_model(model, cfg)


# ---------------------------------------------------------------------- training

def fingerprint(base_fp: str, train_fp: str, val_fp: str, cfg: FinetuneConfig, task: str,
                dtype: str = "float32") -> str:
    """What a finished fine-tune is reused by: the base weights, the data, the settings and the dtype the base
    ran in (a bf16 checkpoint has one weights fingerprint loaded in fp32 or bf16, but trains otherwise)."""
    from auditkit import __version__
    blob = {"base": base_fp, "train": train_fp, "val": val_fp, "cfg": cfg.as_dict(), "task": task,
            "auditkit": __version__}
    if dtype != "float32":  # fp32 keeps the key it always had, so earlier fine-tunes stay reusable
        blob["dtype"] = dtype
    blob = json.dumps(blob, sort_keys=True)
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


@dataclass
class TrainResult:
    model: Any
    record: dict
    reused: bool = False


def _evaluate(model, examples, task: str, pad_id: int, device: str, batch_size: int, amp,
              w=None) -> tuple[float, float | None]:
    """Mean loss (per example for classification, per token for LMs) and accuracy (classifiers).

    Under data parallel (``w.parallel``) the batches are dealt by size (:meth:`World.deal`) and the sums
    all-reduced, so every process gets the numbers of the whole set (the batches are those of one process)."""
    import torch
    model.eval()
    total_loss, total_n, correct = 0.0, 0, 0
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    plan = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    mine = w.deal([len(b) * len(examples[b[-1]]["input_ids"]) for b in plan]) if w is not None \
        else [True] * len(plan)
    with torch.inference_mode(), amp():
        for b, ours in zip(plan, mine):
            if not ours:
                continue
            batch = [examples[i] for i in b]
            inp, mask, labels = _collate(batch, pad_id, task, device, _left(model, task))
            if task == "seq2seq-lm":
                from auditkit import seq2seq
                loss, n = seq2seq.loss_sum(model, inp, mask, labels)
                total_loss += float(loss)
                total_n += n
                continue
            logits = model(input_ids=inp, attention_mask=mask).logits.float()
            if task == "sequence-classification":
                loss = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
                total_n += len(batch)
                correct += int((logits.argmax(-1) == labels).sum())
            else:
                sl = logits[:, :-1].reshape(-1, logits.size(-1))
                tl = labels[:, 1:].reshape(-1)
                loss = torch.nn.functional.cross_entropy(sl, tl, ignore_index=-100, reduction="sum")
                total_n += int((tl != -100).sum())
            total_loss += float(loss)
    model.train()
    if w is not None and w.parallel:
        total_loss, total_n, correct = _all_sum([total_loss, total_n, correct], device)
        total_n, correct = int(round(total_n)), int(round(correct))
    mean = total_loss / max(total_n, 1)
    acc = correct / max(total_n, 1) if task == "sequence-classification" else None
    return mean, acc


def train(handle, train_ds, val_ds, cfg: FinetuneConfig, *, out_dir: Path | None = None,
          progress: Callable[[dict], None] | None = None, warn: Callable[[str], None] | None = None,
          suite_file: str | None = None, base_spec: str = "", canaries: dict | None = None) -> TrainResult:
    """Fine-tune ``handle.model`` in place of a copy; the handle's own model stays the base. ``canaries``
    (:func:`make_canaries`) are trained on beside ``train_ds`` (:func:`canary_examples`)."""
    import torch
    from transformers import get_scheduler

    from auditkit.distributed import world

    warn = warn or (lambda m: warnings.warn(m))
    task, device, tok = handle.task, handle.device, handle.tokenizer
    w = world()
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    from auditkit.models import float_dtype
    # a bf16 model trains with fp32 master weights under bf16 autocast (CUDA, or CPU with model.dtype:
    # bfloat16); a model loaded in fp32 trains in fp32
    use_amp = float_dtype(handle.model) == torch.bfloat16
    model = _kbit_base(handle, suite_file) if cfg.method == "qlora" else copy.deepcopy(handle.model)
    if use_amp and cfg.method == "full":
        model.float()  # master weights in fp32; bf16 through autocast
    train_ex = (_examples(train_ds, task, tok, cfg.max_length, handle.num_labels or None)
                + canary_examples(canaries, task, tok, cfg.max_length))
    val_ex = _examples(val_ds, task, tok, cfg.max_length, handle.num_labels or None) if val_ds is not None else []
    if not train_ex:
        raise train_ds.error("the training split is empty")
    sub_rng = random.Random(cfg.seed + 1)
    train_eval = sub_rng.sample(train_ex, min(cfg.train_eval_size, len(train_ex)))
    loaded_dtypes = {}
    if cfg.method == "qlora":
        from peft import prepare_model_for_kbit_training
        # the frozen 16-bit layers go back to these dtypes after training, so the audited model is the
        # one a reload of the saved adapter gives (prepare_model_for_kbit_training casts them to fp32)
        loaded_dtypes = {id(p): p.dtype for p in model.parameters()}
        # casts the layers left in 16 bits (norms, head) to fp32, freezes the base, and checkpoints
        # activations (QLoRA's memory recipe); non-reentrant checkpointing also works under DDP
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.method in ("lora", "qlora"):
        model = apply_lora(model, task, cfg.lora, suite_file)
        # LoRA on CUDA: the frozen base stays bf16 (no cast kernels per layer), what trains is fp32
        for p in model.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
    if cfg.dropout is not None:
        set_dropout(model, cfg.dropout)
    from auditkit.backends import placed
    if not placed(model):  # a k-bit or device-mapped model stays where it was loaded
        model.to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:  # the fused kernel (CPU and CUDA) is what transformers' Trainer uses by default too
        opt = torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
    except (RuntimeError, ValueError):
        opt = torch.optim.AdamW(groups, lr=cfg.lr)
    eff_batch = cfg.batch_size * cfg.grad_accum
    steps_per_epoch = max(1, math.ceil(len(train_ex) / eff_batch))
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    sched = get_scheduler(cfg.schedule if cfg.schedule != "constant" else "constant_with_warmup", opt,
                          num_warmup_steps=int(cfg.warmup_ratio * total_steps), num_training_steps=total_steps)
    ddp = None
    if w.parallel:
        # DDP through accelerate: each process runs its share of every effective batch, DDP averages the
        # gradients; the scheduler is stepped here once per step (not prepared: accelerate would step it
        # once per process)
        from accelerate import Accelerator
        accelerator = Accelerator(cpu=not device.startswith("cuda"), mixed_precision="no")
        ddp, opt = accelerator.prepare(model, opt)

    def amp():
        return torch.autocast(device.split(":")[0], dtype=torch.bfloat16) if use_amp else _null()

    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    record: dict[str, Any] = {"method": cfg.method, "config": cfg.as_dict(), "steps": [], "evals": [],
                              "n_train": len(train_ex), "n_validation": len(val_ex), "total_steps": total_steps,
                              "trainable_parameters": int(sum(p.numel() for p in params)),
                              "best_step": None, "stopped_early": False, "warnings": []}
    msg = dropout_warning(model, w)
    if msg:
        record["warnings"].append(msg)
        warn(msg)
    micro = cfg.batch_size
    accum = cfg.grad_accum
    step, tokens, t0 = 0, 0, time.perf_counter()
    best = (math.inf, None, None)
    bad_evals = 0
    window: list[float] = []
    first_loss: float | None = None

    eval_time = 0.0

    def do_eval(epoch: float) -> bool:
        nonlocal best, bad_evals, eval_time
        t_eval = time.perf_counter()
        tr_loss, tr_acc = _evaluate(model, train_eval, task, pad_id, device, max(micro, 32), amp, w)
        entry = {"step": step, "epoch": round(epoch, 4), "train_loss": tr_loss,
                 "train_loss_running": float(sum(window) / len(window)) if window else None}
        if tr_acc is not None:
            entry["train_accuracy"] = tr_acc
        if val_ex:
            v_loss, v_acc = _evaluate(model, val_ex, task, pad_id, device, max(micro, 32), amp, w)
            entry["val_loss"] = v_loss
            if v_acc is not None:
                entry["val_accuracy"] = v_acc
            min_delta = (cfg.early_stopping or {}).get("min_delta", 0.0)
            if v_loss < best[0] - min_delta:
                best = (v_loss, step, _trainable_state(model))
                bad_evals = 0
            else:
                bad_evals += 1
        window.clear()
        record["evals"].append(entry)
        eval_time += time.perf_counter() - t_eval
        if cfg.early_stopping and bad_evals >= cfg.early_stopping["patience"]:
            record["stopped_early"] = True
            return True
        return False

    stop = False
    for epoch in range(cfg.epochs):
        order = list(range(len(train_ex)))
        rng.shuffle(order)
        for s in range(0, len(order), eff_batch):
            chunk = [train_ex[i] for i in order[s:s + eff_batch]]
            if ddp is not None:  # data parallel: no OOM retry (every process must take the same steps)
                loss_val, ntok = _step_ddp(ddp, chunk, micro, task, pad_id, device, amp, w)
                loss_val, ntok = _all_sum([loss_val, ntok], device)
                ntok = int(round(ntok))
            else:
                while True:
                    try:
                        loss_val, ntok = _step(model, chunk, micro, task, pad_id, device, amp)
                        break
                    except torch.cuda.OutOfMemoryError:
                        if micro == 1:
                            raise
                        opt.zero_grad(set_to_none=True)
                        torch.cuda.empty_cache()
                        micro //= 2
                        accum *= 2
                        msg = f"CUDA out of memory: micro-batch halved to {micro}, gradient accumulation {accum}"
                        record["warnings"].append(msg)
                        warn(msg)
            if first_loss is None and math.isfinite(loss_val):
                first_loss = loss_val
            limit = EXPLOSION_FACTOR * max(first_loss or 0.0, EXPLOSION_FLOOR)
            if not math.isfinite(loss_val) or loss_val > limit:
                record["diverged_at_step"] = step + 1
                record["diverged_loss"] = loss_val if math.isfinite(loss_val) else str(loss_val)
                saved = ""
                if out_dir is not None and w.main:
                    _save_record(out_dir, record)
                    saved = f"; the training record up to there is in {Path(out_dir) / 'training.json'}"
                what = (f"became {loss_val}" if not math.isfinite(loss_val) else
                        f"exploded to {loss_val:.4g}, over {EXPLOSION_FACTOR:g}x the first step's {first_loss:.4g},")
                raise TrainingDiverged(f"training loss {what} at step {step + 1} (epoch {epoch + 1}); "
                                       f"lower finetune.learning_rate{saved}")
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            tokens += ntok
            window.append(loss_val)
            record["steps"].append({"step": step, "epoch": round(epoch + s / len(order), 4),
                                    "loss": round(loss_val, 6), "lr": sched.get_last_lr()[0]})
            if progress:
                el = time.perf_counter() - t0
                progress({"step": step, "total": total_steps, "loss": loss_val, "tokens_per_s": tokens / max(el, 1e-9)})
            if isinstance(cfg.eval_every, int) and step % cfg.eval_every == 0:
                stop = do_eval(epoch + (s + eff_batch) / len(order))
            if stop or (cfg.max_steps and step >= cfg.max_steps):
                stop = True
                break
        if stop:
            break
        if cfg.eval_every == "epoch":
            if do_eval(epoch + 1.0):
                break
    if not record["evals"] or record["evals"][-1]["step"] != step:
        if not record["stopped_early"]:  # stopped by max_steps (or steps not a multiple of eval_every)
            do_eval(float(record["steps"][-1]["epoch"]) if record["steps"] else 0.0)
    elapsed = time.perf_counter() - t0 - eval_time
    record["train_time_s"] = elapsed
    record["eval_time_s"] = eval_time
    record["tokens"] = tokens
    record["tokens_per_s"] = tokens / max(elapsed, 1e-9)
    if best[1] is not None:
        record["best_step"] = best[1]
        record["best_val_loss"] = best[0]
        if cfg.early_stopping and record["stopped_early"]:
            _load_trainable_state(model, best[2])
            record["restored_best"] = True
    del ddp  # the DDP wrapper (its gradient hooks stay harmless on the module it wrapped)
    for p in model.parameters():  # QLoRA: the frozen base back in the dtypes it was loaded in (exact: an upcast)
        dtype = loaded_dtypes.get(id(p))
        if dtype is not None and not p.requires_grad and p.dtype != dtype:
            p.data = p.data.to(dtype)
    model.eval()
    return TrainResult(model=model, record=record)


def for_audit(model, device: str, dtype=None):
    """Merge a LoRA adapter into its base and cast to the audit dtype: ``dtype`` (the base model's, so the
    fine-tune is audited as a reload of it would be), else bf16 on CUDA.

    A QLoRA model keeps its adapter unmerged over the 4-bit base (merging into NF4 weights would round
    the update away) and is never cast or moved: it stays where it was loaded."""
    import torch
    from auditkit.backends import placed
    if placed(model):
        model.eval()
        return model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.eval()
    if dtype is not None:
        model.to(dtype)
    elif device.startswith("cuda"):
        model.to(torch.bfloat16)
    return model


def _step(model, chunk, micro: int, task: str, pad_id: int, device: str, amp) -> tuple[float, int]:
    """Forward/backward over one effective batch in micro-batches; returns mean loss and token count."""
    import torch
    total_loss, ntok = 0.0, 0
    if task == "sequence-classification":
        weights = [len(chunk[i:i + micro]) for i in range(0, len(chunk), micro)]
        denom = len(chunk)
    else:
        weights = [sum(_target_tokens(b, task) for b in chunk[i:i + micro]) for i in range(0, len(chunk), micro)]
        denom = max(sum(weights), 1)
    for k, i in enumerate(range(0, len(chunk), micro)):
        batch = chunk[i:i + micro]
        inp, mask, labels = _collate(batch, pad_id, task, device, _left(model, task))
        if task == "seq2seq-lm":
            if weights[k] == 0:
                continue
            from auditkit import seq2seq
            with amp():
                loss_sum, n = seq2seq.loss_sum(model, inp, mask, labels)
            loss = loss_sum / max(n, 1)
            (loss * weights[k] / denom).backward()
            total_loss += float(loss.detach()) * weights[k] / denom
            ntok += int(mask.sum()) + n
            continue
        with amp():
            logits = model(input_ids=inp, attention_mask=mask).logits.float()
        if task == "sequence-classification":
            loss = torch.nn.functional.cross_entropy(logits, labels)
        else:
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)),
                                                     labels[:, 1:].reshape(-1), ignore_index=-100)
            if weights[k] == 0:
                continue
        (loss * weights[k] / denom).backward()
        total_loss += float(loss.detach()) * weights[k] / denom
        ntok += int(mask.sum())
    return total_loss, ntok


def _step_ddp(ddp, chunk, micro: int, task: str, pad_id: int, device: str, amp, w) -> tuple[float, int]:
    """This process's share of one effective batch under DDP: the loss and token count of its rows.

    The chunk is cut into ``w.size`` contiguous shares, each run in micro-batches; every loss term is the
    SUM over its rows (examples, or label tokens for LMs) divided by the whole chunk's count, times the
    number of processes, so DDP's average of the gradients is exactly the gradient of the chunk's mean
    loss, as one process computes it. Only the last micro-batch synchronises (``no_sync`` before); a
    process with no rows (a chunk smaller than the world) runs one row with weight 0 so that it still
    joins the all-reduce. The returned loss is this process's part of the chunk's mean (the caller sums
    it over processes)."""
    import torch
    n = len(chunk)
    if task == "sequence-classification":
        denom = n
    else:
        denom = max(sum(_target_tokens(b, task) for b in chunk), 1)
    per = math.ceil(n / w.size)
    part = chunk[w.rank * per:(w.rank + 1) * per]
    batches: list = [part[i:i + micro] for i in range(0, len(part), micro)] or [None]
    total_loss, ntok = 0.0, 0
    for k, batch in enumerate(batches):
        dummy = batch is None
        inp, mask, labels = _collate(chunk[:1] if dummy else batch, pad_id, task, device, _left(ddp, task))
        with (ddp.no_sync() if k < len(batches) - 1 else _null()):
            if task == "seq2seq-lm":
                from auditkit import seq2seq
                with amp():
                    loss_sum, _ = seq2seq.loss_sum(ddp, inp, mask, labels)
                (loss_sum * (0.0 if dummy else w.size / denom)).backward()
                if not dummy:
                    total_loss += float(loss_sum.detach()) / denom
                    ntok += int(mask.sum())
                continue
            with amp():
                logits = ddp(input_ids=inp, attention_mask=mask).logits.float()
            if task == "sequence-classification":
                loss_sum = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
            else:
                loss_sum = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)),
                                                             labels[:, 1:].reshape(-1), ignore_index=-100,
                                                             reduction="sum")
            (loss_sum * (0.0 if dummy else w.size / denom)).backward()
        if not dummy:
            total_loss += float(loss_sum.detach()) / denom
            ntok += int(mask.sum())
    return total_loss, ntok


def _dropouts(model):
    """``(module, attribute)`` of every dropout probability of ``model``: ``nn.Dropout`` modules' ``p`` (a LoRA
    adapter's among them) and the float ``*dropout*`` attributes attention layers pass to their kernels
    (``scaled_dot_product_attention(dropout_p=...)``)."""
    import torch
    for mod in model.modules():
        if isinstance(mod, torch.nn.Dropout):
            yield mod, "p"
        for name, value in vars(mod).items():
            if "dropout" in name and isinstance(value, float):
                yield mod, name


def set_dropout(model, p: float) -> None:
    """Every dropout of ``model`` to probability ``p`` while it trains (the saved config is left as it was)."""
    for mod, attr in list(_dropouts(model)):
        setattr(mod, attr, float(p))


def active_dropout(model) -> float:
    """The largest dropout probability ``model`` applies in training (0.0 where none is active)."""
    return max((float(getattr(mod, attr)) for mod, attr in _dropouts(model)), default=0.0)


def dropout_warning(model, w) -> str | None:
    """What to say when data-parallel training runs with dropout: each process draws the masks of its own
    rows, so the steps differ from one process's (None when there is one process or no dropout)."""
    if not w.parallel:
        return None
    drop = active_dropout(model)
    if drop <= 0:
        return None
    return (f"dropout is active (p up to {drop:g}): each of the {w.size} processes draws its own dropout masks, "
            "so this fine-tune differs from a one-process run with the same seed; set finetune.dropout: 0 for one "
            "that does not depend on --processes")


def _left(model, task: str) -> bool:
    from auditkit.models import reads_last_position
    inner = model
    for _ in range(4):  # through DDP / peft wrappers to the transformers model and its config
        if getattr(inner, "config", None) is not None:
            break
        inner = getattr(inner, "module", None) or getattr(inner, "base_model", None) or inner
    return reads_last_position(inner, task)


def _target_tokens(example: dict, task: str) -> int:
    """The tokens an LM example's loss counts: labels after the first (causal: each predicts the next), or
    every decoder target (seq2seq)."""
    labels = example["labels"] if task == "seq2seq-lm" else example["labels"][1:]
    return sum(1 for x in labels if x != -100)


def _all_sum(values: list, device: str) -> list[float]:
    """Element-wise sum of a few numbers over the data-parallel processes (float64)."""
    import torch
    import torch.distributed as dist
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def _kbit_base(handle, suite_file: str | None = None):
    """QLoRA's base: the handle's model loaded again in 4 bits (NF4, bf16 compute) with
    :func:`auditkit.backends.load_kwargs`, its new head (if any) drawn as the runner draws it (seed 0).

    The handle's own model stays the untouched baseline. Exit 2 on a machine without CUDA or bitsandbytes
    (:func:`auditkit.backends.preflight` says so before anything loads; this is the last guard)."""
    import torch

    from auditkit import backends
    from auditkit.models import auto_model_class, dtype_name, float_dtype
    from auditkit.suite import ModelSpec
    if not backends._cuda_available():
        raise AuditInputError("finetune.method: qlora needs a CUDA GPU (bitsandbytes); this machine has none",
                              file=suite_file, place="finetune.method", fix="use method: lora on this machine")
    if not backends._importable("bitsandbytes"):
        raise AuditInputError("finetune.method: qlora needs bitsandbytes, which is not installed", file=suite_file,
                              place="finetune.method", fix=backends.GPU_EXTRA)
    location = getattr(handle, "location", None) or getattr(handle.model.config, "_name_or_path", None)
    if not location:
        raise AuditInputError(f"qlora cannot find the folder {handle.source} was loaded from", file=suite_file,
                              place="finetune.method", fix="use method: lora")
    dtype = float_dtype(handle.model)  # the dtype load_model gave the audited model, so a reload is this model
    spec = ModelSpec(base=handle.source, task=handle.task, quantization_bits=4, dtype=dtype_name(dtype),
                     device_map="auto" if len(set((getattr(handle.model, "hf_device_map", None) or {}).values())) > 1
                     else None)
    auto = auto_model_class(handle.task)
    extra = {"num_labels": handle.num_labels} if handle.task == "sequence-classification" and handle.num_labels else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = auto.from_pretrained(location, dtype=dtype, **backends.load_kwargs(spec, handle.device),
                                     **extra)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = handle.tokenizer.pad_token_id
    return model


def _trainable_state(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _load_trainable_state(model, state: dict) -> None:
    import torch
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in state:
                p.copy_(state[n])


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def forget_finished(out_dir: Path) -> None:
    """Before a new fine-tune writes into ``out_dir``: remove the marker of the one there, so an interrupted or
    diverged run never leaves an earlier fingerprint pointing at new weights or a new record."""
    marker = out_dir / "finetune.json"
    if marker.is_symlink() or marker.exists():
        marker.unlink()


def _save_record(out_dir: Path, record: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "training.json", json.dumps(record, indent=2))


def save_finetuned(model, tokenizer, out_dir: Path, *, fp: str, record: dict, base_spec: str,
                   canaries: dict | None) -> None:
    """Write the fine-tuned weights (safetensors), tokenizer, record and canary record to ``out_dir``.

    ``canaries.json`` holds no secret: only ids, repeat counts, the config and seed that regenerate the set, and
    a digest to check the regenerated set against (``redacted_canaries``). Reports show the secrets with
    ``--show-secrets``; this file never needs them.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    adapter_cfg = out_dir / "adapter_config.json"
    if adapter_cfg.exists():  # point the adapter at the suite's base spec, not a machine-local path
        meta = json.loads(adapter_cfg.read_text())
        meta["base_model_name_or_path"] = base_spec
        write_text_atomic(adapter_cfg, json.dumps(meta, indent=2))
    _save_record(out_dir, record)
    can_path = out_dir / "canaries.json"
    if canaries is not None:
        cfg = record.get("config") or {}
        stored = redacted_canaries(canaries, cfg.get("canaries") or {}, cfg.get("seed", 0))
        write_text_atomic(can_path, json.dumps(stored, indent=2))
    elif can_path.exists():
        can_path.unlink()
    # written last: its presence means the fine-tune finished
    write_text_atomic(out_dir / "finetune.json", json.dumps({"fingerprint": fp, "base": base_spec}, indent=2))


def load_finished(out_dir: Path, fp: str) -> tuple[dict, dict | None] | None:
    """The record (and canaries, regenerated when stored redacted) of a finished fine-tune in ``out_dir``
    with this fingerprint, or None (then it is trained again)."""
    marker = out_dir / "finetune.json"
    if not marker.exists():
        return None
    try:
        meta = json.loads(marker.read_text())
        if meta.get("fingerprint") != fp:
            return None
        record = json.loads((out_dir / "training.json").read_text())
        can = out_dir / "canaries.json"
        if not can.exists():
            cfg = record.get("config") or {}
            if not cfg.get("canaries"):
                return record, None
            return record, make_canaries(cfg["canaries"], cfg.get("seed", 0))
        canaries = restore_canaries(json.loads(can.read_text()))
        return (record, canaries) if canaries is not None else None
    except (OSError, ValueError):
        return None
