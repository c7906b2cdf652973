"""Model loading (bad model specs exit 2 before anything loads) and the handle's cached passes."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from tests.conftest import write_jsonl, write_suite



def run_with_model(run_cli, tmp_path, base: str, *extra):
    write_jsonl(tmp_path / "data.jsonl", [{"text": f"t {i}", "label": i % 2} for i in range(6)])
    suite = write_suite(tmp_path, f"""
        name: m
        model:
          base: {json.dumps(base)}
          task: sequence-classification
        checks: [{{uses: accuracy, data: data.jsonl, bootstrap: 100}}]
        """)
    out = tmp_path / "out"
    code, stdout, err = run_cli("run", suite, "--out", out, "--device", "cpu", *extra)
    return suite, out, code, err


def assert_one_line_exit2(suite, out, code, err, place, words):
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("auditkit: error:"), err
    assert str(suite) in lines[0] and re.search(place, lines[0]) and words in lines[0], lines[0]
    assert not (out / "results.json").exists() and not (out / "report.html").exists()


def test_missing_model_dir(run_cli, tmp_path):
    suite, out, code, err = run_with_model(run_cli, tmp_path, str(tmp_path / "no-such-model"))
    assert_one_line_exit2(suite, out, code, err, r"line 3\b", "does not exist")


def test_relative_missing_model_dir(run_cli, tmp_path):
    suite, out, code, err = run_with_model(run_cli, tmp_path, "./models/nothing-here")
    assert_one_line_exit2(suite, out, code, err, r"line 3\b", "does not exist")


def test_dir_that_is_not_a_model(run_cli, tmp_path):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("not a model")
    suite, out, code, err = run_with_model(run_cli, tmp_path, str(junk))
    assert_one_line_exit2(suite, out, code, err, r"line 3\b", "not a model directory")


def test_file_instead_of_a_model_dir(run_cli, tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"\0" * 16)
    suite, out, code, err = run_with_model(run_cli, tmp_path, str(f))
    assert_one_line_exit2(suite, out, code, err, r"line 3\b", "is a file")


def test_unknown_builtin_model_did_you_mean(run_cli, tmp_path):
    suite, out, code, err = run_with_model(run_cli, tmp_path, "builtin:tiny-brt")
    assert_one_line_exit2(suite, out, code, err, r"line 3\b", "did you mean builtin:tiny-bert?")


def test_missing_model_given_on_the_command_line(run_cli, tmp_path):
    suite, out, code, err = run_with_model(run_cli, tmp_path, "builtin:tiny-bert", "--model", str(tmp_path / "gone"))
    assert_one_line_exit2(suite, out, code, err, "--model", "does not exist")


def test_broken_config_is_bad_input(run_cli, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "bert"}')
    suite, out, code, err = run_with_model(run_cli, tmp_path, str(broken))
    assert code == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("auditkit: error:") and str(suite) in last and "line 3" in last


def test_pickle_only_checkpoint_is_refused(registry, tmp_path, tiny_bert):
    from auditkit.errors import AuditInputError
    from auditkit.models import load_model
    d = tmp_path / "pickled"
    tiny_bert.model.save_pretrained(d)
    tiny_bert.tokenizer.save_pretrained(d)
    (d / "model.safetensors").unlink()
    torch.save(tiny_bert.model.state_dict(), d / "pytorch_model.bin")
    with pytest.raises(AuditInputError, match="pickle") as exc:
        load_model(str(d), "sequence-classification", registry)
    assert "allow_pickle: true" in exc.value.line()


def test_saved_model_reloads_with_the_same_fingerprint(registry, tmp_path, tiny_bert):
    from auditkit.models import load_model
    tiny_bert.model.save_pretrained(tmp_path / "m")
    tiny_bert.tokenizer.save_pretrained(tmp_path / "m")
    again = load_model(str(tmp_path / "m"), "sequence-classification", registry, num_labels=2)
    assert again.fingerprint == tiny_bert.fingerprint
    texts = ["a fine day", "a bad day"]
    np.testing.assert_allclose(again.class_logits(texts), tiny_bert.class_logits(texts), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------- cached passes

@pytest.fixture
def memory_only(monkeypatch):
    """Count real passes: without the on-disk pass cache a first call always computes."""
    monkeypatch.setenv("AUDITKIT_DISK_CACHE", "0")

def test_class_logits_are_cached_and_order_preserving(tiny_bert, memory_only):
    texts = ["short", "a much longer sentence than the others in this batch", "medium length text"]
    before = tiny_bert.stats["forward_passes"]
    a = tiny_bert.class_logits(texts)
    b = tiny_bert.class_logits(list(texts))
    assert tiny_bert.stats["forward_passes"] == before + 1
    assert a is b and a.shape == (3, 2)
    one = tiny_bert.class_logits([texts[1]])  # padding and length-sorting change nothing
    np.testing.assert_allclose(one[0], a[1], rtol=1e-4, atol=1e-5)


def test_attentions_pass_also_fills_logits(tiny_bert, memory_only):
    texts = ["attention please", "another one here"]
    att = tiny_bert.attentions(texts)
    assert att[0].shape[:2] == (2, 2)  # layers, heads
    assert att[0].shape[2] == att[0].shape[3] == len(tiny_bert.token_ids(texts)[0])
    np.testing.assert_allclose(att[0].sum(-1), 1.0, rtol=1e-4)
    passes = tiny_bert.stats["forward_passes"]
    tiny_bert.class_logits(texts)
    assert tiny_bert.stats["forward_passes"] == passes


def test_memo_for_plugins(tiny_bert, memory_only):
    calls = []
    value = tiny_bert.memo("my-op", ["x"], lambda: calls.append(1) or 42, k=1)
    assert tiny_bert.memo("my-op", ["x"], lambda: calls.append(1) or 43, k=1) == value == 42
    assert tiny_bert.memo("my-op", ["x"], lambda: calls.append(1) or 44, k=2) == 44
    assert len(calls) == 2


def test_token_logprobs_match_a_plain_forward(tiny_gpt2):
    text = "The staff were friendly and helpful."
    lp = tiny_gpt2.token_logprobs([text])[0]
    ids = torch.tensor([tiny_gpt2.tokenizer(text)["input_ids"]])
    with torch.no_grad():
        logits = tiny_gpt2.model(ids).logits[0]
    want = torch.log_softmax(logits[:-1], -1).gather(-1, ids[0, 1:, None])[:, 0].numpy()
    np.testing.assert_allclose(lp, want, rtol=1e-4, atol=1e-5)


def test_continuation_logprobs_score_only_the_continuation(tiny_gpt2):
    ctx, cont = "Question: What is the opposite of 'day'?\nAnswer:", " night"
    lp = tiny_gpt2.continuation_logprobs([(ctx, cont)])[0]
    tok = tiny_gpt2.tokenizer
    whole = tok(ctx + cont)["input_ids"]
    n_ctx = len(tok(ctx)["input_ids"])
    assert len(lp) == len(whole) - n_ctx
    full = tiny_gpt2.token_logprobs([ctx + cont])[0]
    np.testing.assert_allclose(lp, full[n_ctx - 1:], rtol=1e-4, atol=1e-5)


def test_task_mismatch_is_the_asking_checks_error(tiny_bert):
    from auditkit.models import UnservedRequest
    with pytest.raises(UnservedRequest, match="causal-lm"):
        tiny_bert.token_logprobs(["x"])
