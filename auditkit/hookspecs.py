"""The pluggy hook specifications: every check, reporter, model source and dataset source,
the built-in ones included, is registered through these hooks."""
from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("auditkit")
hookimpl = pluggy.HookimplMarker("auditkit")


@hookspec
def auditkit_register_checks(register):
    """Call ``register(CheckClass)`` for each :class:`auditkit.api.Check` subclass the plugin provides."""


@hookspec
def auditkit_register_reporters(register):
    """Call ``register(name, render, help)``; ``render(results: dict, out_dir: Path, options: dict) -> Path``."""


@hookspec
def auditkit_register_model_sources(register):
    """Call ``register(name, resolve, help)``; ``resolve(cache_dir: Path) -> str`` gives a local model dir for ``builtin:NAME``."""


@hookspec
def auditkit_register_dataset_sources(register):
    """Call ``register(name, load, help)``; ``load(split: str | None, seed: int) -> list[dict]`` for ``builtin:NAME[#split]``."""


@hookspec
def auditkit_register_scorers(register):
    """Call ``register(name, make, help)``; ``make(options: dict)`` gives a scorer whose ``score(texts: list[str]) -> np.ndarray`` is in [-1, 1] and deterministic."""
