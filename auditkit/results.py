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


def _proc_umask() -> int | None:
    """This process's umask from ``/proc/self/status`` (Linux 4.7+), read without changing it; None
    where it cannot be read."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _import_umask() -> int:
    mask = _proc_umask()
    if mask is None:  # no /proc: set and restore it once, at import (before any writer thread runs)
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


_IMPORT_UMASK = _import_umask()


def _umask() -> int:
    """The process umask, never changed to read it (``os.umask(0)`` then back would race between the
    threads that write: a file could get mode 0666, or the umask stay 0); the umask at import where
    ``/proc`` is missing."""
    mask = _proc_umask()
    return _IMPORT_UMASK if mask is None else mask


def output_folder(out: str | Path, place: str = "--out", refuse_link: bool = True) -> Path:
    """The folder reports are written to, created if missing. A ``--out`` the user gave that is a symbolic
    link is refused (AuditInputError): the reports would land, and the stale ones be removed, wherever it
    points. ``refuse_link=False`` where the folder is the one an input was read from (compare, report)."""
    from auditkit.errors import AuditInputError
    out = Path(out)
    if refuse_link and out.is_symlink():
        raise AuditInputError(f"the output folder {out} is a symbolic link (to {os.readlink(out)}); auditkit does "
                              "not write through links", place=place, fix="give --out the real folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way, or no permission
        raise AuditInputError(f"the output folder {out} is not writable ({exc.strerror or exc})", place=place,
                              fix="give --out a folder you can write to") from None
    return out


def write_text_atomic(path: str | Path, data: str | bytes, *, private: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, renamed into place.

    ``os.replace`` swaps the directory entry, so a symlink at ``path`` is replaced by the new file and its
    target is never written through; readers see the old file or the new one, never half of one. The file
    gets the usual permissions (0666 less the umask), or 0600 when ``private`` (a cache that may hold what
    the reports redact). Text is UTF-8.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a lone surrogate (text decoded with surrogateescape) cannot be UTF-8: written as \udcxx, not a crash
    raw = data.encode("utf-8", errors="backslashreplace") if isinstance(data, str) else bytes(data)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fchmod(fh.fileno(), 0o600 if private else 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json_atomic(path: Path, results: dict) -> Path:
    """results.json (or any JSON-ready dict), written by :func:`write_text_atomic`."""
    return write_text_atomic(path, dumps(results))


# ---------------------------------------------------------------------- secrets

#: evidence columns (or plain evidence keys) that hold a secret wherever they appear: a canary's secret and
#: the model's continuation of a canary prefix. A check names any others in its table's ``secret_columns``.
SECRET_COLUMNS = frozenset({"secret", "secrets", "greedy continuation"})
REDACTED = "[redacted]"
REDACTED_NOTE = " (secrets redacted; re-render with --show-secrets to see them)"


def redact_secrets(results: dict) -> dict:
    """A copy of ``results`` whose evidence holds no secret (the input is not changed).

    The convention, in the results structure: an evidence item with ``"secret": true`` is dropped whole
    (a titled, empty table stays in its place); in a table (``{"title", "rows"}``) the cells of the columns
    it lists in ``"secret_columns"``, and of the columns named in :data:`SECRET_COLUMNS`, become
    ``"[redacted]"``; the same keys of a plain evidence row too. Checks already leave secrets out unless the
    run had ``--show-secrets``; this keeps a report re-rendered without it from showing them.
    """
    checks = results.get("checks") or []
    if not any(c.get("evidence") for c in checks):
        return results
    out = dict(results)
    out["checks"] = [dict(c, evidence=_redact_evidence(c["evidence"])) if c.get("evidence") else c
                     for c in checks]
    return out


def _redact_evidence(evidence: list) -> list:
    items = []
    for item in evidence:
        if not isinstance(item, dict):
            items.append(item)
            continue
        if item.get("secret") is True:
            items.append({"title": str(item.get("title") or "Evidence") + REDACTED_NOTE, "rows": []})
            continue
        if isinstance(item.get("rows"), list):
            secret = SECRET_COLUMNS | set(item.get("secret_columns") or ())
            hit = any(isinstance(r, dict) and secret & set(r) for r in item["rows"])
            if hit:
                title = str(item.get("title") or "Evidence")
                item = dict(item, rows=[_redact_row(r, secret) for r in item["rows"]],
                            title=title if "redacted" in title else title + REDACTED_NOTE)
            items.append(item)
            continue
        items.append(_redact_row(item, SECRET_COLUMNS | set(item.get("secret_columns") or ())))
    return items


def _redact_row(row, secret: set):
    if not isinstance(row, dict) or not secret & set(row):
        return row
    return {k: (REDACTED if k in secret and v is not None else v) for k, v in row.items()}


def load_results(path: str | Path) -> dict:
    """Read a results.json, checking its schema; AuditInputError on anything else."""
    from auditkit.errors import AuditInputError
    p = Path(path)
    if not p.exists():
        raise AuditInputError(f"{path} does not exist", fix="give the results.json of a finished run")
    if p.is_dir():
        raise AuditInputError(f"{path} is a folder", fix=f"give the results.json inside it: {p / 'results.json'}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise AuditInputError(f"not valid JSON ({exc})", file=str(path)) from None
    except OSError as exc:
        raise AuditInputError(f"cannot read {path} ({exc.strerror or exc})", fix="give a readable results.json") \
            from None
    if not isinstance(data, dict) or not str(data.get("schema", "")).startswith("auditkit.results/"):
        raise AuditInputError("not an auditkit results file (no schema auditkit.results/N)", file=str(path))
    if data["schema"] != SCHEMA:
        raise AuditInputError(f"schema {data['schema']} is not supported by this auditkit ({SCHEMA})",
                              file=str(path), fix="re-run the suite with this version")
    return data
