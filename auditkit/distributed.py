"""Data parallel audits on accelerate (torch.distributed underneath: gloo on CPU, nccl on GPUs).

Every process runs the same audit, in the same order, on the same seed; only the model passes are
split. The handle's batch driver (:meth:`auditkit.models.ModelHandle.map_batches`) deals its
length-sorted batches to the processes by their size (:meth:`World.deal`) and gathers every answer back
to every process, so each check sees the whole list, exactly as in one process (the batches themselves are the same,
so the numbers are too). Process 0 alone writes the reports, the fine-tuned model and the disk cache.

Launching is left to existing launchers: ``accelerate launch -m auditkit run SUITE`` (or ``torchrun``),
and ``auditkit run SUITE --processes N``, which validates the suite in the calling process (bad input
is exit 2 before anything starts) and then starts ``torch.distributed.run`` with N copies of itself.
The process group is set up by accelerate's ``PartialState``, which reads the launcher's environment.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from auditkit.errors import AuditInputError

#: set by ``--processes`` for the launched copies: the file process 0 writes its exit code to
EXIT_FILE_ENV = "AUDITKIT_EXIT_FILE"


@dataclass
class World:
    """This process's place among the audit's processes (rank 0 of 1 without a launcher)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """True on the one process that writes files and prints progress."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1

    def deal(self, costs: list[float]) -> list[bool]:
        """Which units of work (batches, with these costs) are this process's.

        Longest-processing-time-first (Graham 1969): the costliest unit not yet dealt goes to the process
        with the least work so far (ties: the lower rank). Every process computes the same deal from the
        same costs, with no message; the units themselves never depend on the number of processes.
        """
        if not self.parallel:
            return [True] * len(costs)
        load = [0.0] * self.size
        owner = [0] * len(costs)
        for k in sorted(range(len(costs)), key=lambda k: (-costs[k], k)):
            r = min(range(self.size), key=lambda r: (load[r], r))
            owner[k] = r
            load[r] += costs[k]
        return [r == self.rank for r in owner]

    def gather(self, local: dict) -> dict:
        """Merge every process's ``{index: value}`` into one dict, on every process."""
        if not self.parallel:
            return local
        import torch.distributed as dist
        parts: list = [None] * self.size
        dist.all_gather_object(parts, local)
        merged: dict = {}
        for part in parts:
            merged.update(part)
        return merged

    def all_agree(self, flag: bool) -> bool:
        """True when ``flag`` holds on every process (e.g. every process has a pass on disk)."""
        if not self.parallel:
            return flag
        import torch.distributed as dist
        flags: list = [None] * self.size
        dist.all_gather_object(flags, bool(flag))
        return all(flags)

    def barrier(self) -> None:
        if self.parallel:
            import torch.distributed as dist
            dist.barrier()


_WORLD = World()


def world() -> World:
    """The current process's :class:`World` (set up by :func:`init_from_env`)."""
    return _WORLD


def launched() -> bool:
    """True inside a copy started by a distributed launcher with more than one process."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def init_from_env(cpu: bool) -> World:
    """Join the launcher's process group through accelerate (gloo on CPU); a no-op in one process."""
    global _WORLD
    if not launched():
        _WORLD = World()
        return _WORLD
    from accelerate import PartialState
    state = PartialState(cpu=cpu)
    _WORLD = World(rank=state.process_index, size=state.num_processes, local_rank=state.local_process_index)
    return _WORLD


def shutdown() -> None:
    """Leave the process group cleanly (an open gloo group aborts the interpreter at exit)."""
    global _WORLD
    if _WORLD.parallel:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    _WORLD = World()


def check_processes(n: int, device: str) -> None:
    """``--processes N`` must fit the machine: N GPUs on CUDA, N cores on CPU (exit 2 otherwise)."""
    if n < 1:
        raise AuditInputError(f"--processes {n}: needs at least 1", place="--processes", fix="give 1 or more")
    if device.startswith("cuda"):
        import torch
        have = torch.cuda.device_count()
        if n > have:
            raise AuditInputError(f"--processes {n} asks for more processes than the {have} GPU(s) present",
                                  place="--processes", fix=f"use --processes {max(have, 1)} or fewer")
    else:
        have = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if n > have:
            raise AuditInputError(f"--processes {n} asks for more CPU processes than the {have} core(s) present",
                                  place="--processes", fix=f"use --processes {have} or fewer")


def launch(n: int, argv: list[str]) -> int:
    """Run ``auditkit <argv>`` as N processes under ``torch.distributed.run``; process 0's exit code.

    The launched copies report their verdict through a file rather than their exit status, so a
    failing gate (exit 1) is not mistaken by the launcher for a crashed worker. The launcher's log
    folder (the other processes' output) is removed afterwards, unless process 0 wrote no exit code
    (a crashed worker): then it is kept, and its path printed on stderr.
    """
    fd, exit_file = tempfile.mkstemp(prefix="auditkit-exit-")
    os.close(fd)
    os.unlink(exit_file)
    log_dir = tempfile.mkdtemp(prefix="auditkit-launch-")
    env = dict(os.environ, **{EXIT_FILE_ENV: exit_file})
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or n) // n)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           "--log_dir", log_dir,
           # only process 0 talks; the others' output goes to the launcher's log folder
           *(["--redirects", ",".join(f"{r}:3" for r in range(1, n))] if n > 1 else []),
           "-m", "auditkit", *argv]
    code = None
    try:
        proc = subprocess.run(cmd, env=env)
        try:
            with open(exit_file) as fh:
                code = int(fh.read().strip())
        except (OSError, ValueError):
            return proc.returncode or 3
        return code
    finally:
        if os.path.exists(exit_file):
            os.unlink(exit_file)
        if code is None:  # no verdict from process 0: the workers' logs are the evidence
            print(f"auditkit: the launched processes' logs are kept in {log_dir}", file=sys.stderr)
        else:
            shutil.rmtree(log_dir, ignore_errors=True)


def report_exit(code: int, main: bool) -> int:
    """In a copy started by :func:`launch`: process 0 writes its code; every copy exits 0 to the launcher."""
    path = os.environ.get(EXIT_FILE_ENV)
    if not path:
        return code
    if main:
        with open(path, "w") as fh:
            fh.write(str(code))
    return 0
