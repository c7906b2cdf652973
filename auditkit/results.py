"""results.json: schema ``auditkit.results/1``, written atomically with a stable key order.

Everything two runs of the same seed share is deterministic; times live in the ``run`` block only.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np

SCHEMA = "auditkit.results/1"


def _clean(obj):
    """JSON-safe copy: numpy scalars to Python, NaN/inf to None, tuples to lists."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dumps(results: dict) -> str:
    return json.dumps(_clean(results), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def write_json_atomic(path: Path, results: dict) -> Path:
    """Write to a temporary file in the same folder, then rename over the target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = dumps(results)
    fd, tmp = tempfile.mkstemp(prefix=".results-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_results(path: str | Path) -> dict:
    """Read a results.json, checking its schema; AuditInputError on anything else."""
    from auditkit.errors import AuditInputError
    p = Path(path)
    if not p.exists():
        raise AuditInputError(f"{path} does not exist", fix="give the results.json of a finished run")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise AuditInputError(f"not valid JSON ({exc})", file=str(path)) from None
    if not isinstance(data, dict) or not str(data.get("schema", "")).startswith("auditkit.results/"):
        raise AuditInputError("not an auditkit results file (no schema auditkit.results/N)", file=str(path))
    if data["schema"] != SCHEMA:
        raise AuditInputError(f"schema {data['schema']} is not supported by this auditkit ({SCHEMA})",
                              file=str(path), fix="re-run the suite with this version")
    return data
