"""ROUGE-L F-measure as a local ``evaluate`` metric, computed by Google's ``rouge_score`` package.

Per example: ``RougeScorer(["rougeL"], use_stemmer=...).score_multi(references, prediction)``, i.e. the
F-measure of the longest common subsequence of rouge_score's tokens (lower case, alphanumeric runs), the
maximum over the references. The corpus value is the mean of the per-example F-measures (in [0, 1]).
"""
from __future__ import annotations

import evaluate
from rouge_score import rouge_scorer

from auditkit_plugins.generation_metrics import metric_info


class AuditkitRougeL(evaluate.Metric):
    def _info(self):
        return metric_info(__doc__, "Lin, ROUGE: A Package for Automatic Evaluation of Summaries, 2004")

    def _compute(self, predictions, references, use_stemmer: bool = False):
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
        per = [float(scorer.score_multi(list(refs), pred)["rougeL"].fmeasure)
               for pred, refs in zip(predictions, references)]
        return {"rouge_l": sum(per) / max(len(per), 1), "rouge_l_per_example": per}
