"""Datasets: ``builtin:NAME[#split]`` from dataset-source plugins, or JSONL/CSV/Parquet files.

Formats: classification ``{"text","label"[,"group"]}``; causal LM ``{"text"}`` or
``{"prompt","completion"}``; multiple choice ``{"question","choices","label"}``. A suite's
``columns:`` mapping renames file columns to these names. Every problem is an AuditInputError naming
the file, the row and the column: bytes that are not UTF-8 (with the line and byte offset), a folder
given as data, unreadable JSON/CSV/Parquet, a null or empty text. A UTF-8 byte-order mark is skipped
(Excel writes one at the start of CSV files). Rows are numbered by the line they start on (JSONL, CSV,
blank lines and multi-line CSV fields included), or by their index (.json, Parquet).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path


from auditkit.errors import AuditInputError

TEXT_COLUMNS = ("text", "prompt", "question", "sent_more", "sent_less")
FORMATS = {
    "classification": ("text", "label"),
    "text": ("text",),
    "prompt-completion": ("prompt", "completion"),
    "multiple-choice": ("question", "choices", "label"),
}


def as_int(text: str):
    """A label written as digits ("1", " -2") as that int; any other text unchanged (then reported as bad)."""
    try:
        return int(text.strip()) if text.strip().lstrip("-").isascii() else text
    except ValueError:
        return text


@dataclass
class Dataset:
    """Rows of one dataset plus where they came from (for error messages and fingerprints)."""

    spec: str
    rows: list[dict]
    file: str
    row_offset: int = 1  # the number users see for rows[0] (line 1 in JSONL, line 2 in CSV)
    _fp: str | None = field(default=None, repr=False)
    #: the line each row starts on in its file (JSONL, CSV), when known; else ``i + row_offset``
    lines: list[int] | None = field(default=None, repr=False)

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
        n = self.lines[i] if self.lines is not None and i < len(self.lines) else i + self.row_offset
        return f"row {n}" + (f", column {col!r}" if col else "")

    def error(self, message: str, i: int | None = None, col: str | None = None, fix: str | None = None):
        place = self.place(i, col) if i is not None else (f"column {col!r}" if col else None)
        return AuditInputError(message, file=self.file, place=place, fix=fix)

    def prompt_pairs(self) -> list[tuple[str, str]] | None:
        """``(prompt, completion)`` per row for ``{"prompt","completion"}`` rows, or for generation data
        ``{"prompt","reference"}`` (the first reference of a list); None for other data."""
        if self.has("prompt", "completion"):
            self.require("prompt", "completion", fmt="prompt/completion")
            return [(r["prompt"], r["completion"]) for r in self.rows]
        if self.has("prompt", "reference"):
            self.require("prompt", fmt="prompt/reference")
            out = []
            for i, r in enumerate(self.rows):
                ref = r["reference"]
                ref = ref[0] if isinstance(ref, list) and ref else ref
                if not isinstance(ref, str) or not ref.strip():
                    raise self.error(f"column 'reference' must be non-empty text or a list of it, got {r['reference']!r}",
                                     i, "reference")
                out.append((r["prompt"], ref))
            return out
        return None

    # ------------------------------------------------------------------ validation
    def require(self, *names: str, fmt: str = "") -> "Dataset":
        """Every row has these columns (non-empty text where a text column is named)."""
        if not self.rows:
            raise self.error("the dataset is empty", fix="give it at least one row")
        for i, row in enumerate(self.rows):
            for n in names:
                if n not in row:
                    have = ", ".join(sorted(map(str, row))) or "none"
                    raise self.error(f"missing column {n!r}{' for ' + fmt if fmt else ''} (columns: {have})", i, n,
                                     fix="rename it with columns: {%s: YOUR_COLUMN} in the suite" % n)
            for n in names:
                if row[n] is None:  # present but null (JSON null, a missing CSV cell, a Parquet NA)
                    what = "the text is null (empty)" if n in TEXT_COLUMNS else "the value is null (empty)"
                    raise self.error(f"column {n!r} is null: {what}", i, n,
                                     fix="give every row a value, or remove the row")
                if n in TEXT_COLUMNS and (not isinstance(row[n], str) or not row[n].strip()):
                    raise self.error(f"column {n!r} must be non-empty text, got {row[n]!r}", i, n)
        return self

    def require_labels(self, num_labels: int | None = None, col: str = "label") -> list[int]:
        """Integer labels in ``[0, num_labels)``; returns them."""
        out = []
        for i, row in enumerate(self.rows):
            v = row.get(col)
            if isinstance(v, str):
                v = as_int(v)
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            if v is None:
                raise self.error(f"column {col!r} is null: the label is null (empty)" if col in self.rows[i] else
                                 f"missing column {col!r}", i, col, fix="give every row an integer label")
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


_BOM = b"\xef\xbb\xbf"


def _not_utf8(exc: UnicodeDecodeError, data: bytes, display: str, base: int = 0, line: int | None = None):
    """An AuditInputError naming the line and the absolute byte offset of the first undecodable byte."""
    offset = base + exc.start
    if line is None:
        line = data.count(b"\n", 0, exc.start) + 1
    bad = data[exc.start:exc.start + 4].hex(" ")
    return AuditInputError(f"not valid UTF-8 at byte offset {offset} (bytes {bad}: {exc.reason})", file=display,
                           place=f"line {line}", fix="re-save the file as UTF-8")


def _decode(data: bytes, display: str) -> str:
    """The whole file as text (a leading byte-order mark dropped); undecodable bytes are bad input."""
    skip = len(_BOM) if data.startswith(_BOM) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_utf8(exc, data[skip:], display, base=skip) from None


def _read_jsonl(data: bytes, display: str) -> tuple[list[dict], list[int]]:
    rows, lines = [], []
    pos = len(_BOM) if data.startswith(_BOM) else 0
    for n, raw in enumerate(data[pos:].split(b"\n"), 1):
        start, pos = pos, pos + len(raw) + 1
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _not_utf8(exc, raw, display, base=start, line=n) from None
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise AuditInputError(f"invalid JSON ({getattr(exc, 'msg', exc)})", file=display, place=f"line {n}",
                                  fix="write one JSON object per line") from None
        except RecursionError:
            raise AuditInputError("JSON nested too deeply", file=display, place=f"line {n}",
                                  fix="a row is one flat JSON object") from None
        if not isinstance(obj, dict):
            raise AuditInputError("each line must be a JSON object", file=display, place=f"line {n}")
        rows.append(obj)
        lines.append(n)
    return rows, lines


def _read_json(data: bytes, display: str) -> list[dict]:
    text = _decode(data, display)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AuditInputError(f"invalid JSON ({exc.msg}, column {exc.colno})", file=display,
                              place=f"line {exc.lineno}", fix="a .json dataset is one list of objects") from None
    except RecursionError:
        raise AuditInputError("JSON nested too deeply", file=display, fix="a .json dataset is one list of objects") \
            from None
    if not isinstance(obj, list):
        raise AuditInputError("a .json dataset must be a list of objects", file=display)
    for i, row in enumerate(obj):
        if not isinstance(row, dict):
            raise AuditInputError(f"each item must be a JSON object, got {type(row).__name__}", file=display,
                                  place=f"row {i}")
    return obj


def _read_csv(data: bytes, display: str, delimiter: str) -> tuple[list[dict], list[int]]:
    text = _decode(data, display)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows, lines = [], []
    try:
        header = next(reader, None)
        if header is None:
            return [], []
        seen = set()
        for name in header:
            if name in seen:
                raise AuditInputError(f"the header names column {name!r} twice", file=display, place="line 1",
                                      fix="give every column a distinct name")
            seen.add(name)
        last = reader.line_num
        for record in reader:
            start, last = last + 1, reader.line_num
            if not record:  # a blank line
                continue
            if len(record) > len(header):
                raise AuditInputError(f"the row has {len(record)} fields but the header names {len(header)}",
                                      file=display, place=f"row {start}",
                                      fix="quote fields that contain the delimiter")
            row = dict(zip(header, record))
            for name in header[len(record):]:
                row[name] = None  # a short row: its missing cells are null
            rows.append(row)
            lines.append(start)
    except csv.Error as exc:
        raise AuditInputError(f"unreadable CSV ({exc})", file=display, place=f"line {reader.line_num}") from None
    for r in rows:
        if "label" in r and isinstance(r["label"], str):
            r["label"] = as_int(r["label"])
    return rows, lines


def _read_file(path: Path, display: str) -> tuple[list[dict], int, list[int] | None]:
    """Rows, the number of the first row, and each row's line (where rows are lines)."""
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet"):
        raise AuditInputError(f"unsupported data file type {suffix or '(none)'}", file=display,
                              fix="use .jsonl, .csv or .parquet")
    if suffix == ".parquet":
        try:
            import pandas as pd
            df = pd.read_parquet(path)
            return json.loads(df.to_json(orient="records")), 0, None
        except ImportError as exc:
            raise AuditInputError(f"reading Parquet needs pandas and pyarrow ({exc})", file=display,
                                  fix="pip install pyarrow, or convert the data to JSONL") from None
        except OSError as exc:
            raise AuditInputError(f"cannot read the data file ({exc.strerror or exc})", file=display) from None
        except Exception as exc:  # pyarrow's ArrowInvalid and kin: not a Parquet file
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise AuditInputError(f"not a readable Parquet file ({first})", file=display,
                                  fix="write it with pandas.DataFrame.to_parquet, or use JSONL") from None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AuditInputError(f"cannot read the data file ({exc.strerror or exc})", file=display,
                              fix="check its permissions") from None
    if suffix in (".jsonl", ".ndjson"):
        rows, lines = _read_jsonl(data, display)
        return rows, 1, lines
    if suffix == ".json":
        return _read_json(data, display), 0, None
    rows, lines = _read_csv(data, display, "\t" if suffix == ".tsv" else ",")
    return rows, 2, lines


def check_data_spec(spec, registry, *, base_dir: Path | str | None = None, file: str | None = None,
                    place: str = "data", what: str = "data") -> Path | None:
    """Check a data spec without reading it: a ``builtin:NAME[#split]`` whose NAME a dataset source registers
    (did-you-mean), or a file that exists (relative to the suite's folder first) and is not a directory.

    Returns the file's path (None for a built-in); every problem is an AuditInputError at ``file``/``place``.
    """
    from auditkit.api import did_you_mean
    if not isinstance(spec, str) or not spec.strip():
        raise AuditInputError(f"{what} must be builtin:NAME or a file path, got {spec!r}", file=file, place=place,
                              fix="e.g. builtin:reviews#test or data/test.jsonl")
    if spec.startswith("builtin:"):
        name = spec[len("builtin:"):].partition("#")[0]
        sources = registry.dataset_sources
        if name not in sources:
            raise AuditInputError(f"unknown built-in dataset {spec!r}", file=file, place=place,
                                  fix=did_you_mean(f"builtin:{name}", [f"builtin:{n}" for n in sorted(sources)]))
        return None
    path = Path(spec).expanduser()
    if not path.is_absolute() and base_dir is not None and (Path(base_dir) / path).exists():
        path = Path(base_dir) / path
    if not path.exists():
        raise AuditInputError(f"{what} file {spec} does not exist", file=file, place=place,
                              fix="paths are relative to the suite file's folder")
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix.lower() in
                        (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet"))[:3]
        raise AuditInputError(f"{what} {spec} is a directory, not a data file", file=file, place=place,
                              fix="name one .jsonl, .csv or .parquet file" +
                                  (f" (it holds {', '.join(inside)})" if inside else ""))
    return path


def load_dataset(spec: str, registry, *, seed: int = 0, columns: dict | None = None,
                 base_dir: Path | None = None, file: str | None = None, place: str = "data") -> Dataset:
    """Load ``spec`` (``builtin:NAME[#split]`` or a path, relative to the suite's folder)."""
    path = check_data_spec(spec, registry, base_dir=base_dir, file=file, place=place)
    if path is None:
        name, _, split = spec[len("builtin:"):].partition("#")
        try:
            rows = registry.dataset_sources[name].fn(split or None, seed)
        except KeyError as exc:
            raise AuditInputError(f"built-in dataset {name!r} has no split {exc.args[0]!r}", file=file,
                                  place=place, fix="use #train, #validation or #test") from None
        rows = [dict(r) for r in rows]
        ds = Dataset(spec, rows, spec, 1)
    else:
        rows, offset, lines = _read_file(path, str(spec))
        ds = Dataset(spec, rows, str(spec), offset, lines=lines)
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
