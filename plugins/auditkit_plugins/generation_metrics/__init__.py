"""Generation metrics as local ``evaluate`` modules: nothing is fetched from the Hugging Face hub.

``evaluate.load("squad")`` and kin download their scripts from the hub at run time; these modules are
``evaluate.Metric`` subclasses shipped with auditkit and loaded by path, computed by the packages the hub
scripts wrap (``rouge_score``, ``sacrebleu``) and, for SQuAD, by the v1.1 definition written out.

- ``exact_match``, ``f1``: SQuAD v1.1 (``auditkit_squad``), in [0, 1], max over references;
- ``rouge_l``: ROUGE-L F-measure (``auditkit_rouge_l``), in [0, 1], max over references;
- ``bleu``: sacreBLEU corpus BLEU (``auditkit_bleu``), 0-100, all references;
- ``chrf``: sacreBLEU chrF (``auditkit_chrf``), 0-100, all references.

:func:`compute` returns, per metric, the corpus value, the per-example scores and (BLEU, chrF) the
per-example sufficient statistics; :func:`corpus_from_stats` turns summed statistics back into the
corpus score, which is how the bootstrap resamples BLEU and chrF without recomputing n-grams.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
METRICS = ("exact_match", "f1", "rouge_l", "bleu", "chrf")
#: metric name -> (local module, key of the corpus value, key of the per-example scores)
MODULES = {
    "exact_match": ("auditkit_squad", "exact_match", "exact_match_per_example"),
    "f1": ("auditkit_squad", "f1", "f1_per_example"),
    "rouge_l": ("auditkit_rouge_l", "rouge_l", "rouge_l_per_example"),
    "bleu": ("auditkit_bleu", "bleu", "sentence_bleu_per_example"),
    "chrf": ("auditkit_chrf", "chrf", "sentence_chrf_per_example"),
}
#: metrics whose corpus value is not the mean of the per-example scores (resampled from statistics)
CORPUS_LEVEL = ("bleu", "chrf")


def metric_info(description: str, citation: str):
    """The ``evaluate.MetricInfo`` every module here shares: string predictions, lists of string references."""
    import datasets
    import evaluate
    return evaluate.MetricInfo(
        description=description, citation=citation,
        inputs_description="predictions: list of str; references: list of lists of str (one or more each)",
        features=datasets.Features({"predictions": datasets.Value("string"),
                                    "references": datasets.Sequence(datasets.Value("string"))}))


def sacrebleu_scores(metric, sentence_score, key: str, predictions, references) -> dict:
    """A sacreBLEU corpus metric (``BLEU()`` or ``CHRF()``) in this package's layout: the corpus ``key``, the
    per-example ``sentence_<key>_per_example`` (``sentence_score(prediction, references)``), the per-example
    sufficient statistics ``stats`` (their column sums give the corpus score back) and the signature. The
    references may differ in number per prediction: sacreBLEU's streams are padded with None, which it skips."""
    k = max((len(r) for r in references), default=1)
    streams = [[refs[j] if j < len(refs) else None for refs in references] for j in range(k)]
    stats = [list(map(int, s)) for s in metric._extract_corpus_statistics(predictions, streams)]
    corpus = metric.corpus_score(predictions, streams)
    sentence = [float(sentence_score(p, list(refs)).score) for p, refs in zip(predictions, references)]
    return {key: float(corpus.score), f"sentence_{key}_per_example": sentence, "stats": stats,
            "signature": str(metric.get_signature())}


def module_path(module: str) -> str:
    return str(HERE / module / f"{module}.py")


@lru_cache(maxsize=None)
def load(module: str):
    """``evaluate.load`` of a local module by its file path, offline, kept in memory (no cache files)."""
    os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
    import evaluate
    return evaluate.load(module_path(module), keep_in_memory=True)


def compute(metrics, predictions: list[str], references: list[list[str]]) -> dict:
    """``{metric: {"value", "per_example", "stats" (BLEU/chrF)}}`` for each metric named."""
    out, done = {}, {}
    for name in metrics:
        module, key, per_key = MODULES[name]
        if module not in done:
            done[module] = load(module).compute(predictions=list(predictions),
                                                references=[list(r) for r in references])
        res = done[module]
        out[name] = {"value": float(res[key]), "per_example": [float(x) for x in res[per_key]]}
        if "stats" in res:
            out[name]["stats"] = res["stats"]
            out[name]["signature"] = res.get("signature")
    return out


def corpus_from_stats(name: str, stats_sum) -> float:
    """Corpus BLEU / chrF from column sums of the per-example sufficient statistics (sacrebleu's formula)."""
    from sacrebleu.metrics import BLEU, CHRF
    metric = BLEU() if name == "bleu" else CHRF()
    return float(metric._compute_score_from_stats([int(x) for x in stats_sum]).score)
