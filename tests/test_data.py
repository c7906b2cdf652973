"""Datasets: built-in sources, JSONL/CSV/Parquet files, column mapping, and every bad-input path.

Bad data exits 2 with one error line naming the file and the place (suite line, or data row and
column), no traceback and no report.
"""
from __future__ import annotations

import json
import re

import pytest

from auditkit.data import Dataset, load_dataset
from auditkit.errors import AuditInputError
from tests.conftest import write_jsonl, write_suite


ROWS = [{"text": f"review number {i} was {'great' if i % 2 else 'awful'}", "label": i % 2} for i in range(10)]


def assert_exit2(result, file, place, out_dir):
    code, out, err = result
    assert code == 2, (code, out, err)
    assert "Traceback" not in err + out
    errors = [ln for ln in err.splitlines() if ln.startswith("auditkit: error:")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    assert str(file) in errors[0] and re.search(place, errors[0]), (file, place, errors[0])
    res = out_dir / "results.json"
    assert not res.exists() or json.loads(res.read_text())["status"] != "pass"
    assert not (out_dir / "report.html").exists()
    return errors[0]


def accuracy_suite(tmp_path, data="data.jsonl", extra=""):
    return write_suite(tmp_path, f"""
        name: data-test
        model: {{base: "builtin:tiny-bert", max_length: 32}}
        checks:
          - uses: accuracy
            data: {data}
            bootstrap: 100
            {extra}
        """)


def run(run_cli, tmp_path, suite):
    out = tmp_path / "out"
    return run_cli("run", suite, "--out", out, "--device", "cpu"), out


# ---------------------------------------------------------------------- bad input, end to end

def test_missing_data_file(run_cli, tmp_path):
    suite = accuracy_suite(tmp_path, "nowhere.jsonl")
    res, out = run(run_cli, tmp_path, suite)
    line = assert_exit2(res, suite, r"line 5\b", out)
    assert "nowhere.jsonl" in line and "does not exist" in line
    assert len(res[2].strip().splitlines()) == 1  # reported before any model loads


def test_missing_finetune_data_file(run_cli, tmp_path):
    write_jsonl(tmp_path / "data.jsonl", ROWS)
    suite = write_suite(tmp_path, """
        name: s
        model: {base: "builtin:tiny-bert"}
        finetune:
          data: train.jsonl
        checks: [{uses: accuracy, data: data.jsonl}]
        """)
    res, out = run(run_cli, tmp_path, suite)
    line = assert_exit2(res, suite, r"line 4\b", out)
    assert "train.jsonl" in line


def test_wrong_columns(run_cli, tmp_path):
    write_jsonl(tmp_path / "data.jsonl", [{"review": r["text"], "label": r["label"]} for r in ROWS])
    res, out = run(run_cli, tmp_path, accuracy_suite(tmp_path))
    line = assert_exit2(res, "data.jsonl", r"row 1, column 'text'", out)
    assert "missing column 'text'" in line and "columns: {text:" in line


def test_columns_mapping_renames(run_cli, tmp_path):
    write_jsonl(tmp_path / "data.jsonl", [{"review": r["text"], "y": r["label"]} for r in ROWS])
    # gates: [] (a random model fails accuracy's default gates; only the mapping is under test here)
    suite = accuracy_suite(tmp_path, extra="columns: {text: review, label: y}\n            gates: []")
    (code, out, err), outdir = run(run_cli, tmp_path, suite)
    assert code == 0, err
    check = json.loads((outdir / "results.json").read_text())["checks"][0]
    assert check["metrics"]["accuracy"]["n"] == len(ROWS)


def test_columns_mapping_to_a_missing_column(run_cli, tmp_path):
    write_jsonl(tmp_path / "data.jsonl", [{"body": r["text"], "label": r["label"]} for r in ROWS])
    suite = accuracy_suite(tmp_path, extra="columns: {text: review}")
    res, out = run(run_cli, tmp_path, suite)
    line = assert_exit2(res, "data.jsonl", r"row 1, column 'review'", out)
    assert "'review'" in line and "mapped to 'text'" in line
    assert len(res[2].strip().splitlines()) == 1


def test_label_out_of_range(run_cli, tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[3]["label"] = 2
    write_jsonl(tmp_path / "data.jsonl", rows)
    res, out = run(run_cli, tmp_path, accuracy_suite(tmp_path))
    line = assert_exit2(res, "data.jsonl", r"row 4, column 'label'", out)
    assert "label 2 is out of range" in line and "2 labels" in line


def test_label_that_is_not_a_class_index(run_cli, tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[6]["label"] = "positive"
    write_jsonl(tmp_path / "data.jsonl", rows)
    res, out = run(run_cli, tmp_path, accuracy_suite(tmp_path))
    assert_exit2(res, "data.jsonl", r"row 7, column 'label'", out)


def test_empty_text(run_cli, tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[2]["text"] = "   "
    write_jsonl(tmp_path / "data.jsonl", rows)
    res, out = run(run_cli, tmp_path, accuracy_suite(tmp_path))
    line = assert_exit2(res, "data.jsonl", r"row 3, column 'text'", out)
    assert "non-empty text" in line


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_empty_dataset(run_cli, tmp_path, content):
    (tmp_path / "data.jsonl").write_text(content)
    res, out = run(run_cli, tmp_path, accuracy_suite(tmp_path))
    line = assert_exit2(res, "data.jsonl", "", out)
    assert "empty" in line
    assert len(res[2].strip().splitlines()) == 1


def test_invalid_json_line(run_cli, tmp_path):
    (tmp_path / "data.jsonl").write_text('{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n{"text": oops}\n')
    res, out = run(run_cli, tmp_path, accuracy_suite(tmp_path))
    line = assert_exit2(res, "data.jsonl", r"line 3\b", out)
    assert "invalid JSON" in line


def test_csv_rows_are_numbered_as_lines(run_cli, tmp_path):
    (tmp_path / "data.csv").write_text("text,label\ngood one,1\nbad one,0\nodd one,5\n")
    res, out = run(run_cli, tmp_path, accuracy_suite(tmp_path, "data.csv"))
    assert_exit2(res, "data.csv", r"row 4, column 'label'", out)  # header is line 1


def test_unknown_builtin_dataset_did_you_mean(run_cli, tmp_path):
    suite = accuracy_suite(tmp_path, "builtin:reveiws#test")
    res, out = run(run_cli, tmp_path, suite)
    line = assert_exit2(res, suite, r"line 5\b", out)
    assert "did you mean 'builtin:reviews'?" in line


def test_unknown_builtin_split(run_cli, tmp_path):
    suite = accuracy_suite(tmp_path, "builtin:reviews#dev")
    res, out = run(run_cli, tmp_path, suite)
    line = assert_exit2(res, suite, r"line 5\b", out)
    assert "'dev'" in line


def test_unsupported_file_type(run_cli, tmp_path):
    (tmp_path / "data.txt").write_text("hello\n")
    res, out = run(run_cli, tmp_path, accuracy_suite(tmp_path, "data.txt"))
    line = assert_exit2(res, "data.txt", "", out)
    assert "unsupported" in line


# ---------------------------------------------------------------------- the Dataset API

def test_csv_and_parquet_load_like_jsonl(registry, tmp_path):
    import pandas as pd
    pd.DataFrame(ROWS).to_parquet(tmp_path / "d.parquet")
    pd.DataFrame(ROWS).to_csv(tmp_path / "d.csv", index=False)
    write_jsonl(tmp_path / "d.jsonl", ROWS)
    loaded = [load_dataset(f"d.{ext}", registry, base_dir=tmp_path) for ext in ("jsonl", "csv", "parquet")]
    assert [d.rows for d in loaded] == [ROWS] * 3
    assert loaded[0].fingerprint == loaded[1].fingerprint == loaded[2].fingerprint
    assert [d.row_offset for d in loaded] == [1, 2, 0]


def test_relative_paths_resolve_from_the_suite_folder(registry, tmp_path, monkeypatch):
    sub = tmp_path / "suites"
    sub.mkdir()
    write_jsonl(sub / "d.jsonl", ROWS)
    monkeypatch.chdir(tmp_path)
    assert len(load_dataset("d.jsonl", registry, base_dir=sub)) == len(ROWS)


def test_multiple_choice_validation():
    ok = Dataset("mc", [{"question": "Q?", "choices": ["a", "b"], "label": 1},
                        {"question": "R?", "choices": '["x", "y", "z"]', "label": 2}], "mc.jsonl")
    ok.require_choices()
    assert ok.rows[1]["choices"] == ["x", "y", "z"]  # JSON text (CSV) becomes a list
    bad = Dataset("mc", [{"question": "Q?", "choices": ["a", "b"], "label": 0},
                         {"question": "Q?", "choices": ["a", "b"], "label": 2}], "mc.jsonl")
    with pytest.raises(AuditInputError) as exc:
        bad.require_choices()
    assert exc.value.line() .startswith("mc.jsonl:row 2, column 'label'")
    one = Dataset("mc", [{"question": "Q?", "choices": ["only"], "label": 0}], "mc.jsonl")
    with pytest.raises(AuditInputError, match="at least two"):
        one.require_choices()


def test_error_line_is_always_one_line():
    err = AuditInputError("bad\nthing\n", file="f.jsonl", place="row 2", fix="fix\nit")
    line = err.line()
    assert "\n" not in line and line.startswith("f.jsonl:row 2: bad thing") and line.endswith("; fix it")


# ---------------------------------------------------------------------- built-in data

def test_builtin_reviews_splits_groups_and_determinism(registry):
    splits = {s: load_dataset(f"builtin:reviews#{s}", registry, seed=0) for s in ("train", "validation", "test")}
    assert sum(len(d) for d in splits.values()) >= 2000
    assert load_dataset("builtin:reviews", registry).rows == splits["train"].rows
    for d in splits.values():
        d.require("text", "label", "group")
        assert set(d.require_labels(2)) == {0, 1}
    texts = [tuple(r["text"] for r in d.rows) for d in splits.values()]
    assert not set(texts[0]) & set(texts[2]), "train and test overlap"
    again = load_dataset("builtin:reviews#test", registry, seed=0)
    assert again.fingerprint == splits["test"].fingerprint
    other = load_dataset("builtin:reviews#test", registry, seed=1)
    assert other.fingerprint != splits["test"].fingerprint


def test_builtin_review_groups_appear_in_text(registry):
    from auditkit_plugins.builtin_data.reviews import GROUP_TERMS
    rows = load_dataset("builtin:reviews#test", registry).rows
    grouped = [r for r in rows if r.get("group") in GROUP_TERMS]
    assert len(grouped) > len(rows) // 2
    hits = sum(any(t.lower() in r["text"].lower() for t in GROUP_TERMS[r["group"]]) for r in grouped)
    assert hits == len(grouped)


@pytest.mark.parametrize("name,cols", [("mc-general", ("question", "choices", "label")),
                                       ("general-text", ("text",)), ("neutral-prompts", ("text",)),
                                       ("stereotype-pairs", ("sent_more", "sent_less"))])
def test_other_builtin_sources(registry, name, cols):
    ds = load_dataset(f"builtin:{name}", registry)
    ds.require(*cols)
