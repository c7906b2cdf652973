"""The public API a check plugin is written against.

A check is a class with a ``name``, typed ``params`` (with defaults), the ``metrics`` it emits and
a ``run(ctx)`` method that receives one :class:`CheckContext` and returns one :class:`CheckResult`.
It never writes files and never prints: the runner and the reporters do that.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

if TYPE_CHECKING:  # pragma: no cover
    from auditkit.data import Dataset
    from auditkit.models import ModelHandle

TASKS = ("sequence-classification", "causal-lm")
_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict}


@dataclass(frozen=True)
class Param:
    """A typed check parameter with a default; ``type`` is one of int, float, str, bool, list, dict."""

    type: str = "str"
    default: Any = None
    help: str = ""
    choices: tuple | None = None
    required: bool = False

    def coerce(self, value: Any, where: str) -> Any:
        """Validate ``value``; raise ValueError(message) naming the expected type."""
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
            raise ValueError(f"{where} must be one of {', '.join(map(str, self.choices))}, got {value!r}")
        return value


@dataclass(frozen=True)
class MetricSpec:
    """What a metric means and which direction is better."""

    help: str = ""
    higher_is_better: bool | None = True


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

    model: "ModelHandle"
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
    #: set when the check compares against the baseline itself (then it is not re-run on the base)
    uses_baseline: ClassVar[bool] = False
    #: set when the check cannot run without a baseline model (the run stops with exit 2 before loading)
    requires_baseline: ClassVar[bool] = False

    def run(self, ctx: CheckContext) -> CheckResult:  # pragma: no cover - interface
        raise NotImplementedError
