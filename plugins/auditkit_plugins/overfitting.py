"""The ``overfitting`` check, from the fine-tuning record.

- gap = L_val - L_train at the last evaluation (and at the best one), L_train measured in eval mode
  on a fixed train subset so both losses are comparable;
- accuracy gap = train accuracy - validation accuracy, where a task metric exists;
- Prechelt's generalisation loss GL(t) = 100 * (E_va(t) / E_opt(t) - 1), E_opt the lowest validation
  loss up to t (Prechelt 1998, "Early stopping - but when?");
- whether the validation loss rose for k consecutive evaluations at the end of training.

Default gates: fail when the final validation loss is more than 0.5 nats per example above the train loss
(classifiers), or more than 1 nat per token (causal LMs: validation perplexity above e = 2.7x the train
perplexity). A classifier that memorised its training set without learning anything that generalises has a
train loss near 0 and a validation loss of at least a guess (ln 2 = 0.69 for two classes), usually far more
since it is confidently wrong (issue 13: gap 1.89; tests/test_planted_faults.py: 2.4), while a fine-tune
that learns the task keeps the two losses close. A causal LM that memorises its text drives the train loss
towards 0 while the validation loss stays at several nats per token; the wider LM threshold leaves room
for the difference between train and validation text that small LM fine-tunes show anyway.
GL and a rising validation loss only warn: Prechelt's GL is relative, so it explodes when the validation
loss approaches 0 on an easy task (0.001 -> 0.002 is GL 100), and the validation loss of a classifier often
rises in the last epochs while its accuracy still improves (it grows more confident); both say "an earlier
checkpoint was better", which early stopping answers.
"""
from __future__ import annotations

from auditkit.api import Check, CheckContext, CheckResult, MetricSpec, Param
from auditkit.hookspecs import hookimpl


def generalisation_loss(val_losses: list[float]) -> list[float]:
    """Prechelt's GL(t) for every evaluation t."""
    out, best = [], float("inf")
    for v in val_losses:
        best = min(best, v)
        out.append(100.0 * (v / best - 1.0) if best > 0 else 0.0)
    return out


def rising_streak(values: list[float]) -> int:
    """How many consecutive evaluations at the end each rose above the one before."""
    streak = 0
    for a, b in zip(values[::-1][1:], values[::-1]):
        if b > a:
            streak += 1
        else:
            break
    return streak


class Overfitting(Check):
    name = "overfitting"
    description = "Train/validation loss gap, accuracy gap, Prechelt's GL and rising validation loss from the training curves."
    params = {"k": Param("int", 2, "validation loss rising for k consecutive evaluations counts as rising",
                         ge=1)}
    metrics = {
        "final_train_loss": MetricSpec("train loss (eval mode, fixed subset) at the last evaluation", False),
        "final_val_loss": MetricSpec("validation loss at the last evaluation", False),
        "best_val_loss": MetricSpec("lowest validation loss seen", False),
        "loss_gap": MetricSpec("L_val - L_train at the last evaluation", False),
        "best_loss_gap": MetricSpec("L_val - L_train at the best evaluation", False),
        "accuracy_gap": MetricSpec("train accuracy - validation accuracy at the last evaluation", False),
        "gl": MetricSpec("Prechelt's generalisation loss GL at the last evaluation, in percent", False),
        "val_rising": MetricSpec("1 if the validation loss rose for k consecutive evaluations at the end", False),
        "rising_streak": MetricSpec("consecutive rising validation losses at the end", False),
    }
    needs_data = False
    needs_training = True
    needs_validation = True
    # see the module docstring
    default_gates = {
        "sequence-classification": ["loss_gap <= 0.5", {"when": "gl <= 20", "severity": "warn"},
                                    {"when": "val_rising == 0", "severity": "warn"}],
        "causal-lm": ["loss_gap <= 1.0", {"when": "gl <= 20", "severity": "warn"},
                      {"when": "val_rising == 0", "severity": "warn"}],
        # per target token, like a causal LM's
        "seq2seq-lm": ["loss_gap <= 1.0", {"when": "gl <= 20", "severity": "warn"},
                       {"when": "val_rising == 0", "severity": "warn"}],
    }

    def run(self, ctx: CheckContext) -> CheckResult:
        rec = ctx.training or {}
        evals = [e for e in rec.get("evals", []) if e.get("val_loss") is not None]
        if not evals:
            raise ValueError("the fine-tune recorded no validation evaluation (no validation split?)")
        val = [e["val_loss"] for e in evals]
        train = [e["train_loss"] for e in evals]
        gl = generalisation_loss(val)
        best_i = min(range(len(val)), key=lambda i: val[i])
        streak = rising_streak(val)
        res = CheckResult()
        n = rec.get("n_validation")
        res.add("final_train_loss", train[-1], higher_is_better=False)
        res.add("final_val_loss", val[-1], n=n, higher_is_better=False)
        res.add("best_val_loss", val[best_i], n=n, higher_is_better=False)
        res.add("loss_gap", val[-1] - train[-1], higher_is_better=False)
        res.add("best_loss_gap", val[best_i] - train[best_i], higher_is_better=False)
        last = evals[-1]
        if "val_accuracy" in last and "train_accuracy" in last:
            res.add("accuracy_gap", last["train_accuracy"] - last["val_accuracy"], higher_is_better=False)
        res.add("gl", gl[-1], higher_is_better=False)
        res.add("rising_streak", streak, higher_is_better=False)
        res.add("val_rising", 1.0 if streak >= ctx.params["k"] else 0.0, higher_is_better=False)
        res.evidence = [{"title": "Evaluations", "rows": [
            {"step": e["step"], "epoch": e["epoch"], "train_loss": round(e["train_loss"], 5),
             "val_loss": round(e["val_loss"], 5), "GL": round(g, 3),
             **({"val_accuracy": round(e["val_accuracy"], 4)} if "val_accuracy" in e else {})}
            for e, g in zip(evals, gl)]}]
        res.figures["training curves"] = _curves_svg(rec, evals, best_i)
        ctx.progress(1.0)
        return res


def _curves_svg(rec: dict, evals: list[dict], best_i: int) -> str:
    from auditkit.figures import new_figure, to_svg
    fig, ax = new_figure(6.4, 3.4)
    steps = rec.get("steps", [])
    if steps:
        ax.plot([s["step"] for s in steps], [s["loss"] for s in steps], color="#9ca3af", lw=0.8,
                label="train loss (per step)")
    ax.plot([e["step"] for e in evals], [e["train_loss"] for e in evals], "o-", color="#2563eb",
            label="train loss (eval)")
    ax.plot([e["step"] for e in evals], [e["val_loss"] for e in evals], "o-", color="#dc2626", label="validation loss")
    ax.axvline(evals[best_i]["step"], color="#15803d", ls="--", lw=1, label="best")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    return to_svg(fig)


@hookimpl
def auditkit_register_checks(register):
    register(Overfitting)
