"""What this machine can serve: the model backends and loading options a suite asks for.

- :func:`preflight` refuses, before anything loads, a backend or option this machine or this suite
  cannot serve (exit 2, one line): k-bit quantization (bitsandbytes) or ``device_map: auto`` without a
  CUDA GPU or without bitsandbytes; ``backend: vllm`` without vLLM, for a classifier, for a fine-tune,
  or for a check that needs what vLLM cannot give (gradients, attentions, hidden states); ``device_map:
  auto`` for a model class with no ``_no_split_modules`` (accelerate could cut it inside a block);
  ``finetune.method: qlora`` without 4-bit quantization.
- :func:`capabilities` says what a backend gives the checks (``api.Check.needs`` names what they take).
- :func:`load_kwargs` are the extra ``from_pretrained`` arguments of ``device_map`` and
  ``quantization`` (transformers' ``BitsAndBytesConfig``: NF4 with bf16 compute, as QLoRA; or LLM.int8).
- :class:`VLLMHandle` serves the causal-LM requests the checks use (token and continuation log-probs,
  generation) through vLLM's offline ``LLM``, prompt log-probs read as lm-eval's vLLM backend reads them.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from auditkit.errors import AuditInputError, dotted
from auditkit.models import PassMemo, UnservedRequest
from auditkit.passes.generation import GenerationRequests

#: every request an in-process transformers model serves
HF_CAPABILITIES = frozenset({"logits", "logprobs", "generate", "hidden_states", "attentions", "gradients",
                             "weights"})
#: what vLLM serves: prompt log-probs and generation (no activations, no autograd, no weights)
VLLM_CAPABILITIES = frozenset({"logprobs", "generate"})

GPU_EXTRA = "pip install 'auditkit[gpu]' (or pip install bitsandbytes)"
VLLM_EXTRA = "pip install 'auditkit[vllm]'"


def capabilities(model) -> frozenset[str]:
    """What a model of this spec (``ModelSpec``) can be asked for: hf serves everything, vLLM only
    log-probs and generation."""
    return VLLM_CAPABILITIES if getattr(model, "backend", "hf") == "vllm" else HF_CAPABILITIES


def _cuda_available() -> bool:
    import torch
    return bool(torch.cuda.is_available())


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def check_needs(spec, task: str) -> frozenset[str]:
    """What a suite entry (``CheckSpec``) needs from a ``task`` model: ``Check.needs_for(params, task)``
    when the check has it (it may narrow ``needs`` by the entry's parameters), else ``Check.needs``."""
    cls = spec.cls
    fn = getattr(cls, "needs_for", None)
    if callable(fn):
        return frozenset(fn(spec.params, task))
    return frozenset(getattr(cls, "needs", frozenset()))


def preflight(model, device: str, checks: Sequence, *, finetune_method: str | None, file: str | None,
              registry=None, base: str | None = None, where: Callable[..., str] | None = None,
              processes: int | None = None, all_checks: Sequence | None = None) -> None:
    """Refuse what this machine or suite cannot serve, before any model loads (AuditInputError, exit 2).

    ``model`` is the suite's ``ModelSpec``, ``device`` the resolved device (``cpu``, ``cuda``,
    ``cuda:N``), ``checks`` the ``CheckSpec``s that will run, ``finetune_method`` the suite's
    ``finetune.method`` (None without a fine-tune). ``registry`` resolves ``builtin:`` models for the
    ``device_map`` check (skipped without it), ``base`` is the model actually audited (``--model``),
    ``where(*path)`` turns a suite key path into "line N (path)", ``processes`` the number of
    data-parallel processes (default: this process's world), ``all_checks`` the suite's checks (they
    number the entries in messages; ``checks`` may be the ``--only`` subset).
    """
    def place(*path) -> str:
        if where is not None:
            return where(*path)
        return dotted(path)

    def fail(path: tuple, message: str, fix: str | None = None) -> AuditInputError:
        return AuditInputError(message, file=file, place=place(*path), fix=fix)

    if getattr(model, "is_api", False) or not getattr(model, "base", ""):
        return
    if processes is None:
        from auditkit.distributed import world
        processes = world().size
    backend = getattr(model, "backend", "hf")
    bits = getattr(model, "quantization_bits", None)
    device_map = getattr(model, "device_map", None)

    # ---- what the suite asks for does not fit together (whatever the machine)
    if backend == "vllm":
        if model.task != "causal-lm":
            raise fail(("model", "backend"), f"vLLM serves causal LMs; a classifier needs backend: hf "
                       f"(model.task is {model.task})", "set backend: hf, or leave backend out")
        if finetune_method is not None:
            raise fail(("finetune", "method"), "backend: vllm cannot fine-tune (it has no gradients)",
                       "use backend: hf for a suite with finetune:, or audit the saved fine-tune with vllm")
        if bits or device_map:
            key = "quantization" if bits else "device_map"
            raise fail(("model", key), f"model.{key} is a setting of backend hf; vLLM places and quantizes a "
                       "model itself", "remove it (vLLM reads a quantized checkpoint's own config; "
                       "tensor_parallel_size spreads it over GPUs)")
        have = capabilities(model)
        unserved = first_unserved(checks, have, model.task)
        if unserved:
            spec, missing = unserved
            raise AuditInputError(
                f"check {spec.id!r} needs {', '.join(missing)}, which backend vllm cannot serve (it serves "
                f"{', '.join(sorted(have))})", file=file, place=check_place(spec, all_checks or checks),
                fix="use backend: hf for this suite, or drop the check")
        if processes > 1:
            raise fail(("model", "backend"), f"backend: vllm runs in one process, not {processes}",
                       "drop --processes; model.tensor_parallel_size spreads vLLM over the GPUs")
    if finetune_method == "qlora" and bits != 4:
        raise fail(("finetune", "method"), "finetune.method: qlora trains LoRA on a 4-bit base, but "
                   + ("model.quantization is not set" if bits is None else f"model.quantization is {bits}-bit"),
                   "add quantization: {bits: 4} under model:, or use method: lora")
    if device_map and processes > 1:
        raise fail(("model", "device_map"), f"device_map: auto spreads one model over every GPU; it cannot run "
                   f"in {processes} data-parallel processes", "drop --processes, or drop device_map")

    # ---- what this machine has
    on_cuda = str(device).startswith("cuda")
    needs_gpu = [(("model", "quantization"), "model.quantization needs a CUDA GPU (bitsandbytes)")] if bits else []
    if device_map:
        needs_gpu.append((("model", "device_map"), "model.device_map: auto spreads a model over CUDA GPUs"))
    if backend == "vllm":
        needs_gpu.append((("model", "backend"), "backend: vllm needs a CUDA GPU"))
    for path, what in needs_gpu:
        if not _cuda_available():
            raise fail(path, f"{what}; this machine has none", "run on a machine with a CUDA GPU, or remove it")
        if not on_cuda:
            raise fail(path, f"{what} but this run is on {device}", "use --device auto or --device cuda")
    if bits and not _importable("bitsandbytes"):
        raise fail(("model", "quantization"), f"model.quantization: {{bits: {bits}}} needs bitsandbytes, which "
                   "is not installed", GPU_EXTRA)
    if backend == "vllm" and not _importable("vllm"):
        raise fail(("model", "backend"), "backend: vllm needs vLLM, which is not installed", VLLM_EXTRA)
    if device_map and not _importable("accelerate"):  # pragma: no cover - accelerate is a dependency
        raise fail(("model", "device_map"), "model.device_map needs accelerate", "pip install accelerate")

    # ---- what the model is (its config only, never its weights)
    if device_map and registry is not None:
        spec = base or model.base
        cls = model_class(spec, model.task, registry, trust_remote_code=model.trust_remote_code, file=file,
                          place=place("model", "base"), allow_pickle=getattr(model, "allow_pickle", False))
        if cls is not None and not getattr(cls, "_no_split_modules", None):
            raise fail(("model", "device_map"), f"device_map: auto cannot spread {cls.__name__} over GPUs: the "
                       "class declares no _no_split_modules (the blocks that must stay on one device)",
                       "leave device_map out (one GPU), or use quantization: {bits: 4} to make it fit")


def first_unserved(checks: Sequence, have: frozenset, task: str):
    """``(spec, missing)``: the first check that reads the model and needs what a backend serving ``have``
    cannot (sorted names), or None."""
    for spec in checks:
        if getattr(spec.cls, "needs_model", True):
            missing = sorted(check_needs(spec, task) - have)
            if missing:
                return spec, missing
    return None


def check_place(spec, all_checks: Sequence) -> str:
    """``line N (checks[i].uses)`` for a check entry, numbered in the whole suite (not the ``--only`` subset)."""
    i = next((k for k, c in enumerate(all_checks) if c is spec), 0)
    line = getattr(spec, "line", None)
    return f"line {line} (checks[{i}].uses)" if line else f"checks[{i}].uses"


def model_class(spec: str, task: str, registry, *, trust_remote_code: bool = False, file: str | None = None,
                place: str = "model.base", allow_pickle: bool = False):
    """The transformers class ``from_pretrained`` would build for ``spec`` and ``task``, from config.json
    alone (``architectures``/``model_type`` through the task's auto mapping); no weights are read.

    None when it cannot be told without loading (a hub id offline, custom code): the load decides then.
    """
    from auditkit.models import auto_model_class, check_model_source
    src = check_model_source(spec, registry, allow_pickle=allow_pickle, file=file, place=place)
    folder = Path(src.base_location)
    if not (folder / "config.json").is_file():
        return None
    try:
        from transformers import AutoConfig
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
        return auto_model_class(task)._model_mapping[type(config)]
    except Exception:  # an unknown model type, remote code: the load itself says what is wrong
        return None


# ---------------------------------------------------------------------- loading with transformers

def quantization_config(bits: int, compute_dtype=None):
    """bitsandbytes through transformers: 4-bit NF4 computing in ``compute_dtype`` (default bf16, QLoRA's
    recipe), or LLM.int8."""
    import torch
    from transformers import BitsAndBytesConfig
    if bits == 4:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_compute_dtype=compute_dtype or torch.bfloat16)
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"quantization bits must be 4 or 8, got {bits!r}")


def load_kwargs(model, device) -> dict:
    """Extra ``from_pretrained`` keyword arguments for ``model.device_map`` and ``model.quantization``.

    ``device_map: auto`` -> ``device_map="auto"`` (accelerate's big-model placement over the GPUs);
    quantization -> ``quantization_config`` and, without ``device_map``, the whole model on ``device``
    (``{"": device}``: a k-bit model is quantized as it is placed, and cannot be moved afterwards).
    A model loaded with any of these must NOT be moved with ``.to(device)``; its inputs go to the device
    of its input embeddings (:func:`input_device`).
    """
    kw: dict[str, Any] = {}
    bits = getattr(model, "quantization_bits", None)
    if getattr(model, "device_map", None) == "auto":
        kw["device_map"] = "auto"
    elif bits:
        kw["device_map"] = {"": str(device) if str(device) != "cuda" else "cuda:0"}
    if bits:  # 4-bit computes in the dtype the rest of the model loads in (bf16 on CUDA unless model.dtype says)
        from auditkit.models import load_dtype
        kw["quantization_config"] = quantization_config(bits, load_dtype(device, getattr(model, "dtype", "auto")))
    return kw


def _layers_of(model):
    """The model, and under a PEFT wrapper its base model and the transformers model inside: where
    transformers marks placement (``hf_device_map``) and bitsandbytes loading (``is_loaded_in_4bit``)."""
    inner = getattr(model, "base_model", model)
    return [m for m in (model, inner, getattr(inner, "model", None)) if m is not None]


def placed(model) -> bool:
    """True for a model placed at load (``device_map``) or quantized by bitsandbytes: never ``.to()`` it."""
    return any(getattr(m, "hf_device_map", None) or getattr(m, "is_loaded_in_4bit", False)
               or getattr(m, "is_loaded_in_8bit", False) or getattr(m, "hf_quantizer", None) is not None
               for m in _layers_of(model))


def loaded_precision(model) -> str | None:
    """``"4-bit NF4"`` / ``"8-bit LLM.int8"`` for a bitsandbytes-quantized model (or a PEFT model on one), else None."""
    for m in _layers_of(model):
        if getattr(m, "is_loaded_in_4bit", False):
            return "4-bit NF4"
        if getattr(m, "is_loaded_in_8bit", False):
            return "8-bit LLM.int8"
    return None


def input_device(model) -> str:
    """Where a placed model's inputs go: the device of its input embeddings."""
    return str(model.get_input_embeddings().weight.device)


# ---------------------------------------------------------------------- vLLM

def safetensors_fingerprint(folder: str | Path) -> str:
    """blake2b over the names and bytes of a model folder's ``*.safetensors`` files (sorted): the
    identity of weights vLLM loads itself (its weights never pass through this process)."""
    h = hashlib.blake2b(digest_size=16)
    for path in sorted(Path(folder).glob("*.safetensors")):
        h.update(path.name.encode())
        h.update(b"\x00")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def _logprob_value(x) -> float:
    """vLLM's ``Logprob`` object (``.logprob``) or, in old versions, a bare float."""
    return float(getattr(x, "logprob", x))


class VLLMHandle(GenerationRequests, PassMemo):
    """A causal LM served by vLLM (``model.backend: vllm``) with the request surface checks use.

    ``token_logprobs`` and ``continuation_logprobs`` read vLLM's ``prompt_logprobs`` (the log-prob of
    every prompt token given its prefix; lm-eval's ``VLLM._loglikelihood_tokens``), tokenized exactly as
    the hf handle does. Generation is the engine's own :class:`GenerationRequests` (prompt rendering,
    chat templates, argument checks, memo, stop cuts) with only ``_generate`` done by vLLM:
    ``SamplingParams`` with stop sequences and one seed per prompt. Prompts go to vLLM as token ids
    (``TokensPrompt``), so both backends read the same tokens.
    """

    task = "causal-lm"
    num_labels = 0

    def __init__(self, llm, tokenizer, *, source: str, location: str, batch_size: int = 32,
                 max_length: int = 256, tensor_parallel_size: int = 1, seed: int = 0, dtype: str = "bfloat16"):
        self.llm, self.tokenizer = llm, tokenizer
        self.dtype = dtype
        self.source, self.location = source, location
        self.batch_size, self.max_length = batch_size, max_length
        self.tensor_parallel_size, self.seed = tensor_parallel_size, seed
        self.device = "cuda"
        self.new_weights: list[str] = []
        self.stats = {"forward_passes": 0, "cache_hits": 0, "disk_hits": 0}
        self._cache: dict = {}
        self._fingerprint: str | None = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, model, registry, *, seed: int = 0, base: str | None = None, file: str | None = None,
             place: str = "model.base", gpu_memory_utilization: float | None = None) -> "VLLMHandle":
        """Start vLLM's offline engine on ``model.base`` (a local folder or hub id) with the suite's
        ``tensor_parallel_size``, in ``model.dtype`` (bf16 by default, like the hf backend on a GPU). vLLM reserves
        ``gpu_memory_utilization`` of each GPU (its default 0.9): give two engines in one run (a model
        and its baseline) a share each, e.g. 0.45. ``model.vllm_args`` adds (or overrides that) any other
        engine argument, e.g. ``enforce_eager`` or ``attention_backend``."""
        from auditkit.models import check_model_source
        spec = base or model.base
        src = check_model_source(spec, registry, allow_pickle=model.allow_pickle, file=file, place=place)
        if src.adapter:
            raise AuditInputError(f"backend: vllm loads full models; {spec} is a PEFT adapter", file=file,
                                  place=place, fix="merge the adapter into its base and save that, or use backend: hf")
        if importlib.util.find_spec("flashinfer") is None:
            # vLLM's sampler imports FlashInfer when it starts unless told not to; without it, PyTorch sampling
            os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
        try:
            from vllm import LLM
        except ImportError as exc:
            raise AuditInputError(f"backend: vllm needs vLLM, which cannot be imported ({exc})", file=file,
                                  place=place, fix=VLLM_EXTRA) from None
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(src.location, trust_remote_code=model.trust_remote_code)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        extra = {"gpu_memory_utilization": float(gpu_memory_utilization)} if gpu_memory_utilization else {}
        extra.update(model.vllm_args)  # the suite's own vLLM settings win
        from auditkit.models import dtype_name, load_dtype
        dtype = dtype_name(load_dtype("cuda", model.dtype))  # vLLM runs on CUDA: auto is bf16 there
        try:
            llm = LLM(model=src.location, tokenizer=src.location, tensor_parallel_size=int(model.tensor_parallel_size),
                      dtype=dtype, seed=int(seed), trust_remote_code=bool(model.trust_remote_code), **extra)
        except TypeError as exc:  # an argument name vLLM does not take (its engine arguments are keywords)
            if not model.vllm_args:
                raise
            raise AuditInputError(f"vLLM refused model.vllm_args: {str(exc).strip().splitlines()[0]}", file=file,
                                  place="model.vllm_args",
                                  fix="use the names of vLLM's LLM() / EngineArgs for the installed version") from None
        return cls(llm, tokenizer, source=spec, location=src.location, batch_size=model.batch_size,
                   max_length=model.max_length, tensor_parallel_size=int(model.tensor_parallel_size), seed=seed,
                   dtype=dtype)

    # ------------------------------------------------------------------ identity
    @property
    def capabilities(self) -> frozenset[str]:
        return VLLM_CAPABILITIES

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = safetensors_fingerprint(self.location) if Path(self.location).is_dir() \
                else hashlib.blake2b(self.location.encode(), digest_size=16).hexdigest()
        return self._fingerprint

    def describe(self) -> dict:
        arch, n = "?", None
        folder = Path(self.location)
        try:
            arch = (json.loads((folder / "config.json").read_text()).get("architectures") or ["?"])[0]
        except (OSError, ValueError):
            pass
        try:
            from safetensors import safe_open
            total = 0
            for st in sorted(folder.glob("*.safetensors")):
                with safe_open(str(st), framework="np") as fh:
                    for k in fh.keys():
                        total += int(np.prod(fh.get_slice(k).get_shape()))
            n = total or None
        except Exception:
            n = None
        return {"id": self.source, "fingerprint": self.fingerprint, "task": self.task, "architecture": arch,
                "parameters": n, "dtype": self.dtype, "backend": "vllm",
                "tensor_parallel_size": self.tensor_parallel_size}

    def invalidate(self) -> None:
        self._cache.clear()
        self._fingerprint = None

    def _require(self, task: str, op: str) -> None:
        if task != self.task:
            raise UnservedRequest(f"{op} needs a {task} model but {self.source} is served by vLLM as causal-lm")

    # ------------------------------------------------------------------ caching (memo: PassMemo)
    def _disk_path(self, op: str, items_key: str, kw_json: str) -> Path:
        """A persisted pass of this engine, keyed by the safetensors fingerprint and the backend, so
        vLLM's numbers are never read back as the hf backend's (or the other way round)."""
        from auditkit import __version__
        from auditkit.models import pass_cache_path
        # the dtype joins the key only when it is not vLLM's default here (bf16), so stored passes stay valid
        dtype = [self.dtype] if self.dtype != "bfloat16" else []
        return pass_cache_path(self.fingerprint, op, ["vllm", __version__, self.fingerprint, self.max_length,
                                                      self.tokenizer_key(), *dtype, op, items_key, kw_json],
                               prefix="vllm-", op_chars=40)

    def tokenizer_key(self) -> str:
        tok = self.tokenizer
        return json.dumps([type(tok).__name__, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id])

    # ------------------------------------------------------------------ the engine
    def _prompt_logprobs(self, ids: list[list[int]]) -> list[np.ndarray]:
        """``lp[i][t-1] = log p(ids[i][t] | ids[i][:t])`` for t >= 1, from vLLM's ``prompt_logprobs``
        (one generated token, greedy, not detokenized: lm-eval's scoring request)."""
        from vllm import SamplingParams, TokensPrompt
        self.stats["forward_passes"] += 1
        out: list = [None] * len(ids)
        todo = [i for i, x in enumerate(ids) if len(x) >= 2]
        for i, x in enumerate(ids):
            if len(x) < 2:
                out[i] = np.zeros(0, dtype=np.float32)
        if todo:
            params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=1, detokenize=False)
            results = self.llm.generate([TokensPrompt(prompt_token_ids=list(ids[i])) for i in todo], params,
                                        use_tqdm=False)
            for i, res in zip(todo, results):
                dicts = res.prompt_logprobs  # [None, {token: Logprob}, ...]: one per prompt token
                x = ids[i]
                out[i] = np.array([_logprob_value(dicts[t][x[t]]) for t in range(1, len(x))], dtype=np.float32)
        return out

    # ------------------------------------------------------------------ requests
    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length, add_special_tokens=True)
        return [list(x) for x in enc["input_ids"]]

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        return self.memo("token_ids", texts, lambda: self._encode(texts))

    def token_logprobs(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Log-prob of every token given its prefix; the first token is not scored (as the hf handle)."""
        return self.memo("token_logprobs", texts, lambda: self._prompt_logprobs(self._encode(texts)), persist=True)

    def continuation_logprobs(self, pairs: Sequence[tuple[str, str]]) -> list[np.ndarray]:
        """Per-token log-probs of each continuation given its context: lm-eval's loglikelihood, tokenized as
        the hf handle does (:func:`auditkit.models.encode_pairs`), the model reading
        ``(ctx + cont)[-(max_length + 1):]``."""
        pairs = [tuple(p) for p in pairs]

        def compute():
            from auditkit.models import encode_pairs
            limit = self.max_length + 1
            full, owner, out = [], [], [None] * len(pairs)
            for i, (ctx_ids, cont_ids) in enumerate(encode_pairs(self.tokenizer, self.task, pairs)):
                if not cont_ids:
                    out[i] = np.zeros(0, dtype=np.float32)
                    continue
                full.append((ctx_ids + cont_ids)[-limit:])
                owner.append((i, len(cont_ids)))
            for lp, (i, n) in zip(self._prompt_logprobs(full), owner):
                out[i] = lp[-n:]
            return out

        return self.memo("continuation_logprobs", pairs, compute, persist=True)

    def _generate(self, ids, *, max_new_tokens, temperature, top_p, stop, seed, samples) -> dict:
        from vllm import SamplingParams, TokensPrompt

        from auditkit.passes.generation import _cut
        self.stats["forward_passes"] += 1
        sampled = temperature > 0
        start = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.tokenizer.eos_token_id
        params = [SamplingParams(n=samples if sampled else 1, temperature=temperature if sampled else 0.0,
                                 top_p=top_p if sampled else 1.0, max_tokens=max_new_tokens, stop=list(stop) or None,
                                 seed=(int(seed) * 1_000_003 + i) % (2 ** 31) if sampled else None,
                                 skip_special_tokens=True)
                  for i in range(len(ids))]
        prompts = [TokensPrompt(prompt_token_ids=list(x) if x else [start]) for x in ids]
        results = self.llm.generate(prompts, params, use_tqdm=False) if max_new_tokens > 0 else None
        texts, toks, reasons = [], [], []
        for i in range(len(ids)):
            outs = list(results[i].outputs) if results is not None else []
            rows = []
            for c in outs:
                text, hit = _cut(c.text or "", stop)
                stop_reason = getattr(c, "stop_reason", None)
                if hit or isinstance(stop_reason, str):
                    reason = "stop"
                elif c.finish_reason == "stop":  # vLLM: EOS (stop_reason None) or a stop token id
                    reason = "eos"
                else:
                    reason = "length"
                rows.append((text, [int(t) for t in c.token_ids], reason))
            if not rows:
                rows = [("", [], "length")]
            if not sampled:
                rows = rows[:1] * samples
            for text, t, reason in rows[:samples]:
                texts.append(text)
                toks.append(t)
                reasons.append(reason)
        return {"text": np.array(texts, dtype=str), "ids": toks, "reason": np.array(reasons, dtype=str)}
