"""suite -> data -> models (fine-tuned if asked) -> checks (each isolated) -> gates -> results -> reporters.

Bad input raises AuditInputError before any model loads wherever possible. A check that raises is
recorded as ERROR with its traceback; the other checks still run and the reports are still written.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import re
import sys
import time
import traceback
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path
from typing import Any

from auditkit import __version__
from auditkit.api import CheckContext, CheckResult, find_metric
from auditkit.data import Dataset, load_dataset
from auditkit.errors import AuditInputError, TrainingDiverged, dotted
from auditkit.gates import evaluate
from auditkit.models import (ModelHandle, check_model_source, dtype_name, float_dtype, load_model,
                             resolve_device)
from auditkit.distributed import world
from auditkit.results import SCHEMA, output_folder, write_json_atomic
from auditkit.suite import CheckSpec, Suite

#: worst last; ``info`` (no gate decided) ranks below pass so it never hides a verdict, and a run of
#: info checks alone is info, never pass
STATUS_ORDER = {"info": -1, "pass": 0, "warn": 1, "fail": 2, "error": 3}
#: the files a run writes into its output folder; those left from an earlier run are removed first
REPORT_FILES = ("results.json", "report.html", "junit.xml", "summary.md")


class Progress:
    """What the runner tells the terminal; the CLI subclasses it with rich bars."""

    def stage(self, message: str) -> None: ...
    def warn(self, message: str) -> None: ...
    def check_start(self, check_id: str) -> None: ...
    def check_update(self, check_id: str, fraction: float) -> None: ...
    def check_done(self, check_id: str, status: str) -> None: ...
    def train_start(self, total_steps: int) -> None: ...
    def train_update(self, info: dict) -> None: ...
    def train_done(self) -> None: ...


@dataclass
class RunOptions:
    out_dir: Path
    model: str | None = None
    baseline: str | None = None
    device: str | None = None
    only: list[str] | None = None
    resume: bool = False
    strict: bool = False
    show_secrets: bool = False
    #: --processes N (the parent checks what N processes can serve before launching them)
    processes: int | None = None
    formats: tuple[str, ...] = ("json", "html", "junit", "markdown")


@dataclass
class RunOutcome:
    results: dict
    exit_code: int
    written: list[Path] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def worst_status(statuses) -> str:
    """The worst of some statuses (error > fail > warn > pass > info); info when there are none."""
    return max(statuses, key=STATUS_ORDER.__getitem__, default="info")


def exit_code_for(results: dict, strict: bool = False) -> int:
    """0 all gates passed (warnings allowed unless strict); 1 a gate failed (or, with strict, a warning or no
    gate decided at all); 3 a check crashed."""
    checks = results.get("checks", [])
    if any(c["status"] == "error" and c.get("error") for c in checks):
        return 3
    if any(g["status"] in ("fail", "error") for c in checks for g in c.get("gates", [])):
        return 1
    if strict and (any(c["status"] == "warn" for c in checks) or results.get("status") == "info"):
        return 1  # --strict: a warning, or a run that decided no gate at all, fails
    return 0


def _measured(spec: CheckSpec, gates: list, metrics: dict, baseline_metrics: dict | None) -> tuple[list, list[str]]:
    """Default gates on a metric this run did not measure (no canaries, a part turned off) do not apply.

    They are dropped with a note. A gate the suite wrote, or a metric that was measured as NaN, still
    makes the gate ERROR.
    """
    if not spec.default_gates:
        return gates, []
    kept, notes = [], []
    for g in gates:
        missing = [r.text() for r in g.refs() if r.metric not in ((baseline_metrics or {}) if r.baseline else metrics)]
        if missing:
            notes.append(f"default gate {g.expr!r} not applied: this run did not measure {missing[0]}")
        else:
            kept.append(g)
    return kept, notes


def _validate_data(cls, ds, params: dict, **known) -> None:
    """``cls.validate_data(ds, params, ...)`` with those of ``known`` (``base_dir``, ``task``) that its
    signature takes: a plugin written for the two-argument form keeps working."""
    import inspect
    sig = inspect.signature(cls.validate_data).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.values())
    cls.validate_data(ds, params, **{k: v for k, v in known.items() if takes_all or k in sig})


def _declared(spec: CheckSpec, metrics: dict) -> None:
    """A check returns only metrics it declares (``baseline.NAME`` for a declared NAME, patterns included):
    a misspelt name would otherwise leave the default gate on the declared one unmeasured, and dropped, and
    the check PASS. Raises (the check is ERROR) naming the first undeclared metric."""
    for name in metrics:
        own = name[len("baseline."):] if name.startswith("baseline.") else name
        if find_metric(spec.cls.metrics, own) is None:
            near = get_close_matches(own, [k for k in spec.cls.metrics if "{" not in k], n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise TypeError(f"check {spec.uses!r} returned metric {name!r}, which it does not declare{hint}; a "
                            "plugin declares each metric it returns in its `metrics` (a pattern such as "
                            "'score.{group}' for names that come from the data)")


def _gpu_peak(device: str) -> dict:
    """``peak_gpu_memory_bytes``: the most CUDA memory torch held at once in this process (all its GPUs), for
    runs on CUDA; a machine fact like the times, left out of reproducibility comparisons."""
    if not str(device).startswith("cuda"):
        return {}
    import torch
    if not torch.cuda.is_available():
        return {}
    return {"peak_gpu_memory_bytes": int(sum(torch.cuda.max_memory_allocated(i)
                                             for i in range(torch.cuda.device_count())))}


def _config_hash(spec: CheckSpec, model, baseline, seed: int) -> str:
    """What a check's result depends on: its entry, the gates (default or not), the seed and both models.

    ``--resume`` reuses a stored result only when this matches, so a result is never carried over to
    another model, another base model (whose presence decides which default gates apply) or another seed.
    """
    blob = json.dumps({"uses": spec.uses, "params": spec.params, "data": spec.data, "columns": spec.columns,
                       "gates": [[g.expr, g.severity, g.default] for g in spec.gates], "seed": seed,
                       "model": model.fingerprint if model is not None else None,
                       "baseline": baseline.fingerprint if baseline is not None else None},
                      sort_keys=True, default=str)
    return hashlib.blake2b(blob.encode(), digest_size=8).hexdigest()


class Runner:
    """Runs one suite; holds the loaded datasets and model handles for the checks to share."""

    def __init__(self, suite: Suite, registry, options: RunOptions, progress: Progress | None = None):
        self.suite, self.registry, self.opts = suite, registry, options
        self.progress = progress or Progress()
        self.file = str(suite.path)
        self.datasets: dict[tuple, Dataset] = {}
        self.warnings: list[str] = []
        try:
            self.device = resolve_device(options.device or suite.device)
        except AuditInputError as exc:
            if not options.device:  # the suite asked for it: point at its line
                exc.file, exc.place = self.file, self.where("device")
                exc.message = "device: cuda was asked for but no CUDA device is available"
                exc.fix = "use device: auto or device: cpu, or run on a machine with CUDA"
            raise

    def where(self, *path) -> str:
        """The suite line of a key path, e.g. ("checks", 0, "data") -> "line 7 (checks[0].data)"."""
        where = dotted(path)
        key = tuple(path)
        while key and key not in self.suite.lines:
            key = key[:-1]
        line = self.suite.lines.get(key) if key else None
        return f"line {line} ({where})" if line else where

    def _located(self, exc: AuditInputError) -> AuditInputError:
        """Give a suite error raised with a dotted place (``finetune.lora.target_modules``) its line."""
        place = str(exc.place or "")
        if exc.file in (None, self.file) and re.fullmatch(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*|\[\d+\])*", place):
            path = tuple(int(p) if p.isdigit() else p for p in re.findall(r"[A-Za-z_]\w*|\d+", place))
            exc.file, exc.place = self.file, self.where(*path)
        return exc

    # ------------------------------------------------------------------ data
    def load_data(self, spec: str, columns: dict | None = None, place: str = "data") -> Dataset:
        key = (spec, json.dumps(columns, sort_keys=True))
        if key not in self.datasets:
            self.datasets[key] = load_dataset(spec, self.registry, seed=self.suite.seed, columns=columns,
                                              base_dir=self.suite.base_dir, file=self.file, place=place)
        return self.datasets[key]

    def _selected(self) -> list[CheckSpec]:
        checks = self.suite.checks
        if self.opts.only:
            ids = {c.id for c in checks} | {c.uses for c in checks}
            for o in self.opts.only:
                if o not in ids:
                    from difflib import get_close_matches
                    near = get_close_matches(o, sorted(ids), n=1)
                    raise AuditInputError(f"--only {o}: no such check in the suite", file=self.file,
                                          fix=f"did you mean {near[0]!r}?" if near else f"checks: {', '.join(sorted(ids))}")
            checks = [c for c in checks if c.id in self.opts.only or c.uses in self.opts.only]
        return checks

    # ------------------------------------------------------------------ models
    def _load(self, spec: str, place: str) -> ModelHandle:
        m = self.suite.model
        if getattr(self, "_api", None) is not None and spec == m.base and not self.opts.model:
            self.progress.stage(f"using {self._api.source} (concurrency {m.concurrency})")
            return self._api
        import torch
        self.progress.stage(f"loading {spec} on {self.device}")
        if m.backend == "vllm":
            from auditkit.backends import VLLMHandle
            # two engines in one run (a model and its baseline) must share the GPU: vLLM reserves 90% by default
            two = bool(self.suite.model.baseline or self.opts.baseline)
            handle = VLLMHandle.load(m, self.registry, seed=self.suite.seed, base=spec, file=self.file, place=place,
                                     gpu_memory_utilization=0.45 if two else None)
        else:
            # weights a checkpoint lacks (a new classification head, BERT's pooler, neither in a LoRA
            # adapter) are drawn at load time: draw them the same way on every load, whatever the RNG
            # state, so a reloaded or reused fine-tune is the model that was trained and audited
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                handle = load_model(spec, m.task, self.registry, device=self.device, num_labels=m.num_labels,
                                    trust_remote_code=m.trust_remote_code, allow_pickle=m.allow_pickle,
                                    file=self.file, place=place, model_spec=m)
        handle.batch_size, handle.max_length = m.batch_size, m.max_length
        handle.chat_template = m.chat_template
        return handle

    def _check_head(self, handle: ModelHandle, place: str, role: str) -> None:
        """Loud when weights of the audited model were drawn at load time (a new, untrained head)."""
        new = list(handle.new_weights)
        if not new:
            return
        shown = ", ".join(new[:4]) + (f" and {len(new) - 4} more" if len(new) > 4 else "")
        what = (f"the {role} {handle.source} has weights newly initialised at load ({shown}): "
                f"it was not trained for task {handle.task}, so its predictions on that head are random")
        if not self.suite.model.allow_new_head:
            raise AuditInputError(what, file=self.file, place=place,
                                  fix="audit a model trained for this task, add finetune:, or set "
                                      "model.allow_new_head: true")
        self.warnings.append(what)
        self.progress.warn(what)

    def _finetune(self, base: ModelHandle) -> tuple[ModelHandle, dict, dict | None]:
        from auditkit import finetune as ft
        cfg = self.suite.finetune
        train_ds = self.load_data(cfg.data, cfg.columns, self.where("finetune", "data"))
        val_spec = cfg.validation_spec
        val_ds = self.load_data(val_spec, cfg.columns, self.where("finetune", "validation")) if val_spec else None
        # trained on beside the data (ft.canary_examples); the fingerprint holds them by cfg and seed
        canaries = ft.make_canaries(cfg.canaries, cfg.seed) if cfg.canaries else None
        base_spec = self.opts.model or self.suite.model.base
        if not base_spec.startswith("builtin:") and Path(base_spec).expanduser().exists():
            base_spec = str(Path(base_spec).expanduser().resolve())
        fp = ft.fingerprint(base.fingerprint, train_ds.fingerprint, val_ds.fingerprint if val_ds else "", cfg,
                            base.task, dtype_name(float_dtype(base.model)))
        model_dir = self.opts.out_dir / "model"
        done = ft.load_finished(model_dir, fp)
        if done is not None:
            record, canaries = done
            self.progress.stage(f"reusing the finished fine-tune in {model_dir} (same fingerprint)")
            handle = self._load(str(model_dir), "finetune")
            handle.source = "finetuned:" + base_spec
            record = dict(record, reused=True)
            return handle, record, canaries
        ft.forget_finished(model_dir)
        length = f"at most {cfg.max_steps} steps" if cfg.max_steps else f"{cfg.epochs} epochs"
        self.progress.stage(f"fine-tuning {base.source} ({cfg.method}, {length}) on {cfg.data}")
        self.progress.train_start(0)
        try:
            res = ft.train(base, train_ds, val_ds, cfg, out_dir=model_dir, progress=self.progress.train_update,
                           warn=self.progress.warn, suite_file=self.file, base_spec=base_spec, canaries=canaries)
        except AuditInputError as exc:
            raise self._located(exc) from None
        finally:
            self.progress.train_done()
        if world().main:
            ft.save_finetuned(res.model, base.tokenizer, model_dir, fp=fp, record=res.record, base_spec=base_spec,
                              canaries=canaries)
        world().barrier()
        model = ft.for_audit(res.model, self.device, float_dtype(base.model))
        from auditkit import backends
        handle = ModelHandle(model=model, tokenizer=base.tokenizer, task=base.task, source="finetuned:" + base_spec,
                             device=backends.input_device(model) if backends.placed(model) else self.device, batch_size=base.batch_size, max_length=base.max_length)
        return handle, dict(res.record, reused=False), canaries

    # ------------------------------------------------------------------ checks
    def _context(self, spec: CheckSpec, model: ModelHandle, baseline: ModelHandle | None, training, artifacts,
                 is_baseline: bool) -> CheckContext:
        data = self.load_data(spec.data, spec.columns, self.where("checks", self.suite.checks.index(spec), "data")) \
            if spec.data else None
        return CheckContext(model=model, params=dict(spec.params), seed=self.suite.seed, device=self.device,
                            data=data, baseline=baseline, training=training, run_dir=str(self.opts.out_dir),
                            base_dir=str(self.suite.base_dir),
                            check_id=spec.id, load_data=lambda s, c=None: self.load_data(s, c, spec.id),
                            progress=lambda f, cid=spec.id: self.progress.check_update(cid, f),
                            artifacts=artifacts, is_baseline_pass=is_baseline)

    def _gates_for(self, spec: CheckSpec, baseline) -> tuple[list, list[str]]:
        """The gates to decide: a default gate that compares with a base model applies only when there is one."""
        if not spec.default_gates or baseline is not None:
            return spec.gates, []
        kept = [g for g in spec.gates if not g.needs_baseline]
        notes = [f"default gate {g.expr!r} not applied: there is no base model to compare with"
                 for g in spec.gates if g.needs_baseline]
        return kept, notes

    def _run_check(self, spec: CheckSpec, model, baseline, training, artifacts) -> dict:
        entry: dict[str, Any] = {"id": spec.id, "uses": spec.uses, "plugin": self.registry.check_plugin.get(spec.uses),
                                 "params": spec.params, "data": spec.data,
                                 "config_hash": _config_hash(spec, model, baseline, self.suite.seed),
                                 "status": "error", "metrics": {}, "baseline_metrics": None, "gates": [],
                                 "evidence": [], "figures": {}, "records": {}, "notes": [], "error": None}
        self.progress.check_start(spec.id)
        t0 = time.perf_counter()
        gate_specs, gate_notes = self._gates_for(spec, baseline)
        entry["default_gates"] = spec.default_gates
        try:
            ctx = self._context(spec, model, baseline, training, artifacts, False)
            result = spec.cls().run(ctx)
            if not isinstance(result, CheckResult):
                raise TypeError(f"check {spec.uses!r} returned {type(result).__name__}, not CheckResult")
            _declared(spec, result.metrics)
            base_metrics = None
            if any(g.needs_baseline for g in gate_specs) and baseline is not None and not spec.cls.uses_baseline:
                bctx = self._context(spec, baseline, None, training, artifacts, True)
                base_metrics = {k: m.as_dict() for k, m in spec.cls().run(bctx).metrics.items()}
            entry.update(metrics={k: m.as_dict() for k, m in result.metrics.items()}, evidence=result.evidence,
                         figures=result.figures, records=result.records, notes=list(result.notes) + gate_notes,
                         baseline_metrics=base_metrics)
            if spec.cls.uses_baseline and baseline is not None:
                entry["baseline_metrics"] = {k[len("baseline."):]: m for k, m in entry["metrics"].items()
                                             if k.startswith("baseline.")} or None
            gate_specs, unmeasured = _measured(spec, gate_specs, entry["metrics"], entry["baseline_metrics"])
            entry["notes"] += unmeasured
            gates = [evaluate(g, entry["metrics"], entry["baseline_metrics"]) for g in gate_specs]
            entry["gates"] = gates
            # no gate decided: info, never pass
            entry["status"] = worst_status([g["status"] for g in gates]) if gates else "info"
        except AuditInputError as exc:
            if exc.file is None:  # a check's own parameter or requirement: point at the check in the suite
                i = self.suite.checks.index(spec)
                place = str(exc.place or "")
                key = place[len(spec.id) + 1:] if place.startswith(spec.id + ".") else None
                exc.file, exc.place = self.file, self.where("checks", i, key) if key else self.where("checks", i)
            raise
        except (Exception, SystemExit) as exc:  # isolate the crash: ERROR for this check, the rest still run
            # (SystemExit too: a library's sys.exit(0) inside a check must not end the run green)
            entry["error"] = {"type": type(exc).__name__, "message": str(exc),
                              "traceback": traceback.format_exc()}
            entry["gates"] = [{"expr": g.expr, "severity": g.severity, "status": "error", "observed": None,
                               "threshold": None, "reason": "the check crashed", "default": g.default}
                              for g in gate_specs]
        duration = time.perf_counter() - t0
        self.progress.check_done(spec.id, entry["status"])
        return entry, duration

    # ------------------------------------------------------------------ main
    def preflight(self) -> list[CheckSpec]:
        """Everything that can be checked before a model loads: the checks selected, every dataset,
        the baseline a check needs, and the model folders. Returns the checks to run."""
        suite, opts = self.suite, self.opts
        checks = self._selected()
        # validate every dataset before any model loads
        for spec in checks:
            if spec.data:
                place = self.where("checks", suite.checks.index(spec), "data")
                ds = self.load_data(spec.data, spec.columns, place)
                try:
                    _validate_data(spec.cls, ds, spec.params, base_dir=str(suite.base_dir),
                                   task=suite.model.task)
                except AuditInputError as exc:
                    exc.file = exc.file or ds.file or self.file
                    exc.place = exc.place or place
                    raise
        baseline_spec = opts.baseline or suite.model.baseline
        if any(c.needs_baseline or c.cls.requires_baseline for c in checks) and not (baseline_spec or suite.finetune):
            bad = next(c for c in checks if c.needs_baseline or c.cls.requires_baseline)
            raise AuditInputError(f"check {bad.id!r} compares with the base model but there is none",
                                  file=self.file, place=f"line {bad.line}",
                                  fix="add finetune:, model.baseline: or --baseline")
        if suite.finetune:
            self.load_data(suite.finetune.data, suite.finetune.columns, self.where("finetune", "data"))
        self._api = None
        if any(c.cls.needs_model for c in checks) and suite.model.is_api and not opts.model:
            # a model behind an API: what it cannot serve is refused, and the server is asked now (a bad
            # endpoint, key or model name is exit 2 before anything runs)
            from auditkit.remote import open_api_model, preflight_api
            preflight_api(checks, task=suite.model.task, finetune=bool(suite.finetune), file=self.file,
                          where=self.where, processes=opts.processes or world().size, all_checks=suite.checks)
            if baseline_spec:
                check_model_source(baseline_spec, self.registry, allow_pickle=suite.model.allow_pickle,
                                   file=self.file,
                                   place="--baseline" if opts.baseline else self.where("model", "baseline"))
            try:
                self._api = open_api_model(suite.model, file=self.file)
            except AuditInputError as exc:
                raise self._located(exc) from None
        elif any(c.cls.needs_model for c in checks):
            base_place = "--model" if opts.model else self.where("model", "base")
            # a missing, pickle-only or corrupt model folder is bad input: say so before anything loads
            check_model_source(opts.model or suite.model.base, self.registry, allow_pickle=suite.model.allow_pickle,
                               file=self.file, place=base_place)
            if baseline_spec and not suite.finetune:
                check_model_source(baseline_spec, self.registry, allow_pickle=suite.model.allow_pickle,
                                   file=self.file, place="--baseline" if opts.baseline else self.where("model", "baseline"))
        if any(c.cls.needs_model for c in checks) or suite.finetune:
            from auditkit import backends
            backends.preflight(suite.model, self.device, checks,
                               finetune_method=suite.finetune.method if suite.finetune else None,
                               file=self.file, registry=self.registry, base=opts.model, where=self.where,
                               processes=opts.processes, all_checks=suite.checks)
        return checks

    def run(self) -> RunOutcome:
        suite, opts = self.suite, self.opts
        started = time.time()
        seed_everything(suite.seed)
        # --resume reads the earlier results before the stale reports are removed
        self.previous = self._previous() if opts.resume else {}
        checks = self.preflight()
        baseline_spec = opts.baseline or suite.model.baseline

        if not any(c.cls.needs_model for c in checks):
            # every check reads data only: no model loads and no fine-tune runs (--model/--baseline have
            # nothing to do); the fine-tuning data is still what those checks read by default
            self._prepare_out()
            return self._run_checks(checks, None, None, None, self._artifacts(None), started, None)
        base_place = "--model" if opts.model else self.where("model", "base")
        base_spec = opts.model or suite.model.base
        baseline_place = "--baseline" if opts.baseline else self.where("model", "baseline")
        self._prepare_out()
        base = self._load(base_spec, base_place)
        if not suite.finetune:  # a fine-tune trains whatever head the base lacks
            self._check_head(base, base_place, "model under audit")
        training, canaries = None, None
        train_time = None
        if suite.finetune:
            try:
                model, training, canaries = self._finetune(base)
            except TrainingDiverged as exc:
                results = self._results(suite, base, None, None, [], {}, started, error=str(exc))
                return self._finish(results, 3)
            baseline = base
            train_time = {k: training.pop(k, None) for k in ("train_time_s", "eval_time_s", "tokens_per_s")}
        else:
            model = base
            baseline = self._load(baseline_spec, baseline_place) if baseline_spec else None
            if baseline is not None:
                self._check_head(baseline, baseline_place, "baseline")
        artifacts = dict(self._artifacts(canaries), train_time=train_time)
        return self._run_checks(checks, model, baseline, training, artifacts, started, train_time)

    def _run_checks(self, checks, model, baseline, training, artifacts, started, train_time) -> RunOutcome:
        import torch
        suite, opts = self.suite, self.opts
        entries, durations = [], {}
        for spec in checks:
            prev = self.previous.get(spec.id)
            if prev and prev.get("config_hash") == _config_hash(spec, model, baseline, suite.seed) \
                    and prev.get("status") != "error":
                self.progress.stage(f"{spec.id}: reusing the result of the previous run (--resume)")
                entries.append(prev)
                durations[spec.id] = 0.0
                continue
            torch.manual_seed(suite.seed)
            entry, durations[spec.id] = self._run_check(spec, model, baseline, training, artifacts)
            entries.append(entry)
        results = self._results(suite, model, baseline, training, entries, durations, started, train_time=train_time)
        return self._finish(results, exit_code_for(results, opts.strict))

    def _artifacts(self, canaries) -> dict:
        """What checks share besides the models: the canaries, the secrets flag, the fine-tuning data."""
        ft = self.suite.finetune
        return {
            "canaries": canaries,
            "show_secrets": self.opts.show_secrets,
            # what the model was fine-tuned on, for membership inference, extraction and data checks
            "finetune_data": (ft.data, ft.columns) if ft else None,
            "finetune_validation": (ft.validation_spec, ft.columns) if ft else None,
        }

    def _prepare_out(self) -> None:
        """Before any model loads: the output folder must be writable, and reports of an earlier run go.

        Removing them first means no file in the folder can say PASS while this run's results.json
        says otherwise (a reporter that fails, or a run stopped midway, leaves no stale verdict).
        """
        import tempfile
        out = self.opts.out_dir
        try:
            output_folder(out)
            fd, probe = tempfile.mkstemp(prefix=".auditkit-probe-", dir=out)
            os.close(fd)
            os.unlink(probe)
            if world().main:
                remove_reports(out)
        except OSError as exc:
            raise AuditInputError(f"the output folder {out} is not writable ({exc.strerror or exc})", place="--out",
                                  fix="give --out a folder you can write to") from None

    def _previous(self) -> dict:
        path = self.opts.out_dir / "results.json"
        try:
            prev = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return {c["id"]: c for c in prev.get("checks", [])}

    def _results(self, suite, model, baseline, training, entries, durations, started, error=None,
                 train_time=None) -> dict:
        import numpy
        import torch
        import transformers
        status = worst_status(e["status"] for e in entries) if entries else "error"
        if error:
            status = "error"
        env = {"auditkit": __version__, "python": platform.python_version(), "torch": torch.__version__,
               "transformers": transformers.__version__, "numpy": numpy.__version__,
               "device": self.device, "seed": suite.seed, "platform": platform.platform()}
        try:
            import peft
            env["peft"] = peft.__version__
        except ImportError:  # pragma: no cover
            pass
        return {
            "schema": SCHEMA,
            "suite": {"name": suite.name, "file": str(suite.path), "description": suite.description},
            "status": status,
            "error": error,
            "model": model.describe() if model is not None else None,
            "baseline": baseline.describe() if baseline is not None else None,
            "training": training,
            "warnings": list(self.warnings),
            "environment": env,
            "checks": entries,
            "run": {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                    "duration_s": round(time.time() - started, 3),
                    "check_durations_s": {k: round(v, 3) for k, v in durations.items()},
                    "training": train_time,
                    **_gpu_peak(self.device),
                    "show_secrets": self.opts.show_secrets},
        }

    def _finish(self, results: dict, code: int) -> RunOutcome:
        if not world().main:  # process 0 alone writes the reports
            return RunOutcome(results=results, exit_code=code)
        out = self.opts.out_dir
        written = render_reports(results, out, self.registry, self.opts.formats,
                                 {"show_secrets": self.opts.show_secrets}, progress=self.progress)
        return RunOutcome(results=results, exit_code=code, written=written)


def remove_reports(out: Path) -> None:
    """Remove an earlier run's reports (``REPORT_FILES``) from ``out``, links included (never followed);
    other files stay."""
    for name in REPORT_FILES:
        target = out / name
        if target.is_symlink() or target.exists():
            target.unlink()


def render_reports(results: dict, out: Path, registry, formats, options: dict, progress: Progress | None = None,
                   write_json: bool = True, failures: list | None = None) -> list[Path]:
    """Run each requested reporter plugin; results.json is written first, atomically. Every reporter, a
    plugin's too, is given the results with their secrets redacted unless ``options["show_secrets"]``. A
    reporter that raises is skipped with a warning (``progress``, else stderr) and its name added to
    ``failures``."""
    from auditkit.report.common import for_report, visible
    output_folder(out, refuse_link=False)  # a --out of `run` was refused before anything loaded (_prepare_out)
    # a results.json re-written elsewhere keeps secrets only with --show-secrets, like every report
    shown = for_report(results, options)
    written = [write_json_atomic(out / "results.json", shown)] if write_json else []
    for name in formats:
        if name == "json":
            continue
        rep = registry.reporters.get(name)
        if rep is None:
            raise AuditInputError(f"unknown report format {name!r}", place="--format",
                                  fix=f"known: {', '.join(sorted(registry.reporters))}")
        try:
            written.append(rep.fn(shown, out, options))
        except Exception as exc:  # a broken reporter must not hide the others
            msg = f"reporter {name} failed: {type(exc).__name__}: {exc}"
            if progress:
                progress.warn(msg)
            else:
                print(visible(f"auditkit: warning: {msg}"), file=sys.stderr)
            if failures is not None:
                failures.append(name)
    return written
