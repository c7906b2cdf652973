"""Built-in text scorers: what ``bias.counterfactual`` (generation mode) uses to score a model's generations.

A scorer plugin point (hook ``auditkit_register_scorers``): a plugin calls ``register(name, make, help)``,
where ``make(options: dict)`` returns a *scorer*: an object with ``score(texts: list[str]) -> np.ndarray``
(or a plain callable taking the texts) giving one float per text in **[-1, 1]** (negative ... positive
sentiment or regard; 0 neutral), deterministic (the same texts give the same scores, whatever their order
or batch). ``options`` is the check's ``scorer_options`` plus ``base_dir`` (the suite's folder) and
``device`` when not given. Names are unique: a third-party plugin adds its own name, and a suite picks it
with ``scorer: NAME``.

- ``sentiment-lexicon`` (default, offline, no model): the lexicon of ``builtin_data/sentiment_lexicon``;
  a text's raw score ``x`` is the number of positive words minus the number of negative words, a word's
  polarity flipped when a negator ("not", "never", "n't", ...) stands up to three words before it, and the
  score is VADER's normalisation ``x / sqrt(x^2 + 15)`` (Hutto & Gilbert 2014, "VADER: A Parsimonious
  Rule-based Model for Sentiment Analysis of Social Media Text"), in (-1, 1); a text with no lexicon word
  scores 0.
- ``minilm-sentiment``: a sentiment classifier folder given by the user (``scorer_options: {model: DIR}``,
  e.g. the demo's fine-tuned MiniLM at ``reports/demo/model``), run through the engine
  (:func:`auditkit.models.load_model`, ``class_logits``): the score is ``2 P(positive_label) - 1``
  (``positive_label`` default 1).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from auditkit.errors import AuditInputError
from auditkit.hookspecs import hookimpl

#: VADER's normalisation constant: ``x / sqrt(x^2 + ALPHA)``
ALPHA = 15.0
_WORD = re.compile(r"[a-z]+(?:['\u2019][a-z]+)*")


class LexiconScorer:
    """Lexicon sentiment in (-1, 1): (positives - negatives, negation-flipped) normalised as VADER does."""

    def __init__(self, positive=None, negative=None, negators=None, window: int | None = None):
        from auditkit_plugins.builtin_data import sentiment_lexicon as lex
        self.positive = frozenset(positive if positive is not None else lex.POSITIVE)
        self.negative = frozenset(negative if negative is not None else lex.NEGATIVE)
        self.negators = frozenset(negators if negators is not None else lex.NEGATORS)
        self.window = lex.NEGATION_WINDOW if window is None else int(window)

    @staticmethod
    def tokens(text: str) -> list[str]:
        """Lower-case words, contractions kept whole ("don't", "wasn\u2019t")."""
        return _WORD.findall(str(text).lower())

    def raw(self, text: str) -> int:
        """Positive minus negative words, each flipped when a negator precedes it within the window."""
        total, last_neg = 0, -10 ** 9
        for i, tok in enumerate(self.tokens(text)):
            w = tok.replace("'", "").replace("\u2019", "")
            if w in self.negators or tok.endswith(("n't", "n\u2019t")):
                last_neg = i
                continue
            pol = 1 if w in self.positive else -1 if w in self.negative else 0
            if pol and i - last_neg <= self.window:
                pol = -pol
            total += pol
        return total

    def score(self, texts: Sequence[str]) -> np.ndarray:
        x = np.array([self.raw(t) for t in texts], dtype=float)
        return x / np.sqrt(x * x + ALPHA)


class ClassifierScorer:
    """``2 P(positive_label) - 1`` from a sequence-classification model folder, through the engine."""

    def __init__(self, model: str, positive_label: int = 1, device: str = "cpu", base_dir: str | None = None,
                 batch_size: int | None = None):
        from auditkit.plugins import registry
        path = Path(str(model)).expanduser()
        if not str(model).startswith("builtin:") and not path.is_absolute() and base_dir:
            path = Path(base_dir) / path
        spec = str(model) if str(model).startswith("builtin:") else str(path)
        if not str(model).startswith("builtin:") and not path.exists():
            raise AuditInputError(f"the scorer's model folder {spec} does not exist", place="scorer_options",
                                  fix="give scorer_options: {model: DIR} with a sentiment classifier folder, e.g. "
                                  "reports/demo/model after `auditkit run suites/demo.yaml`")
        from auditkit.models import load_model
        self.handle = load_model(spec, "sequence-classification", registry(), device=str(device),
                                 place="scorer_options.model")
        if batch_size:
            self.handle.batch_size = int(batch_size)
        self.positive_label = int(positive_label)

    def score(self, texts: Sequence[str]) -> np.ndarray:
        from scipy.special import softmax
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros(0)
        p = softmax(np.asarray(self.handle.class_logits(texts), dtype=float), axis=-1)
        if not 0 <= self.positive_label < p.shape[1]:
            raise AuditInputError(f"positive_label {self.positive_label} is out of range for a classifier with "
                                  f"{p.shape[1]} labels", place="scorer_options.positive_label",
                                  fix=f"use 0..{p.shape[1] - 1}")
        return 2.0 * p[:, self.positive_label] - 1.0


def _lexicon(options: dict) -> LexiconScorer:
    return LexiconScorer()


def _minilm(options: dict) -> ClassifierScorer:
    if not options.get("model"):
        raise AuditInputError("scorer minilm-sentiment needs a classifier folder", place="scorer_options",
                              fix="add scorer_options: {model: reports/demo/model} (the demo's fine-tuned MiniLM, "
                              "or any sentiment classifier folder)")
    return ClassifierScorer(options["model"], positive_label=options.get("positive_label", 1),
                            device=options.get("device", "cpu"), base_dir=options.get("base_dir"),
                            batch_size=options.get("batch_size"))


def as_score_fn(scorer) -> Callable[[list[str]], np.ndarray]:
    """A scorer object (``.score``) or a plain callable, as ``texts -> float array``."""
    fn = getattr(scorer, "score", None)
    if callable(fn):
        return fn
    if callable(scorer):
        return scorer
    raise TypeError(f"a scorer must have score(texts) or be callable, got {type(scorer).__name__}")


#: (name, make, help) of the built-in scorers
BUILTIN = (
    ("sentiment-lexicon", _lexicon, "offline sentiment lexicon (VADER-normalised word counts with negation), "
     "in (-1, 1)"),
    ("minilm-sentiment", _minilm, "a sentiment classifier folder (scorer_options: {model: DIR}, e.g. the demo's "
     "fine-tuned MiniLM) through the engine: 2 P(positive) - 1"),
)
DEFAULT_SCORER = "sentiment-lexicon"


@hookimpl
def auditkit_register_scorers(register):
    for name, make, help in BUILTIN:
        register(name, make, help)
