"""The ``json`` reporter: results.json itself (atomic, stable key order; secrets redacted unless shown)."""
from __future__ import annotations

from pathlib import Path

from auditkit.hookspecs import hookimpl
from auditkit.report.common import for_report
from auditkit.results import write_json_atomic


def render(results: dict, out_dir: Path, options: dict) -> Path:
    return write_json_atomic(Path(out_dir) / "results.json", for_report(results, options))


@hookimpl
def auditkit_register_reporters(register):
    register("json", render, "results.json, the machine-readable result")
