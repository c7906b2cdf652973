"""``auditkit compare A/results.json B/results.json``: what changed from run A to run B.

- every metric the two runs share (same check id, same check), side by side with its delta B - A;
- where both runs stored per-example ``records`` of the same length for the same data, a paired test:
  McNemar's test (exact binomial when b + c <= 25) for 0/1 correctness records, a paired bootstrap of
  the mean difference otherwise (``auditkit.stats``). A record applies to the metrics it is the mean of
  (checked on both runs) or to the metric of the same name; the bootstrap also gives the delta's 95% CI;
- a change is significant when that test's p-value is below 0.05; regressions (the delta goes the wrong
  way for the metric's ``higher_is_better``) are listed first, significant ones before the others;
- comparison gates, ``--fail-on "METRIC OP VALUE"`` (parsed by :mod:`auditkit.gates`, never eval-ed), are
  conditions on the delta that FAIL the comparison when they hold: ``--fail-on "accuracy < -0.01"`` exits
  1 when accuracy dropped by more than 0.01. ``METRIC`` may be prefixed with a check id
  (``accuracy.macro_f1``) and suffixed with ``.ci_low``/``.ci_high`` (the delta's CI bounds);
- a check whose status got worse (pass -> warn -> fail -> error; ``info`` ranks with ``pass``), or that A has
  and B lacks, is a regression too: it is counted with the metric regressions, named in the headline with
  B's status, and makes the comparison ``warn`` (the exit code stays 0: only ``--fail-on`` exits 1);
- a ``--fail-on`` on a metric that B lacks because B's check errored or is absent FAILS; on a metric that
  only one run has for another reason it is an ERROR gate (which fails the comparison too); on a metric
  that neither run has it is bad input (exit 2, with the closest names);
- comparison.html (the report's style), comparison.md and comparison.json, by default next to B.

Runs of different suites or schema versions are not comparable: AuditInputError (exit 2).
"""
from __future__ import annotations

import math
from difflib import get_close_matches
from pathlib import Path

import numpy as np

from auditkit.errors import AuditInputError
from auditkit.gates import GateSyntaxError, evaluate, parse_gate
from auditkit.report.common import INFO_TEXT, fmt, md_cell, md_code
from auditkit.results import load_results, output_folder, write_json_atomic, write_text_atomic
from auditkit.stats import mcnemar, paired_bootstrap

ALPHA = 0.05
GROUPS = ("regression", "changed", "improvement", "unchanged", "missing")
COMPARISON_SCHEMA = "auditkit.comparison/1"
#: how bad a check's status is; a check absent from a run ranks with ``error``, an unknown status too
STATUS_RANK = {"pass": 0, "info": 0, "warn": 1, "fail": 2, "error": 3}


# ---------------------------------------------------------------------- paired tests

def _numeric(values) -> np.ndarray | None:
    if not isinstance(values, list) or not values:
        return None
    if not all(isinstance(v, (int, float)) and v is not None and math.isfinite(float(v)) for v in values):
        return None
    return np.asarray(values, dtype=float)


def paired_tests(records_a: dict | None, records_b: dict | None, seed: int = 0) -> tuple[dict, list[str]]:
    """Per record key both runs share: the paired test of B against A, and notes on what was skipped."""
    tests, notes = {}, []
    records_a, records_b = records_a or {}, records_b or {}
    for key in records_b:
        if key not in records_a:
            continue
        xa, xb = _numeric(records_a[key]), _numeric(records_b[key])
        if xa is None or xb is None:
            continue
        if xa.size != xb.size:
            notes.append(f"records {key!r} have {xa.size} vs {xb.size} examples: no paired test")
            continue
        boot = paired_bootstrap(xa, xb, seed=seed)
        test = {"record": key, "n": int(xa.size), "mean_a": float(xa.mean()), "mean_b": float(xb.mean()),
                "delta": boot["delta"], "ci_low": boot["ci_low"], "ci_high": boot["ci_high"]}
        if set(np.unique(np.concatenate([xa, xb]))) <= {0.0, 1.0}:
            mc = mcnemar(xa, xb)
            test.update(test=f"McNemar ({mc['method']})", p_value=mc["p_value"], b=mc["b"], c=mc["c"])
        else:
            test.update(test="paired bootstrap", p_value=boot["p_value"])
        test["significant"] = bool(test["p_value"] < ALPHA)
        tests[key] = test
    return tests, notes


def _test_for(name: str, ma: dict, mb: dict, tests: dict) -> dict | None:
    """The paired test that applies to metric ``name``: a record of that name, or one whose mean it is."""
    if name in tests:
        return tests[name]
    va, vb = ma.get("value"), mb.get("value")
    if va is None or vb is None:
        return None
    for t in tests.values():
        if abs(t["mean_a"] - float(va)) <= 1e-9 and abs(t["mean_b"] - float(vb)) <= 1e-9:
            return t
    return None


# ---------------------------------------------------------------------- the comparison

def _direction(delta: float | None, hib) -> str:
    if delta is None:
        return "missing"
    if abs(delta) <= 1e-12:
        return "unchanged"
    if hib is None:
        return "changed"
    return "improvement" if (delta > 0) == bool(hib) else "regression"


def _status_direction(in_a: bool, sa, in_b: bool, sb) -> str:
    """How a check's status ``sa`` in run A became ``sb`` in run B; a check that B lacks ranks with
    ``error``, a check new in B is ``new``."""
    if not in_a:
        return "new"
    ra, rb = STATUS_RANK.get(sa, 3), STATUS_RANK.get(sb, 3) if in_b else 3
    return "regression" if rb > ra else "improvement" if rb < ra else "unchanged"


def _why_uncompared(cid: str, side: str, present: bool, status) -> str:
    """Why run ``side`` ("A" or "B") has no value for a metric of check ``cid`` that the other run has."""
    if not present:
        return f"check {cid!r} is not in {side}"
    if status == "error":
        return f"check {cid!r} errored in {side}"
    return f"check {cid!r} has no such metric in {side}"


def _check_comparable(a: dict, b: dict, path_a: str, path_b: str) -> None:
    if a.get("schema") != b.get("schema"):
        raise AuditInputError(f"the runs have different schema versions ({a.get('schema')} vs {b.get('schema')})",
                              file=path_b, fix="re-run both suites with the same auditkit version")
    sa, sb = (a.get("suite") or {}).get("name"), (b.get("suite") or {}).get("name")
    if sa != sb:
        raise AuditInputError(f"the runs are of different suites ({sa!r} in {path_a}, {sb!r} in {path_b})",
                              file=path_b, fix="compare two runs of the same suite")


def compare_results(a: dict, b: dict, *, path_a: str = "A", path_b: str = "B", seed: int = 0) -> dict:
    """The comparison of run B against run A as a JSON-ready dict (rows sorted regressions first)."""
    _check_comparable(a, b, path_a, path_b)
    checks_a = {c["id"]: c for c in a.get("checks", [])}
    checks_b = {c["id"]: c for c in b.get("checks", [])}
    rows, notes, only_a, only_b, tests_out, uncompared = [], [], [], [], [], []

    def lacking(cid, names, side, status):
        # lost_in_b: B lacks it because B's check errored or is absent, which fails any --fail-on on it
        present = cid in (checks_b if side == "B" else checks_a)
        lost = side == "B" and (not present or status == "error")
        uncompared.extend({"check": cid, "metric": m, "missing_in": side, "lost_in_b": lost,
                           "reason": _why_uncompared(cid, side, present, status)} for m in names)

    for cid, cb in checks_b.items():
        ca = checks_a.get(cid)
        if ca is None:
            only_b += [f"{cid}.{m}" for m in cb.get("metrics", {})] or [cid]
            lacking(cid, cb.get("metrics", {}), "A", None)
            continue
        if ca.get("uses") != cb.get("uses"):
            notes.append(f"check {cid!r} uses {ca.get('uses')!r} in A but {cb.get('uses')!r} in B: not compared")
            uncompared += [{"check": cid, "metric": m, "missing_in": None,
                            "lost_in_b": False,
                            "reason": f"check {cid!r} uses {ca.get('uses')!r} in A but {cb.get('uses')!r} in B"}
                           for m in dict.fromkeys(list(ca.get("metrics", {})) + list(cb.get("metrics", {})))]
            continue
        tests, skipped = {}, []
        if ca.get("data") == cb.get("data"):
            tests, skipped = paired_tests(ca.get("records"), cb.get("records"), seed)
        elif ca.get("records") and cb.get("records"):
            skipped = [f"data differs ({ca.get('data')} vs {cb.get('data')}): no paired test"]
        notes += [f"{cid}: {s}" for s in skipped]
        tests_out += [dict(t, check=cid) for t in tests.values()]
        ma_all, mb_all = ca.get("metrics", {}), cb.get("metrics", {})
        only_a += [f"{cid}.{m}" for m in ma_all if m not in mb_all]
        only_b += [f"{cid}.{m}" for m in mb_all if m not in ma_all]
        lacking(cid, [m for m in ma_all if m not in mb_all], "B", cb.get("status"))
        lacking(cid, [m for m in mb_all if m not in ma_all], "A", ca.get("status"))
        for name, mb in mb_all.items():
            ma = ma_all.get(name)
            if ma is None:
                continue
            va, vb = ma.get("value"), mb.get("value")
            delta = None if va is None or vb is None else float(vb) - float(va)
            hib = mb.get("higher_is_better", ma.get("higher_is_better"))
            t = _test_for(name, ma, mb, tests)
            rows.append({
                "check": cid, "metric": name, "a": va, "b": vb, "delta": delta,
                "rel_delta": None if delta is None or not va else delta / abs(float(va)),
                "ci_low": t["ci_low"] if t else None, "ci_high": t["ci_high"] if t else None,
                "a_ci": [ma.get("ci_low"), ma.get("ci_high")], "b_ci": [mb.get("ci_low"), mb.get("ci_high")],
                "higher_is_better": hib, "direction": _direction(delta, hib),
                "test": t["test"] if t else None, "p_value": t["p_value"] if t else None,
                "significant": t["significant"] if t else None, "n": t["n"] if t else mb.get("n"),
            })
    only_a += [f"{cid}.{m}" for cid, ca in checks_a.items() if cid not in checks_b for m in ca.get("metrics", {})]
    only_a += [cid for cid, ca in checks_a.items() if cid not in checks_b and not ca.get("metrics")]
    for cid, ca in checks_a.items():
        if cid not in checks_b:
            lacking(cid, ca.get("metrics", {}), "B", None)

    def order(r):
        rel = abs(r["rel_delta"]) if r["rel_delta"] is not None else abs(r["delta"] or 0.0)
        return (GROUPS.index(r["direction"]), not r["significant"], -rel, r["check"], r["metric"])

    rows.sort(key=order)
    statuses = []
    for cid in list(checks_a) + [c for c in checks_b if c not in checks_a]:
        sa, sb = (checks_a.get(cid) or {}).get("status"), (checks_b.get(cid) or {}).get("status")
        statuses.append({"check": cid, "a": sa, "b": sb,
                         "direction": _status_direction(cid in checks_a, sa, cid in checks_b, sb)})
    summary = {g: sum(1 for r in rows if r["direction"] == g) for g in GROUPS}
    summary["significant_regressions"] = sum(1 for r in rows if r["direction"] == "regression" and r["significant"])
    # a check whose status changed counts with the metrics: a crash in B is a regression, never "unchanged"
    summary["check_regressions"] = sum(1 for x in statuses if x["direction"] == "regression")
    summary["check_improvements"] = sum(1 for x in statuses if x["direction"] == "improvement")
    summary["regression"] += summary["check_regressions"]
    summary["improvement"] += summary["check_improvements"]
    return {
        "schema": COMPARISON_SCHEMA,
        "suite": (b.get("suite") or {}).get("name"),
        "a": _run_info(a, path_a), "b": _run_info(b, path_b),
        "summary": summary, "rows": rows, "tests": tests_out, "check_status": statuses,
        "only_in_a": only_a, "only_in_b": only_b, "uncompared": uncompared, "notes": notes, "gates": [],
        "status": "warn" if summary["check_regressions"] else "pass",
    }


def _run_info(r: dict, path: str) -> dict:
    model = r.get("model") or {}
    return {"path": str(path), "status": r.get("status"), "model": model.get("id"),
            "fingerprint": model.get("fingerprint"), "baseline": (r.get("baseline") or {}).get("id"),
            "started": (r.get("run") or {}).get("started")}


# ---------------------------------------------------------------------- comparison gates

def _delta_metrics(rows: list[dict], uncompared: list[dict] = ()) -> tuple[dict, dict]:
    """Every metric either run has, addressable as CHECK.METRIC, plus bare METRIC -> [(check, full name)].
    A shared metric maps to its delta dict, one that a run lacks to its ``uncompared`` entry."""
    by_full, owners = {}, {}
    for r in rows:
        full = f"{r['check']}.{r['metric']}"
        by_full[full] = {"value": r["delta"], "ci_low": r["ci_low"], "ci_high": r["ci_high"]}
        owners.setdefault(r["metric"], []).append((r["check"], full))
    for u in uncompared:
        full = f"{u['check']}.{u['metric']}"
        if full not in by_full:
            by_full[full] = {"uncompared": u}
            owners.setdefault(u["metric"], []).append((u["check"], full))
    return by_full, owners


def _unknown_metric(expr: str, name: str, by_full: dict, owners: dict) -> AuditInputError:
    """A gate on a metric neither run has (a typo): exit 2 with the closest names. No report is written
    then, so the message lists the names itself."""
    names = list(dict.fromkeys(list(owners) + list(by_full)))
    near = get_close_matches(name, names, n=3, cutoff=0.6)
    if near:
        fix = "did you mean " + " or ".join(repr(n) for n in near) + "?"
    elif names:
        shown = sorted(by_full)[:8]
        fix = "the metrics are: " + ", ".join(shown) + (f", … ({len(by_full)} in all)" if len(by_full) > 8 else "")
    else:
        fix = "the runs have no metrics"
    return AuditInputError(f"{expr!r}: neither run has a metric {name!r}", place="--fail-on", fix=fix)


def apply_gates(comparison: dict, exprs: list[str]) -> list[dict]:
    """Decide each ``--fail-on`` condition on the deltas; a condition that holds FAILS the comparison.

    A metric that B lacks because B's check errored or is absent FAILS the gate (a crash never passes a
    release gate); one that only one run has for another reason gives an ERROR gate (it fails too)."""
    by_full, owners = _delta_metrics(comparison["rows"], comparison.get("uncompared", []))
    records = []
    for expr in exprs:
        try:
            gate = parse_gate(expr)
        except GateSyntaxError as exc:
            raise AuditInputError(f"bad comparison gate: {exc}", place="--fail-on",
                                  fix="write METRIC OP VALUE on the delta B - A, e.g. 'accuracy < -0.01'") from None
        metrics, lacking = {}, []
        for ref in gate.refs():
            if ref.baseline:
                raise AuditInputError(f"{expr!r}: baseline.* has no meaning in a comparison", place="--fail-on",
                                      fix="compare the delta with a number, e.g. 'accuracy < -0.01'")
            if ref.metric in by_full:
                found = by_full[ref.metric]
            elif ref.metric in owners:
                checks = list(dict.fromkeys(c for c, _ in owners[ref.metric]))
                if len(checks) > 1:
                    raise AuditInputError(f"{expr!r}: metric {ref.metric!r} is in several checks ({', '.join(checks)})",
                                          place="--fail-on", fix=f"prefix it with the check id, e.g. "
                                                                 f"'{checks[0]}.{ref.metric}'")
                found = by_full[owners[ref.metric][0][1]]
            else:
                raise _unknown_metric(expr, ref.metric, by_full, owners)
            if "uncompared" in found:
                lacking.append(found["uncompared"])
            else:
                metrics[ref.metric] = found
        if lacking:
            u = lacking[0]
            crashed = any(x.get("lost_in_b") for x in lacking)
            records.append({"expr": gate.expr, "severity": "fail", "status": "fail" if crashed else "error",
                            "observed": None, "threshold": None,
                            "reason": f"{u['check']}.{u['metric']} has no delta: {u['reason']}"})
            continue
        rec = evaluate(gate, metrics, None)
        for ref in gate.refs():
            if ref.field != "value" and metrics[ref.metric].get(ref.field) is None:
                rec["reason"] = (f"the delta of {ref.metric} has no confidence interval (the runs share no "
                                 "per-example records for it)")
        holds = rec["status"] == "pass"
        status = "error" if rec["status"] == "error" else ("fail" if holds else "pass")
        records.append({"expr": gate.expr, "severity": "fail", "status": status, "observed": rec["observed"],
                        "threshold": rec["threshold"], "reason": rec["reason"] or
                        ("the condition holds on the delta B - A" if holds else None)})
    return records


# ---------------------------------------------------------------------- output

def _pct(r: dict) -> str:
    return "" if r.get("rel_delta") is None else f" ({r['rel_delta'] * 100:+.1f}%)"


def signed(x) -> str:
    if x is None:
        return "–"
    return ("+" if x > 0 else "") + fmt(float(x))


def render_markdown(c: dict) -> str:
    icon = {"regression": "🔻", "improvement": "🔺", "changed": "↔", "unchanged": "=", "missing": "?"}
    s = c["summary"]
    lines = [f"# auditkit compare: {md_cell(c['suite'])} — {c['status'].upper()}", "",
             f"A: {md_code(c['a']['path'])} (model {md_code(c['a']['model'])}, {_run_status(c['a']['status'])})  ",
             f"B: {md_code(c['b']['path'])} (model {md_code(c['b']['model'])}, {_run_status(c['b']['status'])})", "",
             f"{_counts(s)}, {s['changed']} changed, {s['unchanged']} unchanged. Deltas are B - A; "
             f"significance: paired test p < {ALPHA}.", ""]
    worse = [x for x in c["check_status"] if x.get("direction") == "regression"]
    if worse:
        lines += ["**Checks that got worse in B:** " + ", ".join(
            f"{md_code(x['check'])} {md_cell(_check_status(x['a']))} → **{md_cell(_check_status(x['b']))}**"
            for x in worse), ""]
    if c["gates"]:
        lines += ["| comparison gate (fails when true) | delta | status |", "|---|---|---|"]
        for g in c["gates"]:
            lines.append(f"| {md_cell(g['expr'])} | {md_cell(fmt(g['observed']))} | {g['status'].upper()}"
                         + (f": {md_cell(g['reason'])}" if g.get("reason") and g["status"] != "pass" else "") + " |")
        lines.append("")
    lines += ["| | check | metric | A | B | delta | delta 95% CI | test | p | significant |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in c["rows"]:
        ci = f"[{signed(r['ci_low'])}, {signed(r['ci_high'])}]" if r["ci_low"] is not None else ""
        sig = "–" if r["significant"] is None else ("yes" if r["significant"] else "no")
        lines.append(f"| {icon[r['direction']]} {r['direction']} | {md_cell(r['check'])} | {md_cell(r['metric'])} | "
                     f"{md_cell(fmt(r['a'], 6))} | {md_cell(fmt(r['b'], 6))} | {md_cell(signed(r['delta']) + _pct(r))} | "
                     f"{md_cell(ci)} | {md_cell(r['test'] or '–')} | {md_cell(fmt(r['p_value']))} | {sig} |")
    changed = [x for x in c["check_status"] if x["a"] != x["b"]]
    if changed:
        lines += ["", "| check | status A | status B | change |", "|---|---|---|---|"]
        lines += [f"| {md_cell(x['check'])} | {md_cell(_run_status(x['a']))} | {md_cell(_run_status(x['b']))} | "
                  f"{md_cell(x.get('direction') or '')} |" for x in changed]
    for label, key in (("Only in A", "only_in_a"), ("Only in B", "only_in_b")):
        if c[key]:
            lines += ["", f"**{label}:** " + ", ".join(md_code(m) for m in c[key])]
    if c["notes"]:
        lines += [""] + [f"- {md_cell(n)}" for n in c["notes"]]
    return "\n".join(lines) + "\n"


def _counts(s: dict) -> str:
    """``N regressions (K checks got worse, S significant), M improvements``."""
    parts = [f"{s.get('check_regressions', 0)} check{'s' if s.get('check_regressions', 0) != 1 else ''} "
             "got worse"] if s.get("check_regressions") else []
    parts.append(f"{s['significant_regressions']} significant")
    return f"{s['regression']} regressions ({', '.join(parts)}), {s['improvement']} improvements"


def _check_status(status) -> str:
    """A check's status in one run, ``absent`` where the run lacks the check."""
    return "absent" if status is None else str(status)


def _run_status(status) -> str:
    """A run's or a check's status as text; ``info`` says that nothing was decided (never a pass)."""
    if not status:
        return "–"
    return f"info ({INFO_TEXT})" if status == "info" else str(status)


def render_html(c: dict) -> str:
    from auditkit.report.html import render_html as render
    return render(c, template="comparison.html.j2", signed=signed, alpha=ALPHA)


def write_outputs(c: dict, out: Path, refuse_link: bool = True) -> list[Path]:
    output_folder(out, refuse_link=refuse_link)
    md, html = out / "comparison.md", out / "comparison.html"
    write_text_atomic(md, render_markdown(c))
    write_text_atomic(html, render_html(c))
    js = write_json_atomic(out / "comparison.json", c)
    return [html, md, js]


def run_compare(args) -> int:
    """The ``compare`` command: 0 no comparison gate failed, 1 one did, 2 bad input."""
    a = load_results(args.a)
    b = load_results(args.b)
    comparison = compare_results(a, b, path_a=str(args.a), path_b=str(args.b))
    comparison["gates"] = apply_gates(comparison, list(getattr(args, "fail_on", None) or []))
    failed = [g for g in comparison["gates"] if g["status"] != "pass"]
    if failed:
        comparison["status"] = "fail"  # else it stays "warn" where a check got worse, "pass" otherwise
    out = Path(args.out) if getattr(args, "out", None) else Path(args.b).parent
    written = write_outputs(comparison, out, refuse_link=bool(getattr(args, "out", None)))
    s = comparison["summary"]
    from auditkit.report.common import visible  # ids and metric names come from suites and plugins
    print(visible(f"{_counts(s)}, {s['unchanged']} unchanged"))
    for x in [x for x in comparison["check_status"] if x["direction"] == "regression"][:10]:
        print(visible(f"  regression check {x['check']}: {_check_status(x['a'])} -> {_check_status(x['b'])}"))
    for r in [r for r in comparison["rows"] if r["direction"] == "regression"][:10]:
        sig = "" if r["significant"] is None else (" significant" if r["significant"] else " not significant")
        print(visible(f"  regression {r['check']}.{r['metric']}: {fmt(r['a'], 6)} -> {fmt(r['b'], 6)} "
                      f"({signed(r['delta'])}{', p=' + fmt(r['p_value']) + sig if r['p_value'] is not None else ''})"))
    for g in comparison["gates"]:
        print(visible(f"{g['status'].upper()} --fail-on {g['expr']!r} (delta {fmt(g['observed'])})"
                      + (f": {g['reason']}" if g["status"] != "pass" and g.get("reason") else "")))
    print(visible(f"comparison written to {out}/ ({', '.join(p.name for p in written)})"))
    return 1 if failed else 0
