"""The forgetting check (issue 4) and the on-disk cache of model passes it relies on.

Shows: KL of a model against itself is 0 and CKA is 1; KL matches a direct computation; base-model
passes are read back from disk by a second audit of another candidate. (A gentle fine-tune passing the
default gates and a destructive one failing them: tests/test_planted_faults.py.)
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

from auditkit.api import CheckContext
from auditkit.errors import AuditInputError
from tests.conftest import write_suite


@pytest.fixture(autouse=True)
def computed_here(monkeypatch):
    """Every pass in these tests is computed by the code under test, never read from an older run's
    disk cache (the tests of the disk cache itself switch it on in a temporary folder)."""
    monkeypatch.setenv("AUDITKIT_DISK_CACHE", "0")


@pytest.fixture
def check(registry):
    return registry.checks["forgetting"]


def make_ctx(registry, check, model, baseline, **params):
    from auditkit.data import load_dataset
    p = {name: spec.default for name, spec in check.params.items()}
    p.update({"max_examples": 40, "bootstrap": 100})
    p.update(params)
    return CheckContext(model=model, baseline=baseline, params=p, seed=0, device="cpu", check_id="forgetting",
                        load_data=lambda spec, columns=None: load_dataset(spec, registry, seed=0))


def perturbed(handle, scale: float, seed: int = 0):
    """A copy of ``handle`` with Gaussian noise added to every weight."""
    import torch
    from auditkit.models import ModelHandle
    model = copy.deepcopy(handle.model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return ModelHandle(model=model, tokenizer=handle.tokenizer, task=handle.task, source=f"noisy:{scale}")


def fresh(handle):
    """The same weights behind a new handle: an empty in-memory cache, like a new process."""
    from auditkit.models import ModelHandle
    return ModelHandle(model=handle.model, tokenizer=handle.tokenizer, task=handle.task, source=handle.source)


# ---------------------------------------------------------------------- linear CKA

def test_linear_cka_identity_invariances_and_feature_form():
    from auditkit_plugins.forgetting import cka_from_grams, linear_cka
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 16))
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    # invariant to orthogonal transforms and isotropic scaling (Kornblith et al. 2019, sec. 3)
    assert linear_cka(x, 3.0 * x @ q) == pytest.approx(1.0, abs=1e-9)
    # the Gram form (HSIC of linear kernels) equals ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)
    y = rng.normal(size=(60, 8)) + x[:, :8]
    xc, yc = x - x.mean(0), y - y.mean(0)
    direct = np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    assert linear_cka(x, y) == pytest.approx(direct, rel=1e-10)
    assert cka_from_grams(x @ x.T, y @ y.T) == pytest.approx(direct, rel=1e-10)
    wide = rng.normal(size=(10, 30))  # fewer examples than features: the Gram form is used
    assert linear_cka(wide, wide @ np.linalg.qr(rng.normal(size=(30, 30)))[0]) == pytest.approx(1.0, abs=1e-9)
    # unrelated representations are far from 1
    assert linear_cka(x, rng.normal(size=(60, 16))) < 0.5


# ---------------------------------------------------------------------- a model against itself

def test_encoder_against_itself_cka_is_one(registry, check, tiny_bert):
    res = check().run(make_ctx(registry, check, tiny_bert, tiny_bert))
    assert res.metrics["cka_mean"].value == pytest.approx(1.0, abs=1e-9)
    assert res.metrics["cka_min"].value == pytest.approx(1.0, abs=1e-9)
    assert res.metrics["retention"].value == pytest.approx(1.0, abs=1e-12)
    assert res.metrics["similarity_before"].value == res.metrics["similarity_after"].value
    assert {"per-layer CKA", "before / after"} <= set(res.figures)
    assert res.figures["per-layer CKA"].lstrip().startswith("<?xml")
    assert not {"kl_neutral", "ppl_ratio"} & set(res.metrics)
    assert set(res.metrics) <= set(check.metrics)


def test_causal_against_itself_kl_is_zero(registry, check, tiny_gpt2):
    res = check().run(make_ctx(registry, check, tiny_gpt2, tiny_gpt2))
    m = res.metrics
    assert m["kl_neutral"].value == 0.0
    assert (m["kl_neutral"].ci_low, m["kl_neutral"].ci_high) == (0.0, 0.0)
    assert m["ppl_ratio"].value == 1.0 and m["ppl_before"].value == m["ppl_after"].value
    assert m["bwt"].value == 0.0 and m["mcnemar_p"].value == 1.0
    assert m["ppl_before"].value > 1.0
    assert len(res.records["correct"]) == 40 and res.records["correct"] == res.records["correct_before"]
    assert set(res.metrics) <= set(check.metrics)


def test_kl_matches_a_direct_computation(tiny_gpt2):
    import torch
    from auditkit_plugins.forgetting import neutral_kl
    cand = perturbed(tiny_gpt2, 0.05)
    prompts = ["The weather in spring is usually", "A map", "The museum's newest exhibition is about"]
    kls = neutral_kl(tiny_gpt2, cand, prompts)
    ids = torch.tensor([tiny_gpt2.tokenizer(prompts[2])["input_ids"]])
    with torch.inference_mode():
        lb = torch.log_softmax(tiny_gpt2.model(input_ids=ids).logits[0].double(), -1)
        lc = torch.log_softmax(cand.model(input_ids=ids).logits[0].double(), -1)
    direct = (lb.exp() * (lb - lc)).sum(-1).numpy()
    assert kls[2].shape == direct.shape
    np.testing.assert_allclose(kls[2], direct, rtol=1e-3, atol=1e-6)
    assert all((k > 0).all() for k in kls)


# ---------------------------------------------------------------------- input errors

def test_without_a_baseline_is_a_clear_input_error(registry, check, tiny_bert):
    with pytest.raises(AuditInputError) as err:
        check().run(make_ctx(registry, check, tiny_bert, None))
    assert "base model" in err.value.line() and "finetune:" in err.value.line()


@pytest.mark.parametrize("retention, words", [
    (["builtin:general-text"], "what kind of data"),
    ([{"prompts": "builtin:neutral-prompts"}], "needs a causal LM"),
    ([{"txt": "builtin:general-text"}], "did you mean 'text'"),
    ([{"lm_eval": "x", "limits": 3}], "unknown key 'limits'"),
])
def test_bad_retention_entries(registry, check, tiny_bert, retention, words):
    with pytest.raises(AuditInputError) as err:
        check().run(make_ctx(registry, check, tiny_bert, tiny_bert, retention=retention))
    assert words in err.value.line()


def test_check_level_data_replaces_the_retention_set_of_its_kind(registry, check, tiny_bert):
    from auditkit.data import Dataset
    pairs = [{"text_a": f"The {w} is on the table.", "text_b": f"A {w} lies on the table.", "similarity": s}
             for w, s in (("cup", 0.9), ("book", 0.8), ("lamp", 0.7), ("key", 0.6), ("pen", 0.5))]
    ctx = make_ctx(registry, check, tiny_bert, tiny_bert)
    ctx.data = Dataset("mine.jsonl", pairs, "mine.jsonl")
    res = check().run(ctx)
    assert res.metrics["retention"].n == 5 and res.metrics["cka_mean"].n == 40  # text: still the default


# ---------------------------------------------------------------------- fine-tunes against their base
# A gentle and a destructive full fine-tune of tiny-bert and tiny-gpt2 through the default gates (no
# gates: key): tests/test_planted_faults.py.


# ---------------------------------------------------------------------- lm-eval tasks as retention data

@pytest.mark.slow
def test_lm_eval_task_as_retention_data(registry, check, tiny_gpt2):
    retention = [{"lm_eval": "builtin:mc-general", "limit": 6}]
    ctx = make_ctx(registry, check, tiny_gpt2, tiny_gpt2, retention=retention)
    res = check().run(ctx)
    m = res.metrics
    assert m["lm_eval_bwt"].value == 0.0 and m["lm_eval_mcnemar_p"].value == 1.0
    assert m["lm_eval_acc_before"].value == m["lm_eval_acc_after"].value and m["lm_eval_acc_after"].n == 6
    assert "ppl_ratio" not in m  # the list replaces the defaults ('default' keeps them)
    table = next(e for e in res.evidence if e["title"] == "lm-eval retention tasks")
    assert table["rows"][0]["task"] == "builtin:mc-general" and table["rows"][0]["n"] == 6
    hits = tiny_gpt2.stats["cache_hits"]
    check().run(ctx)  # the lm-eval results are cached on the handle: no second lm-eval run
    assert tiny_gpt2.stats["cache_hits"] > hits


# ---------------------------------------------------------------------- the disk cache of passes

@pytest.fixture
def disk_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AUDITKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("AUDITKIT_DISK_CACHE", "1")
    return tmp_path / "cache" / "passes"


@pytest.mark.parametrize("value", [
    np.arange(6.0).reshape(2, 3),
    [np.ones(3, np.float32), np.zeros((2, 2), np.float32)],
    [[1, 2, 3], [4]],
    ({"a": [np.ones(2)], "b": 1.5, "c": None, "d": "x", "e": True, "f": 3}, float("nan")),
    [],
])
def test_disk_codec_round_trips(tmp_path, value):
    from auditkit.models import _disk_load, _disk_store
    path = tmp_path / "v.npz"
    assert _disk_store(path, value)
    back = _disk_load(path)
    assert type(back) is type(value)
    assert repr(back) == repr(value)  # same structure, dtypes and numbers (nan included)
    with np.load(path, allow_pickle=False) as z:  # nothing in the file needs pickle
        assert all(z[k].dtype != object for k in z.files)


def test_disk_cache_skips_what_it_cannot_store_and_survives_a_broken_file(tmp_path):
    from auditkit.models import _MISSING, _disk_load, _disk_store
    assert not _disk_store(tmp_path / "o.npz", object())
    assert not _disk_store(tmp_path / "o.npz", np.array([object()]))
    assert not (tmp_path / "o.npz").exists()
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    assert _disk_load(tmp_path / "bad.npz") is _MISSING


def test_passes_are_read_back_from_disk_by_a_new_handle(disk_cache, tiny_bert, monkeypatch):
    texts = ["A cat sat on the mat.", "Rain is expected tomorrow.", "The shop closes at six."]
    first = fresh(tiny_bert)
    h = first.hidden_states(texts)
    assert first.stats["forward_passes"] == 1
    stored = list(disk_cache.glob(f"{tiny_bert.fingerprint}/hidden_states-*.npz"))
    assert len(stored) == 1
    second = fresh(tiny_bert)
    np.testing.assert_array_equal(second.hidden_states(texts), h)
    assert second.stats["forward_passes"] == 0 and second.stats["disk_hits"] == 1
    # the key covers what changes the result: inputs, max_length, the weights
    second.hidden_states(texts[:2])
    assert second.stats["forward_passes"] == 1
    third = fresh(tiny_bert)
    third.max_length = 4
    third.hidden_states(texts)
    assert third.stats["forward_passes"] == 1
    other = perturbed(tiny_bert, 0.01)
    other.hidden_states(texts)
    assert other.stats["forward_passes"] == 1
    # the logits that came with the hidden-states pass were stored too
    assert fresh(tiny_bert).class_logits(texts).shape == (3, 2)
    # switched off: nothing read, nothing written
    monkeypatch.setenv("AUDITKIT_DISK_CACHE", "0")
    files = sorted(disk_cache.rglob("*.npz"))
    off = fresh(tiny_bert)
    off.hidden_states(texts)
    assert off.stats["forward_passes"] == 1 and off.stats["disk_hits"] == 0
    off.class_logits(["only kept in memory"])
    assert sorted(disk_cache.rglob("*.npz")) == files


def test_second_candidate_reuses_the_base_passes_from_disk(disk_cache, registry, check, tiny_gpt2):
    base = fresh(tiny_gpt2)
    first = check().run(make_ctx(registry, check, perturbed(tiny_gpt2, 0.02, seed=1), base))
    assert base.stats["forward_passes"] > 0
    base_again = fresh(tiny_gpt2)  # a new audit: a new process would load the base again
    second = check().run(make_ctx(registry, check, perturbed(tiny_gpt2, 0.02, seed=2), base_again))
    # perplexity and multiple choice on the base come from disk; only the joint KL pass runs the base
    assert base_again.stats["disk_hits"] >= 2
    assert base_again.stats["forward_passes"] == 1
    assert second.metrics["ppl_before"].value == first.metrics["ppl_before"].value
    assert second.metrics["acc_before"].value == first.metrics["acc_before"].value


def test_forgetting_without_a_base_model_is_bad_input_before_loading(tmp_path, run_cli):
    suite = write_suite(tmp_path, """
        name: nobase
        model: {base: "builtin:tiny-bert"}
        checks:
          - uses: forgetting
    """)
    code, out, err = run_cli("run", suite, "--out", tmp_path / "out")
    assert code == 2
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert "suite.yaml:line 4" in err and "compares with the base model" in err
    assert not (tmp_path / "out" / "results.json").exists()
