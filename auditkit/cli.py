"""The ``auditkit`` command line: run, compare, plugins, checks, new-plugin, report.

Exit codes: 0 every gate passed; 1 a gate failed; 2 bad input (one line: file, place, fix; no
traceback); 3 a check crashed (reports are still written). Progress goes to stderr with rich bars
on a terminal, plain lines when stderr is not a TTY or NO_COLOR is set.

Text from a suite, a dataset, a model or a plugin is shown literally on the console: never read as
rich markup (it goes to rich as :class:`rich.text.Text`), and its control characters (ESC, OSC, clear
screen) and bidi controls are written out as ``\\x1b``/``\\u202e`` (:func:`auditkit.report.common.visible`).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

from auditkit.errors import AuditInputError
from auditkit.report.common import visible

EXIT_OK, EXIT_GATE, EXIT_INPUT, EXIT_CRASH = 0, 1, 2, 3
STATUS_STYLE = {"info": "cyan", "pass": "green", "warn": "yellow", "fail": "red", "error": "magenta"}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        raise AuditInputError(f"{self.prog}: {message}", fix=f"see {self.prog} --help")


def _fancy() -> bool:
    return sys.stderr.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def _text(x, keep: str = "", style: str = ""):
    """``x`` as a rich Text: shown literally (no markup, no emoji codes), control characters visible."""
    from rich.text import Text
    return Text(visible(x, keep=keep), style=style)


def _console(stderr: bool = True):
    from rich.console import Console
    return Console(stderr=stderr, no_color=bool(os.environ.get("NO_COLOR")), highlight=False,
                   soft_wrap=not stderr)


# ---------------------------------------------------------------------- progress

def make_progress():
    from auditkit.runner import Progress

    class Plain(Progress):
        def __init__(self):
            self.t0 = {}
            self.last_train = 0.0

        def _say(self, msg: str) -> None:  # one line each, shown literally
            print(f"auditkit: {visible(msg)}", file=sys.stderr, flush=True)

        def stage(self, message):
            self._say(message)

        def warn(self, message):
            self._say(f"warning: {message}")

        def check_start(self, check_id):
            self.t0[check_id] = time.perf_counter()
            self._say(f"{check_id}: running")

        def check_done(self, check_id, status):
            self._say(f"{check_id}: {status.upper()} ({time.perf_counter() - self.t0.get(check_id, 0):.1f} s)")

        def train_update(self, info):
            now = time.perf_counter()
            if now - self.last_train > 5 or info["step"] == info["total"]:
                self.last_train = now
                self._say(f"fine-tune step {info['step']}/{info['total']} loss {info['loss']:.4f} "
                          f"{info['tokens_per_s']:.0f} tok/s")

    if not _fancy():
        return Plain()

    from rich.progress import BarColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    class Fancy(Progress):
        def __init__(self):
            self.console = _console()
            # the description is a check id from the suite: literal text, never markup
            self.bars = RichProgress(TextColumn("{task.description}", markup=False), BarColumn(),
                                     TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                     console=self.console, transient=False)
            self.tasks = {}
            self.bars.start()

        def stage(self, message):
            self.console.print(_text("auditkit:", style="dim") + " " + _text(message), highlight=False)

        def warn(self, message):
            self.console.print(_text("warning:", style="yellow") + " " + _text(message), highlight=False)

        def check_start(self, check_id):
            self.tasks[check_id] = self.bars.add_task(visible(check_id), total=1.0, info="")

        def check_update(self, check_id, fraction):
            if check_id in self.tasks:
                self.bars.update(self.tasks[check_id], completed=min(1.0, fraction))

        def check_done(self, check_id, status):
            color = STATUS_STYLE.get(status, "white")
            self.bars.update(self.tasks[check_id], completed=1.0, info=f"[{color}]{status.upper()}[/]")

        def train_start(self, total_steps):
            self.tasks["__train"] = self.bars.add_task("fine-tune", total=None, info="")

        def train_update(self, info):
            self.bars.update(self.tasks["__train"], total=info["total"], completed=info["step"],
                             info=f"loss {info['loss']:.4f} · {info['tokens_per_s']:.0f} tok/s")

        def close(self):
            self.bars.stop()

    return Fancy()


# ---------------------------------------------------------------------- commands

def cmd_run(args) -> int:
    """``auditkit run``; bad input (exit 2) first removes an earlier run's reports from ``--out`` (see
    :func:`_clear_stale_reports`)."""
    try:
        return _run(args)
    except AuditInputError:
        _clear_stale_reports(args)
        raise


def _clear_stale_reports(args) -> None:
    """An earlier run's reports in the output folder would still say PASS beside a run that was refused: they
    go, as they do when a run starts (``Runner._prepare_out``). Only in a real folder, only process 0, and
    not under ``--resume`` (its results.json is what the next try resumes from)."""
    from auditkit import distributed
    from auditkit.runner import remove_reports
    out = Path(args.out) if args.out else getattr(args, "_default_out", None)
    if args.resume or out is None or out.is_symlink() or not out.is_dir() or not distributed.world().main:
        return
    try:
        remove_reports(out)
    except OSError:  # the refusal is what the user must see; a folder we cannot clean changes nothing
        pass


def _run(args) -> int:
    from auditkit.plugins import registry
    from auditkit.runner import RunOptions, Runner
    from auditkit.suite import load_suite

    from auditkit import distributed
    from auditkit.runner import Progress

    for flag, value in (("--model", args.model), ("--baseline", args.baseline)):
        if value is not None and not value.strip():  # "$CANDIDATE" unset in CI: never the suite's model instead
            raise AuditInputError(f"{flag} is empty", place=flag,
                                  fix=f"give {flag} a model (a folder, builtin:NAME or a hub id), or leave it out")
    reg = registry()
    suite = load_suite(args.suite, reg)
    args._default_out = Path("reports") / _folder_name(suite.name)
    _join_launcher(args.device or suite.device)
    w = distributed.world()
    if w.main:
        _report_plugin_failures(reg)
    out = Path(args.out) if args.out else args._default_out
    opts = RunOptions(out_dir=out, model=args.model, baseline=args.baseline, device=args.device, only=args.only,
                      resume=args.resume, strict=args.strict, show_secrets=args.show_secrets,
                      processes=args.processes)
    if args.processes is not None and not distributed.launched():
        runner = Runner(suite, reg, opts, Progress())
        distributed.check_processes(args.processes, runner.device)  # --processes 0 too: exit 2
        if args.processes > 1:
            # everything that can be checked without a model is checked here, once, before N copies start
            runner.preflight()
            argv = _without_processes(sys.argv[1:] if args.argv is None else args.argv)
            if args.device is None:  # the suite's device, resolved here: the copies join gloo or nccl by it
                argv += ["--device", runner.device.split(":")[0]]
            return distributed.launch(args.processes, argv)
    progress = make_progress() if w.main else Progress()
    try:
        outcome = Runner(suite, reg, opts, progress).run()
    finally:
        if hasattr(progress, "close"):
            progress.close()
    if not w.main:
        return outcome.exit_code
    print_result_table(outcome.results)
    if outcome.results.get("error"):  # the run itself stopped (e.g. the fine-tune diverged)
        print(f"auditkit: run error: {visible(outcome.results['error'])}", file=sys.stderr)
    print(f"reports written to {visible(out)}/ (report.html, results.json, junit.xml, summary.md)", file=sys.stderr)
    return outcome.exit_code


def _without_processes(argv: list[str]) -> list[str]:
    """The command line a launched copy runs: this one less ``--processes N``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--processes":
            skip = True
            continue
        if a.startswith("--processes="):
            continue
        out.append(a)
    return out


def print_result_table(results: dict) -> None:
    from rich.table import Table
    from auditkit.report.common import fmt, gate_line
    console = _console(stderr=False)
    # every cell a Text: a check id, a gate, a name or a message is never read as markup
    table = Table(title=_text(f"auditkit: {results['suite']['name']}"), show_lines=False)
    for col in ("check", "status", "gates", "metrics"):
        table.add_column(col, overflow="fold")
    style = STATUS_STYLE
    for c in results.get("checks", []):
        gates = "\n".join(visible(f"{g['status'].upper()} {gate_line(g)}{' (default)' if g.get('default') else ''}")
                          for g in c.get("gates", [])) or "no gates: nothing decided"
        mets = ", ".join(f"{k}={fmt(m.get('value'))}" for k, m in list(c.get("metrics", {}).items())[:3])
        if c.get("error"):
            mets = f"{c['error']['type']}: {c['error']['message'][:120]}"
        table.add_row(_text(c["id"]), _text(str(c["status"]).upper(), style=style.get(c["status"], "white")),
                      _text(gates, keep="\n"), _text(mets or "-"))
    console.print(table)
    for w in results.get("warnings") or []:
        console.print(_text("warning:", style="yellow") + " " + _text(w), highlight=False)
    s = results["status"]
    counts = {}
    for c in results.get("checks", []):
        counts[c["status"]] = counts.get(c["status"], 0) + 1
    tally = ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kv: list(STATUS_STYLE).index(kv[0])))
    console.print(f"overall: [{style.get(s, 'white')}]{s.upper()}[/]" + (f" ({tally})" if tally else ""))


def cmd_plugins(args) -> int:
    from rich.table import Table
    from auditkit.plugins import registry
    reg = registry()
    table = Table(title="auditkit plugins")
    for col in ("plugin", "version", "source", "provides"):
        table.add_column(col, overflow="fold")
    for p in reg.plugins:
        provides = []
        for kind in ("checks", "reporters", "model_sources", "dataset_sources", "scorers"):
            if p[kind]:
                provides.append(f"{kind.replace('_', ' ')}: {', '.join(p[kind])}")
        table.add_row(_text(p["name"]), _text(p["version"]), _text(p["source"]),
                      _text("\n".join(visible(x) for x in provides) or "-", keep="\n"))
    _console(stderr=False).print(table)
    for name, err in reg.failures:
        print(f"plugin {visible(name)} failed to load and was skipped: {visible(err)}", file=sys.stderr)
    return EXIT_OK


def cmd_checks(args) -> int:
    from rich.table import Table
    from auditkit.plugins import registry
    reg = registry()
    console = _console(stderr=False)
    if args.name:
        if args.name not in reg.checks:
            from difflib import get_close_matches
            near = get_close_matches(args.name, list(reg.checks), n=1)
            raise AuditInputError(f"unknown check {args.name!r}",
                                  fix=f"did you mean {near[0]!r}?" if near else f"checks: {', '.join(sorted(reg.checks))}")
        names = [args.name]
    else:
        names = sorted(reg.checks)
    for name in names:
        cls = reg.checks[name]
        console.print(_text(name, style="bold") + _text(f" ({reg.check_plugin[name]}) — {cls.description}"))
        console.print(_text(f"  tasks: {', '.join(cls.tasks)}; data: "
                            f"{'required' if cls.needs_data and not cls.default_data else cls.default_data or 'none'}"))
        if args.name:
            pt = Table(title="parameters")
            for col in ("name", "type", "default", "help"):
                pt.add_column(col, overflow="fold")
            for pname, p in cls.params.items():
                pt.add_row(_text(pname), _text(p.type), _text("(required)" if p.required else repr(p.default)),
                           _text(p.help))
            console.print(pt)
            mt = Table(title="metrics")
            for col in ("metric", "better", "meaning"):
                mt.add_column(col, overflow="fold")
            for mname, m in cls.metrics.items():
                better = "higher" if m.higher_is_better else "lower" if m.higher_is_better is False else "-"
                mt.add_row(_text(mname), better, _text(m.help))
            console.print(mt)
            _print_default_gates(console, cls)
        else:
            console.print(_text(f"  params: {', '.join(f'{k}={v.default!r}' for k, v in cls.params.items()) or '-'}"))
            console.print(_text(f"  metrics: {', '.join(cls.metrics)}"))
            defaults = sorted({f"{e} ({sev})" for t in cls.tasks for e, sev in cls.default_gates_for(t)})
            console.print(_text(f"  default gates: {'; '.join(defaults) or 'none (status info without gates:)'}"))
    return EXIT_OK


def _print_default_gates(console, cls) -> None:
    """The gates a suite entry without ``gates:`` gets, per task kind."""
    from rich.table import Table
    from auditkit.api import TASKS
    gt = Table(title="default gates (applied when the suite entry has no gates:; gates: [] means none)")
    for col in ("task", "gate", "severity"):
        gt.add_column(col, overflow="fold")
    rows = 0
    for task in cls.tasks:
        if task not in TASKS:
            continue
        for expr, severity in cls.default_gates_for(task):
            gt.add_row(_text(task), _text(expr), _text(severity))
            rows += 1
    if rows:
        console.print(gt)
    else:
        console.print("default gates: none (without gates: this check reports status info, never pass)")


def cmd_report(args) -> int:
    from auditkit.plugins import registry
    from auditkit.results import load_results, output_folder
    from auditkit.runner import render_reports
    results = load_results(args.results)
    out = Path(args.out) if args.out else Path(args.results).parent
    if args.out:
        output_folder(out)  # a --out that is a link is refused; the results' own folder is where they are
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    reg = registry()
    for f in formats:
        if f not in reg.reporters:
            raise AuditInputError(f"unknown report format {f!r}", place="--format",
                                  fix=f"known: {', '.join(sorted(reg.reporters))}")
    if out.resolve() != Path(args.results).resolve().parent and "json" not in formats:
        formats.insert(0, "json")  # a report in another folder keeps its results.json beside it
    failed: list[str] = []
    written = render_reports(results, out, reg, formats, {"show_secrets": args.show_secrets},
                             write_json="json" in formats, failures=failed)
    for p in written:
        print(visible(p))
    return EXIT_CRASH if failed else EXIT_OK  # a report asked for and not written is no success


def cmd_new_plugin(args) -> int:
    from auditkit.plugins import registry
    from auditkit.scaffold import check_name, new_plugin
    path = new_plugin(args.name, Path(args.dir) if args.dir else None, taken=set(registry().checks))
    if check_name(args.name) != args.name:
        print(visible(f"the check is named {check_name(args.name)!r} (from {args.name!r}: lower case, letters, digits "
                      "and _)"))
    print(visible(f"created plugin package in {path}; install it with: pip install -e {path}"))
    return EXIT_OK


def cmd_compare(args) -> int:
    from auditkit.compare import run_compare
    return run_compare(args)


def _folder_name(name: str) -> str:
    """A suite's name as the default output folder's name: letters, digits, ``.``, ``_`` and ``-`` only, so
    a name holding ``/``, ``..`` or control characters cannot place the reports elsewhere."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "suite"


def _report_plugin_failures(reg) -> None:
    for name, err in reg.failures:
        print(f"auditkit: warning: plugin {visible(name)} failed to load and was skipped: {visible(err)}",
              file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    from auditkit import __version__
    p = _Parser(prog="auditkit", description="Evaluation and responsible-AI audits for language models.")
    p.add_argument("--version", action="version", version=f"auditkit {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="run a suite and write the reports")
    r.add_argument("suite")
    r.add_argument("--model", help="audit this model instead of the suite's model.base")
    r.add_argument("--baseline", help="compare against this model (overrides model.baseline)")
    r.add_argument("--out", help="output folder (default reports/<suite name>)")
    r.add_argument("--device", choices=("auto", "cpu", "cuda"))
    r.add_argument("--only", nargs="+", metavar="ID", help="run only these checks")
    r.add_argument("--resume", action="store_true", help="reuse finished checks and fine-tunes of a previous run")
    r.add_argument("--strict", action="store_true", help="warnings fail the run (exit 1)")
    r.add_argument("--show-secrets", action="store_true", help="show memorized secrets in reports (redacted by default)")
    r.add_argument("--processes", type=int, metavar="N",
                   help="data parallel over N processes (one per GPU, or CPU processes with gloo), launched "
                        "with torch.distributed.run; `accelerate launch -m auditkit run ...` works too")
    r.set_defaults(fn=cmd_run, argv=None)

    c = sub.add_parser("compare", help="what changed between two runs")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--out")
    c.add_argument("--fail-on", action="append", default=[], metavar="GATE",
                   help="comparison gate on a delta, e.g. 'accuracy < -0.01' (repeatable)")
    c.set_defaults(fn=cmd_compare)

    sub.add_parser("plugins", help="installed plugins and what each provides").set_defaults(fn=cmd_plugins)
    k = sub.add_parser("checks", help="checks, their parameters and metrics")
    k.add_argument("name", nargs="?")
    k.set_defaults(fn=cmd_checks)

    n = sub.add_parser("new-plugin", help="scaffold an installable plugin package")
    n.add_argument("name")
    n.add_argument("--dir")
    n.set_defaults(fn=cmd_new_plugin)

    rep = sub.add_parser("report", help="re-render reports from a results.json")
    rep.add_argument("results")
    rep.add_argument("--format", default="html,markdown,junit")
    rep.add_argument("--out")
    rep.add_argument("--show-secrets", action="store_true")
    rep.set_defaults(fn=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; under a distributed launcher, join its processes first and leave them at the end."""
    from auditkit import distributed
    try:
        code = _main(argv)  # `run` joins the launcher's processes once its suite is read
        main_process = distributed.world().main
    finally:
        try:
            distributed.shutdown()
        except Exception:  # pragma: no cover - a peer that died already
            pass
    return distributed.report_exit(code, main_process)


def _join_launcher(device: str | None) -> None:
    """Under a distributed launcher, join its process group: gloo when this run is on the CPU (``--device
    cpu`` or the suite's ``device: cpu``, or no CUDA device), nccl otherwise. Joined once the suite is
    read, so a suite that does not load is one line and exit 2 in every copy, with no group to leave."""
    from auditkit import distributed
    if not distributed.launched():
        return
    import torch
    distributed.init_from_env(cpu=device == "cpu" or not torch.cuda.is_available())


def _main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings
    # library deprecation notices (transformers/peft internals) are noise in an audit log
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "fn", None) is cmd_run:
            args.argv = list(argv) if argv is not None else None
        return int(args.fn(args))
    except AuditInputError as exc:
        print(f"auditkit: error: {exc.line()}", file=sys.stderr)  # one line, shown literally (line() does it)
        return EXIT_INPUT
    except RecursionError:  # a file nested deeper than any parser's stack (caught with its place where read)
        print("auditkit: error: an input file is nested too deeply to read; flatten it", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("auditkit: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("AUDITKIT_DEBUG"):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"auditkit: internal error: {type(exc).__name__}: {visible(first)} "
              "(set AUDITKIT_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return EXIT_CRASH


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
