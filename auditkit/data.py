"""Datasets: ``builtin:NAME[#split]`` from dataset-source plugins, or JSONL/CSV/Parquet files.

Formats: classification ``{"text","label"[,"group"]}``; causal LM ``{"text"}`` or
``{"prompt","completion"}``; multiple choice ``{"question","choices","label"}``. A suite's
``columns:`` mapping renames file columns to these names. Every problem is an AuditInputError naming
the file, the row and the column.
"""
from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path


from auditkit.errors import AuditInputError

FORMATS = {
    "classification": ("text", "label"),
    "text": ("text",),
    "prompt-completion": ("prompt", "completion"),
    "multiple-choice": ("question", "choices", "label"),
}


@dataclass
class Dataset:
    """Rows of one dataset plus where they came from (for error messages and fingerprints)."""

    spec: str
    rows: list[dict]
    file: str
    row_offset: int = 1  # the number users see for rows[0] (line 1 in JSONL, line 2 in CSV)
    _fp: str | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def fingerprint(self) -> str:
        if self._fp is None:
            blob = json.dumps(self.rows, sort_keys=True, ensure_ascii=False, default=str).encode()
            self._fp = hashlib.blake2b(blob, digest_size=16).hexdigest()
        return self._fp

    @property
    def columns(self) -> list[str]:
        return list(self.rows[0]) if self.rows else []

    def column(self, name: str) -> list:
        return [r[name] for r in self.rows]

    def has(self, *names: str) -> bool:
        return bool(self.rows) and all(n in self.rows[0] for n in names)

    def place(self, i: int, col: str | None = None) -> str:
        return f"row {i + self.row_offset}" + (f", column {col!r}" if col else "")

    def error(self, message: str, i: int | None = None, col: str | None = None, fix: str | None = None):
        place = self.place(i, col) if i is not None else (f"column {col!r}" if col else None)
        return AuditInputError(message, file=self.file, place=place, fix=fix)

    # ------------------------------------------------------------------ validation
    def require(self, *names: str, fmt: str = "") -> "Dataset":
        """Every row has these columns (non-empty text where a text column is named)."""
        if not self.rows:
            raise self.error("the dataset is empty", fix="give it at least one row")
        for i, row in enumerate(self.rows):
            for n in names:
                if n not in row or row[n] is None:
                    have = ", ".join(sorted(row)) or "none"
                    raise self.error(f"missing column {n!r}{' for ' + fmt if fmt else ''} (columns: {have})", i, n,
                                     fix="rename it with columns: {%s: YOUR_COLUMN} in the suite" % n)
            for n in names:
                if n in ("text", "prompt", "question", "sent_more", "sent_less") and \
                        (not isinstance(row[n], str) or not row[n].strip()):
                    raise self.error(f"column {n!r} must be non-empty text, got {row[n]!r}", i, n)
        return self

    def require_labels(self, num_labels: int | None = None, col: str = "label") -> list[int]:
        """Integer labels in ``[0, num_labels)``; returns them."""
        out = []
        for i, row in enumerate(self.rows):
            v = row.get(col)
            if isinstance(v, str) and v.strip().lstrip("-").isdigit():
                v = int(v)
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            if not isinstance(v, int) or isinstance(v, bool):
                raise self.error(f"label must be an integer class index, got {v!r}", i, col)
            if v < 0 or (num_labels is not None and v >= num_labels):
                raise self.error(f"label {v} is out of range for a model with {num_labels} labels", i, col,
                                 fix=f"use labels 0..{(num_labels or 1) - 1} or set model.num_labels")
            out.append(v)
        return out

    def require_choices(self) -> None:
        self.require(*FORMATS["multiple-choice"], fmt="multiple choice")
        for i, row in enumerate(self.rows):
            ch = row["choices"]
            if isinstance(ch, str):
                try:
                    ch = json.loads(ch)
                except ValueError:
                    raise self.error("choices must be a list of strings", i, "choices") from None
                row["choices"] = ch
            if not isinstance(ch, list) or len(ch) < 2 or not all(isinstance(c, str) for c in ch):
                raise self.error("choices must be a list of at least two strings", i, "choices")
        labels = self.require_labels()
        for i, (row, lab) in enumerate(zip(self.rows, labels)):
            if lab >= len(row["choices"]):
                raise self.error(f"label {lab} is out of range for {len(row['choices'])} choices", i, "label")


def _read_file(path: Path, display: str) -> tuple[list[dict], int]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        with path.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError as exc:
                    raise AuditInputError(f"invalid JSON ({exc.msg})", file=display, place=f"line {n}",
                                          fix="write one JSON object per line") from None
                if not isinstance(obj, dict):
                    raise AuditInputError("each line must be a JSON object", file=display, place=f"line {n}")
                rows.append(obj)
        return rows, 1
    if suffix == ".json":
        obj = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(obj, list):
            raise AuditInputError("a .json dataset must be a list of objects", file=display)
        return obj, 0
    if suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
            rows = [dict(r) for r in reader]
        for r in rows:
            if "label" in r and isinstance(r["label"], str) and r["label"].strip().lstrip("-").isdigit():
                r["label"] = int(r["label"])
        return rows, 2
    if suffix == ".parquet":
        import pandas as pd
        df = pd.read_parquet(path)
        rows = json.loads(df.to_json(orient="records"))
        return rows, 0
    raise AuditInputError(f"unsupported data file type {suffix or '(none)'}", file=display,
                          fix="use .jsonl, .csv or .parquet")


def load_dataset(spec: str, registry, *, seed: int = 0, columns: dict | None = None,
                 base_dir: Path | None = None, file: str | None = None, place: str = "data") -> Dataset:
    """Load ``spec`` (``builtin:NAME[#split]`` or a path, relative to the suite's folder)."""
    if not isinstance(spec, str) or not spec.strip():
        raise AuditInputError("data must be a builtin:NAME or a file path", file=file, place=place)
    if spec.startswith("builtin:"):
        name, _, split = spec[len("builtin:"):].partition("#")
        sources = registry.dataset_sources
        if name not in sources:
            from difflib import get_close_matches
            near = get_close_matches(name, list(sources), n=1)
            raise AuditInputError(f"unknown built-in dataset {spec!r}", file=file, place=place,
                                  fix=f"did you mean builtin:{near[0]}?" if near else
                                  f"known: {', '.join(sorted(sources))}")
        try:
            rows = sources[name].fn(split or None, seed)
        except KeyError as exc:
            raise AuditInputError(f"built-in dataset {name!r} has no split {exc.args[0]!r}", file=file,
                                  place=place, fix="use #train, #validation or #test") from None
        rows = [dict(r) for r in rows]
        ds = Dataset(spec, rows, spec, 1)
    else:
        path = Path(spec).expanduser()
        if not path.is_absolute() and base_dir is not None and (base_dir / path).exists():
            path = base_dir / path
        if not path.exists():
            raise AuditInputError(f"data file {spec} does not exist", file=file, place=place,
                                  fix="paths are relative to the suite file's folder")
        rows, offset = _read_file(path, str(spec))
        ds = Dataset(spec, rows, str(spec), offset)
    if columns:
        for i, row in enumerate(ds.rows):
            for ours, theirs in columns.items():
                if theirs in row:
                    row[ours] = row.pop(theirs)
                elif ours not in row:
                    raise ds.error(f"column {theirs!r} (mapped to {ours!r}) is missing", i, theirs,
                                   fix=f"columns present: {', '.join(sorted(row))}")
    if not ds.rows:
        raise ds.error("the dataset is empty", fix="give it at least one row")
    return ds
