"""One plugin manager: built-in plugins plus entry points in group ``auditkit``.

Built-ins go through the same hooks as third-party plugins (like datasette's DEFAULT_PLUGINS).
``AUDITKIT_PLUGINS`` (comma-separated names) is an allowlist for third-party plugins,
``AUDITKIT_DISABLE_PLUGINS`` a blocklist for any plugin. A plugin that fails to import is reported
with its name and skipped; the rest load.
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import os
from dataclasses import dataclass, field
from typing import Callable

import pluggy

from auditkit import hookspecs
from auditkit.api import Check

ENTRY_POINT_GROUP = "auditkit"

DEFAULT_PLUGINS = (
    "auditkit_plugins.builtin_models",
    "auditkit_plugins.builtin_datasets",
    "auditkit_plugins.accuracy",
    "auditkit_plugins.lm_eval_task",
    "auditkit_plugins.overfitting",
    "auditkit_plugins.calibration",
    "auditkit_plugins.forgetting",
    "auditkit_plugins.bias",
    "auditkit_plugins.memorization",
    "auditkit_plugins.explainability",
    "auditkit.report.json_report",
    "auditkit.report.html",
    "auditkit.report.junit",
    "auditkit.report.markdown",
)


@dataclass
class Source:
    name: str
    fn: Callable
    help: str
    plugin: str


@dataclass
class Registry:
    """A typed facade over the plugin manager: what every plugin registered, by kind."""

    checks: dict[str, type[Check]] = field(default_factory=dict)
    check_plugin: dict[str, str] = field(default_factory=dict)
    reporters: dict[str, Source] = field(default_factory=dict)
    model_sources: dict[str, Source] = field(default_factory=dict)
    dataset_sources: dict[str, Source] = field(default_factory=dict)
    plugins: list[dict] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)


def _names(var: str) -> set[str] | None:
    value = os.environ.get(var)
    if value is None:
        return None
    return {v.strip() for v in value.split(",") if v.strip()}


def _plugin_name(plugin) -> str:
    return getattr(plugin, "__name__", type(plugin).__name__)


def build_registry() -> Registry:
    """Load every enabled plugin and collect what it registers (done once per process)."""
    pm = pluggy.PluginManager("auditkit")
    pm.add_hookspecs(hookspecs)
    reg = Registry()
    allow = _names("AUDITKIT_PLUGINS")
    block = _names("AUDITKIT_DISABLE_PLUGINS") or set()
    origin: dict[str, dict] = {}

    for modname in DEFAULT_PLUGINS:
        short = modname.rsplit(".", 1)[-1]
        if modname in block or short in block:
            continue
        try:
            module = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name == modname:  # an optional first-party module not installed in this build
                continue
            reg.failures.append((modname, f"{type(exc).__name__}: {exc}"))
            continue
        except Exception as exc:  # a broken plugin never takes the others down
            reg.failures.append((modname, f"{type(exc).__name__}: {exc}"))
            continue
        pm.register(module, name=modname)
        origin[modname] = {"name": modname, "version": _own_version(), "source": "built-in"}

    for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if ep.name in block or (allow is not None and ep.name not in allow):
            continue
        if pm.has_plugin(ep.value) or ep.value in DEFAULT_PLUGINS:
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            reg.failures.append((ep.name, f"{type(exc).__name__}: {exc}"))
            continue
        dist = ep.dist
        pm.register(plugin, name=ep.name)
        origin[ep.name] = {"name": ep.name, "version": dist.version if dist else "?",
                           "source": f"entry point {ep.value}"}

    for name, plugin in pm.list_name_plugin():
        if name not in origin:
            continue
        info = dict(origin[name], checks=[], reporters=[], model_sources=[], dataset_sources=[])
        _collect(plugin, name, reg, info)
        reg.plugins.append(info)
    return reg


def _collect(plugin, name: str, reg: Registry, info: dict) -> None:
    def reg_check(cls):
        if not (isinstance(cls, type) and issubclass(cls, Check) and cls.name):
            raise TypeError(f"plugin {name} registered {cls!r}, which is not a named Check subclass")
        reg.checks[cls.name] = cls
        reg.check_plugin[cls.name] = name
        info["checks"].append(cls.name)

    def reg_source(kind: str):
        def register(src_name: str, fn: Callable, help: str = "") -> None:
            getattr(reg, kind)[src_name] = Source(src_name, fn, help, name)
            info[kind].append(src_name)
        return register

    calls = [("auditkit_register_checks", reg_check),
             ("auditkit_register_reporters", reg_source("reporters")),
             ("auditkit_register_model_sources", reg_source("model_sources")),
             ("auditkit_register_dataset_sources", reg_source("dataset_sources"))]
    for hook, register in calls:
        impl = getattr(plugin, hook, None)
        if impl is None:
            continue
        try:
            impl(register=register)
        except Exception as exc:
            reg.failures.append((name, f"{hook}: {type(exc).__name__}: {exc}"))


def _own_version() -> str:
    from auditkit import __version__
    return __version__


_REGISTRY: Registry | None = None


def registry(refresh: bool = False) -> Registry:
    """The process-wide registry, loaded lazily once (``refresh`` reloads, e.g. after env changes)."""
    global _REGISTRY
    if _REGISTRY is None or refresh:
        _REGISTRY = build_registry()
    return _REGISTRY
