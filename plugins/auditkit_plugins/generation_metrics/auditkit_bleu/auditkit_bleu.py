"""sacreBLEU corpus BLEU as a local ``evaluate`` metric (``sacrebleu.metrics.BLEU`` with its defaults:
13a tokenisation, 4-grams, exponential smoothing off for the corpus score).

References may differ in number per prediction: the reference streams are padded with ``None``, which
sacrebleu skips. Returns the corpus ``bleu`` (0-100, as sacrebleu reports it), ``sentence_bleu_per_example``
(``sacrebleu.sentence_bleu``: effective order, so short answers are not all 0) and the per-example
sufficient statistics ``stats`` (hypothesis and reference lengths, matched and total n-grams) whose column
sums give the corpus score back, which makes a bootstrap over examples cheap.
"""
from __future__ import annotations

import datasets
import evaluate
import sacrebleu
from sacrebleu.metrics import BLEU


def ref_streams(references):
    """sacrebleu's layout: one stream per reference position, padded with None."""
    k = max((len(r) for r in references), default=1)
    return [[refs[j] if j < len(refs) else None for refs in references] for j in range(k)]


class AuditkitBleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation="Post, A Call for Clarity in Reporting BLEU Scores, WMT 2018",
            inputs_description="predictions: list of str; references: list of lists of str",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Sequence(datasets.Value("string"))}))

    def _compute(self, predictions, references):
        metric = BLEU()
        streams = ref_streams(references)
        stats = [list(map(int, s)) for s in metric._extract_corpus_statistics(predictions, streams)]
        corpus = metric.corpus_score(predictions, streams)
        sentence = [float(sacrebleu.sentence_bleu(p, list(refs)).score) for p, refs in zip(predictions, references)]
        return {"bleu": float(corpus.score), "sentence_bleu_per_example": sentence, "stats": stats,
                "signature": str(metric.get_signature())}

