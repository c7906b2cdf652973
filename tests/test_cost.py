"""The ``cost`` check (issue 12, item 3): its numbers against independent computations, the planted case
(a model doubled in size fails against its base under the default gates, the same model against itself
passes), and bad input (exit 2 with one line, before any model loads).
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from auditkit.api import CheckContext
from auditkit.errors import AuditInputError
from tests.conftest import write_suite


def _cost():
    from auditkit_plugins.cost import Cost
    return Cost


def _params(**kw):
    p = {k: v.default for k, v in _cost().params.items()}
    p.update(kw)
    return p


# ---------------------------------------------------------------------- sizes and FLOPs vs hand formulas

def bert_params_by_hand(cfg, num_labels: int) -> int:
    """BertForSequenceClassification, counted from its definition (embeddings, layers, pooler, head)."""
    d, f, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    emb = (cfg.vocab_size + cfg.max_position_embeddings + cfg.type_vocab_size) * d + 2 * d  # + LayerNorm
    layer = 4 * (d * d + d) + 2 * d + (d * f + f) + (f * d + d) + 2 * d  # q,k,v,o + LN, FFN + LN
    return emb + L * layer + (d * d + d) + (d * num_labels + num_labels)


def test_parameter_counts_match_the_architecture(tiny_bert):
    from auditkit_plugins.cost import parameter_counts
    cfg = tiny_bert.model.config
    c = parameter_counts(tiny_bert.model)
    assert c["parameters"] == bert_params_by_hand(cfg, 2)
    emb = (cfg.vocab_size + cfg.max_position_embeddings + cfg.type_vocab_size) * cfg.hidden_size
    assert c["non_embedding_parameters"] == c["parameters"] - emb
    # fp32 weights (4 bytes each) plus the buffers held in memory (position ids...)
    buffers = sum(b.numel() * b.element_size() for b in dict(tiny_bert.model.named_buffers()).values())
    assert c["weights_mb"] * 2 ** 20 == 4 * bert_params_by_hand(cfg, 2) + buffers


def test_tied_weights_are_counted_once(tiny_gpt2):
    from auditkit_plugins.cost import parameter_counts
    m = tiny_gpt2.model
    assert m.lm_head.weight is m.transformer.wte.weight
    unique = {t.data_ptr(): t.numel() for t in m.state_dict().values() if t.dtype.is_floating_point}
    c = parameter_counts(m)
    # distinct storages of the state dict (masks and other buffers aside) = the model's parameters
    assert c["parameters"] == sum(p.numel() for p in {id(p): p for p in m.parameters()}.values())
    assert c["parameters"] <= sum(unique.values())
    d, V, P = m.config.n_embd, m.config.vocab_size, m.config.n_positions
    assert c["non_embedding_parameters"] == c["parameters"] - (V + P) * d


def test_flops_per_token_match_a_hand_count_for_bert(tiny_bert):
    from auditkit_plugins.cost import flops_per_token, synthetic_ids
    cfg = tiny_bert.model.config
    T, d, L, f, C = 16, cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size, 2
    # a multiply-add is 2 FLOPs: q,k,v,o projections, QK^T and AV, the FFN, then pooler and head on [CLS]
    hand = L * (4 * 2 * T * d * d + 2 * 2 * T * T * d + 2 * 2 * T * d * f) + 2 * d * d + 2 * d * C
    ids = synthetic_ids(tiny_bert.tokenizer, 1, T, 0)[0]
    assert flops_per_token(tiny_bert, ids) * T == hand


def test_flops_per_token_match_a_hand_count_for_gpt2(tiny_gpt2):
    from auditkit_plugins.cost import flops_per_token, synthetic_ids
    cfg = tiny_gpt2.model.config
    T, d, L, V = 12, cfg.n_embd, cfg.n_layer, cfg.vocab_size
    inner = cfg.n_inner or 4 * d
    # a scoring pass applies the LM head only where a next token is predicted: T - 1 positions
    hand = L * (2 * T * d * 3 * d + 2 * T * d * d + 2 * 2 * T * T * d + 2 * 2 * T * d * inner) + 2 * (T - 1) * d * V
    ids = synthetic_ids(tiny_gpt2.tokenizer, 1, T, 0)[0]
    assert flops_per_token(tiny_gpt2, ids) * T == hand


def test_synthetic_inputs_are_seeded_and_avoid_special_tokens(tiny_bert):
    from auditkit_plugins.cost import synthetic_ids
    a, b = synthetic_ids(tiny_bert.tokenizer, 3, 10, 5), synthetic_ids(tiny_bert.tokenizer, 3, 10, 5)
    assert a == b and all(len(x) == 10 for x in a)
    assert not set(sum(a, [])) & set(tiny_bert.tokenizer.all_special_ids)
    assert synthetic_ids(tiny_bert.tokenizer, 3, 10, 6) != a


# ---------------------------------------------------------------------- latency statistics

def test_latency_metrics_are_the_percentiles_of_the_timed_calls(tiny_bert, monkeypatch):
    """Stub the clock-reading call: the metrics must be the percentiles scipy computes of those times."""
    from scipy import stats

    import auditkit_plugins.cost as cost
    rng = np.random.default_rng(0)
    fake = iter(rng.uniform(0.01, 0.05, size=1000).tolist())
    seen: dict = {}

    def timed(handle, batch):
        t = next(fake)
        seen.setdefault((id(handle), len(batch)), []).append(t)
        return t

    monkeypatch.setattr(cost, "timed_call", timed)
    params = _params(batch_sizes=[1, 4], seq_len=8, repeats=7, warmup=2, memory="none", bootstrap=200)
    ctx = CheckContext(model=tiny_bert, params=params, seed=0, device="cpu")
    res = _cost()().run(ctx)
    m = {k: v.value for k, v in res.metrics.items()}
    for b in (1, 4):
        x = seen[(id(tiny_bert), b)][2:]  # the warm-up calls are not timed
        assert len(x) == 7 and res.metrics[f"latency_p50.bs{b}"].n == 7
        assert m[f"latency_p50.bs{b}"] == pytest.approx(stats.scoreatpercentile(x, 50))
        assert m[f"latency_p95.bs{b}"] == pytest.approx(stats.scoreatpercentile(x, 95))
        assert m[f"tokens_per_s.bs{b}"] == pytest.approx(b * 8 / np.median(x))
        lo, hi = res.metrics[f"latency_p50.bs{b}"].ci_low, res.metrics[f"latency_p50.bs{b}"].ci_high
        assert min(x) <= lo <= m[f"latency_p50.bs{b}"] <= hi <= max(x)
    assert m["latency_p95"] == m["latency_p95.bs4"] and m["tokens_per_s"] == m["tokens_per_s.bs4"]
    assert res.records["latency_s"] == seen[(id(tiny_bert), 4)][2:]
    assert not any(k.startswith("baseline.") for k in m) and "latency_ratio" not in m
    # no fine-tune: trainable = all parameters, no training figures
    assert m["trainable_parameters"] == m["parameters"] and "train_tokens" not in m


def test_baseline_is_timed_interleaved_and_the_ratio_is_paired(tiny_bert, monkeypatch):
    import auditkit_plugins.cost as cost
    calls = []

    # the same model under another handle: a baseline that costs exactly half
    base = dataclasses.replace(tiny_bert, source="twin", _cache={})
    times = iter(np.linspace(0.01, 0.02, 200).tolist())

    def timed(handle, batch):
        t = next(times)
        calls.append(("base" if handle is base else "cand", len(batch)))
        return t / 2 if handle is base else t

    monkeypatch.setattr(cost, "timed_call", timed)
    params = _params(batch_sizes=[2], seq_len=8, repeats=4, warmup=1, memory="none", bootstrap=100)
    res = _cost()().run(CheckContext(model=tiny_bert, baseline=base, params=params, seed=0, device="cpu"))
    # ABBA: each round times both models, in alternating order
    assert [c[0] for c in calls] == ["cand", "base", "base", "cand", "cand", "base", "base", "cand", "cand", "base"]
    m = {k: v.value for k, v in res.metrics.items()}
    assert 1.9 < m["latency_ratio"] < 2.1 and m["baseline.parameters"] == m["parameters"]
    assert m["baseline.flops_per_token"] == m["flops_per_token"]


def test_training_record_gives_trainable_parameters_and_tokens(tiny_bert, monkeypatch):
    import auditkit_plugins.cost as cost
    monkeypatch.setattr(cost, "timed_call", lambda h, b: 0.01)
    params = _params(batch_sizes=[1], seq_len=4, repeats=3, warmup=0, memory="rss", bootstrap=50)
    record = {"trainable_parameters": 1234, "tokens": 5000, "steps": [{"step": 1}, {"step": 2}]}
    import resource
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    res = _cost()().run(CheckContext(model=tiny_bert, params=params, seed=0, device="cpu", training=record))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    m = {k: v.value for k, v in res.metrics.items()}
    assert m["trainable_parameters"] == 1234 and m["train_tokens"] == 5000 and m["train_steps"] == 2
    assert "train_time_s" not in m and any("wall time" in n for n in res.notes)
    assert before <= m["peak_memory_mb"] <= after  # the process's peak, read during the run


# ---------------------------------------------------------------------- unmeasurable: exit 2

def test_unmeasurable_devices_are_bad_input(tiny_bert):
    params = _params(batch_sizes=[1], seq_len=4, repeats=3, warmup=0)
    with pytest.raises(AuditInputError, match="device 'mps'"):
        _cost()().run(CheckContext(model=tiny_bert, params=params, seed=0, device="mps"))
    with pytest.raises(AuditInputError, match="memory: cuda"):
        _cost()().run(CheckContext(model=tiny_bert, params=dict(params, memory="cuda"), seed=0, device="cpu"))

    class ApiModel:  # an API model: no weights to count
        source, device, max_length = "openai-compatible", "cpu", 32
        model = None
    with pytest.raises(AuditInputError, match="local torch model"):
        _cost()().run(CheckContext(model=ApiModel(), params=params, seed=0, device="cpu"))


def _exit2(run_cli, suite, out, *words):
    code, stdout, err = run_cli("run", suite, "--out", out, "--device", "cpu")
    assert code == 2, (code, err)
    assert "Traceback" not in err + stdout
    errors = [ln for ln in err.splitlines() if ln.startswith("auditkit: error:")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    for w in words:
        assert w in errors[0], (w, errors[0])
    return errors[0]


@pytest.mark.parametrize("entry, words", [
    ("{uses: cost, batch_sizes: [1, 0]}", ["batch_sizes", ">= 1"]),
    ("{uses: cost, batch_sizes: []}", ["batch_sizes must be a non-empty list of integers"]),
    ("{uses: cost, batch_sizes: [1.5]}", ["batch_sizes must be a non-empty list of integers"]),
    ("{uses: cost, repeats: 1}", ["repeats must be >= 3"]),
    ("{uses: cost, memory: vram}", ["memory must be one of"]),
])
def test_bad_values_are_exit_2_before_loading(run_cli, tmp_path, monkeypatch, entry, words):
    import auditkit.runner
    monkeypatch.setattr(auditkit.runner, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    suite = write_suite(tmp_path, f"""
        name: cost-bad
        model: {{base: "builtin:tiny-bert"}}
        checks:
          - {entry}
        """)
    line = _exit2(run_cli, suite, tmp_path / "out", *words)
    assert "line 4" in line


def test_cuda_memory_on_a_machine_without_cuda_is_exit_2_before_loading(run_cli, tmp_path, monkeypatch):
    import torch

    import auditkit.runner
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: memory: cuda is measurable")
    monkeypatch.setattr(auditkit.runner, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    suite = write_suite(tmp_path, """
        name: cost-cuda
        model: {base: "builtin:tiny-bert"}
        checks:
          - uses: cost
            memory: cuda
        """)
    line = _exit2(run_cli, suite, tmp_path / "out", "memory: cuda", "no CUDA device", "suite.yaml")
    assert "line 5" in line


# ---------------------------------------------------------------------- planted case and clean control

def doubled_bert(folder, registry):
    """tiny-bert with twice the layers, width, heads and FFN (a classifier with its head), and its tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from auditkit.models import resolve_source
    src = resolve_source("builtin:tiny-bert", registry)
    tok = AutoTokenizer.from_pretrained(src)
    small = BertConfig.from_pretrained(src)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=small.vocab_size, hidden_size=2 * small.hidden_size,
                     num_hidden_layers=2 * small.num_hidden_layers, num_attention_heads=2 * small.num_attention_heads,
                     intermediate_size=2 * small.intermediate_size,
                     max_position_embeddings=small.max_position_embeddings, num_labels=2,
                     pad_token_id=small.pad_token_id)
    BertForSequenceClassification(cfg).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


COST_ENTRY = """
          - uses: cost
            batch_sizes: [1, 4]
            seq_len: 16
            repeats: 5
            warmup: 1
            bootstrap: 200
"""


def _run(run_cli, suite, out):
    code, _, err = run_cli("run", suite, "--out", out, "--device", "cpu")
    check = json.loads((out / "results.json").read_text())["checks"][0]
    return code, check, err


def test_a_model_doubled_in_size_fails_cost_and_the_same_model_passes(run_cli, tmp_path, registry):
    big = doubled_bert(tmp_path / "big", registry)
    suite = write_suite(tmp_path, f"""
        name: cost-doubled
        model: {{base: {json.dumps(str(big))}, baseline: "builtin:tiny-bert", max_length: 32}}
        checks:{COST_ENTRY}""", name="doubled.yaml")
    code, check, err = _run(run_cli, suite, tmp_path / "out-doubled")
    assert code == 1 and check["status"] == "fail", (err, check["gates"])
    assert check["default_gates"] is True and all(g["default"] for g in check["gates"])
    status = {g["expr"]: g["status"] for g in check["gates"]}
    assert status["flops_per_token <= baseline.flops_per_token * 1.1"] == "fail"
    assert status["parameters <= baseline.parameters * 1.1"] == "fail"
    m = {k: v["value"] for k, v in check["metrics"].items()}
    assert m["parameters"] > 1.9 * m["baseline.parameters"]
    assert m["flops_per_token"] > 3.5 * m["baseline.flops_per_token"]  # 2x layers x (2x width)^2, roughly
    assert check["baseline_metrics"]["latency_p95"]["value"] == m["baseline.latency_p95"]
    # on CPU, peak memory is process-wide: its baseline gate is dropped with a note, never errors
    assert "peak_memory_mb <= baseline.peak_memory_mb * 1.2" not in status
    assert any("peak_memory_mb" in n for n in check["notes"])
    assert {"latency per batch size"} <= set(check["figures"])

    # the clean control: the same model against itself (loaded twice, timed side by side)
    suite = write_suite(tmp_path, f"""
        name: cost-same
        model: {{base: "builtin:tiny-bert", baseline: "builtin:tiny-bert", max_length: 32}}
        checks:{COST_ENTRY}""", name="same.yaml")
    code, check, err = _run(run_cli, suite, tmp_path / "out-same")
    status = {g["expr"]: g["status"] for g in check["gates"]}
    # every fail gate passes; the latency p95 gate is a warning on a point estimate and may flip on noise
    assert code == 0 and check["status"] in ("pass", "warn"), (err, check["gates"])
    assert status["flops_per_token <= baseline.flops_per_token * 1.1"] == "pass"
    assert status["parameters <= baseline.parameters * 1.1"] == "pass"
    assert status["latency_ratio.ci_low <= 1.5"] == "pass"
    m = {k: v["value"] for k, v in check["metrics"].items()}
    assert m["parameters"] == m["baseline.parameters"] and m["flops_per_token"] == m["baseline.flops_per_token"]


def test_without_a_base_model_the_default_gates_are_dropped_and_the_check_is_info(run_cli, tmp_path):
    suite = write_suite(tmp_path, f"""
        name: cost-alone
        model: {{base: "builtin:tiny-bert", max_length: 32}}
        checks:{COST_ENTRY}""")
    code, check, err = _run(run_cli, suite, tmp_path / "out")
    assert code == 0 and check["status"] == "info" and check["gates"] == [], err
    assert sum("not applied" in n for n in check["notes"]) == len(_cost().default_gates)
    assert "latency_p95" in check["metrics"] and "latency_ratio" not in check["metrics"]


def test_a_lora_fine_tune_costs_what_its_base_costs_and_reports_its_trainable_parameters(run_cli, tmp_path):
    from tests.conftest import write_jsonl
    rows = [{"text": f"the {w} was {'great' if i % 2 else 'awful'}", "label": i % 2}
            for i, w in enumerate(["hotel", "pizza", "train", "phone", "cinema", "bakery", "taxi", "lamp"] * 2)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "val.jsonl", rows[:8])
    suite = write_suite(tmp_path, f"""
        name: cost-lora
        model: {{base: "builtin:tiny-bert", max_length: 32}}
        finetune: {{data: train.jsonl, validation: val.jsonl, method: lora, epochs: 1, batch_size: 8,
                    max_length: 32, lora: {{r: 4, alpha: 8}}}}
        checks:{COST_ENTRY}""")
    code, check, err = _run(run_cli, suite, tmp_path / "out")
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    m = {k: v["value"] for k, v in check["metrics"].items()}
    status = {g["expr"]: g["status"] for g in check["gates"]}
    assert code == 0, (err, check["gates"])
    # the adapter is merged for the audit: the served model has the base's size and compute
    assert m["parameters"] == m["baseline.parameters"] and m["flops_per_token"] == m["baseline.flops_per_token"]
    assert status["parameters <= baseline.parameters * 1.1"] == status["latency_ratio.ci_low <= 1.5"] == "pass"
    assert 0 < m["trainable_parameters"] == results["training"]["trainable_parameters"] < m["parameters"] / 10
    assert m["train_tokens"] == results["training"]["tokens"] > 0 and m["train_steps"] == 2
    # the fine-tune's wall time, which the runner keeps out of the (deterministic) training record
    assert m["train_time_s"] == pytest.approx(results["run"]["training"]["train_time_s"], abs=1e-3) and m["train_time_s"] > 0


# ---------------------------------------------------------------------- energy and CO2 (RAPL, NVML)

MAX_RANGE = 262143328850  # a typical max_energy_range_uj


def _domain(root, name, label, energy, max_range=MAX_RANGE):
    d = root / name
    d.mkdir(parents=True)
    (d / "name").write_text(label + "\n")
    (d / "energy_uj").write_text(f"{energy}\n")
    (d / "max_energy_range_uj").write_text(f"{max_range}\n")
    return d / "energy_uj"


def fake_powercap(root, start0: int):
    """Two packages (package-0 near its wrap), their sub-domains, psys and the mmio copy, as Linux lists them."""
    (root / "intel-rapl").mkdir(parents=True)  # the control type folder itself
    (root / "intel-rapl" / "enabled").write_text("1\n")
    pkgs = [_domain(root, "intel-rapl:0", "package-0", start0), _domain(root, "intel-rapl:1", "package-1", 10)]
    decoys = [_domain(root, "intel-rapl:0:0", "core", 5), _domain(root, "intel-rapl:0:1", "dram", 5),
              _domain(root, "intel-rapl:2", "psys", 5), _domain(root, "intel-rapl-mmio:0", "package-0", 5)]
    return pkgs, decoys


def _advance(path, uj: int, max_range=MAX_RANGE) -> bool:
    """Add ``uj`` to a fake counter the way RAPL does, wrapping past max_range; True when it wrapped."""
    v = int(path.read_text()) + uj
    wrapped = v > max_range
    path.write_text(f"{v - max_range if wrapped else v}\n")
    return wrapped


def test_rapl_delta_handles_the_wrap_around():
    from auditkit_plugins.cost import rapl_delta_uj
    assert rapl_delta_uj(100, 350, MAX_RANGE) == 250
    assert rapl_delta_uj(MAX_RANGE - 40, 60, MAX_RANGE) == 100


def test_energy_per_token_is_the_rapl_energy_of_the_timed_calls(tiny_bert, monkeypatch, tmp_path):
    """Counters that advance by known amounts per call (warm-up too, one wrap): the metric is the hand sum."""
    import auditkit_plugins.cost as cost
    (p0, p1), decoys = fake_powercap(tmp_path / "powercap", MAX_RANGE - 5000)
    monkeypatch.setattr(cost, "RAPL_ROOT", str(tmp_path / "powercap"))
    base = dataclasses.replace(tiny_bert, source="twin", _cache={})
    wraps = []

    def used_uj(handle, b):  # µJ of one call on package-0 and package-1: a fixed cost plus per input
        return (700 + 300 * b, 200 + 100 * b) if handle is base else (1500 + 900 * b, 400 + 250 * b)

    def timed(handle, batch):
        e0, e1 = used_uj(handle, len(batch))
        wraps.append(_advance(p0, e0))
        _advance(p1, e1)
        for d in decoys:  # sub-domains, psys and the mmio copy overlap the packages: never counted
            _advance(d, 10 ** 6)
        return 0.01

    monkeypatch.setattr(cost, "timed_call", timed)
    sizes, seq, repeats, grid = [1, 4], 8, 5, 300.0
    params = _params(batch_sizes=sizes, seq_len=seq, repeats=repeats, warmup=2, memory="none", bootstrap=200,
                     grid_g_per_kwh=grid)
    res = _cost()().run(CheckContext(model=tiny_bert, baseline=base, params=params, seed=0, device="cpu"))
    assert any(wraps)  # package-0 wrapped during the run
    m = {k: v.value for k, v in res.metrics.items()}
    tokens = repeats * sum(b * seq for b in sizes)
    for prefix, h in (("", tiny_bert), ("baseline.", base)):
        joules = repeats * sum(sum(used_uj(h, b)) for b in sizes) / 1e6
        assert m[prefix + "energy_j_per_token"] == pytest.approx(joules / tokens, rel=1e-12)
        # gCO2e per 1000 tokens: J/token * 1000 tokens -> kWh (3.6e6 J each) -> grams at the grid's intensity
        assert m[prefix + "co2_g_per_1k_tokens"] == pytest.approx(joules / tokens * 1000 / 3.6e6 * grid)
        ci = res.metrics[prefix + "energy_j_per_token"]
        # every repeat costs the same here: the CI over repeats is the point (to rounding)
        assert ci.ci_low == pytest.approx(ci.value) == ci.ci_high and ci.n == repeats
    assert any(n.startswith("energy_method: rapl") and "package-0, package-1" in n for n in res.notes)
    rows = next(e["rows"] for e in res.evidence if e["title"].startswith("Energy"))
    assert rows[0]["joules"] == pytest.approx(repeats * sum(sum(used_uj(tiny_bert, b)) for b in sizes) / 1e6)


def test_the_default_grid_intensity_is_the_documented_world_average():
    import auditkit_plugins.cost as cost
    assert _cost().params["grid_g_per_kwh"].default == cost.WORLD_GRID_G_PER_KWH == 481.0
    assert "Ember" in cost.__doc__ and "481" in cost.__doc__
    assert cost.co2_g_per_1k_tokens(0.036, 500.0) == pytest.approx(0.005)  # 36 J = 1e-5 kWh; x 500 g/kWh


def test_without_readable_counters_energy_is_absent_with_a_note(tiny_bert, monkeypatch, tmp_path):
    import builtins

    import auditkit_plugins.cost as cost
    monkeypatch.setattr(cost, "timed_call", lambda h, b: 0.01)
    params = _params(batch_sizes=[1], seq_len=4, repeats=3, warmup=0, memory="none", bootstrap=50)
    monkeypatch.setattr(cost, "RAPL_ROOT", str(tmp_path / "absent"))
    res = _cost()().run(CheckContext(model=tiny_bert, params=params, seed=0, device="cpu"))
    assert not any("energy" in k or "co2" in k for k in res.metrics)
    assert any(n.startswith("energy_method: none") and "does not exist" in n for n in res.notes)
    assert not any(e["title"].startswith("Energy") for e in res.evidence)

    # counters hidden from non-root users (Linux >= 5.10): the same, and the note says so
    fake_powercap(tmp_path / "root-only", 0)
    monkeypatch.setattr(cost, "RAPL_ROOT", str(tmp_path / "root-only"))

    def deny(path, *a, **k):
        if str(path).endswith("energy_uj"):
            raise PermissionError(13, "Permission denied", str(path))
        return builtins.open(path, *a, **k)
    monkeypatch.setattr(cost, "open", deny, raising=False)
    res = _cost()().run(CheckContext(model=tiny_bert, params=params, seed=0, device="cpu"))
    assert not any("energy" in k for k in res.metrics)
    assert any(n.startswith("energy_method: none") and "root only" in n for n in res.notes)

    # energy: none is obeyed even where counters are readable
    monkeypatch.undo()
    monkeypatch.setattr(cost, "timed_call", lambda h, b: 0.01)
    fake_powercap(tmp_path / "ok", 0)
    monkeypatch.setattr(cost, "RAPL_ROOT", str(tmp_path / "ok"))
    res = _cost()().run(CheckContext(model=tiny_bert, params=dict(params, energy="none"), seed=0, device="cpu"))
    assert "energy_j_per_token" not in res.metrics and "energy_method: none (energy: none was set)" in " ".join(
        res.notes)


def test_asking_for_an_unreadable_counter_is_bad_input(tiny_bert, monkeypatch, tmp_path):
    import auditkit_plugins.cost as cost
    monkeypatch.setattr(cost, "RAPL_ROOT", str(tmp_path / "absent"))
    monkeypatch.setattr(cost, "timed_call", lambda h, b: 0.01)
    params = _params(batch_sizes=[1], seq_len=4, repeats=3, warmup=0, memory="none", energy="rapl")
    with pytest.raises(AuditInputError, match="energy: rapl was asked for but no RAPL"):
        _cost().validate_params(params)
    with pytest.raises(AuditInputError, match="energy: rapl"):
        _cost()().run(CheckContext(model=tiny_bert, params=params, seed=0, device="cpu"))
    with pytest.raises(AuditInputError, match="energy: nvml was asked for but the run is on cpu"):
        cost.energy_meter("nvml", "cpu")


def test_energy_rapl_without_counters_is_exit_2_before_loading(run_cli, tmp_path, monkeypatch):
    import auditkit.runner
    import auditkit_plugins.cost as cost
    monkeypatch.setattr(cost, "RAPL_ROOT", str(tmp_path / "absent"))
    monkeypatch.setattr(auditkit.runner, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    suite = write_suite(tmp_path, """
        name: cost-rapl
        model: {base: "builtin:tiny-bert"}
        checks:
          - uses: cost
            energy: rapl
        """)
    line = _exit2(run_cli, suite, tmp_path / "out", "energy: rapl was asked for", "no RAPL")
    assert "line 5" in line


class FakeNvml:
    """pynvml's calls that NvmlMeter makes, with a counter in millijoules."""

    class NVMLError_NotSupported(Exception):
        pass

    def __init__(self, start_mj=10_000, supported=True):
        self.mj, self.supported, self.uuids = start_mj, supported, []

    def nvmlInit(self):
        pass

    def nvmlDeviceGetHandleByUUID(self, uuid):
        self.uuids.append(uuid)
        return ("handle", uuid)

    def nvmlDeviceGetName(self, handle):
        return "Fake H100"

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if not self.supported:
            raise self.NVMLError_NotSupported("Not Supported")
        return self.mj


def test_nvml_meter_reads_the_gpu_energy_counter_in_joules():
    from auditkit_plugins.cost import EnergyUnavailable, NvmlMeter
    nvml = FakeNvml()
    meter = NvmlMeter(nvml=nvml, uuid="GPU-1234")
    assert nvml.uuids == ["GPU-1234"] and meter.method == "nvml"
    before = meter.read()
    nvml.mj += 2500  # 2.5 J
    assert meter.joules(before, meter.read()) == pytest.approx(2.5)
    assert "Fake H100" in meter.describe()
    with pytest.raises(EnergyUnavailable, match="NVMLError_NotSupported"):  # pre-Volta GPUs have no counter
        NvmlMeter(nvml=FakeNvml(supported=False), uuid="GPU-1234")


def test_auto_on_cuda_without_pynvml_leaves_energy_out(monkeypatch):
    import auditkit_plugins.cost as cost

    def missing():
        raise cost.EnergyUnavailable("pynvml is not installed")
    monkeypatch.setattr(cost, "_nvml_module", missing)
    meter, why = cost.energy_meter("auto", "cuda:0")
    assert meter is None and "pynvml" in why
    with pytest.raises(AuditInputError, match="energy: nvml was asked for but pynvml"):
        cost.energy_meter("nvml", "cuda")


def test_a_run_with_an_energy_counter_reports_it_and_applies_the_warn_gate(run_cli, tmp_path, monkeypatch):
    """End to end with a stand-in counter (10 W by the clock): the metrics, the note and a warn-only gate."""
    import time

    import auditkit_plugins.cost as cost

    class TenWatts:
        method = "rapl"

        def read(self):
            return [int(time.perf_counter() * 1e7)]  # µJ at 10 W

        def joules(self, before, after):
            return (after[0] - before[0]) / 1e6

        def describe(self):
            return "a stand-in"
    monkeypatch.setattr(cost, "energy_meter", lambda choice, device: (TenWatts(), ""))
    suite = write_suite(tmp_path, """
        name: cost-energy
        model: {base: "builtin:tiny-bert", baseline: "builtin:tiny-bert", max_length: 32}
        checks:
          - {uses: cost, batch_sizes: [2], seq_len: 8, repeats: 3, warmup: 1, bootstrap: 50}
        """)
    code, check, err = _run(run_cli, suite, tmp_path / "out")
    assert code == 0, (err, check["gates"])
    m = {k: v["value"] for k, v in check["metrics"].items()}
    for prefix in ("", "baseline."):
        assert m[prefix + "energy_j_per_token"] > 0
        assert m[prefix + "co2_g_per_1k_tokens"] == pytest.approx(
            m[prefix + "energy_j_per_token"] * 1000 / 3.6e6 * 481.0)
    gate = next(g for g in check["gates"] if g["expr"].startswith("energy_j_per_token"))
    assert gate["severity"] == "warn" and gate["status"] in ("pass", "warn")
    assert any(n.startswith("energy_method: rapl: a stand-in") for n in check["notes"])


def test_energy_ci_is_the_shared_mean_bootstrap_over_repeats(tiny_bert, monkeypatch, tmp_path):
    """Energy that varies from repeat to repeat: the CI is ``auditkit.stats.mean_ci`` of the per-repeat J/token
    (seeded, ``bootstrap`` resamples), which is scipy's percentile bootstrap of the mean."""
    import auditkit_plugins.cost as cost
    from scipy.stats import bootstrap
    from auditkit.stats import mean_ci
    (p0, _), _ = fake_powercap(tmp_path / "powercap", 1000)
    monkeypatch.setattr(cost, "RAPL_ROOT", str(tmp_path / "powercap"))
    calls = []

    def timed(handle, batch):
        uj = 5000 + 1700 * len(calls) % 9001 + 300 * len(batch)
        calls.append(uj)
        _advance(p0, uj)
        return 0.01

    monkeypatch.setattr(cost, "timed_call", timed)
    sizes, seq, repeats, warmup = [1, 3], 4, 6, 1
    params = _params(batch_sizes=sizes, seq_len=seq, repeats=repeats, warmup=warmup, memory="none", bootstrap=300)
    res = _cost()().run(CheckContext(model=tiny_bert, params=params, seed=4, device="cpu"))
    per_round = [sum(calls[r * len(sizes):(r + 1) * len(sizes)]) for r in range(warmup, warmup + repeats)]
    per_token = np.asarray(per_round) / 1e6 / sum(b * seq for b in sizes)
    m = res.metrics["energy_j_per_token"]
    assert m.value == pytest.approx(per_token.mean(), rel=1e-12) and m.n == repeats
    assert (m.ci_low, m.ci_high) == pytest.approx(mean_ci(per_token, 4, 300), rel=1e-12)
    ref = bootstrap((per_token,), np.mean, n_resamples=300, method="percentile",
                    rng=np.random.default_rng(4)).confidence_interval
    assert (m.ci_low, m.ci_high) == pytest.approx((ref.low, ref.high), rel=1e-12)
    assert m.ci_low < m.value < m.ci_high
