"""sacreBLEU corpus BLEU as a local ``evaluate`` metric (``sacrebleu.metrics.BLEU`` with its defaults:
13a tokenisation, 4-grams, exponential smoothing off for the corpus score).

References may differ in number per prediction. Returns the corpus ``bleu`` (0-100, as sacrebleu reports
it), ``sentence_bleu_per_example`` (``sacrebleu.sentence_bleu``: effective order, so short answers are not
all 0) and the per-example sufficient statistics ``stats`` (hypothesis and reference lengths, matched and
total n-grams) whose column sums give the corpus score back, which makes a bootstrap over examples cheap.
"""
from __future__ import annotations

import evaluate
import sacrebleu
from sacrebleu.metrics import BLEU

from auditkit_plugins.generation_metrics import metric_info, sacrebleu_scores


class AuditkitBleu(evaluate.Metric):
    def _info(self):
        return metric_info(__doc__, "Post, A Call for Clarity in Reporting BLEU Scores, WMT 2018")

    def _compute(self, predictions, references):
        return sacrebleu_scores(BLEU(), sacrebleu.sentence_bleu, "bleu", predictions, references)
