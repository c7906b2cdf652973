"""sacreBLEU chrF as a local ``evaluate`` metric (``sacrebleu.metrics.CHRF`` defaults: character 6-grams,
beta 2, no word n-grams).

Returns the corpus ``chrf`` (0-100), ``sentence_chrf_per_example`` (``sacrebleu.sentence_chrf``) and the
per-example sufficient statistics ``stats`` whose column sums give the corpus score back.
"""
from __future__ import annotations

import evaluate
import sacrebleu
from sacrebleu.metrics import CHRF

from auditkit_plugins.generation_metrics import metric_info, sacrebleu_scores


class AuditkitChrf(evaluate.Metric):
    def _info(self):
        return metric_info(__doc__, "Popovic, chrF: character n-gram F-score for automatic MT evaluation, WMT 2015")

    def _compute(self, predictions, references):
        return sacrebleu_scores(CHRF(), sacrebleu.sentence_chrf, "chrf", predictions, references)
