"""``--processes N`` and distributed launchers without a real launch: which process group the launched
copies join (gloo on CPU, nccl on CUDA, read from the parsed ``--device``), what ``distributed.launch``
is given, and the launcher's log folder (removed after a run, kept when process 0 left no exit code)."""
from __future__ import annotations

import os
import subprocess

import pytest

from auditkit import cli
from auditkit import distributed as dist
from tests.conftest import write_suite

SUITE = """
name: launch
seed: 5
model: {{base: "builtin:tiny-bert", max_length: 32, batch_size: 8, allow_new_head: true}}
{device}checks:
  - {{uses: accuracy, data: "builtin:reviews#test", bootstrap: 200}}
"""


@pytest.fixture
def captured_launch(monkeypatch):
    seen = []

    def launch(n, argv):
        seen.append((n, list(argv)))
        return 0
    monkeypatch.setattr(dist, "launch", launch)
    monkeypatch.setattr(dist, "check_processes", lambda n, device: None)  # the machine's cores are not the point
    return seen


@pytest.mark.parametrize("flag, suite_device, want", [
    (["--device=cpu"], "", ["--device=cpu"]),
    (["--device", "cpu"], "", ["--device", "cpu"]),
    ([], "", ["--device", "cpu"]),                # auto, no CUDA here: the copies are told cpu
    ([], "device: cpu\n", ["--device", "cpu"]),   # the suite's device reaches the copies too
])
def test_launch_gets_the_command_line_less_processes_and_a_device(tmp_path, captured_launch, monkeypatch,
                                                                   flag, suite_device, want):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    suite = write_suite(tmp_path, SUITE.format(device=suite_device))
    argv = ["run", str(suite), "--out", str(tmp_path / "o"), *flag, "--processes", "2"]
    assert cli.main(argv) == 0
    [(n, got)] = captured_launch
    assert n == 2 and got == ["run", str(suite), "--out", str(tmp_path / "o"), *want]
    assert not (tmp_path / "o").exists()  # nothing ran in the calling process


class _Joined(BaseException):
    """Stops the command right after it joined (nothing is loaded)."""


@pytest.mark.parametrize("flag, suite_device, cuda, on_cpu", [
    (["--device=cpu"], "", True, True),
    (["--device", "cpu"], "", True, True),
    (["--device=cuda"], "", True, False),
    (["--device", "cuda"], "", True, False),
    (["--device", "auto"], "", True, False),
    ([], "", True, False),
    ([], "device: cpu\n", True, True),        # the suite's own device, under `accelerate launch` too
    (["--device", "cuda"], "device: cpu\n", True, False),  # the command line wins over the suite
    ([], "", False, True),
    (["--device", "cuda"], "", False, True),  # no CUDA: gloo (the run itself then stops with exit 2)
])
def test_a_launched_copy_joins_gloo_or_nccl_by_its_device(tmp_path, monkeypatch, flag, suite_device, cuda, on_cpu):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv(dist.EXIT_FILE_ENV, raising=False)
    joined = []

    def join(cpu):
        joined.append(cpu)
        raise _Joined
    monkeypatch.setattr(dist, "init_from_env", join)
    suite = write_suite(tmp_path, SUITE.format(device=suite_device))
    with pytest.raises(_Joined):
        cli._main(["run", str(suite), "--out", str(tmp_path / "o"), *flag])
    assert joined == [on_cpu]


def test_a_suite_that_does_not_load_is_exit_2_before_joining(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv(dist.EXIT_FILE_ENV, raising=False)
    monkeypatch.setattr(dist, "init_from_env", lambda cpu: pytest.fail("joined a process group"))
    suite = write_suite(tmp_path, "name: x\nmodel: {base: builtin:tiny-bert}\nchecks: [{uses: no-such-check}]\n")
    assert cli.main(["run", str(suite), "--device", "cpu"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("flag", [["--device", "tpu"], ["--device=cuda:1"]])
def test_a_bad_device_under_a_launcher_is_exit_2_and_joins_nothing(monkeypatch, capsys, flag):
    """``--device`` takes auto, cpu or cuda (a GPU index is the launcher's business: local rank)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv(dist.EXIT_FILE_ENV, raising=False)
    monkeypatch.setattr(dist, "init_from_env", lambda cpu: pytest.fail("joined a process group"))
    assert cli.main(["run", "suite.yaml", *flag]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device" in err[0] and "invalid choice" in err[0]


def test_without_a_launcher_nothing_is_joined(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(dist, "init_from_env", lambda cpu: pytest.fail("joined a process group"))
    monkeypatch.setattr(cli, "cmd_run", lambda args: 0)
    assert cli.main(["run", "suite.yaml", "--device", "cpu"]) == 0


# ---------------------------------------------------------------------- the launcher's log folder

def _fake_run(monkeypatch, write_code: str | None, returncode: int = 0):
    seen = {}

    def run(cmd, env):
        seen["log_dir"] = cmd[cmd.index("--log_dir") + 1]
        seen["cmd"] = cmd
        assert os.path.isdir(seen["log_dir"])
        with open(os.path.join(seen["log_dir"], "worker-1.log"), "w") as fh:
            fh.write("rank 1 output\n")
        if write_code is not None:
            with open(env[dist.EXIT_FILE_ENV], "w") as fh:
                fh.write(write_code)
        seen["exit_file"] = env[dist.EXIT_FILE_ENV]
        return subprocess.CompletedProcess(cmd, returncode)
    monkeypatch.setattr(dist.subprocess, "run", run)
    return seen


@pytest.mark.parametrize("code", ["0", "1", "2"])
def test_the_log_folder_is_removed_after_the_run(monkeypatch, capsys, code):
    seen = _fake_run(monkeypatch, code)
    assert dist.launch(2, ["run", "s.yaml"]) == int(code)
    assert not os.path.exists(seen["log_dir"]) and not os.path.exists(seen["exit_file"])
    assert "--redirects" in seen["cmd"] and seen["cmd"][-3:] == ["auditkit", "run", "s.yaml"]
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("written, returncode, want", [(None, 1, 1), (None, 0, 3), ("garbled", -9, -9)])
def test_a_crashed_worker_keeps_the_log_folder_and_says_where(monkeypatch, capsys, written, returncode, want):
    seen = _fake_run(monkeypatch, written, returncode)
    try:
        assert dist.launch(2, ["run", "s.yaml"]) == want
        assert os.path.isfile(os.path.join(seen["log_dir"], "worker-1.log"))
        assert not os.path.exists(seen["exit_file"])
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and seen["log_dir"] in err[0]
    finally:
        import shutil
        shutil.rmtree(seen["log_dir"], ignore_errors=True)
