"""The ``lm_eval`` check: any lm-evaluation-harness task run through lm-eval itself, its model requests
answered by auditkit's engine (:class:`auditkit_plugins.lm_eval_adapter.EngineLM`: the same numbers as
lm-eval's HFLM with ``max_length`` = the model's, but split across processes, cached and batch-size
invariant), its metrics and stderr mapped into our schema
(95% CI = value ± 1.96 stderr). ``task`` is a task name, a path to a task YAML (relative to the suite),
or ``builtin:NAME`` for a built-in multiple-choice dataset wrapped as an lm-eval task.
A task YAML that is missing or unreadable and an unknown ``builtin:NAME`` are exit 2 when the suite loads
(``check_task``); a plain task name and ``metric`` are known only once lm-eval loads the task.

No suite Python without an opt-in: lm-eval imports the module a ``!function MODULE.NAME`` tag names (the file
``MODULE.py`` next to the YAML, else an importable module). A task YAML is run with its folder as lm-eval's
``include_path``, and lm-eval indexes every ``*.yaml`` under that folder, any of which it may load in full (a
group's subtasks, a task name found there first), so a ``!function`` tag in the task YAML, in any YAML under
its folder, or in a YAML one of those includes (``include:``) is exit 2 when the suite loads unless the entry
sets ``allow_code: true``. lm-eval's own task YAMLs (a task by name, or a file inside the lm_eval package) are
lm-eval's code and need no opt-in. lm-eval renders a task's Jinja templates in a plain jinja2 Environment, from
which a template can reach Python; without ``allow_code`` they render in jinja2's sandbox, and a template that
tries is exit 2 when the check runs.

Metric names come from the task (``acc``, ``exact_match_strict-match`` for a filtered metric, ...), so they
are declared as a pattern and any of them can be gated; their direction is the one lm-eval's task declares
(``higher_is_better``). lm-eval's bookkeeping (``sample_len``, ``alias``, ``name``) is not a metric and is
not reported as one. ``score`` is the task's main metric (param ``metric``; by default the first one the
task reports), oriented so that higher is better: a lower-is-better metric such as perplexity enters
negated, so one default gate fits every task.

Default gate: against a base model, the candidate must not be clearly worse on the task: fail when even the
upper end of the score's 95% CI (value + 1.96 stderr) is below the base's score. Without a base model it is
dropped (with a note) and the check ends ``info``: no fixed threshold suits every task, so an absolute one
is the suite author's to write.
"""
from __future__ import annotations

import contextlib
import json
import math
import tempfile
from pathlib import Path

from auditkit.api import Check, CheckContext, CheckResult, MetricSpec, Param
from auditkit.errors import AuditInputError
from auditkit.hookspecs import hookimpl

COMMON_METRICS = ("acc", "acc_norm", "acc_mutual_info", "exact_match", "f1", "mcc", "bleu", "rouge1", "rougeL",
                  "perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "likelihood")
LOWER_IS_BETTER = {"perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte"}
#: lm-eval's per-task bookkeeping in ``results[task]``: never a metric
BOOKKEEPING = {"alias", "name", "sample_len", "samples"}

MC_TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def write_mc_task(rows: list[dict], folder: Path, name: str) -> Path:
    """Write ``rows`` as JSONL plus an lm-eval multiple-choice task YAML (absolute data path)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = (folder / f"{name}.jsonl").resolve()
    data.write_text("".join(json.dumps({"question": r["question"], "choices": r["choices"],
                                        "label": int(r["label"])}) + "\n" for r in rows))
    yml = folder / f"{name}.yaml"
    yml.write_text(MC_TASK_YAML.format(name=name, path=json.dumps(str(data))))
    return yml


def _task_loader():
    """A safe YAML loader that reads lm-eval's own tags (``!function utils.process_docs``) as None: we only
    need the task's name, and ``yaml.safe_load`` refuses such a (valid) task file."""
    import yaml

    class TaskLoader(yaml.SafeLoader):
        pass
    TaskLoader.add_multi_constructor("!", lambda loader, suffix, node: None)
    return TaskLoader


def task_file(task: str, base_dir: str | None) -> Path:
    """Where a task YAML lies: relative paths are relative to the suite's folder."""
    path = Path(task).expanduser()
    return Path(base_dir) / path if not path.is_absolute() and base_dir else path


def read_task_file(task: str, base_dir: str | None, place: str) -> dict:
    """The mapping in a task YAML; AuditInputError (placed at ``place``) when it is missing or unreadable."""
    import yaml
    path = task_file(task, base_dir)
    if not path.is_file():
        what = "is a directory, not a task YAML" if path.is_dir() else "does not exist"
        raise AuditInputError(f"lm-eval task file {task} {what}", place=place,
                              fix="paths are relative to the suite file's folder")
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_task_loader())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise AuditInputError(f"lm-eval task file {task} cannot be read ({first})", place=place,
                              fix="give a valid lm-eval task YAML") from None
    if not isinstance(doc, dict):
        raise AuditInputError(f"lm-eval task file {task} holds no mapping", place=place,
                              fix="an lm-eval task YAML starts with task: NAME")
    return doc


#: the tag by which an lm-eval task YAML makes lm-eval import Python (``!function utils.process_docs``)
CODE_TAG = "!function"
#: folders lm-eval's task index skips (``lm_eval.tasks._index._IGNORE_DIRS``)
IGNORED_DIRS = {"__pycache__", ".ipynb_checkpoints"}


def _lm_eval_dir() -> Path | None:
    """The installed lm_eval package's folder (found without importing it)."""
    import importlib.util
    try:
        spec = importlib.util.find_spec("lm_eval")
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]).resolve() if locations else None


def _code_tags(path: Path, seen: set, lm_eval_dir: Path | None) -> list[tuple[Path, int, str]]:
    """``(file, line, MODULE.NAME)`` of each ``!function`` tag in the YAML at ``path`` and the YAMLs it
    includes, resolved as lm-eval resolves them; lm-eval's own files and unreadable ones (lm-eval skips or
    refuses those) are passed over."""
    import yaml
    path = path.expanduser().resolve()
    if path in seen or not path.is_file() or (lm_eval_dir is not None and path.is_relative_to(lm_eval_dir)):
        return []
    seen.add(path)
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []
    # one walk over the node tree: the tags, and every mapping's ``include:`` (top level, or a group's inline
    # task entries; a string or a list of them)
    hits, includes, stack, visited = [], [], [root] if root is not None else [], set()
    text_tag = "tag:yaml.org,2002:str"
    while stack:
        node = stack.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        if node.tag == CODE_TAG:
            hits.append((path, node.start_mark.line + 1, str(node.value)))
        if isinstance(node, yaml.SequenceNode):
            stack += node.value
        elif isinstance(node, yaml.MappingNode):
            stack += [n for pair in node.value for n in pair]
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == "include":
                    items = value.value if isinstance(value, yaml.SequenceNode) else [value]
                    includes += [i.value for i in items if isinstance(i, yaml.ScalarNode) and i.tag == text_tag]
    hits.sort(key=lambda h: h[1])
    for inc in includes:
        hits += _code_tags(path.parent / inc if not Path(inc).is_absolute() else Path(inc), seen, lm_eval_dir)
    return hits


def code_tags(task: str, base_dir: str | None) -> list[tuple[Path, int, str]]:
    """The ``!function`` tags lm-eval may act on when it runs the task YAML ``task``: in that file, in every
    ``*.yaml`` under its folder (lm-eval's ``include_path``, indexed whole), and in the YAMLs those include;
    the task file's own first."""
    given = task_file(task, base_dir)
    seen: set = set()
    lm_eval_dir = _lm_eval_dir()
    hits = _code_tags(given, seen, lm_eval_dir)
    folder = given.parent.resolve()  # the include_path the check gives lm-eval
    siblings = sorted((p for p in folder.glob("**/*.yaml") if not IGNORED_DIRS.intersection(p.parts)),
                      key=lambda p: p.as_posix())
    for other in siblings:
        hits += _code_tags(other, seen, lm_eval_dir)
    return hits


def _shown(path: Path, base_dir: str | None) -> str:
    """``path`` as the suite would write it: relative to the suite's folder when inside it."""
    if base_dir:
        try:
            return path.relative_to(Path(base_dir).resolve()).as_posix()
        except ValueError:
            pass
    return str(path)


def refuse_code(task: str, base_dir: str | None, place: str) -> None:
    """AuditInputError (placed at ``place``) when lm-eval would import the suite's Python to run the task YAML
    ``task`` (see :func:`code_tags`); the entry opts in with ``allow_code: true``."""
    hits = code_tags(task, base_dir)
    if not hits:
        return
    file, line, spec = hits[0]
    module = spec.rpartition(".")[0]
    target = _shown(file.parent / f"{module.replace('.', '/')}.py", base_dir) if module else spec
    where = _shown(file, base_dir)
    via = "" if file == task_file(task, base_dir).resolve() else \
        " (lm-eval reads every YAML under the task file's folder and what they include)"
    more = f" and {len(hits) - 1} more" if len(hits) > 1 else ""
    raise AuditInputError(
        f"lm-eval task file {task} would run Python: {where} line {line} has {CODE_TAG} {spec}{more}{via}, "
        f"which lm-eval imports (no suite code runs without an opt-in)", place=place,
        fix=f"set allow_code: true on this entry to let lm-eval import {target}, or remove the {CODE_TAG} tag")


def check_task(task, base_dir: str | None, place: str, allow_code: bool = False) -> None:
    """What can be known of ``task`` before a model loads: a non-empty string, a ``builtin:NAME`` that a dataset
    source registers (did-you-mean), a task YAML that exists and parses and, unless ``allow_code``, makes lm-eval
    import no suite Python (:func:`refuse_code`). A plain lm-eval task name is looked up when the check runs
    (indexing lm-eval's task registry takes ~20 s), and so is the task's ``metric``."""
    from auditkit.data import check_data_spec
    from auditkit.plugins import registry
    if not isinstance(task, str) or not task.strip():
        raise AuditInputError(f"an lm-eval task must be a task name, a task YAML or builtin:NAME, got {task!r}",
                              place=place, fix="e.g. task: arc_easy, task: tasks/mine.yaml or task: builtin:mc-general")
    if task.startswith("builtin:"):
        check_data_spec(task, registry(), place=place, what="an lm-eval task's")
    elif task.endswith((".yaml", ".yml")):
        read_task_file(task, base_dir, place)
        if not allow_code:
            refuse_code(task, base_dir, place)


@contextlib.contextmanager
def sandboxed_templates(task: str, place: str):
    """Render lm-eval's Jinja templates (``doc_to_text``, ...) in a sandbox while lm-eval runs ``task``: lm-eval's
    own jinja2 Environment is not one, and a template can reach Python through it
    (``{{ cycler.__init__.__globals__.os }}``). A template that tries is exit 2 (opt in with ``allow_code``)."""
    import lm_eval.utils
    from jinja2.exceptions import SecurityError
    from jinja2.sandbox import SandboxedEnvironment
    plain = lm_eval.utils.env
    sandbox = SandboxedEnvironment(loader=plain.loader, undefined=plain.undefined,
                                   keep_trailing_newline=plain.keep_trailing_newline)
    sandbox.filters.update(plain.filters)
    lm_eval.utils.env = sandbox
    try:
        yield
    except SecurityError as exc:
        raise AuditInputError(f"a template of lm-eval task {task} reaches into Python ({exc})", place=place,
                              fix="set allow_code: true on this entry to let it, or fix the template") from None
    finally:
        lm_eval.utils.env = plain


class LmEvalTask(Check):
    name = "lm_eval"
    #: lm-eval's requests are scored on token ids by the in-process engine (EngineLM): an hf model
    needs = frozenset({"weights"})
    description = "Run an lm-evaluation-harness task through lm-eval on the loaded model; metrics with stderr CIs."
    params = {
        "task": Param("str", None, "lm-eval task name, path to a task YAML, or builtin:NAME", required=True),
        "num_fewshot": Param("int", 0, "few-shot examples", ge=0),
        "limit": Param("int", 0, "evaluate at most this many documents (0 = all)", ge=0),
        "batch_size": Param("int", 16, "batch size of the model's passes for this check", ge=1),
        "metric": Param("str", "", "the task's main metric, reported as score (default: the first it reports)"),
        "allow_code": Param("bool", False, "let lm-eval import the Python a local task YAML names with !function "
                                           "(MODULE.py beside it); off: such a task is refused when the suite loads"),
    }
    metrics = {
        **{m: MetricSpec(f"lm-eval {m}", m not in LOWER_IS_BETTER) for m in COMMON_METRICS},
        "score": MetricSpec("the task's main metric (param metric), negated when lower is better"),
        # any metric the task defines, as ``METRIC`` or ``METRIC_FILTER``; direction as the task declares
        "{metric}": MetricSpec("a metric of the lm-eval task (direction as the task declares it)", None),
    }
    tasks = ("causal-lm",)
    needs_data = False
    # see the module docstring: no clear regression against the base (dropped without one)
    default_gates = ["score.ci_high >= baseline.score"]

    @classmethod
    def validate_params(cls, params: dict, base_dir: str | None = None, prefix: str = "") -> None:
        """The ``task`` before any model loads (see :func:`check_task`); placed at ``PREFIX + "task"``."""
        check_task(params.get("task"), base_dir, f"{prefix}task", allow_code=bool(params.get("allow_code")))

    def run(self, ctx: CheckContext) -> CheckResult:
        import lm_eval
        from lm_eval.tasks import TaskManager

        from auditkit_plugins.lm_eval_adapter import EngineLM

        task = ctx.params["task"]
        self.validate_params(ctx.params, ctx.base_dir, f"{ctx.check_id or self.name}.")
        with tempfile.TemporaryDirectory(prefix="auditkit-lmeval-") as tmp:
            include = None
            if task.startswith("builtin:"):
                ds = ctx.load_data(task)
                ds.require_choices()
                name = "auditkit_" + task[len("builtin:"):].replace("-", "_").replace("#", "_")
                include = str(write_mc_task(ds.rows, Path(tmp), name).parent)
                task = name
            elif task.endswith((".yaml", ".yml")):
                path = task_file(task, ctx.base_dir)
                name = read_task_file(task, ctx.base_dir, f"{ctx.check_id or self.name}.task").get("task")
                task = name if isinstance(name, str) and name else path.stem
                include = str(path.parent.resolve())
            tm = None
            if include:
                # indexing lm-eval's thousands of built-in task YAMLs takes ~20 s on 2 CPUs: only do it
                # when the task (e.g. a group of built-in tasks) is not found among the included ones
                tm = TaskManager(include_path=include, include_defaults=False)
                if task not in tm.all_tasks:
                    tm = None
            tm = tm or (TaskManager(include_path=include) if include else TaskManager())
            lm = EngineLM(ctx.model)
            saved = ctx.model.batch_size
            ctx.model.batch_size = ctx.params["batch_size"]  # speed and memory only: passes are batch invariant
            guard = contextlib.nullcontext() if ctx.params.get("allow_code") else \
                sandboxed_templates(ctx.params["task"], f"{ctx.check_id or self.name}.task")
            try:
                with guard:
                    out = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=tm,
                                                  num_fewshot=ctx.params["num_fewshot"] or None,
                                                  limit=ctx.params["limit"] or None, bootstrap_iters=1000,
                                                  random_seed=ctx.seed, numpy_random_seed=ctx.seed,
                                                  torch_random_seed=ctx.seed, fewshot_random_seed=ctx.seed,
                                                  log_samples=True, verbosity="ERROR")
            finally:
                ctx.model.batch_size = saved
        res = CheckResult()
        scores = out["results"].get(task) or next(iter(out["results"].values()))
        n = (out.get("n-samples", {}).get(task) or {}).get("effective")
        directions = (out.get("higher_is_better") or {}).get(task) or {}
        for key, value in scores.items():
            metric, _, filt = key.partition(",")
            if ("_stderr" in metric or metric in BOOKKEEPING or isinstance(value, bool)
                    or not isinstance(value, (int, float))):
                continue
            name = metric if filt in ("", "none") else f"{metric}_{filt}"
            stderr = scores.get(f"{metric}_stderr,{filt}" if filt else f"{metric}_stderr")
            ci = None
            if isinstance(stderr, (int, float)) and math.isfinite(stderr):
                ci = (value - 1.96 * stderr, value + 1.96 * stderr)
            better = directions.get(metric)
            res.add(name, value, ci, n, (metric not in LOWER_IS_BETTER) if better is None else bool(better))
        main = ctx.params.get("metric") or next((k for k in res.metrics), None)
        if main not in res.metrics:
            what = f"no metric {main!r}" if main else "no metric"
            raise AuditInputError(f"lm-eval task {task!r} reports {what}",
                                  place=f"{ctx.check_id or self.name}.metric",
                                  fix=f"the task reports: {', '.join(res.metrics) or 'nothing'}")
        m = res.metrics[main]
        sign = -1.0 if m.higher_is_better is False else 1.0
        ci = None if m.ci_low is None else tuple(sorted((sign * m.ci_low, sign * m.ci_high)))
        res.add("score", sign * m.value, ci, m.n, True)
        res.notes.append(f"score = {'-' if sign < 0 else ''}{main}")
        samples = (out.get("samples") or {}).get(task) or []
        if samples and "acc" in samples[0]:
            ordered = sorted(samples, key=lambda s: s["doc_id"])
            res.records["correct"] = [int(s["acc"]) for s in ordered]
        res.notes.append(f"lm-eval {lm_eval.__version__ if hasattr(lm_eval, '__version__') else ''} task {task}")
        ctx.progress(1.0)
        return res


@hookimpl
def auditkit_register_checks(register):
    register(LmEvalTask)
