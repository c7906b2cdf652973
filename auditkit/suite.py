"""Suite files: parsed from YAML and validated into typed objects before any model loads.

Every error names the suite file and the line, and offers a "did you mean" where a name is close.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path
from typing import Any

import yaml

from auditkit.api import TASKS, Check
from auditkit.errors import AuditInputError
from auditkit.gates import Gate, GateSyntaxError, parse_gate

SUITE_KEYS = ("name", "description", "seed", "device", "model", "finetune", "checks")
MODEL_KEYS = ("base", "task", "num_labels", "baseline", "trust_remote_code", "allow_pickle",
              "max_length", "batch_size")
CHECK_KEYS = ("uses", "id", "data", "columns", "gates", "description")


@dataclass
class ModelSpec:
    base: str
    task: str = "sequence-classification"
    num_labels: int | None = None
    baseline: str | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False
    max_length: int = 256
    batch_size: int = 32


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

    @property
    def needs_baseline(self) -> bool:
        return any(g.needs_baseline for g in self.gates)


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


def _did_you_mean(word: str, options) -> str:
    near = get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f"did you mean {near[0]!r}?" if near else f"expected one of: {', '.join(map(str, options))}"


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
        dotted = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in path).replace(".[", "[")
        msg = f"{dotted}: {message}" if dotted else message
        return AuditInputError(msg, file=self.file, place=f"line {self.line(path)}" if self.line(path) else None,
                               fix=fix)

    def keys(self, obj: dict, allowed, path: tuple) -> None:
        for k in obj:
            if k not in allowed:
                raise self.fail(path + (k,), f"unknown key {k!r}", _did_you_mean(k, allowed))

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
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=_Loader)
        raw = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise AuditInputError(f"malformed YAML: {problem}", file=display,
                              place=f"line {mark.line + 1}" if mark else None,
                              fix="check indentation and quoting") from None
    if not isinstance(raw, dict):
        raise AuditInputError("a suite must be a YAML mapping with model: and checks:", file=display,
                              place="line 1")
    cx = _Ctx(display, _line_map(node) if node is not None else {})
    cx.keys(raw, SUITE_KEYS, ())
    name = raw.get("name") or path.stem
    cx.typed(name, str, ("name",), "name")
    seed = cx.typed(raw.get("seed", 0), int, ("seed",), "seed")
    device = raw.get("device", "auto")
    if device not in ("auto", "cpu", "cuda"):
        raise cx.fail(("device",), f"device must be auto, cpu or cuda, got {device!r}")

    model_raw = raw.get("model")
    if not isinstance(model_raw, dict) or "base" not in model_raw:
        raise cx.fail(("model",), "model: with a base: (a local dir, hub id or builtin:NAME) is required")
    cx.keys(model_raw, MODEL_KEYS, ("model",))
    task = model_raw.get("task", "sequence-classification")
    if task not in TASKS:
        raise cx.fail(("model", "task"), f"unknown task {task!r}", _did_you_mean(task, TASKS))
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
        max_length=cx.typed(model_raw.get("max_length", 256), int, ("model", "max_length"), "max_length"),
        batch_size=cx.typed(model_raw.get("batch_size", 32), int, ("model", "batch_size"), "batch_size"),
    )

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
        checks.append(spec)
    return Suite(name=name, path=path, model=model, checks=checks, seed=seed, device=device,
                 description=raw.get("description", "") or "", finetune=finetune, lines=cx.lines)


def _parse_check(entry, path: tuple, cx: _Ctx, registry, task: str, seen: set) -> CheckSpec:
    if isinstance(entry, str):
        entry = {"uses": entry}
    if not isinstance(entry, dict) or "uses" not in entry:
        raise cx.fail(path, "each check needs uses: CHECK_NAME")
    uses = entry["uses"]
    if uses not in registry.checks:
        raise cx.fail(path + ("uses",), f"unknown check {uses!r}", _did_you_mean(uses, sorted(registry.checks)))
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
    data = entry.get("data", cls.default_data)
    if cls.needs_data and not data:
        raise cx.fail(path, f"check {uses!r} needs data: (builtin:NAME or a file path)")
    if data is not None and not isinstance(data, str):
        raise cx.fail(path + ("data",), "data must be builtin:NAME or a file path")
    columns = entry.get("columns")
    if columns is not None and not (isinstance(columns, dict) and all(isinstance(v, str) for v in columns.values())):
        raise cx.fail(path + ("columns",), "columns must map our column names to yours, e.g. {text: review}")
    gates_raw = entry.get("gates") or []
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
            gate = parse_gate(expr, severity)
        except GateSyntaxError as exc:
            raise cx.fail(gpath, f"bad gate: {exc}") from None
        for ref in gate.refs():
            if ref.metric not in cls.metrics:
                raise cx.fail(gpath, f"check {uses!r} emits no metric {ref.metric!r}",
                              _did_you_mean(ref.metric, list(cls.metrics)))
        gates.append(gate)
    return CheckSpec(id=cid, uses=uses, cls=cls, params=params, data=data, columns=columns, gates=gates,
                     line=cx.line(path))
