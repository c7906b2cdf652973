"""seq2seq-lm, the third task kind: tiny random T5 and BART through the engine and the checks."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import write_jsonl, write_suite

PAIRS = [("The capital of France is", " Paris"), ("Hello", " world again and again"), ("", "hi there"),
         ("A long question about the weather in the north of the country today", " rain"),
         ("Question: what is two plus two? Answer:", " four"), ("x", " y z")] * 3


@pytest.fixture(scope="module", params=["tiny-t5", "tiny-bart"])
def s2s(request, registry):
    from auditkit.models import load_model
    return load_model(f"builtin:{request.param}", "seq2seq-lm", registry, device="cpu")


@pytest.fixture(scope="module")
def tiny_t5(registry):
    from auditkit.models import load_model
    return load_model("builtin:tiny-t5", "seq2seq-lm", registry, device="cpu")


def _plain(handle, ctx_ids, cont_ids):
    """log p(cont | ctx) per token from model(input_ids=enc, labels=dec), one example at a time."""
    import torch
    with torch.no_grad():
        out = handle.model(input_ids=torch.tensor([ctx_ids]), labels=torch.tensor([cont_ids]))
        lp = torch.log_softmax(out.logits[0].double(), -1)
    return lp[torch.arange(len(cont_ids)), torch.tensor(cont_ids)].numpy()


def test_loads_as_seq2seq(s2s):
    assert s2s.model.config.is_encoder_decoder
    assert s2s.new_weights == []
    assert s2s.describe()["task"] == "seq2seq-lm"


def test_continuation_logprobs_match_plain_model_call(s2s):
    pairs = PAIRS[:6]
    got = s2s.continuation_logprobs(pairs)
    tok = s2s.tokenizer
    for (ctx, cont), lp in zip(pairs, got):
        if ctx:
            c = tok(ctx)["input_ids"]
            x = tok(cont, add_special_tokens=False)["input_ids"]
        else:  # lm-eval: an empty context reads the prefix token (BOS, else EOS)
            c = [tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id]
            x = tok(cont, add_special_tokens=False)["input_ids"]
        assert len(lp) == len(x)
        np.testing.assert_allclose(lp, _plain(s2s, c, x), atol=1e-5)


def test_token_logprobs_are_decoder_scores_given_the_prefix_token(s2s):
    texts = ["general text about the weather", "a b"]
    tok = s2s.tokenizer
    prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    for t, lp in zip(texts, s2s.token_logprobs(texts)):
        ids = tok(t)["input_ids"]
        np.testing.assert_allclose(lp, _plain(s2s, [prefix], ids), atol=1e-5)


def test_batch_size_invariant(s2s):
    from auditkit.models import ModelHandle
    texts = [c + x for c, x in PAIRS]
    results = []
    for bs in (1, 7, 32):
        h = ModelHandle(model=s2s.model, tokenizer=s2s.tokenizer, task=s2s.task, source=s2s.source, batch_size=bs)
        results.append((h.continuation_logprobs(PAIRS, greedy=True), h.token_logprobs(texts)))
    # float32 logits: padded widths change the reduction order, so values near -8 move by an ulp (1e-6)
    for other in results[1:]:
        for (a, ga), (b, gb) in zip(results[0][0], other[0]):
            np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-6)
            assert ga == gb
        for a, b in zip(results[0][1], other[1]):
            np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-6)


def test_class_logits_refused(tiny_t5):
    from auditkit.models import UnservedRequest
    with pytest.raises(UnservedRequest):
        tiny_t5.class_logits(["x"])


def test_next_token_kl_of_a_model_with_itself_is_zero(tiny_t5):
    kls = tiny_t5.next_token_kl(tiny_t5, ["neutral prompt one", "two"])
    assert [len(k) for k in kls] == [len(x) for x in tiny_t5.token_ids(["neutral prompt one", "two"])]
    assert max(float(np.max(k)) for k in kls) < 1e-6


def test_integrated_gradients_on_the_encoder_is_complete(tiny_t5):
    """IG's attributions sum to log p(answer | x) - log p(answer | baseline) up to the convergence delta."""
    texts = ["the weather is fine today", "hello world"]
    ids = tiny_t5.token_ids(texts)
    answers = [[5, 6, 7], [9]]
    attr, delta, diff = tiny_t5.integrated_gradients(ids, answers, n_steps=64)
    assert [len(a) for a in attr] == [len(x) for x in ids]
    pad = tiny_t5.tokenizer.pad_token_id
    for x, a, at, d, g in zip(ids, answers, attr, delta, diff):
        full = float(_plain(tiny_t5, x, a).sum())
        base = float(_plain(tiny_t5, [pad] * len(x), a).sum())
        assert abs((full - base) - g) < 1e-4
        assert abs(float(at.sum()) - d - g) < 1e-8
        assert abs(d) < 0.05 * max(abs(g), 1e-3) + 1e-3


def test_seq2seq_finetune_examples_and_loss(tiny_t5):
    import torch

    from auditkit import seq2seq
    from auditkit.data import Dataset
    from auditkit.finetune import _target_tokens, default_target_modules

    ds = Dataset(spec="t", file="t.jsonl", rows=[{"prompt": "Q: hi", "completion": " A: hello"},
                                 {"prompt": "Q: two words", "completion": " A: three words here"}])
    ex = seq2seq.examples(ds, tiny_t5.tokenizer, 64)
    eos = tiny_t5.tokenizer.eos_token_id
    assert all(e["labels"][-1] == eos for e in ex)
    inp, mask, labels = seq2seq.collate(ex, tiny_t5.tokenizer.pad_token_id, "cpu")
    assert int((labels == -100).sum()) == abs(len(ex[0]["labels"]) - len(ex[1]["labels"]))
    with torch.no_grad():
        total, n = seq2seq.loss_sum(tiny_t5.model, inp, mask, labels)
        ref = tiny_t5.model(input_ids=inp, attention_mask=mask, labels=labels).loss  # mean over targets
    assert n == sum(_target_tokens(e, "seq2seq-lm") for e in ex)
    assert abs(float(total) / n - float(ref)) < 1e-5
    assert default_target_modules(tiny_t5.model) == ["q", "v"]  # peft's T5 default
    text = Dataset(spec="t", file="t.jsonl", rows=[{"text": "one two three four five six"}])
    e = seq2seq.examples(text, tiny_t5.tokenizer, 64)[0]
    words = tiny_t5.tokenizer("one two three four five six", add_special_tokens=False)["input_ids"]
    assert e["input_ids"] == words[:len(words) // 2] and e["labels"] == words[len(words) // 2:] + [eos]


def test_lora_targets_of_encoder_decoders_peft_does_not_name():
    """UMT5 and LongT5 (no entry in peft's table) take the T5 family's q/v projections; MBART its q_proj/v_proj."""
    from auditkit.finetune import default_target_modules
    from transformers import LongT5Config, LongT5ForConditionalGeneration, MBartConfig, MBartForConditionalGeneration

    tiny = dict(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2)
    assert default_target_modules(LongT5ForConditionalGeneration(LongT5Config(**tiny))) == ["q", "v"]
    mbart = MBartConfig(vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32)
    assert default_target_modules(MBartForConditionalGeneration(mbart)) == ["q_proj", "v_proj"]


# ---------------------------------------------------------------------- suites end to end

def _suite(tmp_path, checks: str, baseline: bool = True) -> str:
    mc = [{"question": f"Question {i}: which is right?", "choices": ["yes", "no", "maybe"], "label": i % 3}
          for i in range(12)]
    write_jsonl(tmp_path / "mc.jsonl", mc)
    write_jsonl(tmp_path / "members.jsonl", [{"prompt": f"Item {i} says", "completion": f" value {i * 7} ok"}
                                             for i in range(12)])
    write_jsonl(tmp_path / "non_members.jsonl", [{"prompt": f"Other {i} says", "completion": f" thing {i * 3} no"}
                                                 for i in range(12)])
    base = "  baseline: builtin:tiny-t5\n" if baseline else ""
    return str(write_suite(tmp_path, "name: s2s\nmodel:\n  base: builtin:tiny-t5\n  task: seq2seq-lm\n" + base
                           + "checks:\n" + checks))


def test_suite_runs_every_applicable_check_on_t5(tmp_path, run_cli):
    checks = """\
  - uses: accuracy
    data: mc.jsonl
  - uses: generation
    data: builtin:qa
    max_examples: 4
    max_new_tokens: 4
  - uses: forgetting
    max_examples: 4
  - uses: memorization
    members: members.jsonl
    non_members: non_members.jsonl
    samples: 2
    prefix_tokens: 2
    suffix_tokens: 2
  - uses: explainability
    data: mc.jsonl
    methods: [ig]
    max_examples: 3
    ig_steps: 8
"""
    suite = _suite(tmp_path, checks)
    code, out, err = run_cli("run", suite, "--out", tmp_path / "out", "--device", "cpu")
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    statuses = {c["id"]: c["status"] for c in res["checks"]}
    assert "error" not in statuses.values(), (statuses, err, [c.get("error") for c in res["checks"]])
    assert code in (0, 1), err
    by = {c["id"]: c for c in res["checks"]}
    assert "acc" in by["accuracy"]["metrics"]
    assert by["forgetting"]["metrics"]["kl_neutral"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert by["forgetting"]["metrics"]["ppl_ratio"]["value"] == pytest.approx(1.0, abs=1e-6)
    assert "mia_loss_auc" in by["memorization"]["metrics"]
    assert "extraction_rate" in by["memorization"]["metrics"]
    assert "ig_delta" in by["explainability"]["metrics"]


def test_explainability_on_seq2seq_text_explains_the_greedy_answer(tmp_path, run_cli):
    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Tell me about thing {i} please"} for i in range(3)])
    checks = """\
  - uses: explainability
    data: prompts.jsonl
    methods: [ig]
    ig_steps: 8
    gates: []
"""
    suite = _suite(tmp_path, checks, baseline=False)
    code, out, err = run_cli("run", suite, "--out", tmp_path / "out", "--device", "cpu")
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["checks"][0]["status"] != "error", res["checks"][0].get("error")


def test_unsupported_check_on_seq2seq_is_exit_2(tmp_path, run_cli):
    suite = _suite(tmp_path, "  - uses: calibration\n    data: builtin:reviews#test\n", baseline=False)
    code, out, err = run_cli("run", suite, "--out", tmp_path / "out")
    assert code == 2
    assert "does not support task 'seq2seq-lm'" in err
    assert len([line for line in err.strip().splitlines() if line.strip()]) == 1, err


def test_rollout_on_seq2seq_is_bad_input(tmp_path, run_cli):
    suite = _suite(tmp_path, "  - uses: explainability\n    data: mc.jsonl\n    methods: [rollout]\n", baseline=False)
    code, out, err = run_cli("run", suite, "--out", tmp_path / "out", "--device", "cpu")
    assert code in (2, 3)


@pytest.mark.parametrize("base,method", [("builtin:tiny-t5", "lora"), ("builtin:tiny-bart", "full")])
def test_seq2seq_fine_tune_and_every_applicable_check(tmp_path, base, method):
    """Fine-tune a seq2seq model (LoRA and full) on generation data, then audit it with every check that
    applies: generation, overfitting, forgetting against the base, memorization, explainability and
    counterfactual bias on generations. No check ERRORs, and the fine-tune trained (its loss moved)."""
    import json

    from auditkit.cli import main
    from tests.conftest import write_suite
    suite = write_suite(tmp_path, f"""
        name: s2s-ft
        seed: 0
        model: {{base: "{base}", task: seq2seq-lm, max_length: 32, batch_size: 8}}
        finetune: {{data: "builtin:qa#all", validation: "builtin:qa#train", method: {method}, max_steps: 4,
                   batch_size: 8, max_length: 32, learning_rate: 0.001}}
        checks:
          - {{uses: generation, data: "builtin:qa", max_examples: 10, max_new_tokens: 8}}
          - {{uses: overfitting}}
          - {{uses: forgetting, max_examples: 8, bootstrap: 100}}
          - {{uses: memorization, parts: [membership, extraction], max_members: 20, max_extraction: 5}}
          - {{uses: explainability, data: "builtin:qa", max_examples: 2, ig_steps: 4}}
          - {{uses: bias.counterfactual, max_examples: 8, bootstrap: 100}}
        """)
    out = tmp_path / "out"
    code = main(["run", str(suite), "--out", str(out), "--device", "cpu"])
    res = json.loads((out / "results.json").read_text())
    assert code in (0, 1), code
    assert {c["id"]: c["status"] for c in res["checks"] if c["status"] == "error"} == {}
    steps = res["training"]["steps"]
    assert len(steps) == 4 and steps[0]["loss"] != steps[-1]["loss"]
    assert res["training"]["method"] == method


# ---------------------------------------------------------------------- canaries

def test_canary_exposure_scores_the_secret_given_the_head(tiny_t5):
    """A seq2seq canary's log-perplexity is -log2 p(rest | head) from a plain model call (the encoder reads
    the template's head, the decoder the rest); its exposure is the rank bound and skew-normal estimate."""
    from auditkit.finetune import make_canaries
    from auditkit_plugins.memorization.blackbox import blackbox_exposures
    can = make_canaries({"count": 2, "repeats": [1], "template": "my PIN is {digits}", "references": 30,
                         "digits": 4}, 0)
    exp = blackbox_exposures(tiny_t5, can, unseen=5)
    tok = tiny_t5.tokenizer
    for c, px in zip(can["canaries"], exp["log_perplexity"]):
        ctx = tok("my PIN is")["input_ids"]
        cont = tok(c["text"][len("my PIN is"):], add_special_tokens=False)["input_ids"]
        assert px == pytest.approx(-_plain(tiny_t5, ctx, cont).sum() / np.log(2), abs=1e-4)
    assert exp["method"] == "max(rank, skew-normal)" and exp["n_references"] == 25


def test_fine_tune_with_canaries_measures_their_exposure(tmp_path):
    """finetune.canaries on a T5: the canary seen 24 times stands out from the never-inserted references
    (planted memorization), its exposure is reported beside the base's, and no secret is written under
    --out without --show-secrets."""
    from auditkit.cli import main
    from auditkit.finetune import make_canaries
    write_jsonl(tmp_path / "train.jsonl", [{"prompt": f"Question {i}: what is {i} plus one?",
                                            "completion": f" It is {i + 1}."} for i in range(8)])
    suite = write_suite(tmp_path, """
        name: s2s-canaries
        seed: 0
        model: {base: "builtin:tiny-t5", task: seq2seq-lm, max_length: 32, batch_size: 16}
        finetune:
          data: train.jsonl
          method: full
          epochs: 3
          batch_size: 16
          learning_rate: 0.003
          canaries: {count: 1, repeats: [1, 24], references: 60, digits: 4}
        checks:
          - {uses: memorization, parts: [exposure, extraction], max_members: 8, prefix_tokens: 2, suffix_tokens: 2}
        """)
    out = tmp_path / "out"
    code = main(["run", str(suite), "--out", str(out), "--device", "cpu"])
    res = json.loads((out / "results.json").read_text())
    mem = res["checks"][0]
    assert code in (0, 1) and mem["status"] != "error", mem.get("error")
    m = {k: v["value"] for k, v in mem["metrics"].items()}
    assert m["exposure_r24"] > m["exposure_unseen_mean"] + 4 and m["exposure_r24"] > m["baseline.exposure_r24"] + 4
    assert "canary_extraction_rate" in m and "baseline.canary_extraction_rate" in m
    assert any("causal LMs only" in n for n in mem["notes"])
    can = make_canaries(res["training"]["config"]["canaries"], 0)
    for c in can["canaries"]:
        for f in out.rglob("*"):
            if f.is_file():
                assert c["secret"].encode() not in f.read_bytes(), f


def test_a_canary_template_a_seq2seq_model_cannot_take_is_refused_at_suite_load(tmp_path, run_cli):
    write_jsonl(tmp_path / "canaries.jsonl", [{"text": "4-8-1-5 is my PIN", "repeats": 3}])
    suite = _suite(tmp_path, "  - {uses: memorization, canaries: canaries.jsonl, canary_template: '{digits} is my PIN',"
                             " parts: [exposure]}\n")
    code, out, err = run_cli("run", suite, "--out", tmp_path / "out", "--device", "cpu")
    assert code == 2 and "has none" in err and "canary_template" in err and "loading" not in err
