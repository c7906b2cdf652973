"""The ``junit`` reporter: junit.xml with one testcase per gate (a crashed check is one error case)."""
from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree as ET

from auditkit.hookspecs import hookimpl
from auditkit.report.common import gate_line


def render_junit(results: dict) -> bytes:
    suite_name = results["suite"]["name"]
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
        ts = ET.SubElement(root, "testsuite", name=ch["id"])
        cases = ch.get("gates") or []
        n = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        if ch.get("error") or not cases:
            tc = ET.SubElement(ts, "testcase", classname=f"{suite_name}.{ch['id']}", name=f"{ch['uses']} runs",
                               time=str(durations.get(ch["id"], 0)))
            n["tests"] += 1
            if ch.get("error"):
                err = ET.SubElement(tc, "error", type=ch["error"]["type"], message=ch["error"]["message"][:500])
                err.text = ch["error"].get("traceback", "")
                n["errors"] += 1
        for g in cases if not ch.get("error") else []:
            tc = ET.SubElement(ts, "testcase", classname=f"{suite_name}.{ch['id']}", name=g["expr"], time="0")
            n["tests"] += 1
            if g["status"] == "fail":
                ET.SubElement(tc, "failure", message=gate_line(g), type="gate")
                n["failures"] += 1
            elif g["status"] == "error":
                ET.SubElement(tc, "error", message=gate_line(g), type="gate")
                n["errors"] += 1
            elif g["status"] == "warn":
                out = ET.SubElement(tc, "system-out")
                out.text = "WARNING: " + gate_line(g)
        for k, v in n.items():
            ts.set(k, str(v))
            totals[k] += v
    for k, v in totals.items():
        root.set(k, str(v))
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def render(results: dict, out_dir: Path, options: dict) -> Path:
    path = Path(out_dir) / "junit.xml"
    path.write_bytes(render_junit(results))
    return path


@hookimpl
def auditkit_register_reporters(register):
    register("junit", render, "junit.xml, one testcase per gate")
