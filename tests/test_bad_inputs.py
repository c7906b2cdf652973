"""Bad data and bad model folders are exit 2 with one line naming the file and the place (issue 13, item 5),
and a head drawn at load time is loud (item 6). Everything runs through the CLI in-process, except where
the library's own answer is the point (a BOM, which weights count as a new head)."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from auditkit.data import load_dataset
from tests.conftest import write_jsonl

ROWS = [{"text": f"review number {i} was {'great' if i % 2 else 'awful'}", "label": i % 2} for i in range(8)]


def suite_for(tmp_path, data="data.jsonl", base="builtin:tiny-bert", model_extra="", body=None):
    """A suite file; ``model.base`` is on line 3 and the check's ``data:`` on line 8."""
    import textwrap
    body = textwrap.dedent(body) if body else f"""\
        checks:
          - uses: accuracy
            data: {data}
            bootstrap: 100
        """
    text = "name: bad-input\nmodel:\n" + f"  base: {json.dumps(str(base))}\n  task: sequence-classification\n" \
        + "  max_length: 16\n" + "".join(f"  {x}\n" for x in model_extra.split(";") if x) + textwrap.dedent(body)
    path = tmp_path / "suite.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def exit2_line(run_cli, suite, out, *words, place=None):
    """Exit 2; the last stderr line is the only error line, names the suite or data file, and holds ``words``."""
    code, stdout, err = run_cli("run", suite, "--out", out, "--device", "cpu")
    assert code == 2, (code, err)
    assert "Traceback" not in err + stdout
    errors = [ln for ln in err.splitlines() if ln.startswith("auditkit: error:")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    line = errors[0]
    for w in words:
        assert w in line, (w, line)
    if place:
        assert re.search(place, line), (place, line)
    assert not (out / "results.json").exists() and not (out / "report.html").exists()
    return line


# ---------------------------------------------------------------------- data files

def test_non_utf8_jsonl_row_names_line_and_byte_offset(run_cli, tmp_path):
    lines = [json.dumps(r).encode() + b"\n" for r in ROWS[:4]]
    lines[2] = b'{"text": "caf\xe9 au lait", "label": 0}\n'  # Latin-1, not UTF-8
    (tmp_path / "data.jsonl").write_bytes(b"".join(lines))
    offset = len(lines[0]) + len(lines[1]) + lines[2].index(b"\xe9")
    line = exit2_line(run_cli, suite_for(tmp_path), tmp_path / "out", "data.jsonl:line 3:", "UTF-8",
                      f"byte offset {offset}")
    assert "e9" in line


def test_non_utf8_csv_row_names_line_and_byte_offset(run_cli, tmp_path):
    data = "text,label\ngood one,1\nbad one,0\n".encode() + b"na\xefve \xff one,1\n"
    (tmp_path / "data.csv").write_bytes(data)
    offset = data.index(b"\xef")
    exit2_line(run_cli, suite_for(tmp_path, "data.csv"), tmp_path / "out", "data.csv:line 4:",
               f"byte offset {offset}")


def test_non_utf8_after_a_bom_counts_the_bom_in_the_offset(registry, tmp_path):
    from auditkit.errors import AuditInputError
    data = b"\xef\xbb\xbftext,label\n\x80bad,1\n"
    (tmp_path / "d.csv").write_bytes(data)
    with pytest.raises(AuditInputError) as exc:
        load_dataset("d.csv", registry, base_dir=tmp_path)
    offset = data.index(b"\x80")
    assert exc.value.place == "line 2" and f"byte offset {offset}" in exc.value.line()


def test_directory_given_as_data(run_cli, tmp_path):
    (tmp_path / "somedir").mkdir()
    write_jsonl(tmp_path / "somedir" / "part.jsonl", ROWS)
    suite = suite_for(tmp_path, "somedir/")
    line = exit2_line(run_cli, suite, tmp_path / "out", str(suite), "is a directory", "part.jsonl",
                      place=r"line 8\b")
    assert "data.jsonl" not in line


def test_csv_with_a_utf8_bom_is_read_correctly(registry, tmp_path):
    (tmp_path / "d.csv").write_bytes("\ufefftext,label\nnaïve one,1\nplain one,0\n".encode("utf-8"))
    ds = load_dataset("d.csv", registry, base_dir=tmp_path)
    assert ds.columns == ["text", "label"]
    assert ds.rows == [{"text": "naïve one", "label": 1}, {"text": "plain one", "label": 0}]
    ds.require("text", "label")


def test_jsonl_with_a_bom_and_blank_lines_numbers_rows_by_line(registry, tmp_path):
    from auditkit.errors import AuditInputError
    (tmp_path / "d.jsonl").write_bytes(b"\xef\xbb\xbf" + b'{"text": "a", "label": 0}\n\n\n{"text": "", "label": 1}\n')
    ds = load_dataset("d.jsonl", registry, base_dir=tmp_path)
    with pytest.raises(AuditInputError) as exc:
        ds.require("text", "label")
    assert exc.value.place == "row 4, column 'text'"


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_null_text_names_the_row_not_a_missing_column(run_cli, tmp_path, fmt):
    rows = [dict(r) for r in ROWS]
    rows[3] = {"text": None, "label": 1}
    if fmt == "jsonl":
        write_jsonl(tmp_path / "data.jsonl", rows)
        place = "data.jsonl:row 4, column 'text'"
    else:  # a short CSV row: its missing cell is null too
        (tmp_path / "data.csv").write_text("label,text\n" + "".join(
            f"{r['label']}\n" if r["text"] is None else f"{r['label']},{r['text']}\n" for r in rows))
        place = "data.csv:row 5, column 'text'"
    line = exit2_line(run_cli, suite_for(tmp_path, f"data.{fmt}"), tmp_path / "out", place, "null")
    assert "missing column" not in line


def test_csv_row_with_extra_fields_and_duplicate_header(registry, tmp_path):
    from auditkit.errors import AuditInputError
    (tmp_path / "a.csv").write_text("text,label\ngood, really,1\n")
    with pytest.raises(AuditInputError, match="3 fields") as exc:
        load_dataset("a.csv", registry, base_dir=tmp_path)
    assert exc.value.place == "row 2"
    (tmp_path / "b.csv").write_text("text,text,label\na,b,1\n")
    with pytest.raises(AuditInputError, match="twice"):
        load_dataset("b.csv", registry, base_dir=tmp_path)


def test_csv_rows_spanning_lines_are_numbered_by_their_first_line(registry, tmp_path):
    from auditkit.errors import AuditInputError
    (tmp_path / "d.csv").write_text('text,label\n"two\nlines",1\nok,x\n')
    ds = load_dataset("d.csv", registry, base_dir=tmp_path)
    with pytest.raises(AuditInputError) as exc:
        ds.require_labels(2)
    assert exc.value.place == "row 4, column 'label'"


@pytest.mark.parametrize("name,content,words", [
    ("d.json", b'[{"text": "a", "label": 0},\n {"text": oops}]', ["line 2", "invalid JSON"]),
    ("d.json", b'[{"text": "a", "label": 0}, 5]', ["row 1", "JSON object"]),
    ("d.parquet", b"PAR1 this is not parquet", ["not a readable Parquet file"]),
])
def test_unreadable_json_and_parquet_files(registry, tmp_path, name, content, words):
    from auditkit.errors import AuditInputError
    (tmp_path / name).write_bytes(content)
    with pytest.raises(AuditInputError) as exc:
        load_dataset(name, registry, base_dir=tmp_path)
    line = exc.value.line()
    assert line.startswith(name) and all(w in line for w in words), line


# ---------------------------------------------------------------------- model folders

@pytest.fixture
def model_copy(registry, tmp_path):
    """A writable copy of a built-in tiny model folder."""
    from auditkit.models import resolve_source

    def copy(name="tiny-gpt2", to="model"):
        target = tmp_path / to
        shutil.copytree(resolve_source(f"builtin:{name}", registry), target)
        return target
    return copy


def model_suite(tmp_path, base, model_extra=""):
    write_jsonl(tmp_path / "data.jsonl", ROWS)
    return suite_for(tmp_path, base=base, model_extra=model_extra)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_safetensors_names_the_file(run_cli, tmp_path, model_copy, damage):
    d = model_copy()
    st = d / "model.safetensors"
    blob = st.read_bytes()
    st.write_bytes(blob[: len(blob) // 2] if damage == "truncated" else bytes(range(256)) * 8)
    suite = model_suite(tmp_path, d)
    exit2_line(run_cli, suite, tmp_path / "out", str(suite), str(st), "corrupt safetensors", place=r"line 3\b")


def test_config_that_is_not_json(run_cli, tmp_path, model_copy):
    d = model_copy()
    (d / "config.json").write_text('{"model_type": "gpt2", oops}')
    suite = model_suite(tmp_path, d)
    exit2_line(run_cli, suite, tmp_path / "out", str(suite), "config.json is not valid JSON", "line 1 column",
               place=r"line 3\b")


def test_model_folder_without_a_tokenizer(run_cli, tmp_path, model_copy):
    d = model_copy()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (d / f).unlink()
    suite = model_suite(tmp_path, d)
    exit2_line(run_cli, suite, tmp_path / "out", str(suite), "has no tokenizer", place=r"line 3\b")


def test_head_with_another_number_of_labels(run_cli, tmp_path, model_copy):
    from transformers import AutoModelForSequenceClassification
    d = model_copy()
    AutoModelForSequenceClassification.from_pretrained(d, num_labels=3).save_pretrained(d)
    suite = model_suite(tmp_path, d, model_extra="num_labels: 2")
    exit2_line(run_cli, suite, tmp_path / "out", str(suite), "head has 3 labels but model.num_labels is 2",
               place=r"line 3\b")


def test_config_that_cannot_build_the_model(run_cli, tmp_path, model_copy):
    d = model_copy()
    cfg = json.loads((d / "config.json").read_text())
    cfg["n_head"] = 3  # 128 is not a multiple of 3
    (d / "config.json").write_text(json.dumps(cfg))
    suite = model_suite(tmp_path, d)
    exit2_line(run_cli, suite, tmp_path / "out", str(suite), "could not load model", place=r"line 3\b")


# ---------------------------------------------------------------------- the pickle guard covers adapters

def make_adapter(base_dir: Path, out: Path, *, modules_to_save: bool = True) -> Path:
    """A small LoRA adapter on ``base_dir`` (a GPT-2 classifier); SEQ_CLS saves the ``score`` head."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=2)
    cfg = LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"], fan_in_fan_out=True,
                     task_type=TaskType.SEQ_CLS if modules_to_save else None)
    get_peft_model(model, cfg).save_pretrained(out)
    meta = json.loads((out / "adapter_config.json").read_text())
    meta["base_model_name_or_path"] = str(base_dir)
    (out / "adapter_config.json").write_text(json.dumps(meta))
    shutil.copy(base_dir / "tokenizer.json", out)
    shutil.copy(base_dir / "tokenizer_config.json", out)
    return out


def test_pickled_adapter_is_refused_without_allow_pickle(run_cli, registry, tmp_path, model_copy):
    import torch
    from safetensors.torch import load_file
    base = model_copy()
    ad = make_adapter(base, tmp_path / "adapter")
    torch.save(load_file(ad / "adapter_model.safetensors"), ad / "adapter_model.bin")
    # another safetensors file beside it does not help: PEFT would read adapter_model.bin
    (ad / "adapter_model.safetensors").rename(ad / "unrelated.safetensors")
    suite = model_suite(tmp_path, ad)
    exit2_line(run_cli, suite, tmp_path / "out", str(suite), "adapter_model.bin", "pickle", "allow_pickle: true",
               place=r"line 3\b")
    from auditkit.models import load_model
    trusted = load_model(str(ad), "sequence-classification", registry, allow_pickle=True)
    assert trusted.new_weights == []  # the pickled adapter carries the score head too


def test_pickle_only_base_of_an_adapter_is_refused(run_cli, tmp_path, model_copy):
    import torch
    from safetensors.torch import load_file
    base = model_copy()
    ad = make_adapter(base, tmp_path / "adapter")
    torch.save(load_file(base / "model.safetensors"), base / "pytorch_model.bin")
    (base / "model.safetensors").unlink()
    suite = model_suite(tmp_path, ad)
    exit2_line(run_cli, suite, tmp_path / "out", str(suite), f"the base model {base}", "pickle",
               place=r"line 3\b")


def test_adapter_without_a_base_model(run_cli, tmp_path, model_copy):
    ad = make_adapter(model_copy(), tmp_path / "adapter")
    meta = json.loads((ad / "adapter_config.json").read_text())
    meta["base_model_name_or_path"] = str(tmp_path / "gone")
    (ad / "adapter_config.json").write_text(json.dumps(meta))
    suite = model_suite(tmp_path, ad)
    exit2_line(run_cli, suite, tmp_path / "out", str(suite), "the base model of adapter", "does not exist",
               place=r"line 3\b")


# ---------------------------------------------------------------------- loud new heads

def test_new_head_weights_of_builtin_and_saved_models(registry, tmp_path, model_copy):
    """tiny-bert ships BertForMaskedLM weights (no pooler, no classifier); the classifier reads the pooler."""
    from auditkit.models import load_model
    bert = load_model("builtin:tiny-bert", "sequence-classification", registry, num_labels=2)
    assert bert.new_weights == ["bert.pooler.dense.bias", "bert.pooler.dense.weight", "classifier.bias",
                                "classifier.weight"]
    assert load_model("builtin:tiny-gpt2", "sequence-classification", registry).new_weights == ["score.weight"]
    assert load_model("builtin:tiny-gpt2", "causal-lm", registry).new_weights == []
    # a classifier folder saved whole has no new weights; without its head, only the head is new
    d = tmp_path / "clf"
    bert.model.save_pretrained(d)
    bert.tokenizer.save_pretrained(d)
    assert load_model(str(d), "sequence-classification", registry).new_weights == []
    from safetensors.torch import load_file, save_file
    sd = {k: v for k, v in load_file(d / "model.safetensors").items() if not k.startswith("classifier.")}
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    assert load_model(str(d), "sequence-classification", registry).new_weights == ["classifier.bias",
                                                                                   "classifier.weight"]


def test_drawn_weights_the_output_does_not_read_are_not_a_head(registry):
    import torch
    from auditkit.models import load_model, new_head_weights
    h = load_model("builtin:tiny-gpt2", "sequence-classification", registry)
    h.model.unused = torch.nn.Linear(2, 2)  # a drawn parameter no forward path reaches
    assert new_head_weights(h.model, h.tokenizer, {"score.weight", "unused.weight", "not.a.param"}) == \
        ["score.weight"]
    assert all(p.requires_grad for p in h.model.parameters())  # the probe leaves the flags as it found them


def test_adapter_heads_count_only_when_the_adapter_lacks_them(registry, tmp_path, model_copy):
    from auditkit.models import load_model
    base = model_copy()
    with_head = make_adapter(base, tmp_path / "a1")
    without = make_adapter(base, tmp_path / "a2", modules_to_save=False)
    assert load_model(str(with_head), "sequence-classification", registry).new_weights == []
    assert load_model(str(without), "sequence-classification", registry).new_weights == ["score.weight"]


def test_causal_lm_loaded_as_classifier_warns(run_cli, tmp_path):
    suite = model_suite(tmp_path, "builtin:tiny-gpt2")
    code, out, err = run_cli("run", suite, "--out", tmp_path / "out", "--device", "cpu")
    assert code in (0, 1), err
    assert "score.weight" in err and "newly initialised" in err
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert any("score.weight" in w and "builtin:tiny-gpt2" in w for w in res["warnings"]), res["warnings"]


def test_new_head_is_exit2_when_not_allowed(run_cli, tmp_path):
    suite = model_suite(tmp_path, "builtin:tiny-gpt2", model_extra="allow_new_head: false")
    exit2_line(run_cli, suite, tmp_path / "out", str(suite), "score.weight", "newly initialised",
               place=r"line 3\b")


def test_a_finetuned_suite_does_not_warn_about_its_trained_head(run_cli, tmp_path):
    write_jsonl(tmp_path / "data.jsonl", ROWS)
    suite = suite_for(tmp_path, base="builtin:tiny-gpt2", model_extra="allow_new_head: false", body="""
        finetune:
          data: data.jsonl
          validation: data.jsonl
          method: full
          epochs: 1
          batch_size: 8
          max_length: 16
        checks:
          - {uses: accuracy, data: data.jsonl, bootstrap: 100}
        """)
    code, out, err = run_cli("run", suite, "--out", tmp_path / "out", "--device", "cpu")
    assert code in (0, 1), err
    assert "newly initialised" not in err
    assert json.loads((tmp_path / "out" / "results.json").read_text())["warnings"] == []


def test_memorization_with_nothing_to_read_is_refused_before_loading(run_cli, tmp_path, monkeypatch):
    """No finetune:, members: or canaries: leaves memorization nothing to measure; on a GPU machine that was
    found only after both models loaded and the checks before it ran."""
    import auditkit.runner as runner
    monkeypatch.setattr(runner, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: m\nmodel: {base: 'builtin:tiny-gpt2', task: causal-lm, baseline: 'builtin:tiny-gpt2'}\n"
                     "checks:\n  - uses: accuracy\n    data: builtin:mc-general\n  - uses: memorization\n")
    exit2_line(run_cli, suite, tmp_path / "out", "memorization has nothing to measure", "members", "line 6")
    # members alone is enough to run (extraction, and membership with non_members)
    from auditkit.plugins import registry
    from auditkit.suite import load_suite
    write_jsonl(tmp_path / "m.jsonl", [{"text": "a member"}])
    suite.write_text(suite.read_text() + "    members: m.jsonl\n")
    assert load_suite(suite, registry()).checks[1].params["members"] == "m.jsonl"
