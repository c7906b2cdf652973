"""One plugin manager: built-in plugins plus entry points in group ``auditkit``.

Built-ins go through the same hooks as third-party plugins (like datasette's DEFAULT_PLUGINS).
``AUDITKIT_PLUGINS`` (comma-separated names) is an allowlist for third-party plugins,
``AUDITKIT_DISABLE_PLUGINS`` a blocklist for any plugin. A plugin that fails to import is reported
with its name and skipped; the rest load.

Hooks are called through the plugin manager's hook callers (``pm.hook.NAME``), so hookimpl options
(``tryfirst``, ``trylast``) order the calls and ``AUDITKIT_TRACE_HOOKS=1`` traces every call. What the
plugins register is applied in registration order (built-ins first), and a name already taken is refused.
A plugin whose hook raises is isolated: it is named in ``failures`` and the hook is called again without it.
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import re
import sys
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
    "auditkit_plugins.generation",
    "auditkit_plugins.scorers",
    "auditkit_plugins.lm_eval_task",
    "auditkit_plugins.overfitting",
    "auditkit_plugins.calibration",
    "auditkit_plugins.forgetting",
    "auditkit_plugins.bias",
    "auditkit_plugins.memorization",
    "auditkit_plugins.explainability",
    "auditkit_plugins.robustness",
    "auditkit_plugins.data_quality",
    "auditkit_plugins.cost",
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
    #: text scorers (``auditkit_register_scorers``): name -> Source whose ``fn(options)`` makes a scorer
    scorers: dict[str, Source] = field(default_factory=dict)
    plugins: list[dict] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    pm: pluggy.PluginManager | None = field(default=None, repr=False)


def _names(var: str) -> set[str] | None:
    value = os.environ.get(var)
    if value is None:
        return None
    return {v.strip() for v in value.split(",") if v.strip()}


def _plugin_name(plugin) -> str:
    return getattr(plugin, "__name__", type(plugin).__name__)


def _norm(name: str) -> str:
    """A package name as pip compares them (PEP 503): lower case, runs of ``-_.`` as ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def build_registry() -> Registry:
    """Load every enabled plugin and collect what it registers (done once per process)."""
    pm = pluggy.PluginManager("auditkit")
    pm.add_hookspecs(hookspecs)
    if os.environ.get("AUDITKIT_TRACE_HOOKS", "").strip() not in ("", "0"):
        pm.trace.root.setwriter(sys.stderr.write)
        pm.enable_tracing()
    reg = Registry(pm=pm)
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

    matched: set[str] = set()
    blocked = block | {_norm(b) for b in block}
    entry_points = sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
    for ep in entry_points:
        # a plugin is named by its entry point or by the package that installs it (pip's name)
        names = {ep.name} | ({_norm(ep.dist.name)} if ep.dist is not None and ep.dist.name else set())
        hits = {a for a in allow if a in names or _norm(a) in names} if allow is not None else set()
        matched |= hits  # a blocked plugin was found: AUDITKIT_DISABLE_PLUGINS, not the name, keeps it out
        if names & blocked or (allow is not None and not hits):
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

    for name in sorted((allow or set()) - matched):
        known = ", ".join(ep.name for ep in entry_points) or "none"
        reg.failures.append((name, "AUDITKIT_PLUGINS names it, but no installed plugin has that entry-point or "
                                   f"package name (third-party entry points: {known})"))
    infos = {name: dict(origin[name], checks=[], reporters=[], model_sources=[], dataset_sources=[],
                       scorers=[])
             for name, _ in pm.list_name_plugin() if name in origin}
    _collect(pm, reg, infos)
    reg.plugins.extend(infos.values())
    return reg


_HOOKS = (("auditkit_register_checks", "checks"), ("auditkit_register_reporters", "reporters"),
          ("auditkit_register_model_sources", "model_sources"),
          ("auditkit_register_dataset_sources", "dataset_sources"), ("auditkit_register_scorers", "scorers"))


def _caller_plugin(codes: dict) -> str | None:
    """The plugin whose hook implementation is on the call stack (the one calling ``register``)."""
    frame = sys._getframe(1)
    while frame is not None:
        name = codes.get(frame.f_code)
        if name is not None:
            return name
        frame = frame.f_back
    return None


def _raising_plugin(tb, codes: dict) -> str | None:
    """The plugin whose hook implementation an exception passed through (innermost first)."""
    found = None
    while tb is not None:
        found = codes.get(tb.tb_frame.f_code, found)
        tb = tb.tb_next
    return found


def _collect(pm: pluggy.PluginManager, reg: Registry, infos: dict) -> None:
    """Call every registration hook through its hook caller; a plugin that raises is dropped and named."""
    def reg_check(owner: str, cls) -> None:
        if not (isinstance(cls, type) and issubclass(cls, Check) and cls.name):
            raise TypeError(f"plugin {owner} registered {cls!r}, which is not a named Check subclass")
        if cls.name in reg.checks and reg.check_plugin[cls.name] != owner:
            raise ValueError(f"check {cls.name!r} is already provided by {reg.check_plugin[cls.name]}")
        reg.checks[cls.name] = cls
        reg.check_plugin[cls.name] = owner

    def reg_source(kind: str):
        def register(owner: str, src_name: str, fn: Callable, help: str = "") -> None:
            have = getattr(reg, kind)
            if src_name in have and have[src_name].plugin != owner:
                raise ValueError(f"{kind[:-1].replace('_', ' ')} {src_name!r} is already provided by "
                                 f"{have[src_name].plugin}")
            have[src_name] = Source(src_name, fn, help, owner)
        return register

    for hook, kind in _HOOKS:
        add = reg_check if kind == "checks" else reg_source(kind)
        dropped: list = []
        while True:
            caller = pm.subset_hook_caller(hook, dropped) if dropped else getattr(pm.hook, hook)
            codes = {impl.function.__code__: impl.plugin_name for impl in caller.get_hookimpls()
                     if hasattr(impl.function, "__code__")}
            found: list[tuple[str, tuple, dict]] = []

            def register(*args, **kwargs):
                found.append((_caller_plugin(codes) or "?", args, kwargs))

            try:
                caller(register=register)
            except Exception as exc:
                bad = _raising_plugin(exc.__traceback__, codes)
                if bad is None or pm.get_plugin(bad) in dropped:  # not a plugin's fault: stop, as before
                    reg.failures.append(("?", f"{hook}: {type(exc).__name__}: {exc}"))
                    break
                reg.failures.append((bad, f"{hook}: {type(exc).__name__}: {exc}"))
                dropped.append(pm.get_plugin(bad))
                continue
            # pluggy calls implementations in its own order (last registered first, tryfirst/trylast aside):
            # apply the plugins in registration order (built-ins first), each one's registrations in its own
            # order; a name another plugin already provides is refused and reported, so no plugin (trylast or
            # not) silently replaces a built-in
            order = {name: i for i, (name, _) in enumerate(pm.list_name_plugin())}  # registration order
            owners = sorted(dict.fromkeys(owner for owner, _, _ in found), key=lambda o: order.get(o, len(order)))
            for owner in owners:
                for _, args, kwargs in (f for f in found if f[0] == owner):
                    try:
                        add(owner, *args, **kwargs)
                    except Exception as exc:
                        reg.failures.append((owner, f"{hook}: {type(exc).__name__}: {exc}"))
                        continue
                    if owner in infos:
                        infos[owner][kind].append(args[0].name if kind == "checks" else args[0])
            break


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
