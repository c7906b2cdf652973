"""What the three model handles (transformers, vLLM, API) share: one memo (memory, disk, data parallel),
one set of generation argument checks, one task check; atomic writes that never touch the umask; one
dotted-place formatter."""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from auditkit import __version__
from auditkit import distributed
from auditkit.errors import AuditInputError, dotted
from auditkit.models import UnservedRequest

# ---------------------------------------------------------------------- the three handles


def _hf(tiny_gpt2):
    from auditkit.models import ModelHandle
    return ModelHandle(model=tiny_gpt2.model, tokenizer=tiny_gpt2.tokenizer, task="causal-lm", source="tiny-gpt2",
                       max_length=tiny_gpt2.max_length)


def _vllm(tiny_gpt2, llm=None):
    from auditkit.backends import VLLMHandle
    return VLLMHandle(llm, tiny_gpt2.tokenizer, source="builtin:tiny-gpt2", location="/nowhere",
                      max_length=tiny_gpt2.max_length)


def _api(tiny_gpt2=None):
    from auditkit.remote import APIModelHandle
    return APIModelHandle("http://127.0.0.1:9/v1", "tiny", model_card={"id": "tiny"})


KINDS = {"hf": _hf, "vllm": _vllm, "api": _api}


def _old_path(h, kind: str, op: str, items, kw: dict) -> Path:
    """The disk path each handle built before the memo was shared (a stored pass must stay readable)."""
    from auditkit.models import _DISK_FORMAT, cache_dir, texts_key
    key = (op, texts_key(items), json.dumps(kw, sort_keys=True))
    root = cache_dir() / "passes" / h.fingerprint
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", op)[:60]
    if kind == "hf":
        blob = json.dumps([_DISK_FORMAT, __version__, h.fingerprint, h._pass_config(), *key], sort_keys=True)
        return root / f"{safe}-{hashlib.blake2b(blob.encode(), digest_size=20).hexdigest()}.npz"
    if kind == "vllm":
        blob = json.dumps(["vllm", __version__, h.fingerprint, h.max_length, h.tokenizer_key(), *key])
        return root / f"vllm-{op[:40]}-{hashlib.blake2b(blob.encode(), digest_size=20).hexdigest()}.npz"
    blob = json.dumps([__version__, h.fingerprint, *key], sort_keys=True)
    return root / f"{safe}-{hashlib.blake2b(blob.encode(), digest_size=20).hexdigest()}.npz"


@pytest.fixture
def disk(tmp_path, monkeypatch):
    monkeypatch.setenv("AUDITKIT_CACHE", str(tmp_path))
    monkeypatch.setenv("AUDITKIT_DISK_CACHE", "1")
    return tmp_path


class _Counter:
    def __init__(self, value):
        self.value, self.calls = value, 0

    def __call__(self):
        self.calls += 1
        return self.value


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_memo_hits_in_memory_then_on_disk_for_every_handle(kind, tiny_gpt2, disk):
    items, kw = ["a text", "another"], {"k": 3, "b": [1, 2]}
    value = [np.arange(3, dtype=np.float32), np.ones(2, dtype=np.float32)]
    h = KINDS[kind](tiny_gpt2)
    compute = _Counter(value)
    first = h.memo("my_op", items, compute, persist=True, **kw)
    again = h.memo("my_op", list(items), compute, persist=True, **kw)
    assert compute.calls == 1 and again is first and h.stats["cache_hits"] == 1
    files = list((disk / "passes" / h.fingerprint).glob("*.npz"))
    assert files == [_old_path(h, kind, "my_op", items, kw)]  # the same file as before the memo was shared
    assert files[0].name.startswith("vllm-my_op-" if kind == "vllm" else "my_op-")

    fresh = KINDS[kind](tiny_gpt2)  # another run: the pass comes from disk
    other = _Counter(None)
    got = fresh.memo("my_op", items, other, persist=True, **kw)
    assert other.calls == 0 and fresh.stats["disk_hits"] == 1
    assert all(np.array_equal(a, b) for a, b in zip(got, value))
    fresh.memo("my_op", items, other, persist=True, **kw)
    assert fresh.stats["cache_hits"] == 1 and fresh.stats["disk_hits"] == 1

    # another keyword, another key; a plain memo never touches the disk
    fresh.memo("my_op", items, other, persist=True, k=4, b=[1, 2])
    assert other.calls == 1
    fresh.memo("plain", items, _Counter(np.zeros(1)))
    assert not list((disk / "passes" / h.fingerprint).glob("plain-*"))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_memo_disk_cache_off(kind, tiny_gpt2, disk, monkeypatch):
    monkeypatch.setenv("AUDITKIT_DISK_CACHE", "0")
    compute = _Counter(np.ones(2))
    KINDS[kind](tiny_gpt2).memo("op", ["x"], compute, persist=True)
    KINDS[kind](tiny_gpt2).memo("op", ["x"], compute, persist=True)
    assert compute.calls == 2 and not (disk / "passes").exists()


class _FakeWorld:
    def __init__(self, main: bool, agree: bool):
        self.main, self.agree, self.asked = main, agree, []

    def all_agree(self, flag):
        self.asked.append(flag)
        return flag and self.agree


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_memo_under_data_parallel(kind, tiny_gpt2, disk, monkeypatch):
    """Rank 0 alone writes; a stored pass is read only when every process has it."""
    w = _FakeWorld(main=False, agree=True)
    monkeypatch.setattr(distributed, "world", lambda: w)
    compute = _Counter(np.ones(2))
    KINDS[kind](tiny_gpt2).memo("op", ["x"], compute, persist=True)
    assert compute.calls == 1 and not (disk / "passes").exists()  # not rank 0: nothing written
    w.main = True
    KINDS[kind](tiny_gpt2).memo("op", ["x"], compute, persist=True)
    assert compute.calls == 2 and len(list((disk / "passes").rglob("*.npz"))) == 1
    w.agree = False  # another process lacks the pass: every process computes
    h = KINDS[kind](tiny_gpt2)
    h.memo("op", ["x"], compute, persist=True)
    assert compute.calls == 3 and h.stats["disk_hits"] == 0 and w.asked[-1] is True
    w.agree = True
    h = KINDS[kind](tiny_gpt2)
    h.memo("op", ["x"], compute, persist=True)
    assert compute.calls == 3 and h.stats["disk_hits"] == 1


def test_vllm_token_logprobs_come_back_from_disk(tiny_gpt2, disk, monkeypatch):
    from tests.test_backends import _fake_vllm
    mod, calls = _fake_vllm(tiny_gpt2.model, tiny_gpt2.tokenizer)
    monkeypatch.setitem(sys.modules, "vllm", mod)
    texts = ["The cat sat on the mat", "hello world"]
    first = _vllm(tiny_gpt2, mod.LLM(model="x")).token_logprobs(texts)
    assert len(calls["generate"]) == 1
    fresh = _vllm(tiny_gpt2, mod.LLM(model="x"))
    again = fresh.token_logprobs(texts)
    assert len(calls["generate"]) == 1 and fresh.stats["disk_hits"] == 1 and fresh.stats["forward_passes"] == 0
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    # the hf handle of the same weights never reads vLLM's numbers
    hf = _hf(tiny_gpt2)
    hf.token_logprobs(texts)
    assert hf.stats["disk_hits"] == 0 and hf.stats["forward_passes"] == 1


# ---------------------------------------------------------------------- generation arguments

BAD = [dict(top_p=0.0), dict(top_p=1.5), dict(samples=0), dict(temperature=-1.0), dict(max_new_tokens=-1)]


@pytest.mark.parametrize("bad", BAD)
def test_generation_arguments_are_checked_alike(bad, tiny_gpt2, monkeypatch):
    from tests.test_backends import _fake_vllm
    mod, calls = _fake_vllm(tiny_gpt2.model, tiny_gpt2.tokenizer)
    monkeypatch.setitem(sys.modules, "vllm", mod)
    messages = set()
    for h in (_hf(tiny_gpt2), _vllm(tiny_gpt2, mod.LLM(model="x")), _api()):
        with pytest.raises(ValueError, match="generate: bad arguments") as err:
            h.generate(["a prompt"], **bad)
        messages.add(str(err.value))
        with pytest.raises(TypeError, match="generate takes a list of prompts, not one string"):
            h.generate("one string")
        assert h.generate([]) == []
    assert len(messages) == 1 and not calls["generate"]


def test_generation_options_normalise():
    from auditkit.passes.generation import generation_options, prompt_list
    assert generation_options(stop="\n", max_new_tokens="4", seed=2.0) == {
        "max_new_tokens": 4, "temperature": 0.0, "top_p": 1.0, "stop": ["\n"], "seed": 2, "samples": 1}
    assert generation_options(stop=["", "x", 3])["stop"] == ["x", "3"]
    assert prompt_list(("a", "b")) == ["a", "b"]


def test_one_task_check_for_generation_and_log_likelihood(tiny_bert, tiny_gpt2):
    for op, call in [("generate", lambda: tiny_bert.generate(["x"])),
                     ("generate", lambda: tiny_bert.generate_ids([[1, 2]])),
                     ("token_logprobs", lambda: tiny_bert.token_logprobs(["x"]))]:
        with pytest.raises(UnservedRequest, match=f"{op} needs a causal-lm model \\(or a seq2seq-lm model\\)") as err:
            call()
        assert "loaded as sequence-classification" in str(err.value)
    _vllm(tiny_gpt2)._require_lm("generate")  # vLLM serves causal LMs: no error


# ---------------------------------------------------------------------- atomic writes and the umask

def test_concurrent_atomic_writes_leave_the_umask_alone(tmp_path):
    """8 threads write (and read the umask as the writes do) at once: every file gets 0666 less the
    umask, and the umask never changes, not even for a moment (setting it to read it raced)."""
    from auditkit.results import _umask, write_text_atomic
    old = os.umask(0o027)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads swap often: a umask set and restored by one of them would show
    try:
        start = threading.Barrier(8)
        errors, seen = [], set()

        def writer(t):
            try:
                start.wait()
                for i in range(40):
                    write_text_atomic(tmp_path / f"t{t}" / f"f{i}.txt", f"{t} {i}")
                    seen.update(_umask() for _ in range(50))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        now = os.umask(0o027)
        assert not errors and now == 0o027 and seen == {0o027}
        files = sorted(tmp_path.rglob("*.txt"))
        assert len(files) == 8 * 40 and not list(tmp_path.rglob("*.tmp"))
        assert {f.stat().st_mode & 0o777 for f in files} == {0o666 & ~0o027}
    finally:
        sys.setswitchinterval(switch)
        os.umask(old)


def test_umask_is_read_without_setting_it(monkeypatch):
    from auditkit import results
    mask = os.umask(0o022)
    os.umask(mask)

    def refuse(*a):
        raise AssertionError("os.umask called")

    monkeypatch.setattr(os, "umask", refuse)
    if results._proc_umask() is not None:  # Linux: /proc/self/status says it
        assert results._umask() == mask
    monkeypatch.setattr(results, "_proc_umask", lambda: None)
    assert results._umask() == results._IMPORT_UMASK


def test_request_cache_writes_atomically(tmp_path):
    from auditkit.remote import APIModelHandle
    target = tmp_path / "elsewhere.json"
    target.write_text("keep me")
    path = tmp_path / "req" / "ab.json"
    path.parent.mkdir()
    path.symlink_to(target)
    APIModelHandle._cache_write(path, {"choices": ["é"]})
    assert target.read_text() == "keep me" and not path.is_symlink()  # never written through a link
    assert APIModelHandle._cache_read(path) == {"choices": ["é"]}
    assert path.stat().st_mode & 0o777 == 0o600  # answers may hold what the reports redact: owner only
    assert [p.name for p in path.parent.iterdir()] == ["ab.json"]  # no temporary file left
    blocked = tmp_path / "file"
    blocked.write_text("")
    APIModelHandle._cache_write(blocked / "x.json", {"a": 1})  # cannot be written: no error


# ---------------------------------------------------------------------- dotted places

@pytest.mark.parametrize("path, text", [
    (("checks", 0, "data"), "checks[0].data"), (("model", "x"), "model.x"), ((), ""), (("finetune",), "finetune"),
    ((0, "x"), "[0].x"), (("checks", 1, "params", "k", 2, 3), "checks[1].params.k[2][3]"),
])
def test_dotted(path, text):
    assert dotted(path) == text


def test_every_place_formatter_agrees(tmp_path):
    """The suite's errors, the runner's ``where``, and the vLLM and API preflights all say places alike."""
    from auditkit.backends import preflight
    from auditkit.remote import preflight_api
    with pytest.raises(AuditInputError) as err:
        preflight_api([], task="sequence-classification")
    assert err.value.place == "model.task"

    class Spec:
        base, backend, task, quantization_bits, device_map = "x", "vllm", "sequence-classification", None, None
    with pytest.raises(AuditInputError) as err:
        preflight(Spec(), "cpu", [], finetune_method=None, file=None, processes=1)
    assert err.value.place == "model.backend"
