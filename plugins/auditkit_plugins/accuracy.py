"""The ``accuracy`` check.

- Classifiers: accuracy and macro-F1 (sklearn) with percentile-bootstrap 95% CIs.
- Causal LMs on multiple choice ``{"question","choices","label"}``: lm-eval's ``acc`` (argmax of the
  summed log-likelihood of ``" " + choice`` given the question) and ``acc_norm`` (the same divided by
  the choice length in characters), with stderr = sample sd / sqrt(n) as lm-eval reports it.
- Seq2seq LMs (T5, BART) on the same data: the same metrics, each choice scored as lm-eval's seq2seq
  backend does (the encoder reads the question, the decoder scores ``" " + choice``: see
  :meth:`auditkit.models.ModelHandle.continuation_logprobs`).
- ``chance``: what a model without skill scores on the same rows: the majority-class rate for
  classifiers (the "ZeroR" baseline: always predict the most frequent label), the mean of
  1 / number of choices for multiple choice (a uniform guess).

Default gates (applied when the suite entry has no ``gates:``): the model must beat chance with its
whole 95% CI (``accuracy.ci_low > chance``: a release must show skill, so the burden of proof is on the
candidate); against a base model it must not be clearly worse (fail when even the upper CI bound is below
the base's value) and warns on a point-estimate drop of more than one point. The two baseline gates are
dropped, with a note, when the run has no base model.
"""
from __future__ import annotations

import numpy as np
from scipy.special import softmax

from auditkit.api import Check, CheckContext, CheckResult, MetricSpec, Param
from auditkit.hookspecs import hookimpl
from auditkit.stats import macro_f1_ci, mean_ci, mean_stderr


def multiple_choice_scores(model, rows: list[dict], delimiter: str = " ") -> tuple[np.ndarray, np.ndarray, list]:
    """Per item: acc and acc_norm correctness (0/1) and the choice log-likelihoods, lm-eval style."""
    pairs, owners = [], []
    for i, row in enumerate(rows):
        for choice in row["choices"]:
            pairs.append((row["question"], delimiter + choice))
            owners.append(i)
    lps = model.continuation_logprobs(pairs)
    lls: list[list[float]] = [[] for _ in rows]
    for i, lp in zip(owners, lps):
        lls[i].append(float(np.sum(lp)))
    acc, acc_norm = [], []
    for row, ll in zip(rows, lls):
        ll_arr = np.array(ll)
        # lm-eval: completion_len = len(choice) for the choices as doc_to_choice gives them
        lengths = np.array([float(len(c)) for c in row["choices"]])
        gold = int(row["label"])
        acc.append(1.0 if int(np.argmax(ll_arr)) == gold else 0.0)
        acc_norm.append(1.0 if int(np.argmax(ll_arr / lengths)) == gold else 0.0)
    return np.array(acc), np.array(acc_norm), lls


def majority_rate(labels) -> float:
    """Accuracy of always predicting the most frequent label (the ZeroR baseline)."""
    labels = np.asarray(labels)
    return float(np.bincount(labels).max() / labels.size) if labels.size else float("nan")


class Accuracy(Check):
    name = "accuracy"
    description = ("Task accuracy: accuracy and macro-F1 with bootstrap CIs for classifiers; lm-eval's acc and "
                   "acc_norm on multiple-choice data for causal and seq2seq LMs.")
    params = {
        "max_examples": Param("int", 0, "score at most this many rows (0 = all)", ge=0),
        "bootstrap": Param("int", 1000, "bootstrap resamples for the macro-F1 95% CI", ge=100),
        "delimiter": Param("str", " ", "text between question and choice (lm-eval's target_delimiter)"),
    }
    metrics = {
        "accuracy": MetricSpec("share of correct predictions (acc for multiple choice)"),
        "macro_f1": MetricSpec("unweighted mean of per-class F1 (classifiers)"),
        "acc": MetricSpec("lm-eval acc: argmax summed log-likelihood (multiple choice)"),
        "acc_norm": MetricSpec("lm-eval acc_norm: log-likelihood / choice length in characters"),
        "acc_stderr": MetricSpec("sample sd / sqrt(n) of acc", None),
        "acc_norm_stderr": MetricSpec("sample sd / sqrt(n) of acc_norm", None),
        "chance": MetricSpec("accuracy without skill: the majority-class rate (classifiers) or the mean "
                             "1 / number of choices (multiple choice)", None),
    }
    # see the module docstring: beat chance with the whole CI; no clear regression against the base
    default_gates = {
        "sequence-classification": [
            "accuracy.ci_low > chance",
            "accuracy.ci_high >= baseline.accuracy",
            {"when": "accuracy >= baseline.accuracy - 0.01", "severity": "warn"},
        ],
        "causal-lm": [
            "acc.ci_low > chance",
            "acc.ci_high >= baseline.acc",
            {"when": "acc >= baseline.acc - 0.01", "severity": "warn"},
        ],
        "seq2seq-lm": [
            "acc.ci_low > chance",
            "acc.ci_high >= baseline.acc",
            {"when": "acc >= baseline.acc - 0.01", "severity": "warn"},
        ],
    }

    def run(self, ctx: CheckContext) -> CheckResult:
        ds = ctx.data
        rows = ds.rows[: ctx.params["max_examples"]] if ctx.params["max_examples"] else ds.rows
        if ctx.model.task in ("causal-lm", "seq2seq-lm"):
            ds.require_choices()
            return self._multiple_choice(ctx, rows)
        ds.require("text", fmt="classification")
        labels = np.array(ds.require_labels(ctx.model.num_labels)[: len(rows)])
        return self._classification(ctx, rows, labels)

    def _classification(self, ctx, rows, labels) -> CheckResult:
        from sklearn.metrics import confusion_matrix, f1_score
        texts = [r["text"] for r in rows]
        logits = ctx.model.class_logits(texts)
        ctx.progress(0.8)
        pred = logits.argmax(-1)
        correct = (pred == labels).astype(float)
        n, b = len(rows), ctx.params["bootstrap"]
        res = CheckResult()
        res.add("accuracy", correct.mean(), mean_ci(correct, ctx.seed), n)
        res.add("chance", majority_rate(labels), None, n, None)
        classes = list(range(max(ctx.model.num_labels, int(labels.max()) + 1)))
        # sklearn's macro-F1 for the value; the 1000 bootstrap resamples vectorized in numpy
        f1 = f1_score(labels, pred, average="macro", labels=classes, zero_division=0)
        res.add("macro_f1", f1, macro_f1_ci(labels, pred, len(classes), seed=ctx.seed, n_resamples=b), n)
        res.records = {"correct": correct.astype(int).tolist(), "pred": pred.astype(int).tolist()}
        probs = softmax(logits, axis=-1)
        wrong = np.where(correct == 0)[0]
        worst = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")][:10]
        res.evidence = [{"title": "Most confident mistakes", "rows": [
            {"row": int(i), "text": texts[i][:300], "label": int(labels[i]), "predicted": int(pred[i]),
             "confidence": round(float(probs[i, pred[i]]), 4)} for i in worst]}]
        res.figures["confusion matrix"] = _confusion_svg(confusion_matrix(labels, pred, labels=classes), classes)
        ctx.progress(1.0)
        return res

    def _multiple_choice(self, ctx, rows) -> CheckResult:
        acc, acc_norm, lls = multiple_choice_scores(ctx.model, rows, ctx.params["delimiter"])
        n = len(rows)
        res = CheckResult()
        res.add("acc", acc.mean(), mean_ci(acc, ctx.seed), n)
        res.add("accuracy", acc.mean(), mean_ci(acc, ctx.seed), n)
        res.add("acc_norm", acc_norm.mean(), mean_ci(acc_norm, ctx.seed), n)
        res.add("acc_stderr", mean_stderr(acc), None, n, None)
        res.add("acc_norm_stderr", mean_stderr(acc_norm), None, n, None)
        res.add("chance", float(np.mean([1.0 / len(r["choices"]) for r in rows])), None, n, None)
        res.records = {"correct": acc.astype(int).tolist(), "correct_norm": acc_norm.astype(int).tolist()}
        wrong = [i for i in range(n) if acc[i] == 0][:10]
        res.evidence = [{"title": "Wrong answers (first 10)", "rows": [
            {"row": i, "question": rows[i]["question"][:200], "answer": rows[i]["choices"][int(rows[i]["label"])],
             "chosen": rows[i]["choices"][int(np.argmax(lls[i]))]} for i in wrong]}]
        ctx.progress(1.0)
        return res


def _confusion_svg(cm: np.ndarray, classes: list) -> str:
    from auditkit.figures import new_figure, to_svg
    fig, ax = new_figure(3.4, 3.0)
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="black")
    ax.set_xticks(range(len(classes)), [str(c) for c in classes])
    ax.set_yticks(range(len(classes)), [str(c) for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("label")
    return to_svg(fig)


@hookimpl
def auditkit_register_checks(register):
    register(Accuracy)
