"""Gates: ``METRIC OP VALUE`` parsed by a small grammar (never ``eval``-ed).

Grammar::

    gate  := ref OP value
    value := term ('*' NUMBER)? (('+' | '-') NUMBER)?
    term  := NUMBER | ref
    ref   := ['baseline.'] NAME ['.ci_low' | '.ci_high' | '.value']
    OP    := '>=' | '<=' | '>' | '<' | '==' | '!='

``NAME`` may contain dots (``random.comprehensiveness``). A NaN or missing metric makes the gate
ERROR, never PASS. ``latency_p95 <= baseline.latency_p95 * 1.2`` scales a reference before the offset.
"""
from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass

OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
       "==": operator.eq, "!=": operator.ne}
SEVERITIES = ("fail", "warn")
_TOKEN = re.compile(r"\s*(?:(?P<op>>=|<=|==|!=|>|<)|(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?%?)"
                    r"|(?P<ref>[A-Za-z_][A-Za-z0-9_.\-]*)|(?P<sign>[-+])|(?P<mul>\*))")
_FIELDS = ("ci_low", "ci_high", "value")


class GateSyntaxError(ValueError):
    """A gate that does not follow the grammar; the message says what was expected."""


@dataclass(frozen=True)
class Ref:
    metric: str
    field: str = "value"
    baseline: bool = False

    def text(self) -> str:
        s = ("baseline." if self.baseline else "") + self.metric
        return s if self.field == "value" else f"{s}.{self.field}"


@dataclass(frozen=True)
class Gate:
    expr: str
    left: Ref
    op: str
    right: Ref | float
    offset: float = 0.0
    severity: str = "fail"
    scale: float = 1.0
    #: a check's default gate (applied because the suite entry had no ``gates:`` key)
    default: bool = False

    def refs(self) -> list[Ref]:
        return [r for r in (self.left, self.right) if isinstance(r, Ref)]

    @property
    def needs_baseline(self) -> bool:
        return any(r.baseline for r in self.refs())


def _ref(text: str) -> Ref:
    baseline = text.startswith("baseline.")
    if baseline:
        text = text[len("baseline."):]
    field = "value"
    for f in _FIELDS:
        if text.endswith("." + f):
            field, text = f, text[: -len(f) - 1]
    if not text:
        raise GateSyntaxError("empty metric name")
    return Ref(text, field, baseline)


def _number(text: str) -> float:
    if text.endswith("%"):
        return float(text[:-1]) / 100.0
    return float(text)


def parse_gate(expr: str, severity: str = "fail", default: bool = False) -> Gate:
    """Parse one gate expression; raise GateSyntaxError with a readable reason."""
    if severity not in SEVERITIES:
        raise GateSyntaxError(f"severity must be fail or warn, got {severity!r}")
    if not isinstance(expr, str) or not expr.strip():
        raise GateSyntaxError("a gate must be a string like 'accuracy >= 0.8'")
    tokens, pos = [], 0
    while pos < len(expr):
        if expr[pos:].strip() == "":
            break
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise GateSyntaxError(f"unexpected {expr[pos:].strip()[:12]!r} in gate {expr!r}")
        kind = m.lastgroup
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    # merge "- 0.1" written as sign + number
    shape = [k for k, _ in tokens]
    usage = "expected METRIC OP VALUE, e.g. 'accuracy >= 0.85' or 'accuracy >= baseline.accuracy - 0.01'"
    if len(tokens) < 3 or shape[0] != "ref" or shape[1] != "op":
        raise GateSyntaxError(f"{usage}; got {expr!r}")
    left = _ref(tokens[0][1])
    if left.baseline:
        raise GateSyntaxError(f"the left side must be a metric of the model under audit, got {tokens[0][1]!r}")
    op = tokens[1][1]
    rest = tokens[2:]
    if rest[0][0] == "num":
        right: Ref | float = _number(rest[0][1])
    elif rest[0][0] == "ref":
        right = _ref(rest[0][1])
    else:
        raise GateSyntaxError(f"{usage}; got {expr!r}")
    offset, scale = 0.0, 1.0
    tail = rest[1:]
    if tail and isinstance(right, float):
        raise GateSyntaxError(f"only a metric reference takes '* N', '+ N' or '- N'; got {expr!r}")
    if tail and tail[0][0] == "mul":
        if len(tail) < 2 or tail[1][0] != "num" or tail[1][1].endswith("%"):
            raise GateSyntaxError(f"'*' takes a number, e.g. 'baseline.latency_p95 * 1.2'; got {expr!r}")
        scale = _number(tail[1][1])
        tail = tail[2:]
    if tail:
        if len(tail) == 1 and tail[0][0] == "num" and tail[0][1][0] in "+-":
            offset = _number(tail[0][1])
        elif len(tail) == 2 and tail[0][0] == "sign" and tail[1][0] == "num":
            offset = _number(tail[1][1]) * (-1 if tail[0][1] == "-" else 1)
        else:
            raise GateSyntaxError(f"{usage}; got {expr!r}")
    return Gate(expr.strip(), left, op, right, offset, severity, scale, default)


def lookup(metrics: dict, ref: Ref) -> float | None:
    """The number a reference points at in a ``{name: metric-dict}`` mapping, or None."""
    m = metrics.get(ref.metric)
    if m is None:
        return None
    v = m.get(ref.field)
    if v is None:
        return None
    v = float(v)
    # NaN and +-inf decide nothing: results.json cannot hold an infinity, and a gate must not pass on a
    # value the stored results show as missing
    return v if math.isfinite(v) else None


def evaluate(gate: Gate, metrics: dict, baseline: dict | None) -> dict:
    """Decide a gate against metric dicts; returns the gate's record for results.json."""
    record = {"expr": gate.expr, "severity": gate.severity, "status": "error", "observed": None,
              "threshold": None, "reason": None, "default": gate.default}

    def resolve(ref: Ref) -> float | None:
        source = baseline if ref.baseline else metrics
        if source is None:
            record["reason"] = f"{ref.text()} needs a baseline model (finetune:, model.baseline or --baseline)"
            return None
        v = lookup(source, ref)
        if v is None:
            raw = (source.get(ref.metric) or {}).get(ref.field)
            record["reason"] = (f"{ref.text()} is {float(raw)}, not a finite number" if raw is not None
                                and not math.isnan(float(raw)) else f"{ref.text()} is missing or NaN")
        return v

    left = resolve(gate.left)
    right = gate.right if isinstance(gate.right, float) else resolve(gate.right)
    if left is None or right is None:
        record["observed"] = left
        return record
    threshold = right * gate.scale + gate.offset
    record["observed"] = round(left, 10)
    record["threshold"] = round(threshold, 10)
    ok = OPS[gate.op](left, threshold)
    record["status"] = "pass" if ok else gate.severity
    return record
