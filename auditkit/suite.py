"""Suite files: parsed from YAML and validated into typed objects before any model loads.

Every error names the suite file and the line, and offers a "did you mean" where a name is close.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from auditkit.api import TASKS, Check, did_you_mean, find_metric
from auditkit.errors import AuditInputError, dotted
from auditkit.gates import Gate, GateSyntaxError, parse_gate

SUITE_KEYS = ("name", "description", "seed", "device", "model", "finetune", "checks")
MODEL_KEYS = ("base", "task", "num_labels", "baseline", "trust_remote_code", "allow_pickle",
              "allow_new_head", "max_length", "batch_size", "backend", "device_map", "quantization",
              "tensor_parallel_size", "endpoint", "name", "api_key_env", "concurrency", "chat_template", "dtype",
              "vllm_args")
#: ``model.backend``: in-process transformers, or vLLM (causal LMs, ``auditkit[vllm]``)
BACKENDS = ("hf", "vllm")
#: model.dtype: auto is bf16 on CUDA and fp32 elsewhere
DTYPES = ("auto", "float32", "bfloat16")
#: vLLM's LLM() arguments auditkit derives from the suite (model.vllm_args may not set them), and where to
VLLM_OWNED_ARGS = {"model": "set model.base", "tokenizer": "set model.base", "dtype": "set model.dtype",
                   "seed": "set the suite's seed", "tensor_parallel_size": "set model.tensor_parallel_size",
                   "trust_remote_code": "set model.trust_remote_code"}
#: ``model.base`` naming a model behind an OpenAI-compatible HTTP API (``endpoint``, ``name``, ``api_key_env``)
API_BASE = "openai-compatible"
#: a suite file larger than this is refused before it is parsed
MAX_SUITE_BYTES = 1 << 20
#: YAML nodes a suite may expand to once its aliases are followed (a "billion laughs" file has ~10^9)
MAX_SUITE_NODES = 100_000
CHECK_KEYS = ("uses", "id", "data", "columns", "gates", "description")


@dataclass
class ModelSpec:
    base: str
    task: str = "sequence-classification"
    num_labels: int | None = None
    baseline: str | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False
    #: False: refuse a model whose head would be newly initialised for the audit (exit 2)
    allow_new_head: bool = True
    max_length: int = 256
    batch_size: int = 32
    #: "hf" (transformers in this process) or "vllm"
    backend: str = "hf"
    #: "auto": spread one model over the machine's GPUs (accelerate's big-model inference)
    device_map: str | None = None
    #: bitsandbytes k-bit loading: 4 or 8 (None: the device's usual dtype)
    quantization_bits: int | None = None
    #: vLLM's tensor parallel degree
    tensor_parallel_size: int = 1
    #: the dtype the weights load and run in: "auto" (bf16 on CUDA, fp32 elsewhere), "float32" or "bfloat16"
    dtype: str = "auto"
    #: more keyword arguments for vLLM's ``LLM(...)`` (e.g. enforce_eager, max_model_len, attention_backend)
    vllm_args: dict = field(default_factory=dict)
    #: an OpenAI-compatible API model (``base: openai-compatible``)
    endpoint: str | None = None
    name: str | None = None
    api_key_env: str | None = None
    concurrency: int = 8
    #: apply the tokenizer's chat template to generation prompts when it has one
    chat_template: bool = True

    @property
    def is_api(self) -> bool:
        return self.base == API_BASE


@dataclass
class CheckSpec:
    id: str
    uses: str
    cls: type[Check]
    params: dict[str, Any]
    data: str | None
    columns: dict | None
    gates: list[Gate]
    line: int | None = None
    #: True when ``gates`` are the check's defaults (the entry had no ``gates:`` key)
    default_gates: bool = False

    @property
    def needs_baseline(self) -> bool:
        """A gate the suite wrote compares with the base model (a default one is dropped without a base)."""
        return any(g.needs_baseline and not g.default for g in self.gates)


@dataclass
class Suite:
    name: str
    path: Path
    model: ModelSpec
    checks: list[CheckSpec]
    seed: int = 0
    device: str = "auto"
    description: str = ""
    finetune: Any = None  # auditkit.finetune.FinetuneConfig
    lines: dict = field(default_factory=dict, repr=False)

    @property
    def base_dir(self) -> Path:
        return self.path.parent


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` / ``5E3`` as floats (YAML 1.2), not as strings."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))




def _children(node) -> list:
    """A YAML node's child nodes (a mapping's keys and values in order)."""
    if isinstance(node, yaml.MappingNode):
        return [x for kv in node.value for x in kv]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _distinct_nodes(root) -> list:
    """Every node of the composed graph once (an alias shares its node), parents before children.

    Iterative, so deep nesting never hits Python's recursion limit.
    """
    order, stack, seen = [], [root], set()
    while stack:
        node = stack.pop()
        if id(node) not in seen:
            seen.add(id(node))
            order.append(node)
            stack.extend(_children(node))
    return order


def _expanded_nodes(nodes: list, limit: int) -> int:
    """How many nodes the document has once every alias is followed, stopping past ``limit``.

    An alias makes the composed graph share a node, so a "billion laughs" file is small as a graph;
    memoized subtree sizes cost one visit per distinct node (``nodes`` from :func:`_distinct_nodes`).
    """
    sizes: dict[int, int] = {}
    for node in reversed(nodes):
        sizes[id(node)] = min(limit + 1, 1 + sum(sizes.get(id(k), 1) for k in _children(node)))
    return sizes[id(nodes[0])]


def _duplicate_key(nodes: list):
    """The first key that a mapping repeats, as (key, first line, second line), or None."""
    for node in nodes:
        if isinstance(node, yaml.MappingNode):
            first: dict = {}
            for k, _ in node.value:
                if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                    if k.value in first:
                        return k.value, first[k.value], k.start_mark.line + 1
                    first[k.value] = k.start_mark.line + 1
    return None


def read_yaml_strict(path: Path, display: str):
    """Read a YAML file as the suite format wants it: size-limited, UTF-8, no duplicated keys, bounded aliases.

    Returns (composed node, plain data); every problem is an AuditInputError naming the file and the place.
    """
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise AuditInputError(f"cannot read the suite file ({exc.strerror})", file=display) from None
    if path.is_dir():
        raise AuditInputError("the suite is a directory", file=display, fix="give the path to a .yaml suite file")
    if size > MAX_SUITE_BYTES:
        raise AuditInputError(f"the suite file is {size} bytes, over the limit of {MAX_SUITE_BYTES}",
                              file=display, fix="a suite names its data files; it does not hold data itself")
    from auditkit.data import _decode
    text = _decode(path.read_bytes(), display)  # a byte-order mark is dropped; bad bytes name their offset
    try:
        node = yaml.compose(text, Loader=_Loader)
    except RecursionError:
        raise AuditInputError("the suite is nested too deeply", file=display,
                              fix="a suite is a few levels of mappings and lists") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise AuditInputError(f"malformed YAML: {problem}", file=display,
                              place=f"line {mark.line + 1}" if mark else None,
                              fix="check indentation and quoting") from None
    if node is None:
        return None, None
    nodes = _distinct_nodes(node)
    if _expanded_nodes(nodes, MAX_SUITE_NODES) > MAX_SUITE_NODES:
        raise AuditInputError(f"the suite expands to more than {MAX_SUITE_NODES} YAML nodes through its aliases",
                              file=display, place="line 1", fix="write the suite without deeply nested aliases")
    dup = _duplicate_key(nodes)
    if dup:
        key, first, second = dup
        raise AuditInputError(f"key {key!r} appears twice (lines {first} and {second}); YAML would keep only "
                              f"the second", file=display, place=f"line {second}",
                              fix="merge the two into one key")
    loader = _Loader(text)
    try:
        raw = loader.construct_document(node)
    except RecursionError:
        raise AuditInputError("the suite is nested too deeply", file=display,
                              fix="a suite is a few levels of mappings and lists") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise AuditInputError(f"malformed YAML: {getattr(exc, 'problem', None) or exc}", file=display,
                              place=f"line {mark.line + 1}" if mark else None) from None
    finally:
        loader.dispose()
    return node, raw


def _line_map(node, path=(), lines=None) -> dict:
    lines = {} if lines is None else lines
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value
            lines[path + (key,)] = k.start_mark.line + 1
            _line_map(v, path + (key,), lines)
            lines[path + (key,)] = k.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_map(item, path + (i,), lines)
    return lines


class _Ctx:
    """Carries the file name and line map so every error can say where."""

    def __init__(self, file: str, lines: dict):
        self.file, self.lines = file, lines

    def line(self, path: tuple) -> int | None:
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path)

    def fail(self, path: tuple, message: str, fix: str | None = None):
        where = dotted(path)
        msg = f"{where}: {message}" if where else message
        return AuditInputError(msg, file=self.file, place=f"line {self.line(path)}" if self.line(path) else None,
                               fix=fix)

    def keys(self, obj: dict, allowed, path: tuple) -> None:
        for k in obj:
            if k not in allowed:
                raise self.fail(path + (k,), f"unknown key {k!r}", did_you_mean(k, allowed))

    def positive(self, value, path: tuple, what: str) -> int:
        """An int >= 1 (batch sizes, lengths, counts)."""
        self.typed(value, int, path, what)
        if value < 1:
            raise self.fail(path, f"{what} must be >= 1, got {value}")
        return value

    def typed(self, value, kind, path: tuple, what: str):
        ok = isinstance(value, kind) and not (kind in (int, float, (int, float)) and isinstance(value, bool))
        if not ok:
            raise self.fail(path, f"{what} must be {getattr(kind, '__name__', 'a number')}, got {value!r}")
        return value


def load_suite(path: str | Path, registry) -> Suite:
    """Read and validate a suite file; raise AuditInputError(file, line, fix) on any problem."""
    path = Path(path)
    display = str(path)
    if not path.exists():
        raise AuditInputError(f"suite file {display} does not exist", fix="give the path to a .yaml suite")
    node, raw = read_yaml_strict(path, display)
    if not isinstance(raw, dict):
        raise AuditInputError("a suite must be a YAML mapping with model: and checks:", file=display,
                              place="line 1")
    cx = _Ctx(display, _line_map(node) if node is not None else {})
    cx.keys(raw, SUITE_KEYS, ())
    name = raw.get("name") or path.stem
    cx.typed(name, str, ("name",), "name")
    seed = cx.typed(raw.get("seed", 0), int, ("seed",), "seed")
    if not 0 <= seed < 2 ** 32:
        raise cx.fail(("seed",), f"seed must be >= 0 and < 2**32 (numpy's seed range), got {seed}")
    device = raw.get("device", "auto")
    if device not in ("auto", "cpu", "cuda"):
        raise cx.fail(("device",), f"device must be auto, cpu or cuda, got {device!r}")

    model_raw = raw.get("model")
    if model_raw is None and _model_free(raw.get("checks"), registry) and raw.get("finetune") is None:
        model_raw = {"base": ""}  # every check reads data only: no model is loaded
    if not isinstance(model_raw, dict) or "base" not in model_raw:
        raise cx.fail(("model",), "model: with a base: (a local dir, hub id or builtin:NAME) is required")
    cx.keys(model_raw, MODEL_KEYS, ("model",))
    task = model_raw.get("task", "sequence-classification")
    if task not in TASKS:
        raise cx.fail(("model", "task"), f"unknown task {task!r}", did_you_mean(task, TASKS))
    model = ModelSpec(
        base=cx.typed(model_raw["base"], str, ("model", "base"), "model.base"),
        task=task,
        num_labels=cx.typed(model_raw["num_labels"], int, ("model", "num_labels"), "num_labels")
        if "num_labels" in model_raw else (2 if task == "sequence-classification" else None),
        baseline=model_raw.get("baseline"),
        trust_remote_code=cx.typed(model_raw.get("trust_remote_code", False), bool,
                                   ("model", "trust_remote_code"), "trust_remote_code"),
        allow_pickle=cx.typed(model_raw.get("allow_pickle", False), bool, ("model", "allow_pickle"),
                              "allow_pickle"),
        allow_new_head=cx.typed(model_raw.get("allow_new_head", True), bool, ("model", "allow_new_head"),
                                "allow_new_head"),
        max_length=cx.positive(model_raw.get("max_length", 256), ("model", "max_length"), "model.max_length"),
        batch_size=cx.positive(model_raw.get("batch_size", 32), ("model", "batch_size"), "model.batch_size"),
    )
    _parse_scale_keys(model, model_raw, cx)
    if model.num_labels is not None and model.num_labels < 1:
        raise cx.fail(("model", "num_labels"), f"num_labels must be >= 1, got {model.num_labels}")
    baseline = model_raw.get("baseline")
    if baseline is not None:
        cx.typed(baseline, str, ("model", "baseline"), "model.baseline")

    finetune = None
    if raw.get("finetune") is not None:
        from auditkit.finetune import parse_finetune
        finetune = parse_finetune(raw["finetune"], cx, seed, task)

    checks_raw = raw.get("checks")
    if not isinstance(checks_raw, list) or not checks_raw:
        raise cx.fail(("checks",), "checks: must be a non-empty list of {uses: CHECK, ...}")
    checks: list[CheckSpec] = []
    seen: set[str] = set()
    for i, entry in enumerate(checks_raw):
        spec = _parse_check(entry, ("checks", i), cx, registry, task, seen)
        if spec.cls.needs_training and finetune is None:
            raise cx.fail(("checks", i, "uses"), f"check {spec.uses!r} reads the fine-tuning record",
                          "add a finetune: section to the suite")
        if spec.cls.needs_validation and finetune is not None and not finetune.validation_spec:
            raise cx.fail(("finetune", "data"), f"check {spec.uses!r} reads the validation curve, but the "
                          f"fine-tune has no validation data ({finetune.data} has no #validation split)",
                          "add finetune.validation: a file or builtin:NAME#split")
        try:
            spec.cls.validate_suite(spec.params, has_finetune=finetune is not None, data=spec.data)
        except AuditInputError as exc:
            raise _at_param(cx, ("checks", i), spec.params, exc) from None
        checks.append(spec)
    return Suite(name=name, path=path, model=model, checks=checks, seed=seed, device=device,
                 description=raw.get("description", "") or "", finetune=finetune, lines=cx.lines)


def _parse_scale_keys(model: ModelSpec, raw: dict, cx: _Ctx) -> None:
    """The backend, placement, quantization and API keys of ``model:`` (what the machine can serve is
    decided later, by :mod:`auditkit.backends`, still before anything loads)."""
    backend = raw.get("backend", "hf")
    if backend not in BACKENDS:
        raise cx.fail(("model", "backend"), f"model.backend must be one of {', '.join(BACKENDS)}, got {backend!r}",
                      did_you_mean(str(backend), BACKENDS))
    model.backend = backend
    if "device_map" in raw:
        dm = raw["device_map"]
        if dm != "auto":
            raise cx.fail(("model", "device_map"), f"model.device_map must be auto, got {dm!r}",
                          "use device_map: auto, or leave it out for one device")
        model.device_map = dm
    if "quantization" in raw:
        q = raw["quantization"]
        if not isinstance(q, dict) or set(q) != {"bits"} or q["bits"] not in (4, 8) or isinstance(q["bits"], bool):
            raise cx.fail(("model", "quantization"), f"model.quantization must be {{bits: 4}} or {{bits: 8}}, got {q!r}",
                          "write quantization: {bits: 4}")
        model.quantization_bits = q["bits"]
    if "tensor_parallel_size" in raw:
        model.tensor_parallel_size = cx.positive(raw["tensor_parallel_size"], ("model", "tensor_parallel_size"),
                                                 "model.tensor_parallel_size")
        if backend != "vllm":
            raise cx.fail(("model", "tensor_parallel_size"), "tensor_parallel_size is a vLLM setting",
                          "add backend: vllm, or use device_map: auto to spread an hf model over GPUs")
    if "vllm_args" in raw:
        args = raw["vllm_args"]
        if backend != "vllm":
            raise cx.fail(("model", "vllm_args"), "vllm_args is a vLLM setting", "add backend: vllm, or remove it")
        if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
            raise cx.fail(("model", "vllm_args"), f"model.vllm_args must be a mapping of vLLM's LLM() arguments, "
                          f"got {args!r}", "e.g. vllm_args: {enforce_eager: true, max_model_len: 2048}")
        owned = sorted(set(args) & VLLM_OWNED_ARGS.keys())
        if owned:
            raise cx.fail(("model", "vllm_args", owned[0]), f"vllm_args.{owned[0]} is set by auditkit from the "
                          "suite", VLLM_OWNED_ARGS[owned[0]])
        model.vllm_args = dict(args)
    if "concurrency" in raw:
        model.concurrency = cx.positive(raw["concurrency"], ("model", "concurrency"), "model.concurrency")
    if "dtype" in raw:
        dtype = raw["dtype"]
        if dtype not in DTYPES:
            raise cx.fail(("model", "dtype"), f"model.dtype must be one of {', '.join(DTYPES)}, got {dtype!r}",
                          did_you_mean(str(dtype), DTYPES) if isinstance(dtype, str) else "e.g. dtype: float32")
        model.dtype = dtype
    if "chat_template" in raw:
        model.chat_template = cx.typed(raw["chat_template"], bool, ("model", "chat_template"), "model.chat_template")
    api_keys = ("endpoint", "name", "api_key_env")
    for key in api_keys:
        if key in raw:
            setattr(model, key, cx.typed(raw[key], str, ("model", key), f"model.{key}"))
    if model.base == API_BASE:
        for key in ("endpoint", "name"):
            if not getattr(model, key):
                raise cx.fail(("model",), f"an {API_BASE} model needs model.{key}",
                              "e.g. endpoint: http://127.0.0.1:8000/v1 and name: the server's model name")
        if not model.endpoint.startswith(("http://", "https://")):
            raise cx.fail(("model", "endpoint"), f"model.endpoint must be an http(s) URL, got {model.endpoint!r}",
                          "e.g. http://127.0.0.1:8000/v1")
        if backend != "hf" or model.device_map or model.quantization_bits or model.dtype != "auto":
            raise cx.fail(("model", "base"), f"an {API_BASE} model runs on its server: backend, device_map, "
                          "quantization and dtype do not apply", "remove them")
    else:
        for key in api_keys:
            if key in raw:
                raise cx.fail(("model", key), f"model.{key} is for base: {API_BASE} models",
                              f"set base: {API_BASE}, or remove {key}")


def _at_param(cx: _Ctx, path: tuple, params: dict, exc: AuditInputError) -> AuditInputError:
    """A check's own validation error, placed at the suite line of the parameter it names (else the entry)."""
    return cx.fail(path + ((exc.place,) if exc.place in params else ()), exc.message, exc.fix)


def _model_free(checks_raw, registry) -> bool:
    """Every listed check is a known one that reads data only (``needs_model = False``)."""
    if not isinstance(checks_raw, list) or not checks_raw:
        return False
    names = [e if isinstance(e, str) else e.get("uses") if isinstance(e, dict) else None for e in checks_raw]
    return all(isinstance(n, str) and n in registry.checks and not registry.checks[n].needs_model for n in names)


def _parse_check(entry, path: tuple, cx: _Ctx, registry, task: str, seen: set) -> CheckSpec:
    if isinstance(entry, str):
        entry = {"uses": entry}
    if not isinstance(entry, dict) or "uses" not in entry:
        raise cx.fail(path, "each check needs uses: CHECK_NAME")
    uses = entry["uses"]
    if not isinstance(uses, str):
        raise cx.fail(path + ("uses",), f"uses must be a check name, got {uses!r}", "see `auditkit checks`")
    if uses not in registry.checks:
        raise cx.fail(path + ("uses",), f"unknown check {uses!r}", did_you_mean(uses, sorted(registry.checks)))
    cls = registry.checks[uses]
    allowed = CHECK_KEYS + tuple(cls.params)
    cx.keys(entry, allowed, path)
    if task not in cls.tasks:
        raise cx.fail(path + ("uses",), f"check {uses!r} does not support task {task!r}",
                      f"it supports {', '.join(cls.tasks)}")
    cid = str(entry.get("id") or uses)
    if cid in seen:
        if "id" in entry:
            raise cx.fail(path + ("id",), f"duplicate check id {cid!r}", "give each check a unique id:")
        k = 2
        while f"{cid}-{k}" in seen:
            k += 1
        cid = f"{cid}-{k}"
    seen.add(cid)
    params = {}
    for pname, p in cls.params.items():
        if pname in entry:
            try:
                params[pname] = p.coerce(entry[pname], pname)
            except ValueError as exc:
                raise cx.fail(path + (pname,), str(exc)) from None
        elif p.required:
            raise cx.fail(path, f"check {uses!r} needs the parameter {pname!r}", p.help or None)
        else:
            params[pname] = p.default
    try:
        cls.validate_params(params, str(Path(cx.file).parent))
    except AuditInputError as exc:
        raise _at_param(cx, path, params, exc) from None
    try:
        cls.validate_task(params, task)
    except AuditInputError as exc:
        raise _at_param(cx, path, params, exc) from None
    data = entry.get("data", cls.default_data)
    if cls.needs_data and not data:
        raise cx.fail(path, f"check {uses!r} needs data: (builtin:NAME or a file path)")
    if data is not None and not isinstance(data, str):
        raise cx.fail(path + ("data",), "data must be builtin:NAME or a file path")
    columns = entry.get("columns")
    if columns is not None and not (isinstance(columns, dict) and all(isinstance(v, str) for v in columns.values())):
        raise cx.fail(path + ("columns",), "columns must map our column names to yours, e.g. {text: review}")
    defaults = "gates" not in entry
    if defaults:
        try:
            gates = default_gates(cls, task)
        except (GateSyntaxError, _UnknownMetric) as exc:
            raise cx.fail(path + ("uses",), f"check {uses!r} declares a bad default gate: {exc}",
                          "give the check its own gates: and report the plugin's bug") from None
        return CheckSpec(id=cid, uses=uses, cls=cls, params=params, data=data, columns=columns, gates=gates,
                         line=cx.line(path), default_gates=True)
    gates_raw = entry.get("gates")
    if gates_raw is None:
        gates_raw = []
    if not isinstance(gates_raw, list):
        raise cx.fail(path + ("gates",), "gates must be a list of 'METRIC OP VALUE' strings")
    gates = []
    for j, g in enumerate(gates_raw):
        gpath = path + ("gates", j)
        if isinstance(g, dict):
            unknown = [k for k in g if k not in ("when", "expr", "severity")]
            if unknown:
                raise cx.fail(gpath + (unknown[0],), f"unknown gate key {unknown[0]!r}",
                              "a gate is {when: 'METRIC OP VALUE', severity: fail|warn}")
            expr, severity = g.get("when", g.get("expr")), g.get("severity", "fail")
        else:
            expr, severity = g, "fail"
        try:
            gate = _checked_gate(cls, expr, severity, False)
        except GateSyntaxError as exc:
            raise cx.fail(gpath, f"bad gate: {exc}") from None
        except _UnknownMetric as exc:
            raise cx.fail(gpath, f"check {uses!r} emits no metric {exc.metric!r}",
                          did_you_mean(exc.metric, list(cls.metrics))) from None
        gates.append(gate)
    return CheckSpec(id=cid, uses=uses, cls=cls, params=params, data=data, columns=columns, gates=gates,
                     line=cx.line(path))


class _UnknownMetric(ValueError):
    def __init__(self, metric: str):
        super().__init__(f"no metric {metric!r}")
        self.metric = metric


def _checked_gate(cls: type[Check], expr, severity: str, default: bool) -> Gate:
    """Parse a gate and check that every metric it names is one ``cls`` declares (patterns included)."""
    gate = parse_gate(expr, severity, default)
    for ref in gate.refs():
        if find_metric(cls.metrics, ref.metric) is None:
            raise _UnknownMetric(ref.metric)
    return gate


def default_gates(cls: type[Check], task: str) -> list[Gate]:
    """The check's declared default gates for ``task``, parsed and checked against its metrics."""
    return [_checked_gate(cls, expr, severity, True) for expr, severity in cls.default_gates_for(task)]
