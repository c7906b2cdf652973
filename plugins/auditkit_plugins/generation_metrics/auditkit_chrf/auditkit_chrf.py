"""sacreBLEU chrF as a local ``evaluate`` metric (``sacrebleu.metrics.CHRF`` defaults: character 6-grams,
beta 2, no word n-grams).

Returns the corpus ``chrf`` (0-100), ``sentence_chrf_per_example`` (``sacrebleu.sentence_chrf``) and the
per-example sufficient statistics ``stats`` whose column sums give the corpus score back.
"""
from __future__ import annotations

import datasets
import evaluate
import sacrebleu
from sacrebleu.metrics import CHRF


def ref_streams(references):
    k = max((len(r) for r in references), default=1)
    return [[refs[j] if j < len(refs) else None for refs in references] for j in range(k)]


class AuditkitChrf(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation="Popovic, chrF: character n-gram F-score for automatic MT "
            "evaluation, WMT 2015", inputs_description="predictions: list of str; references: list of lists of str",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Sequence(datasets.Value("string"))}))

    def _compute(self, predictions, references):
        metric = CHRF()
        streams = ref_streams(references)
        stats = [list(map(int, s)) for s in metric._extract_corpus_statistics(predictions, streams)]
        corpus = metric.corpus_score(predictions, streams)
        sentence = [float(sacrebleu.sentence_chrf(p, list(refs)).score) for p, refs in zip(predictions, references)]
        return {"chrf": float(corpus.score), "sentence_chrf_per_example": sentence, "stats": stats,
                "signature": str(metric.get_signature())}

