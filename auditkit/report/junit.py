"""The ``junit`` reporter: junit.xml with one testcase per gate.

A crashed check is one error case; a check that ended with no gate (status ``info``) is one skipped
case, never a pass. Gates that came from the check's declared defaults carry a ``default`` property
and say "(default)" in their messages. Every text and attribute is cleaned of what XML 1.0 forbids
(C0 controls but tab/LF/CR, lone surrogates, U+FFFE/U+FFFF), and the C1 and bidi controls, shown instead as
``\\xNN``/``\\uNNNN``, so the file stays well-formed and reads as written whatever a suite, a model or a
dataset contains.
"""
from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree as ET

from auditkit.hookspecs import hookimpl
from auditkit.report.common import INFO_TEXT, default_mark, for_report, gate_line, visible
from auditkit.results import write_text_atomic


def xml_safe(text) -> str:
    """``text`` with every character XML 1.0 forbids (and the C1 and bidi controls) written out as
    ``\\xNN`` or ``\\uNNNN``: :func:`auditkit.report.common.visible`, keeping tab, LF and CR."""
    return visible(text, keep="\t\n\r")


def _clean_tree(root: ET.Element) -> None:
    for el in root.iter():
        for k in list(el.attrib):
            el.attrib[k] = xml_safe(el.attrib[k])
        if el.text is not None:
            el.text = xml_safe(el.text)
        if el.tail is not None:
            el.tail = xml_safe(el.tail)


def _properties(parent: ET.Element, props: dict) -> None:
    el = ET.SubElement(parent, "properties")
    for k, v in props.items():
        ET.SubElement(el, "property", name=k, value=str(v))


def render_junit(results: dict, options: dict | None = None) -> bytes:
    results = for_report(results, options)
    suite_name = str(results["suite"]["name"])
    root = ET.Element("testsuites", name=f"auditkit.{suite_name}")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    durations = (results.get("run") or {}).get("check_durations_s", {})
    if results.get("error"):  # the run stopped before its checks (e.g. the fine-tune diverged): never 0 tests
        ts = ET.SubElement(root, "testsuite", name="run", tests="1", failures="0", errors="1", skipped="0")
        tc = ET.SubElement(ts, "testcase", classname=f"{suite_name}.run", name="the audit runs", time="0")
        ET.SubElement(tc, "error", type="RunError", message=str(results["error"])[:500])
        totals["tests"] += 1
        totals["errors"] += 1
    for ch in results.get("checks", []):
        cid = str(ch["id"])
        ts = ET.SubElement(root, "testsuite", name=cid)
        _properties(ts, {"uses": ch.get("uses"), "status": ch.get("status"),
                         "default_gates": str(bool(ch.get("default_gates"))).lower()})
        cases = ch.get("gates") or []
        n = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        if ch.get("error") or not cases:
            tc = ET.SubElement(ts, "testcase", classname=f"{suite_name}.{cid}", name=f"{ch['uses']} runs",
                               time=str(durations.get(ch["id"], 0)))
            n["tests"] += 1
            if ch.get("error"):
                err = ET.SubElement(tc, "error", type=str(ch["error"]["type"]),
                                    message=str(ch["error"]["message"])[:500])
                err.text = str(ch["error"].get("traceback") or "")
                n["errors"] += 1
            else:  # status info: nothing was decided, so it is not a pass
                ET.SubElement(tc, "skipped", message=INFO_TEXT)
                n["skipped"] += 1
        for g in cases if not ch.get("error") else []:
            tc = ET.SubElement(ts, "testcase", classname=f"{suite_name}.{cid}", name=str(g["expr"]), time="0")
            if g.get("default"):
                _properties(tc, {"default": "true"})
            n["tests"] += 1
            line = gate_line(g) + default_mark(g)
            if g["status"] == "fail":
                ET.SubElement(tc, "failure", message=line, type="gate")
                n["failures"] += 1
            elif g["status"] == "error":
                ET.SubElement(tc, "error", message=line, type="gate")
                n["errors"] += 1
            elif g["status"] == "warn":
                out = ET.SubElement(tc, "system-out")
                out.text = "WARNING: " + line
        for k, v in n.items():
            ts.set(k, str(v))
            totals[k] += v
    for k, v in totals.items():
        root.set(k, str(v))
    _clean_tree(root)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def render(results: dict, out_dir: Path, options: dict) -> Path:
    return write_text_atomic(Path(out_dir) / "junit.xml", render_junit(results, options))


@hookimpl
def auditkit_register_reporters(register):
    register("junit", render, "junit.xml, one testcase per gate")
