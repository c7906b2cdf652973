"""Scores do not depend on the batch size or on the number of processes (issue 10, item 5 and 2).

The same suite at model.batch_size 1, 7 and 32 in one process, and at 32 in two CPU processes
(``--processes 2``: torch.distributed.run with gloo), gives the same statuses and gate results and
every metric within 1e-6. Every check that reads the model is in the suites, except cost (its
figures are timings).
"""
from __future__ import annotations

import json

import pytest

from auditkit.cli import main
from tests.conftest import assert_same_results, write_jsonl, write_suite

CLASSIFIER = """
name: inv-bert
seed: 5
model: {{base: "builtin:tiny-bert", max_length: 32, batch_size: {bs}, allow_new_head: true}}
checks:
  - {{uses: accuracy, data: "builtin:reviews#test", bootstrap: 200}}
  - {{uses: calibration, data: "builtin:reviews#test"}}
  - {{uses: bias.groups, data: "builtin:reviews#test", bootstrap: 200, min_group_size: 5}}
  - {{uses: bias.counterfactual, data: "builtin:reviews#test", bootstrap: 200, max_examples: 40}}
  - {{uses: bias.pairs, max_examples: 24}}
  - {{uses: robustness, data: "builtin:reviews#test", max_examples: 40, bootstrap: 200}}
  - {{uses: explainability, data: "builtin:reviews#test", max_examples: 6, ig_steps: 8}}
"""

CAUSAL = """
name: inv-gpt2
seed: 5
model: {{base: "builtin:tiny-gpt2", task: causal-lm, max_length: 32, batch_size: {bs}, baseline: "builtin:tiny-gpt2"}}
checks:
  - {{uses: accuracy, data: mc.jsonl, bootstrap: 200}}
  - {{uses: forgetting, max_examples: 16}}
  - {{uses: bias.pairs, max_examples: 24}}
  - {{uses: bias.counterfactual, max_examples: 30, bootstrap: 200}}
  - {{uses: robustness, data: mc.jsonl, bootstrap: 200}}
  - {{uses: explainability, data: mc.jsonl, max_examples: 4, ig_steps: 8}}
  - {{uses: generation, data: "builtin:qa", max_examples: 10, max_new_tokens: 6, bootstrap: 200}}
  - {{uses: memorization, members: members.jsonl, non_members: non_members.jsonl, canaries: canaries.jsonl,
      canary_template: "my PIN is {{digits}}", references: 30, unseen: 5, prefix_tokens: 4, suffix_tokens: 3,
      max_extraction: 8, samples: 2}}
"""


def _write_mc(folder):
    words = ["tea", "bread", "film", "park", "hotel", "desk", "radio", "boat", "lamp", "train", "garden", "shop"]
    write_jsonl(folder / "mc.jsonl", [{"question": f"Question: Where is the {w}?\nAnswer:",
                                       "choices": ["here", "over there", "nowhere at all", "in the old town"],
                                       "label": i % 4} for i, w in enumerate(words)])
    # memorization's members, non-members and 4-digit canaries (an exactly enumerated space of 10^4 secrets)
    texts = [f"The {w} near the {v} opened at {h} o'clock." for w in words for v, h in (("river", 7), ("bank", 9))]
    write_jsonl(folder / "members.jsonl", [{"text": t} for t in texts[:12]])
    write_jsonl(folder / "non_members.jsonl", [{"text": t} for t in texts[12:]])
    write_jsonl(folder / "canaries.jsonl", [{"text": f"my PIN is {'-'.join(d)}", "repeats": r}
                                            for d, r in (("3141", 1), ("2718", 10), ("1618", 10))])


def _run(tmp_path, template: str, bs: int, processes: int = 1) -> dict:
    suite = write_suite(tmp_path, template.format(bs=bs), name=f"suite-{bs}-{processes}.yaml")
    out = tmp_path / f"out-{bs}-{processes}"
    argv = ["run", str(suite), "--out", str(out), "--device", "cpu"]
    if processes > 1:
        argv += ["--processes", str(processes)]
    code = main(argv)
    assert code in (0, 1), code
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("kind", ["classifier", "causal"])
def test_batch_size_and_process_count_do_not_change_results(tmp_path, kind):
    template = CLASSIFIER if kind == "classifier" else CAUSAL
    _write_mc(tmp_path)
    ref = _run(tmp_path, template, 32)
    for bs in (1, 7):
        assert_same_results(ref, _run(tmp_path, template, bs))
    assert_same_results(ref, _run(tmp_path, template, 32, processes=2))


def test_more_processes_than_cores_is_exit_2_before_anything_starts(tmp_path, capsys, monkeypatch):
    import auditkit.distributed as dist
    monkeypatch.setattr(dist, "launch", lambda *a, **k: pytest.fail("processes were launched"))
    suite = write_suite(tmp_path, CLASSIFIER.format(bs=8))
    assert main(["run", str(suite), "--out", str(tmp_path / "o"), "--device", "cpu", "--processes", "4096"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--processes 4096" in err[0] and "core" in err[0]
    assert not (tmp_path / "o" / "results.json").exists()


@pytest.mark.parametrize("n", ["0", "-2"])
def test_no_processes_is_exit_2_not_a_silent_single_process(tmp_path, capsys, monkeypatch, n):
    import auditkit.runner as runner
    monkeypatch.setattr(runner, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    suite = write_suite(tmp_path, CLASSIFIER.format(bs=8))
    assert main(["run", str(suite), "--out", str(tmp_path / "o"), "--device", "cpu", "--processes", n]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--processes {n}: needs at least 1" in err[0], err


def test_bad_suite_under_processes_is_exit_2_in_the_calling_process(tmp_path, capsys, monkeypatch):
    import auditkit.distributed as dist
    monkeypatch.setattr(dist, "launch", lambda *a, **k: pytest.fail("processes were launched"))
    suite = write_suite(tmp_path, CLASSIFIER.format(bs=8).replace("builtin:reviews#test", "missing.jsonl", 1))
    assert main(["run", str(suite), "--out", str(tmp_path / "o"), "--device", "cpu", "--processes", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.jsonl" in err[0]


def test_deal_gives_each_batch_to_one_process_and_balances_the_work():
    """Batches are dealt largest first to the least-loaded process: every process computes the same deal,
    each batch is run exactly once, and the busiest process has less work than round-robin would give it."""
    from auditkit.distributed import World
    costs = [1120, 992, 960, 896, 864, 832, 800, 768, 736, 704, 640, 144]  # a release-gate pass's batches
    for size in (1, 2, 3):
        deals = [World(rank=r, size=size).deal(costs) for r in range(size)]
        assert [sum(d[k] for d in deals) for k in range(len(costs))] == [1] * len(costs)
        busiest = max(sum(c for c, ours in zip(costs, d) if ours) for d in deals)
        round_robin = max(sum(costs[r::size]) for r in range(size))
        assert busiest <= round_robin
    two = [World(rank=r, size=2).deal(costs) for r in range(2)]
    assert max(sum(c for c, ours in zip(costs, d) if ours) for d in two) < max(sum(costs[0::2]), sum(costs[1::2]))
    assert World(rank=1, size=2).deal(costs) == World(rank=1, size=2).deal(list(costs))  # no hidden state
    assert World(rank=0, size=4).deal([5.0]) == [True] and World(rank=3, size=4).deal([5.0]) == [False]


def test_map_batches_deals_by_padded_size_or_by_the_costs_it_is_given(tiny_gpt2, monkeypatch):
    """A trie unit is one short input standing for many rows: its pass gives costs, and the deal uses them."""
    from auditkit import distributed
    seen = []

    class Recording(distributed.World):
        def deal(self, costs):
            seen.append(list(costs))
            return super().deal(costs)
    monkeypatch.setattr(distributed, "_WORLD", Recording())
    ids = [[1, 2, 3], [4], [5, 6]]
    one = lambda idx, inp, mask: [0] * len(idx)  # noqa: E731
    tiny_gpt2.map_batches(ids, one, batch_size=1)
    tiny_gpt2.map_batches(ids, one, batch_size=1, costs=[10, 1, 5])
    assert seen == [[3, 2, 1], [10, 5, 1]]  # the plan's order: longest first
