"""The model handle: loading (local dir, hub id, ``builtin:NAME``, peft adapter), device and dtype,
and batched, length-sorted scoring primitives memoized per (model, data, operation) so that checks
which need the same pass share it.

Primitives (all return numpy, in the order of the input):

- ``class_logits(texts)``            -> ``[N, C]`` classifier logits
- ``token_logprobs(texts)``          -> list of per-token log-probs (causal LM: all tokens after the first;
  seq2seq LM: every token of the text in the decoder, the encoder reading the prefix token alone)
- ``continuation_logprobs(pairs)``   -> list of per-token log-probs of each continuation given its
  context, tokenized exactly as lm-eval's ``_encode_pair`` does (causal: whole = enc(ctx+cont),
  ctx = enc(ctx); seq2seq: ctx = enc(ctx) read by the encoder, cont = enc(cont) without special tokens
  scored by the decoder)

Seq2seq LMs (``seq2seq-lm``: T5, BART) follow lm-eval's HFLM with ``backend="seq2seq"``: in
``loglikelihood`` the encoder reads the context (``enc(ctx)[-max_length:]``, the tokenizer's own special
tokens, e.g. T5's closing ``</s>``) and the decoder is teacher-forced on the continuation as ``labels``
(the model shifts them right behind its decoder start token), so every continuation token is scored and
no EOS is appended; ``loglikelihood_rolling`` (our ``token_logprobs``) gives the encoder the prefix
token alone (BOS, else EOS) and scores every token of ``enc(text)`` in the decoder.
- ``attentions(texts)``              -> list of ``[L, H, T, T]`` attention maps (eager attention)
- ``hidden_states(texts)``           -> ``[L+1, N, D]`` mean-pooled hidden states per layer

One forward pass can fill several caches: asking for attentions also stores the logits of that pass.

The scoring passes are also cached on disk by content, so a second audit against the same base model skips
them: ``AUDITKIT_CACHE/passes/<model fingerprint>/<op>-<key>.npz``, the key hashing the weights'
fingerprint, the tokenizer, task, max_length, dtype and device kind, the operation, the content of
the inputs and the keyword arguments. Values are numpy arrays (or lists, tuples and str-keyed dicts
of them, numbers, strings, None) written with ``np.savez`` to a temporary file renamed into place and
read back with ``allow_pickle=False``; any other value is simply not stored on disk. A plugin's own
``memo`` op is kept on disk only when it passes ``persist=True``.
``AUDITKIT_DISK_CACHE=0`` turns the disk cache off; ``AUDITKIT_DISK_CACHE_MAX_MB`` (default 256)
caps the size of one stored pass.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from auditkit.errors import AuditInputError

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def cache_dir() -> Path:
    """Where converted and generated models live (``AUDITKIT_CACHE``, default ~/.cache/auditkit)."""
    return Path(os.environ.get("AUDITKIT_CACHE") or Path.home() / ".cache" / "auditkit")


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> cuda when present; under data parallel each process takes the GPU of its local rank."""
    import torch
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise AuditInputError("--device cuda was asked for but no CUDA device is available",
                              place="--device", fix="use --device auto or --device cpu")
    from auditkit.distributed import world
    if device == "cuda" and world().parallel:
        return f"cuda:{world().local_rank}"
    return device


def reads_last_position(model, task: str) -> bool:
    """A classifier whose head reads the sequence's last position whatever the mask (XLNet's
    ``summary_type: last``): right padding would feed it a pad token."""
    return task == "sequence-classification" and \
        getattr(getattr(model, "config", None), "summary_type", None) == "last"


def texts_key(items: Sequence) -> str:
    """A content fingerprint of a list of texts (or text pairs)."""
    h = hashlib.blake2b(digest_size=16)
    for it in items:
        h.update(json.dumps(it, ensure_ascii=False).encode())
        h.update(b"\x00")
    return h.hexdigest()


def weights_fingerprint(model) -> str:
    """blake2b over every parameter and buffer (name, shape, bytes): same weights, same id."""
    import torch
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        t = t.detach()
        if t.dtype == torch.bfloat16:
            t = t.float()
        h.update(t.cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------- the disk cache of passes

_DISK_FORMAT = 2
_MISSING = object()


class _Unstorable(Exception):
    """A value the disk cache does not store (it stays in memory only)."""


def disk_cache_enabled() -> bool:
    """False when ``AUDITKIT_DISK_CACHE`` is 0/false/no/off."""
    return os.environ.get("AUDITKIT_DISK_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def _max_bytes() -> int:
    try:
        return int(float(os.environ.get("AUDITKIT_DISK_CACHE_MAX_MB", "256")) * 2 ** 20)
    except ValueError:
        return 256 * 2 ** 20


def _plain_array(x) -> bool:
    return isinstance(x, np.ndarray) and x.dtype != object and x.dtype.kind in "biufcUS"


def _encode_value(value, arrays: dict) -> dict:
    """Describe ``value`` as JSON, moving its arrays into ``arrays`` (no pickling anywhere)."""
    def put(arr) -> str:
        name = f"a{len(arrays)}"
        arrays[name] = arr
        return name

    if value is None:
        return {"t": "none"}
    if isinstance(value, (bool, np.bool_)):
        return {"t": "bool", "v": bool(value)}
    if isinstance(value, (int, np.integer)):
        return {"t": "int", "v": int(value)}
    if isinstance(value, (float, np.floating)):
        return {"t": "float", "k": put(np.asarray(value, dtype=np.float64))}  # keeps NaN/inf exact
    if isinstance(value, str):
        return {"t": "str", "v": value}
    if _plain_array(value):
        return {"t": "array", "k": put(value)}
    if isinstance(value, np.ndarray):
        raise _Unstorable(f"array of dtype {value.dtype}")
    if isinstance(value, (list, tuple)):
        seq = "tuple" if isinstance(value, tuple) else "list"
        if value and all(_plain_array(v) for v in value) and len({(v.dtype.str, v.ndim) for v in value}) == 1 \
                and value[0].ndim >= 1:
            # ragged arrays (token log-probs, attention maps): one flat buffer plus the shapes
            shapes = np.array([v.shape for v in value], dtype=np.int64)
            return {"t": "ragged", "seq": seq, "k": put(np.concatenate([v.ravel() for v in value])),
                    "s": put(shapes)}
        if value and all(isinstance(v, list) and all(type(x) is int for x in v) for v in value):
            # lists of token ids
            lengths = np.array([len(v) for v in value], dtype=np.int64)
            flat = np.array([x for v in value for x in v], dtype=np.int64)
            return {"t": "intlists", "seq": seq, "k": put(flat), "s": put(lengths)}
        if len(value) > 4096:
            raise _Unstorable("a long list of mixed values")
        return {"t": seq, "items": [_encode_value(v, arrays) for v in value]}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"t": "dict", "items": [[k, _encode_value(v, arrays)] for k, v in value.items()]}
    raise _Unstorable(type(value).__name__)


def _decode_value(meta: dict, arrays) -> Any:
    t = meta["t"]
    if t == "none":
        return None
    if t in ("bool", "int", "str"):
        return meta["v"]
    if t == "float":
        return float(arrays[meta["k"]])
    if t == "array":
        return arrays[meta["k"]]
    if t == "ragged":
        flat, shapes = arrays[meta["k"]], arrays[meta["s"]]
        out, pos = [], 0
        for shape in shapes:
            size = int(np.prod(shape))
            out.append(flat[pos:pos + size].reshape(tuple(int(d) for d in shape)))
            pos += size
        return tuple(out) if meta["seq"] == "tuple" else out
    if t == "intlists":
        flat, lengths = arrays[meta["k"]].tolist(), arrays[meta["s"]].tolist()
        out, pos = [], 0
        for n in lengths:
            out.append(flat[pos:pos + n])
            pos += n
        return tuple(out) if meta["seq"] == "tuple" else out
    if t in ("list", "tuple"):
        items = [_decode_value(m, arrays) for m in meta["items"]]
        return tuple(items) if t == "tuple" else items
    if t == "dict":
        return {k: _decode_value(m, arrays) for k, m in meta["items"]}
    raise ValueError(f"unknown stored kind {t!r}")


def _disk_store(path: Path, value) -> bool:
    """Write ``value`` atomically as .npz; False (and nothing written) when it cannot be stored."""
    arrays: dict = {}
    try:
        meta = _encode_value(value, arrays)
    except _Unstorable:
        return False
    if sum(a.nbytes for a in arrays.values()) > _max_bytes():
        return False
    arrays["__meta__"] = np.frombuffer(json.dumps({"format": _DISK_FORMAT, "value": meta}).encode(), dtype=np.uint8)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".pass-", suffix=".npz.tmp", dir=path.parent)
    except OSError:
        return False
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
        return True
    except OSError:
        return False
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def memo_key(op: str, items: Sequence, kw: dict) -> tuple:
    """The memo key of a pass: (``op``, the content of ``items``, ``kw`` as sorted JSON)."""
    return (op, texts_key(items), json.dumps(kw, sort_keys=True))


def pass_cache_path(fingerprint: str, op: str, identity: Sequence, *, prefix: str = "",
                    op_chars: int = 60) -> Path:
    """Where a stored pass lives: ``AUDITKIT_CACHE/passes/<fingerprint>/<prefix><op>-<digest>.npz``,
    the digest hashing ``identity`` (everything that changes the value: the handle's own fingerprint
    parts, the op, the items key and the keyword JSON)."""
    digest = hashlib.blake2b(json.dumps(list(identity), sort_keys=True).encode(), digest_size=20).hexdigest()
    safe_op = re.sub(r"[^A-Za-z0-9_.-]", "_", op)[:op_chars]
    return cache_dir() / "passes" / fingerprint / f"{prefix}{safe_op}-{digest}.npz"


class PassMemo:
    """The one memo of every model handle (transformers, vLLM, API): a mixin over the handle's
    ``_cache`` (dict), ``stats`` (dict) and ``_disk_path(op, items_key, kw_json)`` (where a pass of this
    handle is stored on disk: each handle keys it by its own fingerprint)."""

    _cache: dict
    stats: dict

    def memo(self, op: str, items: Sequence, compute: Callable[[], Any], *, persist: bool = False, **kw) -> Any:
        """Cache ``compute()`` under (this model, ``op``, the content of ``items``, ``kw``).

        Plugins may cache their own passes here too, so two checks never run the same pass twice.
        With ``persist=True`` (and ``AUDITKIT_DISK_CACHE`` not 0) the value is also kept on disk, keyed
        by the model's fingerprint, so another run with the same weights and inputs skips the pass; the
        scoring primitives persist, a plugin's own op opts in (a value read back from disk is a
        new object, equal to but not identical with what another memo returned in an earlier run).
        ``kw`` must be JSON-serialisable: it is part of the key. Under data parallel every process takes
        the same road (a disk hit only when every process has the pass) and rank 0 alone writes.
        """
        key = memo_key(op, items, kw)
        if key in self._cache:
            self.stats["cache_hits"] = self.stats.get("cache_hits", 0) + 1
            return self._cache[key]
        from auditkit.distributed import world
        w = world()
        path = self._disk_path(*key) if persist and disk_cache_enabled() else None
        if path is not None:
            value = _disk_load(path)
            # every process must take the same road (computing is collective under data parallel)
            if w.all_agree(value is not _MISSING):
                self.stats["disk_hits"] = self.stats.get("disk_hits", 0) + 1
                self._cache[key] = value
                return value
        value = compute()
        self._cache[key] = value
        if path is not None and w.main:
            _disk_store(path, value)
        return value

    def _disk_path(self, op: str, items_key: str, kw_json: str) -> Path:  # pragma: no cover - abstract
        raise NotImplementedError


def _disk_load(path: Path):
    """The stored value, or ``_MISSING`` when absent or unreadable (a broken file is recomputed)."""
    if not path.exists():
        return _MISSING
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["__meta__"].tobytes().decode())
            if meta.get("format") != _DISK_FORMAT:
                return _MISSING
            arrays = {k: z[k] for k in z.files if k != "__meta__"}
        return _decode_value(meta["value"], arrays)
    except Exception:  # a truncated or foreign file is a cache miss, never an error
        return _MISSING


from auditkit.passes.attention import AttentionRequests  # noqa: E402
from auditkit.passes.distribution import DistributionRequests  # noqa: E402
from auditkit.passes.generation import GenerationRequests  # noqa: E402
from auditkit.passes.gradients import GradientRequests  # noqa: E402
from auditkit.passes.masked_lm import MaskedLMRequests  # noqa: E402
from auditkit.passes.next_token import NextTokenRequests  # noqa: E402
from auditkit.passes.prefix_tree import PrefixTreeRequests  # noqa: E402


@dataclass
class ModelHandle(DistributionRequests, MaskedLMRequests, AttentionRequests, GradientRequests, NextTokenRequests,
                  GenerationRequests, PrefixTreeRequests, PassMemo):
    """A loaded model with its tokenizer, task kind and a cache of scoring passes.

    The plain scoring requests live here; the others come from the mixins in :mod:`auditkit.passes`.
    """

    model: Any
    tokenizer: Any
    task: str
    source: str
    device: str = "cpu"
    batch_size: int = 32
    max_length: int = 256
    _cache: dict = field(default_factory=dict, repr=False)
    _fingerprint: str | None = field(default=None, repr=False)
    _tok_fp: str | None = field(default=None, repr=False)
    stats: dict = field(default_factory=lambda: {"forward_passes": 0, "cache_hits": 0, "disk_hits": 0},
                        repr=False)
    #: parameters drawn at load time because the checkpoint lacked them and the task's output reads
    #: them (a new classification head): see :func:`new_head_weights`
    new_weights: list[str] = field(default_factory=list)
    #: False: the suite said ``model.chat_template: false`` (prompts are sent as written)
    chat_template: bool = True

    # ------------------------------------------------------------------ identity
    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.model)
        return self._fingerprint

    def describe(self) -> dict:
        out = {"id": self.source, "fingerprint": self.fingerprint, "task": self.task,
               "architecture": type(self.model).__name__, "parameters": parameter_count(self.model),
               "dtype": dtype_name(float_dtype(self.model))}
        from auditkit.backends import loaded_precision
        precision = loaded_precision(self.model)
        if precision:  # what was audited is the quantized model: say so beside its identity
            out["quantization"] = precision
        return out

    @property
    def num_labels(self) -> int:
        return int(getattr(self.model.config, "num_labels", 0) or 0)

    def invalidate(self) -> None:
        """Forget cached passes and the fingerprint (after the weights changed)."""
        self._cache.clear()
        self._fingerprint = None
        self._tok_fp = None

    # ------------------------------------------------------------------ caching (memo: PassMemo)
    def _pass_config(self) -> dict:
        """Everything besides the weights that changes what a pass returns."""
        if self._tok_fp is None:
            tok = self.tokenizer
            h = hashlib.blake2b(digest_size=16)
            backend = getattr(tok, "backend_tokenizer", None)
            if backend is not None:  # its full definition, less the truncation/padding state calls change
                spec = json.loads(backend.to_str())
                spec.pop("truncation", None)
                spec.pop("padding", None)
                h.update(json.dumps(spec, sort_keys=True).encode())
            else:  # a slow tokenizer: its vocabulary and special tokens
                h.update(json.dumps(sorted(tok.get_vocab().items())).encode())
            h.update(json.dumps([type(tok).__name__, tok.padding_side, tok.truncation_side, tok.bos_token_id,
                                 tok.eos_token_id, tok.pad_token_id, getattr(tok, "add_bos_token", None),
                                 getattr(tok, "add_eos_token", None)], default=str).encode())
            self._tok_fp = h.hexdigest()
        try:  # the floating dtype (a 4-bit model's first parameter may be packed uint8 weights)
            dtype = str(float_dtype(self.model))
        except (AttributeError, TypeError):
            dtype = "?"
        return {"tokenizer": self._tok_fp, "task": self.task, "max_length": self.max_length, "dtype": dtype,
                "device": str(self.device).split(":")[0]}

    def _disk_path(self, op: str, items_key: str, kw_json: str) -> Path:
        from auditkit import __version__
        return pass_cache_path(self.fingerprint, op, [_DISK_FORMAT, __version__, self.fingerprint,
                                                      self._pass_config(), op, items_key, kw_json])

    def _put(self, op: str, items: Sequence, value: Any, **kw) -> None:
        """Store a by-product of another pass (in memory and, like the primitives, on disk)."""
        key = memo_key(op, items, kw)
        self._cache[key] = value
        from auditkit.distributed import world
        if disk_cache_enabled() and world().main:
            path = self._disk_path(*key)
            if not path.exists():
                _disk_store(path, value)

    # ------------------------------------------------------------------ batching
    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length,
                             add_special_tokens=True)
        return enc["input_ids"]

    def plan(self, ids: list[list[int]], batch_size: int | None = None) -> list[list[int]]:
        """The batches (lists of input indices) a pass runs: sorted by length, longest first.

        The plan depends only on the lengths and the batch size, never on the number of processes, so a
        data-parallel run computes exactly the batches one process would.
        """
        size = batch_size or self.batch_size
        order = sorted(range(len(ids)), key=lambda i: (-len(ids[i]), i))
        if reads_last_position(self.model, self.task):
            # its classifier reads the last position, padding or not (XLNet): batch equal lengths only,
            # so no row is ever padded
            groups: dict[int, list[int]] = {}
            for i in order:
                groups.setdefault(len(ids[i]), []).append(i)
            return [g[s:s + size] for g in groups.values() for s in range(0, len(g), size)]
        return [order[s:s + size] for s in range(0, len(order), size)]

    def tensors(self, ids: list[list[int]], idx: list[int], *, device=None):
        """``(input_ids, attention_mask)`` of the rows ``idx``, right-padded, on the handle's device."""
        import torch
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id or 0
        width = max(len(ids[i]) for i in idx)
        inp = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            inp[row, :len(ids[i])] = torch.tensor(ids[i], dtype=torch.long)
            mask[row, :len(ids[i])] = 1
        dev = device if device is not None else self.device
        return inp.to(dev), mask.to(dev)

    def map_batches(self, ids: list[list[int]], fn: Callable, *, batch_size: int | None = None,
                    costs: Sequence[float] | None = None) -> list:
        """The engine's one batch loop: ``fn(idx, input_ids, attention_mask)`` over :meth:`plan`'s batches.

        ``fn`` returns one value per row of its batch (in ``idx`` order), as numpy or plain Python: never
        a tensor that holds the batch's activations. The values come back in input order. Under data
        parallel (:mod:`auditkit.distributed`) the batches are dealt to the processes by their padded size
        (:meth:`~auditkit.distributed.World.deal`) and the answers gathered, so every process gets the
        whole list. ``costs`` (one per input) replaces the padded size as the work an input stands for where
        its length does not tell it (a trie unit holds many rows). Every request of the handle runs here; a
        plugin with a pass of its own should too, to be split, counted and bounded by the batch alike.
        """
        from auditkit.distributed import world
        w = world()
        local: dict[int, Any] = {}
        plan = self.plan(ids, batch_size)
        if costs is None:  # a batch's work: its padded size
            mine = w.deal([len(idx) * max(len(ids[i]) for i in idx) for idx in plan])
        else:
            mine = w.deal([sum(costs[i] for i in idx) for idx in plan])
        for idx, ours in zip(plan, mine):
            if not ours:
                continue
            inp, mask = self.tensors(ids, idx)
            values = fn(idx, inp, mask)
            if len(values) != len(idx):
                raise RuntimeError(f"a batch function returned {len(values)} values for {len(idx)} rows")
            local.update(zip(idx, values))
        merged = w.gather(local)
        return [merged[i] for i in range(len(ids))]

    def batches(self, ids: list[list[int]]):
        """Yield (indices, input_ids, attention_mask) batches sorted by length (right padding), on the device.

        Runs every batch in this process; :meth:`map_batches` is the same loop, split across processes.
        """
        for idx in self.plan(ids):
            inp, mask = self.tensors(ids, idx)
            yield idx, inp, mask

    def _forward(self, texts: Sequence[str] | None, *, attentions: bool = False, hidden: bool = False,
                 ids: list[list[int]] | None = None) -> dict:
        """One batched pass; fills the logits cache and whichever extra outputs were asked for.

        Causal LMs: the LM head and the log-softmax run only at the positions that predict a real token
        (not the last one, not the padding): see :meth:`_lm_logits`.
        """
        import torch
        ids = ids if ids is not None else self._encode(texts)
        n = len(ids)
        if attentions:
            self.ensure_eager()
        self.stats["forward_passes"] += 1
        lm = self.task == "causal-lm"
        s2s = self.task == "seq2seq-lm"
        extra = {"output_attentions": attentions, "output_hidden_states": hidden}

        def run(idx, inp, mask):
            with torch.inference_mode():
                if s2s:  # encoder-decoders: the encoder's attentions and hidden states (no decoder pass)
                    out = self.model.get_encoder()(input_ids=inp, attention_mask=mask, **extra)
                    logits = None
                elif lm:
                    # per-token log-probs of each next token; keep only these, not full vocab logits
                    per_row, out = self._token_logprob_rows(inp, mask, **extra)
                else:
                    out = self.model(input_ids=inp, attention_mask=mask, **extra)
                    logits = out.logits.float()
                rows = []
                for row, i in enumerate(idx):
                    length = len(ids[i])
                    first = None if s2s else per_row[row].cpu().numpy() if lm else logits[row].cpu().numpy()
                    att = torch.stack([a[row, :, :length, :length].float() for a in out.attentions]).cpu().numpy() \
                        if attentions else None
                    hid = None
                    if hidden:
                        m = mask[row, :length].unsqueeze(-1).float()
                        hid = torch.stack([(h[row, :length].float() * m).sum(0) / m.sum()
                                           for h in out.hidden_states]).cpu().numpy()
                    rows.append((first, att, hid))
                return rows

        rows = self.map_batches(ids, run)
        result: dict = {"ids": ids}
        if lm:
            result["token_logprobs"] = [r[0] for r in rows]
        elif not s2s:
            result["logits"] = np.stack([r[0] for r in rows]) if n else np.zeros((0, self.num_labels))
        if attentions:
            result["attentions"] = [r[1] for r in rows]
        if hidden:
            result["hidden"] = np.stack([r[2] for r in rows], axis=1) if n else None
        return result

    #: config attributes of models that rescale or cap their logits after the LM head
    _LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "logit_softcapping",
                             "output_multiplier_scale", "mup_width_multiplier")
    #: per model class: how the LM head is applied to some positions only ("keep", "hidden" or "full")
    _head_modes = {}  # noqa: RUF012  (a class attribute, not a dataclass field)

    def _head_mode(self) -> str:
        """How :meth:`_lm_logits` applies the LM head to the needed positions only.

        ``keep``: the model's forward takes transformers' ``logits_to_keep`` and slices with
        ``slice_logits_to_keep`` (a boolean ``[B, T]`` mask keeps exactly those positions, and the model's
        own post-processing, e.g. Gemma's soft-capping, still applies). ``hidden``: no ``logits_to_keep``, but
        the model is a backbone (``base_model``) plus ``get_output_embeddings()`` with no known logit
        post-processing: the head runs on the gathered hidden states. ``full``: anything else computes all
        logits and gathers the positions afterwards.
        """
        import inspect
        key = self._head_key()
        mode = self._head_modes.get(key)
        if mode is None:
            cls, post = key
            mode = "full"
            try:
                fwd = cls.forward
                if "logits_to_keep" in inspect.signature(fwd).parameters and \
                        "slice_logits_to_keep" in inspect.getsource(fwd):
                    mode = "keep"
            except (TypeError, OSError, ValueError):
                pass
            if mode == "full":
                base = getattr(self.model, "base_model", None)
                head = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
                if not post and head is not None and base is not None and base is not self.model:
                    mode = "hidden"
            self._head_modes[key] = mode
        return mode

    def _head_key(self) -> tuple:
        """What :meth:`_head_mode` depends on: the model's class, and whether its config asks for logit
        post-processing (two models of one class may differ there, so the class alone is not the key)."""
        cfg = getattr(self.model, "config", None)
        post = any(getattr(cfg, a, None) not in (None, 1, 1.0) for a in self._LOGIT_POSTPROCESSING)
        return type(self.model), post

    def _lm_logits(self, inp, mask, keep, **extra):
        """``(logits [K, V], outputs)``: the LM's logits at the ``K`` True positions of the boolean ``keep``
        ``[B, T]`` (row-major order), the LM head applied only there (:meth:`_head_mode`); no KV cache."""
        kw = {"input_ids": inp, "attention_mask": mask, **self._no_kv_cache(), **extra}
        mode = self._head_mode()
        k = int(keep.sum())
        if mode == "keep":
            out = self.model(**kw, logits_to_keep=keep)
            if out.logits.dim() == 2 and out.logits.shape[0] == k:
                return out.logits, out
            self._head_modes[self._head_key()] = "full"  # not the slicing we expected: never again
        elif mode == "hidden":
            out = self.model.base_model(**kw)
            last = getattr(out, "last_hidden_state", None)
            if last is not None:
                return self.model.get_output_embeddings()(last[keep]), out
            self._head_modes[self._head_key()] = "full"  # a wrapper whose base_model is no backbone
        out = self.model(**kw)
        return out.logits[keep], out

    def _next_token_logits(self, inp, mask, **extra):
        """``(logits [K, V], targets [K], counts, outputs)`` of a right-padded causal-LM batch: the logits at
        the ``K`` positions that predict a real token (``t < length - 1``, no padding; row-major), the token
        each predicts, and how many of them each row has (for ``torch.split``)."""
        import torch
        lengths = mask.sum(1)
        pos = torch.arange(inp.shape[1], device=inp.device)
        keep = pos[None, :] < (lengths - 1)[:, None]  # position t predicts token t + 1
        logits, out = self._lm_logits(inp, mask, keep, **extra)
        return logits, inp[:, 1:][keep[:, :-1]], (lengths - 1).clamp(min=0).tolist(), out

    def _token_logprob_rows(self, inp, mask, **extra):
        """``(per-row next-token log-probs (float32 tensors), outputs)`` of a right-padded causal-LM batch."""
        import torch
        logits, target, counts, out = self._next_token_logits(inp, mask, **extra)
        return torch.split(self._target_logprobs(logits, target), counts), out

    @staticmethod
    def _target_logprobs(logits, target):
        """``log softmax(logits)[k, target[k]]`` in float32: each row's log-prob of its target token."""
        import torch
        return torch.log_softmax(logits.float(), dim=-1).gather(-1, target[:, None])[:, 0]

    def _no_kv_cache(self) -> dict:
        """Scoring passes never decode further: building a KV cache is wasted work (causal and seq2seq LMs)."""
        return {"use_cache": False} if self.task in ("causal-lm", "seq2seq-lm") else {}

    def score_ids(self, ids: list[list[int]]):
        """Score already-tokenized sequences: classifier logits ``[N, C]`` or per-token log-probs (LMs; a
        seq2seq LM scores each sequence in the decoder, the encoder reading the prefix token alone)."""
        if self.task == "seq2seq-lm":
            prefix = self._prefix_token_id()
            return self._score_seq2seq([([prefix], [int(t) for t in x]) for x in ids])["logprobs"]
        res = self._forward(None, ids=ids)
        return res["token_logprobs"] if self.task == "causal-lm" else res["logits"]

    def ensure_eager(self) -> None:
        """Switch to eager attention (sdpa returns no attention weights)."""
        cfg = self.model.config
        if getattr(cfg, "_attn_implementation", "eager") != "eager":
            self.model.set_attn_implementation("eager")

    def _store_pass(self, texts: Sequence[str], res: dict) -> None:
        if self.task == "seq2seq-lm":  # an encoder pass leaves no scores behind
            return
        key = "token_logprobs" if self.task == "causal-lm" else "class_logits"
        self._put(key, texts, res["token_logprobs" if self.task == "causal-lm" else "logits"])

    # ------------------------------------------------------------------ primitives
    def class_logits(self, texts: Sequence[str]) -> np.ndarray:
        """Classifier logits ``[N, C]`` (sequence-classification models)."""
        self._require("sequence-classification", "class_logits")
        return self.memo("class_logits", texts, lambda: self._forward(texts)["logits"], persist=True)

    def token_logprobs(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Log-prob of every token given its prefix. Causal LMs: the first token is not scored. Seq2seq LMs:
        lm-eval's ``loglikelihood_rolling`` for ``backend="seq2seq"`` (one window, as the text is cut at
        ``max_length`` tokens): the encoder reads the prefix token (BOS, else EOS) alone and the decoder scores
        every token of ``enc(text)`` (the tokenizer's special tokens included), the first one too."""
        self._require_lm("token_logprobs")
        if self.task == "seq2seq-lm":
            def compute():
                prefix = self._prefix_token_id()
                return self._score_seq2seq([([prefix], x) for x in self._encode(texts)])["logprobs"]
            return self.memo("token_logprobs", texts, compute, persist=True)
        return self.memo("token_logprobs", texts, lambda: self._forward(texts)["token_logprobs"], persist=True)

    def _tok_encode(self, texts: list[str], add_special_tokens: bool | None = None) -> list[list[int]]:
        """:func:`tok_encode` with this handle's tokenizer."""
        return tok_encode(self.tokenizer, texts, add_special_tokens)

    def _prefix_token_id(self) -> int:
        """:func:`prefix_token_id` of this handle's tokenizer."""
        return prefix_token_id(self.tokenizer)

    def encode_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        """:func:`encode_pairs` with this handle's tokenizer and task."""
        return encode_pairs(self.tokenizer, self.task, pairs)

    def _scorable(self, ctx, cont, side: str) -> tuple[list[int], list[int]]:
        """A (context, continuation) of token ids a loglikelihood request can score, as ints: a non-empty
        continuation no longer than max_length needs at least one ``side`` token (lm-eval asserts the same)."""
        ctx, cont = [int(t) for t in ctx], [int(t) for t in cont]
        if cont and len(cont) > self.max_length:
            raise AuditInputError(f"a continuation of {len(cont)} tokens is longer than max_length "
                                  f"({self.max_length})", place="model.max_length",
                                  fix="raise model.max_length or shorten the continuation")
        if cont and not ctx:
            raise AuditInputError(f"a continuation to score needs at least one {side} token",
                                  fix="give a context (an empty context string reads the BOS/EOS token)")
        return ctx, cont

    def _score_token_pairs(self, reqs: list[tuple[list[int], list[int]]]) -> dict:
        """lm-eval's ``_loglikelihood_tokens`` (causal) on the engine, for token-id pairs ``(ctx, cont)``.

        The model reads ``(ctx + cont)[-(max_length + 1):][:-1]``, so at most ``max_length`` tokens (lm-eval's
        ``max_length`` is the handle's); the log-softmax and the LM head run only at the last ``len(cont)``
        positions (:meth:`_lm_logits`). Requests that read the same input (e.g. the single-token choices of
        one question) share one row, which is scored at the most positions any of them needs. Returns
        ``{"logprobs": [float32 array per request], "greedy": bool array}`` (greedy as lm-eval's is_greedy:
        every continuation token is the argmax). An empty continuation scores an empty array.
        """
        import torch
        limit = self.max_length + 1
        n = len(reqs)
        logprobs: list = [None] * n
        greedy = np.ones(n, dtype=bool)
        rows: dict[tuple, int] = {}
        inputs: list[list[int]] = []
        need: list[int] = []
        members: list[list[tuple[int, list[int]]]] = []
        for i, (ctx, cont) in enumerate(reqs):
            ctx, cont = self._scorable(ctx, cont, "context")
            if not cont:
                logprobs[i] = np.zeros(0, dtype=np.float32)
                continue
            inp = tuple((ctx + cont)[-limit:][:-1])
            j = rows.get(inp)
            if j is None:
                j = rows[inp] = len(inputs)
                inputs.append(list(inp))
                need.append(0)
                members.append([])
            need[j] = max(need[j], len(cont))
            members[j].append((i, cont))
        if inputs:
            self.stats["forward_passes"] += 1

            def run(idx, inp, mask):
                with torch.inference_mode():
                    lengths = mask.sum(1)
                    pos = torch.arange(inp.shape[1], device=inp.device)[None, :]
                    first = lengths - torch.tensor([need[j] for j in idx], device=inp.device)
                    keep = (pos < lengths[:, None]) & (pos >= first[:, None])
                    logits, _ = self._lm_logits(inp, mask, keep)
                    lp = torch.log_softmax(logits.float(), dim=-1)
                    best = lp.argmax(-1)
                    out = []
                    start = 0
                    for j in idx:
                        stop = start + need[j]
                        vals = []
                        for _, cont in members[j]:
                            t = torch.tensor(cont, device=lp.device)
                            span = slice(stop - len(cont), stop)
                            vals.append((lp[span].gather(-1, t[:, None])[:, 0].cpu().numpy(),
                                         bool((best[span] == t).all())))
                        out.append(vals)
                        start = stop
                    return out

            for j, vals in enumerate(self.map_batches(inputs, run)):
                for (i, _), (v, g) in zip(members[j], vals):
                    logprobs[i], greedy[i] = v, g
        return {"logprobs": logprobs, "greedy": greedy}

    def _score_pairs(self, reqs: list[tuple[list[int], list[int]]]) -> dict:
        """:meth:`_score_token_pairs` (causal) or :meth:`_score_seq2seq` (encoder-decoders)."""
        return self._score_seq2seq(reqs) if self.task == "seq2seq-lm" else self._score_token_pairs(reqs)

    def _score_seq2seq(self, reqs: list[tuple[list[int], list[int]]]) -> dict:
        """lm-eval's ``_loglikelihood_tokens`` for ``backend="seq2seq"`` on the engine: for token-id pairs
        ``(encoder input, decoder target)`` the encoder reads ``ctx[-max_length:]`` (right-padded, masked) and
        the decoder is teacher-forced on the target: its input is the target shifted right behind the decoder
        start token (the model's own ``prepare_decoder_input_ids_from_labels``, as ``labels=`` does), so the
        log-prob of every target token is read, the first one included. Batches are planned on the encoder
        inputs by :meth:`map_batches`; each batch's decoder targets are right-padded (the decoder is causal, so
        padding after a row's last token changes none of its scores); no KV cache. Returns
        ``{"logprobs": [float32 array per request], "greedy": bool array}`` as :meth:`_score_token_pairs`."""
        import torch
        n = len(reqs)
        logprobs: list = [None] * n
        greedy = np.ones(n, dtype=bool)
        enc, dec, owner = [], [], []
        for i, (ctx, cont) in enumerate(reqs):
            ctx, cont = self._scorable(ctx, cont, "encoder")
            if not cont:
                logprobs[i] = np.zeros(0, dtype=np.float32)
                continue
            enc.append(ctx[-self.max_length:])
            dec.append(cont)
            owner.append(i)
        if enc:
            self.stats["forward_passes"] += 1
            model = self.model

            def run(idx, inp, mask):
                width = max(len(dec[j]) for j in idx)
                labels = torch.full((len(idx), width), -100, dtype=torch.long)
                for row, j in enumerate(idx):
                    labels[row, :len(dec[j])] = torch.tensor(dec[j], dtype=torch.long)
                labels = labels.to(inp.device)
                with torch.inference_mode():
                    dec_in = model.prepare_decoder_input_ids_from_labels(labels=labels)
                    logits = model(input_ids=inp, attention_mask=mask, decoder_input_ids=dec_in,
                                   use_cache=False).logits
                    out = []
                    for row, j in enumerate(idx):
                        lp = torch.log_softmax(logits[row, :len(dec[j])].float(), dim=-1)
                        t = labels[row, :len(dec[j])]
                        out.append((lp.gather(-1, t[:, None])[:, 0].cpu().numpy(),
                                    bool((lp.argmax(-1) == t).all())))
                    return out

            for i, (v, g) in zip(owner, self.map_batches(enc, run)):
                logprobs[i], greedy[i] = v, g
        return {"logprobs": logprobs, "greedy": greedy}

    def continuation_logprobs(self, pairs: Sequence[tuple[str, str]], *, greedy: bool = False) -> list:
        """Per-token log-probs of ``continuation`` given ``context``, as lm-eval's loglikelihood.

        Tokenized like lm-eval's ``_encode_pair`` (:meth:`encode_pairs`): trailing spaces of the context move
        to the continuation, ``cont = enc(ctx + cont)[len(enc(ctx)):]``, and an empty context reads the BOS
        (else EOS) token. The model reads ``(ctx + cont)[:-1]`` left-truncated to ``max_length`` tokens, as
        lm-eval's HFLM with ``max_length`` = the handle's; the LM head runs only at the continuation's
        positions, and choices reading the same input (single-token continuations of one context) share one
        row. With ``greedy=True`` each item is ``(log-probs, is_greedy)`` (lm-eval's second answer).
        """
        self._require_lm("continuation_logprobs")
        pairs = [tuple(p) for p in pairs]
        res = self.memo("continuation_logprobs", pairs,
                        lambda: self._score_pairs(self.encode_pairs(pairs)), persist=True)
        if greedy:
            return [(lp, bool(g)) for lp, g in zip(res["logprobs"], res["greedy"])]
        return list(res["logprobs"])

    def continuation_logprobs_ids(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                                  greedy: bool = False) -> list:
        """:meth:`continuation_logprobs` for pairs already tokenized: ``(context ids, continuation ids)``, as
        lm-eval's ``_loglikelihood_tokens`` takes them (e.g. the rolling windows of a perplexity task). For a
        seq2seq LM the context ids are the encoder's input and the continuation ids the decoder's target."""
        self._require_lm("continuation_logprobs_ids")
        reqs = [([int(t) for t in c], [int(t) for t in x]) for c, x in pairs]
        res = self.memo("continuation_logprobs_ids", reqs, lambda: self._score_pairs(reqs), persist=True)
        if greedy:
            return [(lp, bool(g)) for lp, g in zip(res["logprobs"], res["greedy"])]
        return list(res["logprobs"])

    def attentions(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Per example ``[layers, heads, T, T]`` attention maps (switches to eager attention)."""
        def compute():
            res = self._forward(texts, attentions=True)
            self._store_pass(texts, res)
            return res["attentions"]
        return self.memo("attentions", texts, compute, persist=True)

    def hidden_states(self, texts: Sequence[str]) -> np.ndarray:
        """Mean-pooled hidden states ``[layers+1, N, D]`` (embeddings first)."""
        def compute():
            res = self._forward(texts, hidden=True)
            self._store_pass(texts, res)
            return res["hidden"]
        return self.memo("hidden_states", texts, compute, persist=True)

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """The token ids each text is scored with (for labelling attention maps)."""
        return self.memo("token_ids", texts, lambda: self._encode(texts))

    def _require(self, task: str, op: str) -> None:
        if self.task != task:
            raise UnservedRequest(f"{op} needs a {task} model but {self.source} is loaded as {self.task}")



class UnservedRequest(TypeError):
    """A request the loaded model cannot serve (its task, or its backend). The runner checks each check's
    ``tasks`` and ``needs`` before anything loads, so reaching this is the asking check's bug (a plugin that
    did not declare them): that check is ERROR, with this message, and the others run."""

# ---------------------------------------------------------------------- lm-eval's tokenization

def prefix_token_id(tokenizer) -> int:
    """lm-eval's ``prefix_token_id``: what an empty context reads (BOS, else EOS)."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def tok_encode(tokenizer, texts: list[str], add_special_tokens: bool | None = None) -> list[list[int]]:
    """lm-eval's ``HFLM.tok_encode`` over a list (one batched call): the tokenizer's own special tokens
    unless ``add_special_tokens`` is given, and none for a text that already starts with the prefix token
    (BOS, else EOS) as text."""
    if not texts:
        return []
    if add_special_tokens is not None:
        return tokenizer(list(texts), add_special_tokens=add_special_tokens)["input_ids"]
    prefix = tokenizer.decode(prefix_token_id(tokenizer))
    plain = [i for i, t in enumerate(texts) if not (prefix and t.startswith(prefix))]
    out: list = [None] * len(texts)
    for i, ids in zip(plain, tokenizer([texts[i] for i in plain])["input_ids"] if plain else []):
        out[i] = ids
    rest = [i for i in range(len(texts)) if out[i] is None]
    for i, ids in zip(rest, tokenizer([texts[i] for i in rest], add_special_tokens=False)["input_ids"]
                      if rest else []):
        out[i] = ids
    return out


def encode_pairs(tokenizer, task: str, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """``(context ids, continuation ids)`` of each pair, exactly as lm-eval's ``TemplateLM.loglikelihood``
    tokenizes them (``_encode_pair``): trailing spaces of the context move to the continuation,
    ``cont = enc(ctx + cont)[len(enc(ctx)):]`` (seq2seq: ``enc(ctx)`` and ``enc(cont)`` without special
    tokens, encoded apart); an empty context is the prefix token (BOS, else EOS) before
    ``enc(cont)`` without special tokens (or the continuation's own first token when that is the prefix)."""
    prefix = prefix_token_id(tokenizer)
    moved = []
    s2s = task == "seq2seq-lm"
    for ctx, cont in pairs:
        n_sp = len(ctx) - len(ctx.rstrip())
        moved.append((ctx[:-n_sp], ctx[-n_sp:] + cont) if ctx and n_sp else (ctx, cont))
    full = [i for i, (ctx, _) in enumerate(moved) if ctx != ""]
    empty = [i for i, (ctx, _) in enumerate(moved) if ctx == ""]
    ctx_enc = tok_encode(tokenizer, [moved[i][0] for i in full])
    cont_enc = tok_encode(tokenizer, [moved[i][1] for i in empty], add_special_tokens=False)
    out: list = [None] * len(pairs)
    if s2s:  # lm-eval's seq2seq _encode_pair: the two parts encoded apart, the continuation without specials
        conts = tok_encode(tokenizer, [moved[i][1] for i in full], add_special_tokens=False)
        for i, c, x in zip(full, ctx_enc, conts):
            out[i] = (c, x)
    else:
        for i, c, w in zip(full, ctx_enc, tok_encode(tokenizer, [moved[i][0] + moved[i][1] for i in full])):
            out[i] = (c, w[len(c):])
    for i, c in zip(empty, cont_enc):
        out[i] = ([prefix], c) if c[:1] != [prefix] else (c[:1], c[1:])
    return out


def auto_model_class(task: str):
    """transformers' Auto class that builds a model for ``task`` (a classifier for anything but the LMs)."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification
    return {"causal-lm": AutoModelForCausalLM, "seq2seq-lm": AutoModelForSeq2SeqLM}.get(
        task, AutoModelForSequenceClassification)


def load_dtype(device: str, requested: str = "auto"):
    """The dtype weights load in: ``model.dtype`` when given, else (``auto``) bf16 on CUDA and fp32 elsewhere."""
    import torch
    if requested and requested != "auto":
        return getattr(torch, requested)
    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


def dtype_name(dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``: a dtype as ``model.dtype`` and results.json spell it."""
    return str(dtype).removeprefix("torch.")


def float_dtype(model):
    """The dtype of a model's first floating-point parameter (what it was loaded in; k-bit weights skipped)."""
    import torch
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def unpacked_numel(p) -> int:
    """Values a parameter holds as trained: a bitsandbytes 4-bit weight stores two values per byte of its
    ``quant_storage`` (``Params4bit.numel()`` counts the packed bytes), the rule of transformers'
    ``num_parameters``."""
    k = p.numel()
    if type(p).__name__ == "Params4bit":
        storage = getattr(p, "quant_storage", None)
        k *= 2 * (getattr(storage, "itemsize", 1) or 1)
    return int(k)


def parameter_count(model) -> int:
    """Parameters of ``model`` as trained (tied ones once), 4-bit weights unpacked (:func:`unpacked_numel`)."""
    return sum(unpacked_numel(p) for p in model.parameters())


# ---------------------------------------------------------------------- loading

def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or os.sep in spec.strip("/") and not _HUB_ID.match(spec)


def resolve_source(spec: str, registry, *, file: str | None = None, place: str = "model.base") -> str:
    """Turn ``builtin:NAME``, a local dir or a hub id into something from_pretrained takes."""
    if spec.startswith("builtin:"):
        name = spec[len("builtin:"):]
        sources = registry.model_sources
        if name not in sources:
            from difflib import get_close_matches
            near = get_close_matches(name, list(sources), n=1)
            hint = f"did you mean builtin:{near[0]}?" if near else f"known: {', '.join(sorted(sources))}"
            raise AuditInputError(f"unknown built-in model {spec!r}", file=file, place=place, fix=hint)
        return str(sources[name].fn(cache_dir()))
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise AuditInputError(f"{spec} is a file, not a model directory", file=file, place=place,
                                  fix="point to the folder holding config.json")
        if not ((path / "config.json").exists() or (path / "adapter_config.json").exists()):
            raise AuditInputError(f"{spec} is not a model directory (no config.json or adapter_config.json)",
                                  file=file, place=place, fix="point to a folder written by save_pretrained")
        return str(path)
    if _HUB_ID.match(spec) and not spec.startswith(("./", "../")):
        return spec
    raise AuditInputError(f"model directory {spec} does not exist", file=file, place=place,
                          fix="check the path, or use a hub id (owner/name) or builtin:NAME")


def _quiet_transformers() -> None:
    """transformers' load reports and progress bars are noise in an audit log."""
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


_PICKLE_GLOBS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_folder(folder: Path, spec: str, *, allow_pickle: bool, file: str | None, place: str,
                  what: str = "") -> None:
    """Before from_pretrained: the pickle guard, every safetensors header, and config files that parse.

    ``what`` names the folder's role in messages ("the adapter's base model ..."). A folder holding
    pickle checkpoints (.bin/.pt/...) and no .safetensors is refused unless ``allow_pickle``: loading a
    pickle can run code. This covers model folders, PEFT adapter folders (``adapter_model.bin``) and
    the base model an adapter names. Each ``*.safetensors`` header is read with ``safe_open``, which
    refuses a truncated file or garbage bytes, so a corrupt checkpoint is named before any load.
    """
    label = what or spec
    if not allow_pickle:
        # PEFT reads adapter_model.safetensors when there is one and else adapter_model.bin, whatever
        # other files lie beside them; transformers is told use_safetensors for model folders
        has_st = (folder / "adapter_model.safetensors").exists() if (folder / "adapter_config.json").exists() \
            else any(folder.glob("*.safetensors"))
        pickles = sorted(p.name for g in _PICKLE_GLOBS for p in folder.glob(g))
        if pickles and not has_st:
            raise AuditInputError(f"{label} holds only pickle checkpoints ({', '.join(pickles[:3])}), which can "
                                  "run code on load", file=file, place=place,
                                  fix="convert it to safetensors, or set model.allow_pickle: true if you trust it")
    for name in ("config.json", "adapter_config.json"):
        cfg = folder / name
        if not cfg.is_file():
            continue
        try:
            obj = json.loads(cfg.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise AuditInputError(f"{cfg} is not UTF-8 (byte offset {exc.start})", file=file, place=place,
                                  fix="the model folder is damaged: save or copy it again") from None
        except json.JSONDecodeError as exc:
            raise AuditInputError(f"{cfg} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})",
                                  file=file, place=place,
                                  fix="the model folder is damaged: save or copy it again") from None
        except OSError as exc:
            raise AuditInputError(f"cannot read {cfg} ({exc.strerror or exc})", file=file, place=place) from None
        if not isinstance(obj, dict):
            raise AuditInputError(f"{cfg} must hold a JSON object, not {type(obj).__name__}", file=file, place=place,
                                  fix="the model folder is damaged: save or copy it again")
    from safetensors import safe_open
    for st in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(st), framework="pt") as fh:
                fh.keys()
        except Exception as exc:  # SafetensorError: header too small/large, incomplete metadata, bad JSON
            raise AuditInputError(f"corrupt safetensors file {st} ({_first_line(exc)})", file=file, place=place,
                                  fix="the file is truncated or not safetensors: save or copy the model again") \
                from None


def _adapter_supplied(location: Path) -> set[str]:
    """Names of full weights an adapter file carries (PEFT ``modules_to_save``, e.g. a LoRA classifier head).

    PEFT saves them as ``base_model.model.<name>`` (a LoRA factor is ``...<module>.lora_A.weight``, which
    names no base parameter), so stripping the prefix gives the base model's parameter name.
    """
    names: set[str] = set()
    st = location / "adapter_model.safetensors"
    if st.exists():
        from safetensors import safe_open
        with safe_open(str(st), framework="pt") as fh:
            keys = list(fh.keys())
    else:
        from peft.utils import load_peft_weights
        keys = list(load_peft_weights(str(location), device="cpu"))
    for k in keys:
        k = k[len("base_model.model."):] if k.startswith("base_model.model.") else k
        names.add(re.sub(r"\.modules_to_save(\.[^.]+)?(?=\.)", "", k))
    return names


def new_head_weights(model, tokenizer, missing) -> list[str]:
    """The newly initialised parameters (``missing``) that the task's output depends on, sorted.

    ``missing`` are the checkpoint's missing keys from ``from_pretrained(output_loading_info=True)``:
    parameters transformers drew at random (a causal LM loaded as a classifier: GPT-2's ``score``; a
    classifier folder without its head: ``classifier.*``). Which of them matter is decided by autograd,
    not by name: one backward pass from the logits of a short input to those parameters only; a drawn
    parameter the output does not reach (no gradient path) is harmless and left out. BERT's pooler is
    therefore counted exactly when it is used: ``BertForSequenceClassification`` feeds the pooled
    ``[CLS]`` (pooler dense + tanh) into ``classifier``, so a pooler drawn at load is as random as the
    head (``builtin:tiny-bert`` ships ``BertForMaskedLM`` weights: no pooler, no classifier, so both are
    new; all-MiniLM-L6-v2 ships a pooler, so only ``classifier.*`` is). Classifiers that do not read a
    pooler (RoBERTa, DistilBERT, ELECTRA) never build one. Should the probe itself fail, every missing
    parameter is reported.
    """
    import torch
    params = dict(model.named_parameters())
    names = sorted(n for n in set(missing) if n in params)
    if not names:
        return []
    tensors = [params[n] for n in names]
    before = [t.requires_grad for t in tensors]
    try:
        ids = tokenizer("a test", add_special_tokens=True)["input_ids"] or [0]
        device = next(model.parameters()).device
        inp = torch.tensor([ids], device=device)
        for t in tensors:
            t.requires_grad_(True)
        # an encoder-decoder's decoder reads the same ids (any decoder input reaches its LM head)
        dec = {"decoder_input_ids": inp} if getattr(model.config, "is_encoder_decoder", False) else {}
        with torch.enable_grad():
            logits = model(input_ids=inp, attention_mask=torch.ones_like(inp), **dec).logits
            grads = torch.autograd.grad(logits.float().sum(), tensors, allow_unused=True)
        return [n for n, g in zip(names, grads) if g is not None]
    except Exception:  # the probe is advisory: keep them all rather than hide a random head
        return names
    finally:
        for t, rg in zip(tensors, before):
            t.requires_grad_(rg)


def _num_labels_in(folder: Path) -> int | None:
    try:
        cfg = json.loads((folder / "config.json").read_text())
        return len(cfg["id2label"]) if isinstance(cfg.get("id2label"), dict) else cfg.get("num_labels")
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _load_error(exc: Exception, spec: str, task: str, folder: Path | None, num_labels: int | None,
                file: str | None, place: str, what: str = "model") -> AuditInputError:
    """An exception from from_pretrained on a given model, as bad input naming what to fix."""
    import pickle
    first = _first_line(exc)
    name = type(exc).__name__
    if name == "SafetensorError":
        return AuditInputError(f"could not load {what} {spec!r}: corrupt safetensors file ({first})", file=file,
                               place=place, fix="save or copy the model again")
    if isinstance(exc, RuntimeError) and ("mismatch" in first or "ignore_mismatched_sizes" in first):
        have = _num_labels_in(folder) if folder is not None else None
        hint = (f"the checkpoint's head has {have} labels but model.num_labels is {num_labels}"
                if have and num_labels and have != num_labels else "the weights do not fit the model's shapes")
        return AuditInputError(f"could not load {what} {spec!r} as {task}: {hint}", file=file, place=place,
                               fix="set model.num_labels to the checkpoint's number of labels, or leave it out")
    if isinstance(exc, (pickle.UnpicklingError, EOFError)):
        return AuditInputError(f"could not load {what} {spec!r}: corrupt pickle checkpoint ({name}: {first})",
                               file=file, place=place, fix="save or copy the model again")
    if isinstance(exc, ImportError):
        return AuditInputError(f"could not load {what} {spec!r}: a package it needs is missing ({first})", file=file,
                               place=place, fix="install it")
    if isinstance(exc, OSError):
        return AuditInputError(f"could not load {what} {spec!r}: {first}", file=file, place=place,
                               fix="check the path or hub id; offline machines need a local dir or builtin:NAME")
    # ValueError, config validation errors, a config that cannot build the model (AttributeError,
    # TypeError, a negative dimension...): the folder's content, not auditkit, is at fault
    return AuditInputError(f"could not load {what} {spec!r} as {task}: {name}: {first}", file=file, place=place,
                           fix="check model.task and that the folder holds a complete, valid model")


@dataclass
class ModelSource:
    """Where a model spec points: ``location`` (a folder or hub id); for a PEFT adapter, its base too."""

    location: str
    adapter: bool
    base_spec: str
    base_location: str


def check_model_source(spec: str, registry, *, allow_pickle: bool = False, file: str | None = None,
                       place: str = "model.base") -> ModelSource:
    """Resolve ``spec`` and check its folder (and an adapter's base folder) without loading any weights.

    Cheap (file headers only), so a runner can call it for every model before the first one loads:
    a missing folder, a pickle-only checkpoint without ``allow_pickle``, a corrupt safetensors file, a
    config.json or adapter_config.json that is not a JSON object, or an adapter that names no base,
    are all :class:`AuditInputError` naming ``file``/``place``.
    """
    location = resolve_source(spec, registry, file=file, place=place)
    local = Path(location)
    if not local.is_dir():
        return ModelSource(location, False, spec, location)
    adapter = (local / "adapter_config.json").exists()
    _check_folder(local, spec, allow_pickle=allow_pickle, file=file, place=place,
                  what=f"adapter {spec}" if adapter else "")
    if not adapter:
        return ModelSource(location, False, spec, location)
    cfg = json.loads((local / "adapter_config.json").read_text(encoding="utf-8"))
    base_spec = cfg.get("base_model_name_or_path")
    if not isinstance(base_spec, str) or not base_spec.strip():
        raise AuditInputError(f"the adapter {spec} names no base model (base_model_name_or_path in "
                              "adapter_config.json)", file=file, place=place,
                              fix="set base_model_name_or_path to a model folder, hub id or builtin:NAME")
    if not base_spec.startswith("builtin:"):
        bp = Path(base_spec).expanduser()
        if not bp.is_absolute() and not bp.exists() and (local / bp).exists():
            base_spec = str(local / bp)  # a path relative to the adapter folder
    try:
        base_location = resolve_source(base_spec, registry, file=file, place=place)
    except AuditInputError as exc:
        exc.message = f"the base model of adapter {spec} ({base_spec}): {exc.message}"
        raise
    if Path(base_location).is_dir():
        if (Path(base_location) / "adapter_config.json").exists():
            raise AuditInputError(f"the base model of adapter {spec} ({base_spec}) is itself an adapter",
                                  file=file, place=place, fix="merge the first adapter into its base and save that")
        _check_folder(Path(base_location), base_spec, allow_pickle=allow_pickle, file=file, place=place,
                      what=f"the base model {base_spec} of adapter {spec}")
    return ModelSource(location, True, base_spec, base_location)


def load_model(spec: str, task: str, registry, *, device: str = "cpu", num_labels: int | None = None,
               trust_remote_code: bool = False, allow_pickle: bool = False, file: str | None = None,
               place: str = "model.base", model_spec=None) -> ModelHandle:
    """Load a model for ``task`` from ``spec`` (safetensors only unless ``allow_pickle``).

    Everything wrong with the given model (a corrupt or pickle-only checkpoint, a config that is not
    JSON or cannot build the model, a head of another shape, a missing tokenizer) is an
    :class:`AuditInputError`; only running out of memory escapes as itself. The handle's
    ``new_weights`` lists the head weights drawn at load (:func:`new_head_weights`); for a PEFT
    adapter, the base's missing weights less those the adapter carries (``modules_to_save``).
    """
    import torch
    from transformers import AutoTokenizer

    _quiet_transformers()
    src = check_model_source(spec, registry, allow_pickle=allow_pickle, file=file, place=place)
    location, base_location = src.location, src.base_location
    local, adapter = Path(location), src.adapter
    is_dir = local.is_dir()
    dtype = load_dtype(device, getattr(model_spec, "dtype", "auto"))
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "dtype": dtype, "output_loading_info": True}
    if not allow_pickle:
        kwargs["use_safetensors"] = True
    if model_spec is not None:  # device_map: auto and bitsandbytes k-bit loading (checked by backends.preflight)
        from auditkit import backends
        kwargs.update(backends.load_kwargs(model_spec, device))
    auto = auto_model_class(task)
    extra = {"num_labels": num_labels} if task == "sequence-classification" and num_labels else {}
    weights_folder = Path(base_location) if Path(base_location).is_dir() else None
    try:
        model, info = auto.from_pretrained(base_location, **kwargs, **extra)
        missing = set(info.get("missing_keys") or ())
        if adapter:
            from peft import PeftModel
            missing -= _adapter_supplied(local)
            from auditkit.backends import placed
            model = PeftModel.from_pretrained(model, location)
            if not placed(model):  # merging into a k-bit base would round the update away
                model = model.merge_and_unload()
    except AuditInputError:
        raise
    except (MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as exc:
        raise _load_error(exc, spec, task, weights_folder, num_labels, file, place) from exc
    has_tok = (local / "tokenizer_config.json").exists() or (local / "tokenizer.json").exists()
    tok_location = location if has_tok or not is_dir or not adapter else base_location
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_location, trust_remote_code=trust_remote_code)
    except (MemoryError, AuditInputError):
        raise
    except Exception as exc:  # a tokenizer file that is not JSON, a vocabulary that does not parse...
        raise AuditInputError(f"could not load the tokenizer of {spec!r} from {tok_location}: "
                              f"{type(exc).__name__}: {_first_line(exc)}", file=file, place=place,
                              fix="save the tokenizer into the model folder again (tokenizer.save_pretrained)") \
            from exc
    # transformers builds an empty tokenizer from a config alone: a folder without tokenizer files
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    if len(set(tokenizer.get_vocab()) - specials) == 0:
        raise AuditInputError(f"the model {spec} has no tokenizer (no tokenizer.json, vocab or "
                              f"tokenizer.model in {tok_location})", file=file, place=place,
                              fix="save the tokenizer into the model folder (tokenizer.save_pretrained)")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    from auditkit.backends import input_device, placed
    if placed(model):  # quantized or spread over GPUs at load: never moved; inputs go to its embeddings
        device = input_device(model)
    else:
        model.to(device)
    model.eval()
    new = new_head_weights(model, tokenizer, missing) if missing else []
    return ModelHandle(model=model, tokenizer=tokenizer, task=task, source=spec, device=device, new_weights=new)
