"""SQuAD v1.1 exact match and token F1 as a local ``evaluate`` metric (nothing fetched from the hub).

The definition (Rajpurkar et al. 2016, the official v1.1 evaluation script):

- normalise an answer: lower case; drop every character of ``string.punctuation``; drop the articles
  ``a``, ``an``, ``the`` as whole words; collapse whitespace;
- exact match = 1 when the normalised prediction equals the normalised reference, else 0;
- token F1 = harmonic mean of precision and recall of the normalised whitespace tokens, counted with
  multiplicity (a bag of tokens); no common token gives 0 (also when both are empty, as in v1.1);
- with several references, each score is the maximum over them.

Scores are in [0, 1] (the official script multiplies by 100). ``compute`` returns the corpus means and the
per-example scores (``exact_match_per_example``, ``f1_per_example``).
"""
from __future__ import annotations

import re
import string
from collections import Counter

import evaluate

from auditkit_plugins.generation_metrics import metric_info

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD v1.1)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


class AuditkitSquad(evaluate.Metric):
    def _info(self):
        return metric_info(__doc__, "Rajpurkar et al., SQuAD: 100,000+ Questions for Machine Comprehension of "
                           "Text, EMNLP 2016")

    def _compute(self, predictions, references):
        em = [max(exact_match(p, r) for r in refs) for p, refs in zip(predictions, references)]
        f1 = [max(token_f1(p, r) for r in refs) for p, refs in zip(predictions, references)]
        n = max(len(em), 1)
        return {"exact_match": sum(em) / n, "f1": sum(f1) / n,
                "exact_match_per_example": em, "f1_per_example": f1}
