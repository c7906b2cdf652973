"""Black-box checks on an API model (issue 11 section 3): generation accuracy, multiple-choice accuracy by
log-probs, counterfactual bias on generations, robustness on generation data and the memorization check's
black-box path (membership, extraction, canary exposure), run through the CLI against the local
OpenAI-compatible server serving builtin:tiny-gpt2, and the same suites run in process on the same model:
the numbers agree within 1e-5 (the memorization check compared with its own black-box path on the
in-process model, ``access: black-box``). A check that needs the weights still exits 2."""
from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from tests.conftest import write_jsonl, write_suite

TOL = 1e-5
#: exposure is the larger of a rank bound and a skew-normal fit (scipy's MLE): log-probs that differ by
#: float rounding between the server's batches and ours move the fitted tail by up to ~1e-4 bits
FIT_TOL = 1e-3


def _run_both(tmp_path, run_cli, url: str, checks: str) -> tuple[dict, dict]:
    """Run ``checks`` on the API model and on the in-process model; both results.json. The API model says
    ``chat_template: false``: the tiny GPT-2 has no chat template, so in process its prompts go as plain
    text, while an API model's server holds the template (the default sends chat messages)."""
    out = {}
    for kind, model in (("api", f'{{base: openai-compatible, task: causal-lm, endpoint: "{url}", name: tiny-gpt2, '
                                 f'concurrency: 4, max_length: 64, batch_size: 4, chat_template: false}}'),
                        ("local", '{base: "builtin:tiny-gpt2", task: causal-lm, max_length: 64, batch_size: 4}')):
        suite = write_suite(tmp_path, f"name: {kind}\nseed: 0\nmodel: {model}\nchecks:\n{checks}", f"{kind}.yaml")
        code, _, err = run_cli("run", suite, "--out", tmp_path / f"out-{kind}", "--device", "cpu")
        assert code in (0, 1), err
        assert "ERROR" not in err and "Traceback" not in err, err
        res = json.loads((tmp_path / f"out-{kind}" / "results.json").read_text())
        for ck in res["checks"]:
            assert ck["status"] in ("pass", "warn", "fail", "info"), (kind, ck["id"], ck.get("error"))
        out[kind] = res
    return out["api"], out["local"]


#: metrics an API model cannot give: generated token counts (the server returns text, not token ids)
API_LESS = {"gen_tokens"}


def _same_metrics(api: dict, local: dict, skip=()) -> None:
    for a, b in zip(api["checks"], local["checks"]):
        assert set(a["metrics"]) == set(b["metrics"]) - API_LESS, (a["id"], set(a["metrics"]) ^ set(b["metrics"]))
        for name, m in a["metrics"].items():
            if any(name.startswith(s) for s in skip):
                continue
            va, vb = m["value"], b["metrics"][name]["value"]
            if isinstance(va, float) and math.isnan(va):
                assert math.isnan(vb), name
            else:
                tol = FIT_TOL if name.startswith("exposure") else TOL
                assert va == pytest.approx(vb, abs=tol), (a["id"], name, va, vb)


QA = [{"prompt": "Q: What is the capital of France?\nA:", "reference": ["Paris", "paris"]},
      {"prompt": "Q: How many legs does a spider have?\nA:", "reference": "eight"},
      {"prompt": "Q: What colour is the sky on a clear day?\nA:", "reference": "blue"},
      {"prompt": "Q: Who wrote Hamlet?\nA:", "reference": "Shakespeare"},
      {"prompt": "Q: What is two plus two?\nA:", "reference": "four"}]


def test_generation_accuracy_and_mc_accuracy_equal_in_process(srv, tmp_path, run_cli):
    checks = """\
  - {uses: generation, id: gen, data: "builtin:qa", max_examples: 4, max_new_tokens: 6, gates: []}
  - {uses: accuracy, id: mc, data: "builtin:mc-general", max_examples: 6, gates: []}
"""
    api, local = _run_both(tmp_path, run_cli, srv.url, checks)
    _same_metrics(api, local)
    gen_api, gen_local = api["checks"][0], local["checks"][0]
    assert gen_api["records"] == gen_local["records"]
    assert api["checks"][1]["records"] == local["checks"][1]["records"]
    assert any(p == "/v1/completions" for _, p, _, _ in srv.log)


def test_counterfactual_bias_on_generations_equals_in_process(srv, tmp_path, run_cli):
    checks = """\
  - uses: bias.counterfactual
    id: cf
    data: "builtin:reviews#test"
    mode: generation
    max_examples: 8
    bootstrap: 100
    max_new_tokens: 6
    gates: []
"""
    api, local = _run_both(tmp_path, run_cli, srv.url, checks)
    _same_metrics(api, local)
    assert api["checks"][0]["records"] == local["checks"][0]["records"]
    assert api["checks"][0]["metrics"]["n_swaps"]["value"] > 0


def test_robustness_on_generation_data_equals_in_process(srv, tmp_path, run_cli):
    write_jsonl(tmp_path / "qa.jsonl", QA)
    checks = """\
  - uses: robustness
    id: rob
    data: qa.jsonl
    perturbations: [uppercase, typos]
    max_new_tokens: 4
    bootstrap: 100
    gates: []
"""
    api, local = _run_both(tmp_path, run_cli, srv.url, checks)
    _same_metrics(api, local)
    assert api["checks"][0]["records"] == local["checks"][0]["records"]


# ---------------------------------------------------------------------- memorization, black-box

TEMPLATE = "my PIN is {digits}"


def _memorization_files(tmp_path, registry) -> None:
    from auditkit.data import load_dataset
    rows = load_dataset("builtin:reviews", registry).rows
    write_jsonl(tmp_path / "members.jsonl", [{"text": r["text"]} for r in rows[:12]])
    write_jsonl(tmp_path / "non_members.jsonl", [{"text": r["text"]} for r in rows[12:24]])
    rng = random.Random(3)
    write_jsonl(tmp_path / "canaries.jsonl",
                [{"text": TEMPLATE.format(digits="-".join(str(rng.randrange(10)) for _ in range(4))), "repeats": r}
                 for r in (1, 10, 10)])


MEMO = """\
  - uses: memorization
    id: memo
    access: black-box
    members: members.jsonl
    non_members: non_members.jsonl
    canaries: canaries.jsonl
    canary_template: "{template}"
    references: 30
    unseen: 5
    prefix_tokens: 4
    suffix_tokens: 3
    max_extraction: 8
    samples: {samples}
    gates: []
"""


def test_memorization_black_box_equals_in_process(srv, tmp_path, run_cli, registry, tiny_gpt2):
    _memorization_files(tmp_path, registry)
    api, local = _run_both(tmp_path, run_cli, srv.url, MEMO.format(template=TEMPLATE, samples=0))
    _same_metrics(api, local)
    ck = api["checks"][0]
    m = ck["metrics"]
    assert {"mia_loss_auc", "mia_zlib_auc", "mia_mink_auc", "mia_auc_max", "extraction_rate",
            "canary_extraction_rate", "exposure_max", "exposure_r1", "exposure_r10", "exposure_unseen_mean"} <= set(m)
    assert not any(k.startswith(("mia_minkpp", "mia_ref")) for k in m)
    assert any("black-box" in n for n in ck["notes"])
    assert ck["records"]["extracted"] == local["checks"][0]["records"]["extracted"]
    assert ck["records"]["canary_exposure"] == pytest.approx(local["checks"][0]["records"]["canary_exposure"],
                                                           abs=FIT_TOL)
    assert m["max_possible_exposure"]["value"] == pytest.approx(math.log2(10 ** 4))
    assert m["max_possible_exposure_rank"]["value"] == pytest.approx(math.log2(25))
    # no secret in the results without --show-secrets
    blob = (tmp_path / "out-api" / "results.json").read_text()
    for row in (tmp_path / "canaries.jsonl").read_text().splitlines():
        assert json.loads(row)["text"].split()[-1] not in blob

    # independently: LOSS = mean token log-prob by a plain forward, AUC by sklearn
    from sklearn.metrics import roc_auc_score
    model, tok = tiny_gpt2.model, tiny_gpt2.tokenizer
    texts = [json.loads(r)["text"] for f in ("members.jsonl", "non_members.jsonl")
             for r in (tmp_path / f).read_text().splitlines()]
    y = [1] * 12 + [0] * 12

    def token_lp(text: str) -> np.ndarray:
        ids = tok(text)["input_ids"][:64]
        with torch.inference_mode():
            lp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1].float(), -1)
        return lp.gather(-1, torch.tensor(ids[1:]).unsqueeze(-1)).squeeze(-1).numpy()

    loss = [float(np.mean(token_lp(t))) for t in texts]
    assert m["mia_loss_auc"]["value"] == pytest.approx(roc_auc_score(y, loss), abs=TOL)

    # independently: greedy extraction by transformers' generate from the first 4 words
    members = texts[:8]
    want = []
    for t in members:
        words = t.split()
        prefix = t[:t.index(words[3]) + len(words[3])]
        ids = torch.tensor([tok(prefix)["input_ids"]])
        with torch.inference_mode():
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4 * 3 + 8,
                                 do_sample=False, pad_token_id=tok.eos_token_id)
        new = gen[0, ids.shape[1]:].tolist()
        if tok.eos_token_id in new:
            new = new[:new.index(tok.eos_token_id)]
        cont = tok.decode(new)
        want.append(int(cont[:1].isspace() and cont.split()[:3] == words[4:7]))
    assert ck["records"]["extracted"] == want


def test_memorization_black_box_exposure_by_hand(tiny_gpt2, registry):
    """The black-box exposure from continuation log-probs against a plain loop over model(...)."""
    from auditkit_plugins.memorization.blackbox import blackbox_exposures, canaries_from_rows
    from scipy.stats import skewnorm
    rows = [{"text": TEMPLATE.format(digits="1-2-3-4"), "repeats": 1},
            {"text": TEMPLATE.format(digits="9-0-9-0"), "repeats": 5}]
    rec = canaries_from_rows(rows, TEMPLATE, 24, seed=0)
    assert rec["space_size"] == 10 ** 4 and rec["digits"] == 4 and rec["separator"] == "-"
    assert len(rec["references"]) == 24 and len(set(rec["references"])) == 24
    assert all(r.startswith("my PIN is ") and len(r.split()[-1]) == 7 for r in rec["references"])
    exp = blackbox_exposures(tiny_gpt2, rec, unseen=4)
    model, tok = tiny_gpt2.model, tiny_gpt2.tokenizer

    def px(text: str) -> float:  # bits of the text after "my PIN is" given it
        head = len(tok("my PIN is")["input_ids"])
        ids = tok(text)["input_ids"]
        with torch.inference_mode():
            lp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1].double(), -1)
        lp = lp.gather(-1, torch.tensor(ids[1:]).unsqueeze(-1)).squeeze(-1).numpy()
        return -float(lp[head - 1:].sum()) / math.log(2)

    can = np.array([px(r["text"]) for r in rows])
    refs = np.array([px(t) for t in rec["references"][:20]])
    np.testing.assert_allclose(exp["log_perplexity"], can, atol=1e-3)
    rank = np.array([1 + np.sum(refs < c) + np.sum(refs == c) / 2 for c in can])
    np.testing.assert_allclose(exp["exposure_rank"], math.log2(20) - np.log2(rank), atol=1e-6)
    a, loc, scale = skewnorm.fit(refs)
    fit = np.minimum(np.maximum(-skewnorm.logcdf(can, a, loc, scale) / math.log(2), 0), math.log2(10 ** 4))
    np.testing.assert_allclose(exp["exposure_fit"], fit, atol=1e-2)
    assert exp["method"].startswith("max(rank")


def test_memorization_sampled_extraction_and_needs(srv, tmp_path, run_cli, registry):
    """Sampled extraction runs through the API (the server's sampler is not the in-process one, so only
    its range is checked); the check asks preflight for log-probs and generation only."""
    from auditkit_plugins.memorization import Memorization
    assert Memorization.needs_for({}, "causal-lm") == {"logprobs", "generate"}
    assert Memorization.needs_for({"parts": ["extraction"]}, "causal-lm") == {"generate"}
    assert Memorization.needs_for({"parts": ["membership"]}, "causal-lm") == {"logprobs"}
    assert Memorization.needs_for({}, "sequence-classification") == {"logits"}
    _memorization_files(tmp_path, registry)
    # the default gates (no gates: key): those on base-model metrics do not apply without a base
    entry = MEMO.format(template=TEMPLATE, samples=3).replace("    access: black-box\n", "").replace(
        "    gates: []\n", "")
    suite = write_suite(tmp_path, f"""name: api
seed: 0
model: {{base: openai-compatible, task: causal-lm, endpoint: "{srv.url}", name: tiny-gpt2}}
checks:
{entry}""")
    code, _, err = run_cli("run", suite, "--out", tmp_path / "out", "--device", "cpu")
    assert code in (0, 1) and "ERROR" not in err, err
    ck = json.loads((tmp_path / "out" / "results.json").read_text())["checks"][0]
    assert ck["status"] in ("pass", "warn", "fail", "info"), ck.get("error")
    assert 0 <= ck["metrics"]["extraction_prob"]["value"] <= 1
    assert 0 <= ck["metrics"]["canary_extraction_prob"]["value"] <= 1
    assert any(b and b.get("n") == 3 for _, _, _, b in srv.log)
    assert "exposure_max <= 10" in [g["expr"] for g in ck["gates"]]


@pytest.mark.parametrize("entry,words", [
    ("{uses: memorization, canaries: canaries.jsonl}", "canary_template"),
    ("{uses: memorization, canaries: canaries.jsonl, canary_template: 'my PIN'}", "{digits}"),
])
def test_memorization_bad_canary_params_exit_2(srv, tmp_path, run_cli, entry, words):
    write_jsonl(tmp_path / "canaries.jsonl", [{"text": "my PIN is 1-2-3-4"}])
    suite = write_suite(tmp_path, f"""name: api
model: {{base: openai-compatible, task: causal-lm, endpoint: "{srv.url}", name: tiny-gpt2}}
checks:
  - {entry}
""")
    code, _, err = run_cli("run", suite, "--out", tmp_path / "out", "--device", "cpu")
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err


def test_canary_not_following_the_template_is_bad_input():
    from auditkit.errors import AuditInputError
    from auditkit_plugins.memorization.blackbox import canaries_from_rows
    with pytest.raises(AuditInputError, match="does not follow canary_template"):
        canaries_from_rows([{"text": "your PIN is 1234"}], TEMPLATE, 10, 0)
    with pytest.raises(AuditInputError, match="another format"):
        canaries_from_rows([{"text": "my PIN is 1234"}, {"text": "my PIN is 12-34"}], TEMPLATE, 10, 0)
    rec = canaries_from_rows([{"text": "my PIN is 12 ab 3"}], TEMPLATE, 5000, 0)
    assert rec["space_size"] == 1000 and len(rec["references"]) == 999 and rec["digits"] is None
    assert all(r[len("my PIN is "):][2:6] == " ab " for r in rec["references"])


def test_check_needing_weights_exits_2(srv, tmp_path, run_cli):
    suite = write_suite(tmp_path, f"""name: api
model: {{base: openai-compatible, task: causal-lm, endpoint: "{srv.url}", name: tiny-gpt2}}
checks:
  - {{uses: memorization, members: m.jsonl, non_members: n.jsonl}}
  - {{uses: explainability, data: "builtin:reviews"}}
""")
    code, _, err = run_cli("run", suite, "--out", tmp_path / "out", "--device", "cpu")
    assert code == 2 and "needs the model's weights; an API model has none" in err and "checks[1]" in err
    assert srv.posts == 0


def test_generation_checks_with_the_server_chat_template_run(srv, tmp_path, run_cli):
    """With the default ``model.chat_template`` (the server renders chat messages) every generation check
    runs over /chat/completions, exit 0 or 1, no error."""
    write_jsonl(tmp_path / "qa.jsonl", QA[:3])
    suite = write_suite(tmp_path, f"""name: api-chat
seed: 0
model: {{base: openai-compatible, task: causal-lm, endpoint: "{srv.url}", name: tiny-gpt2}}
checks:
  - {{uses: generation, data: qa.jsonl, max_new_tokens: 4}}
  - {{uses: robustness, data: qa.jsonl, perturbations: [uppercase], max_new_tokens: 4, bootstrap: 100}}
  - {{uses: bias.counterfactual, data: "builtin:reviews#test", mode: generation, max_examples: 4,
      max_new_tokens: 4, bootstrap: 100}}
""")
    code, _, err = run_cli("run", suite, "--out", tmp_path / "out", "--device", "cpu")
    assert code in (0, 1) and "ERROR" not in err, err
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert all(ck["status"] != "error" for ck in res["checks"]), [ck.get("error") for ck in res["checks"]]
    assert {p for _, p, _, _ in srv.log} >= {"/v1/chat/completions"}


def test_canaries_file_on_an_in_process_model_is_ranked_exactly(tmp_path, run_cli, registry):
    """A canaries file also serves a local model without a fine-tune: white-box, the 10^4 secrets of the
    format are enumerated (exact exposure); black-box on the same model gives the estimate."""
    _memorization_files(tmp_path, registry)
    entry = MEMO.format(template=TEMPLATE, samples=0).replace("    access: black-box\n", "")
    suite = write_suite(tmp_path, f"""name: local
seed: 0
model: {{base: "builtin:tiny-gpt2", task: causal-lm, max_length: 64}}
checks:
{entry}""")
    code, _, err = run_cli("run", suite, "--out", tmp_path / "out", "--device", "cpu")
    assert code in (0, 1) and "ERROR" not in err, err
    ck = json.loads((tmp_path / "out" / "results.json").read_text())["checks"][0]
    assert "exposure_method: exact" in ck["notes"]
    assert "mia_minkpp_auc" in ck["metrics"] and not any("black-box" in n for n in ck["notes"])


def test_black_box_canary_table_with_show_secrets(srv, tmp_path, run_cli, registry):
    _memorization_files(tmp_path, registry)
    entry = MEMO.format(template=TEMPLATE, samples=0).replace("    access: black-box\n", "")
    suite = write_suite(tmp_path, f"""name: api
seed: 0
model: {{base: openai-compatible, task: causal-lm, endpoint: "{srv.url}", name: tiny-gpt2, chat_template: false}}
checks:
{entry}""")
    code, _, err = run_cli("run", suite, "--out", tmp_path / "out", "--device", "cpu", "--show-secrets")
    assert code in (0, 1) and "ERROR" not in err, err
    ck = json.loads((tmp_path / "out" / "results.json").read_text())["checks"][0]
    table = ck["evidence"][0]
    assert table["title"].startswith("Canaries") and len(table["rows"]) == 3
    for row in table["rows"]:
        assert row["secret"].count("-") == 3 and isinstance(row["greedy continuation"], str)
        assert "greedy extracted" in row and "exposure" in row
