"""The public API a check plugin is written against.

A check is a class with a ``name``, typed ``params`` (with defaults), the ``metrics`` it emits and
a ``run(ctx)`` method that receives one :class:`CheckContext` and returns one :class:`CheckResult`.
It never writes files and never prints: the runner and the reporters do that.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from difflib import get_close_matches
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Mapping, Sequence
from auditkit.errors import AuditInputError

if TYPE_CHECKING:  # pragma: no cover
    from auditkit.data import Dataset
    from auditkit.models import ModelHandle

#: the task kinds a model may be loaded as (``model.task``); a check declares the ones it supports in
#: ``Check.tasks`` (default: all of them, so a check that cannot run on one must say so)
TASKS = ("sequence-classification", "causal-lm", "seq2seq-lm")
#: what a model backend can serve; checks name what they need beyond plain scoring in ``Check.needs``
#: (``weights``: the parameters themselves, e.g. to count them or fine-tune them)
CAPABILITIES = ("logits", "logprobs", "generate", "hidden_states", "attentions", "gradients", "weights")
#: what a check ends with: info when it had no gate to decide (never counted as pass)
STATUSES = ("info", "pass", "warn", "fail", "error")
_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict}


def did_you_mean(word: Any, options: Sequence) -> str:
    """``did you mean 'x'?`` for the closest option, else the list of options."""
    near = get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f"did you mean {near[0]!r}?" if near else f"expected one of: {', '.join(map(str, options))}"


@dataclass(frozen=True)
class Param:
    """A typed check parameter with a default; ``type`` is one of int, float, str, bool, list, dict.

    Values are checked before any model loads: ``choices`` (the allowed values), ``members`` (the
    allowed items of a list), and the bounds ``ge``/``gt``/``le``/``lt`` for numbers (for a list:
    for each of its numbers).
    """

    type: str = "str"
    default: Any = None
    help: str = ""
    choices: tuple | None = None
    required: bool = False
    members: tuple | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def bounds(self) -> str:
        """The allowed range in words, e.g. ``>= 1`` or ``> 0 and <= 1`` ('' when unbounded)."""
        parts = [f"{op} {v:g}" for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
                 if v is not None]
        return " and ".join(parts)

    def _check_number(self, x: Any, where: str) -> None:
        if not self.bounds():
            return
        if not isinstance(x, (int, float)) or isinstance(x, bool):
            raise ValueError(f"{where} must be a number {self.bounds()}, got {x!r}")
        if isinstance(x, float) and math.isnan(x):
            raise ValueError(f"{where} must be a number, got NaN")
        ok = ((self.ge is None or x >= self.ge) and (self.gt is None or x > self.gt)
              and (self.le is None or x <= self.le) and (self.lt is None or x < self.lt))
        if not ok:
            raise ValueError(f"{where} must be {self.bounds()}, got {x!r}")

    def coerce(self, value: Any, where: str) -> Any:
        """Validate ``value`` (type, choices, members, bounds); raise ValueError(message) saying what is allowed."""
        want = _TYPES[self.type]
        if self.type == "float" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if self.type == "list" and isinstance(value, (str, int, float)):
            value = [value]
        if self.type in ("int", "float") and isinstance(value, bool):
            raise ValueError(f"{where} must be {self.type}, got {value!r}")
        if value is not None and not isinstance(value, want):
            raise ValueError(f"{where} must be {self.type}, got {type(value).__name__} {value!r}")
        if self.choices and value not in self.choices:
            raise ValueError(f"{where} must be one of {', '.join(map(str, self.choices))}, got {value!r}; "
                             f"{did_you_mean(value, self.choices)}")
        if isinstance(value, list):
            for item in value:
                if self.members is not None and item not in self.members:
                    raise ValueError(f"{where} has an unknown member {item!r}; {did_you_mean(item, self.members)}")
                self._check_number(item, f"each item of {where}")
        else:
            self._check_number(value, where)
        return value



def check_distinct_names(params: dict, key: str, options: Sequence, noun: str, prefix: str = "") -> None:
    """A list parameter naming some of ``options`` (members are checked by :class:`Param`) must not be empty
    nor name one twice: AuditInputError placed at ``PREFIX + key``."""
    chosen = params.get(key, list(options))
    if not isinstance(chosen, list):
        return
    if not chosen:
        raise AuditInputError(f"{key} is empty", place=f"{prefix}{key}",
                              fix=f"name at least one of: {', '.join(options)} (or leave it out)")
    dup = [m for i, m in enumerate(chosen) if m in chosen[:i]]
    if dup:
        raise AuditInputError(f"{key} names {dup[0]!r} twice", place=f"{prefix}{key}", fix=f"name each {noun} once")


def check_stop_sequences(params: dict, prefix: str = "") -> None:
    """``stop`` (generation's stop sequences) holds non-empty strings only."""
    for s in params.get("stop") or []:
        if not isinstance(s, str) or not s:
            raise AuditInputError(f"stop must be a list of non-empty strings, got {s!r}", place=f"{prefix}stop",
                                  fix='e.g. stop: ["\\n"]')

@dataclass(frozen=True)
class MetricSpec:
    """What a metric means and which direction is better.

    A metric whose name depends on the data is declared as a pattern with ``{placeholders}``, e.g.
    ``"stereotype_score.{bias_type}"``: a placeholder stands for one name part of letters, digits,
    ``_`` and ``-`` (no dots), so ``stereotype_score.sexual-orientation`` can be gated.
    """

    help: str = ""
    higher_is_better: bool | None = True


_PLACEHOLDER = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")


def _pattern(name: str) -> re.Pattern:
    parts = _PLACEHOLDER.split(name)
    return re.compile("".join(re.escape(p) + ("[A-Za-z0-9_\\-]+" if i < len(parts) - 1 else "")
                              for i, p in enumerate(parts)) + r"\Z")


_PART = re.compile(r"[^A-Za-z0-9_\-]+")
_GATE_FIELDS = ("ci_low", "ci_high", "value")


def metric_part(name) -> str:
    """A data value (group, bias type, attribute) as one metric-name part: letters, digits, ``_``, ``-``.

    Other characters become ``_`` ("Black women" -> "Black_women"); "sexual-orientation" is kept as
    is. A part that reads as a gate field (ci_low, ci_high, value) gets a trailing ``_``.
    """
    part = _PART.sub("_", str(name).strip()).strip("_") or "unknown"
    return part + "_" if part in _GATE_FIELDS else part


def metric_parts(names: Iterable) -> dict:
    """``{name: metric part}``, distinct parts for distinct names (a clash gets ``-2``, ``-3``, ...)."""
    out: dict = {}
    used: set[str] = set()
    for name in dict.fromkeys(names):
        part, k = metric_part(name), 2
        base = part
        while part in used:
            part, k = f"{base}-{k}", k + 1
        used.add(part)
        out[name] = part
    return out


def find_metric(metrics: Mapping[str, MetricSpec], name: str) -> MetricSpec | None:
    """The spec declaring metric ``name``: an exact key, else the first pattern key it matches."""
    if name in metrics:
        return metrics[name]
    for key, spec in metrics.items():
        if "{" in key and _pattern(key).match(name):
            return spec
    return None


@dataclass
class Metric:
    """One measured value with its 95% confidence bounds and sample size."""

    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    higher_is_better: bool | None = True

    def as_dict(self) -> dict:
        def num(x):
            if x is None:
                return None
            x = float(x)
            return None if math.isnan(x) else round(x, 10) if math.isfinite(x) else x
        return {"value": num(self.value), "ci_low": num(self.ci_low), "ci_high": num(self.ci_high),
                "n": None if self.n is None else int(self.n), "higher_is_better": self.higher_is_better}


@dataclass
class CheckResult:
    """What a check returns: metrics, evidence rows, figures (SVG text), per-example records."""

    metrics: dict[str, Metric] = field(default_factory=dict)
    evidence: list[dict] = field(default_factory=list)
    figures: dict[str, str] = field(default_factory=dict)
    records: dict[str, list] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, name: str, value: float, ci: tuple[float, float] | None = None, n: int | None = None,
            higher_is_better: bool | None = True) -> Metric:
        m = Metric(float(value), None if ci is None else float(ci[0]), None if ci is None else float(ci[1]),
                   n, higher_is_better)
        self.metrics[name] = m
        return m


@dataclass
class CheckContext:
    """Everything a check may use: the model under audit, its baseline, data and shared state."""

    model: "ModelHandle | None"  # None only in a run whose checks all have needs_model = False
    params: dict[str, Any]
    seed: int
    device: str
    data: "Dataset | None" = None
    baseline: "ModelHandle | None" = None
    training: dict | None = None
    run_dir: str | None = None
    base_dir: str | None = None  # the suite file's folder: relative paths in params resolve from here
    check_id: str = ""
    load_data: Callable[[str], "Dataset"] | None = None
    progress: Callable[[float], None] = lambda fraction: None
    artifacts: dict = field(default_factory=dict)
    is_baseline_pass: bool = False


class Check:
    """Base class of every check, first-party or third-party.

    Subclasses set ``name``, ``description``, ``params``, ``metrics`` and ``tasks`` and implement
    :meth:`run`. ``needs_data`` says whether the check reads a dataset (``data:`` in the suite, or
    ``default_data``).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    params: ClassVar[dict[str, Param]] = {}
    metrics: ClassVar[dict[str, MetricSpec]] = {}
    tasks: ClassVar[tuple[str, ...]] = TASKS
    needs_data: ClassVar[bool] = True
    default_data: ClassVar[str | None] = None
    #: set when the check reads the fine-tuning record (the suite must have a finetune: section)
    needs_training: ClassVar[bool] = False
    #: set when the check reads the fine-tune's validation curve (the fine-tune must have validation data)
    needs_validation: ClassVar[bool] = False
    #: set when the check compares against the baseline itself (then it is not re-run on the base)
    uses_baseline: ClassVar[bool] = False
    #: set when the check cannot run without a baseline model (the run stops with exit 2 before loading)
    requires_baseline: ClassVar[bool] = False
    #: False for a check that reads only data (e.g. data quality): a run whose checks all say so, and that
    #: has no fine-tune, loads no model (``ctx.model`` is None) and the suite may omit ``model:``
    needs_model: ClassVar[bool] = True
    #: what the check asks of the model beyond plain scoring (class logits, log-probs, generation), from
    #: :data:`CAPABILITIES`: a backend that cannot serve one of them (vLLM, an API model) is refused for
    #: this check before anything loads; :meth:`needs_for` may narrow it by the entry's parameters
    needs: ClassVar[frozenset[str]] = frozenset()
    #: the gates applied when a suite entry has no ``gates:`` key (``gates: []`` means none): a list of
    #: ``"METRIC OP VALUE"`` strings (severity fail) or ``{"when": "...", "severity": "warn"}`` dicts, or
    #: a dict ``{task: [...]}`` where they differ by task kind (``"*"`` for any other task)
    default_gates: ClassVar[Sequence | Mapping[str, Sequence]] = ()

    @classmethod
    def validate_task(cls, params: dict, task: str) -> None:
        """Check parameters against the model's task kind, before any model loads: raise AuditInputError."""

    @classmethod
    def validate_data(cls, data: "Dataset", params: dict, base_dir: str | None = None,
                      task: str | None = None) -> None:
        """Check the entry's dataset before any model loads (columns, value types): raise AuditInputError.

        ``base_dir`` is the suite's folder (a relative path in a parameter resolves from it) and ``task`` the
        model's task kind; an override may leave out either keyword, and is then called without it."""

    @classmethod
    def needs_for(cls, params: dict, task: str) -> frozenset[str]:
        """What this entry needs from the model (:attr:`needs` unless a check narrows it by its params)."""
        return frozenset(cls.needs)

    @classmethod
    def validate_params(cls, params: dict, base_dir: str | None = None, prefix: str = "") -> None:
        """Check parameter values beyond their declared ranges (a file that must load, a name it must hold).

        Called when the suite loads, before any model: raise ``AuditInputError(message, place=PREFIX + PARAM,
        fix=...)``; the suite then names the parameter's line. ``base_dir`` is the suite's folder.
        """

    @classmethod
    def validate_suite(cls, params: dict, *, has_finetune: bool, data: str | None = None, prefix: str = "") -> None:
        """Check what the entry needs from the rest of the suite (a ``finetune:`` section, a ``data:``).

        Called when the suite loads, after :meth:`validate_params`, before any model: raise
        ``AuditInputError(message, place=PREFIX + PARAM, fix=...)``.
        """

    @classmethod
    def default_gates_for(cls, task: str) -> list[tuple[str, str]]:
        """The default gates for ``task`` as ``(expression, severity)`` pairs."""
        decl = cls.default_gates
        if isinstance(decl, Mapping):
            decl = decl.get(task, decl.get("*", ()))
        out = []
        for g in decl or ():
            if isinstance(g, str):
                out.append((g, "fail"))
            elif isinstance(g, Mapping):
                out.append((g.get("when", g.get("expr")), g.get("severity", "fail")))
            else:
                expr, severity = g
                out.append((expr, severity))
        return out

    def run(self, ctx: CheckContext) -> CheckResult:  # pragma: no cover - interface
        raise NotImplementedError
