"""The black-box path of the memorization check: a model reached only through text generation and
log-probs (an API model, ``model.base: openai-compatible``, or vLLM), with no tokenizer and no weights.

It is taken when the handle has no tokenizer or does not list ``"weights"`` in its ``capabilities``
(:func:`is_black_box`), or when the entry says ``access: black-box`` (to see what an API attacker sees
of a local model). Every number comes from three requests: ``token_logprobs(texts)``,
``continuation_logprobs(pairs)`` and ``generate(prompts)``.

- Membership (Yeom et al. 2018; Carlini et al. 2021; Shi et al. 2024): LOSS, zlib and Min-K% from the
  per-token log-probs of each text (:func:`membership.lm_scores` with ``minkpp=False``). Min-K%++ needs
  the mean and spread of the full next-token distribution at every position, which an API does not
  return, and the reference-model attack is left out with it (no reference is reachable beside an API).
- Extraction (Carlini et al. 2023 with words for tokens; Hayes et al. 2024 for the probability): the
  model's tokens are unknown, so a training text is cut at whitespace: the prompt is the text up to the
  end of its first ``prefix_tokens`` *words* (the parameter counts words on this path), and greedy
  decoding (``temperature=0``) must reproduce the next ``suffix_tokens`` words exactly: the continuation
  must start with whitespace (the suffix starts a new word) and its first words must equal the suffix's.
  ``max_new_tokens`` is ``4 * suffix_words + 8`` (room for words of several tokens each). The probability
  of extraction draws ``samples`` seeded continuations per prompt (``seed`` = the suite seed).
  A canary's prompt is its text before the secret (the template's head, trailing spaces dropped); its
  suffix words are the rest of the text.
- Exposure (Carlini et al. 2019, the Secret Sharer): ``Px`` of each canary and reference is the
  log-perplexity of the text after the template's head given the head
  (``continuation_logprobs([(head, rest)])``; the whole text by ``token_logprobs`` where the head is
  empty). The secret space cannot be enumerated through an API (no token trie), so the exposure is the
  larger of the rank among the references (``log2 |R| - log2 rank``) and the skew-normal extrapolation,
  as :func:`exposure.canary_exposures` computes beyond ``exact_max``.

Canaries come from the fine-tune (``finetune.canaries``, in-process models) or, for a model without a
fine-tune, from the entry's ``canaries:`` file, one ``{"text", "repeats"?}`` row per canary, with
``canary_template`` (``"my PIN is {digits}"``) saying where the secret lies: the references are
``references`` random secrets of the same format (each digit of a canary's secret replaced by a seeded
random digit, the rest kept), and the space is ``10 ** digits``.
"""
from __future__ import annotations

import random
import re
from typing import Sequence

import numpy as np

from auditkit.errors import AuditInputError
from auditkit.finetune import canary_head, canary_pair, template_parts

from .exposure import canary_exposures

#: what an in-process model offers (a handle with no ``capabilities`` attribute)
ALL = frozenset({"logits", "logprobs", "generate", "hidden_states", "attentions", "gradients", "weights"})


def is_black_box(handle, access: str = "auto") -> bool:
    """Whether the memorization check must use only generations and log-probs on ``handle``."""
    if access == "black-box":
        return True
    return getattr(handle, "tokenizer", None) is None or "weights" not in getattr(handle, "capabilities", ALL)


def max_new_tokens(n_words: int) -> int:
    """Tokens to generate to reproduce ``n_words`` words (words of several tokens each)."""
    return 4 * int(n_words) + 8


# ---------------------------------------------------------------------- extraction

def split_words(texts: Sequence[str], prefix_words: int, suffix_words: int):
    """(indices, prompts, suffix words) of the texts with at least ``prefix_words + suffix_words`` words:
    the prompt is the text up to the end of its ``prefix_words``-th word (no trailing space)."""
    keep, pre, suf = [], [], []
    for i, text in enumerate(texts):
        spans = [m.span() for m in re.finditer(r"\S+", text)]
        if len(spans) < prefix_words + suffix_words:
            continue
        keep.append(i)
        pre.append(text[:spans[prefix_words - 1][1]])
        suf.append([text[a:b] for a, b in spans[prefix_words:prefix_words + suffix_words]])
    return keep, pre, suf


def reproduces(continuation: str, words: Sequence[str], new_word: bool = True) -> bool:
    """Whether a continuation starts a new word and its first words are exactly ``words``. A seq2seq LM's
    output is a text of its own, not the prompt's continuation: ``new_word=False`` drops the first test."""
    return (bool(words) and (continuation[:1].isspace() or not new_word)
            and continuation.split()[:len(words)] == list(words))


def text_extraction(handle, prompts: Sequence[str], suffixes: Sequence[Sequence[str]], *, samples: int = 0,
                    temperature: float = 1.0, seed: int = 0) -> dict:
    """Greedy extraction of each suffix (word list) from its prompt, and its probability over ``samples``
    seeded draws: ``{"greedy": bool [n], "sampled": [n] or None, "greedy_text": [n] str}``."""
    if not prompts:
        return {"greedy": np.zeros(0, bool), "sampled": None, "greedy_text": []}
    n_new = max_new_tokens(max(len(s) for s in suffixes))
    new_word = getattr(handle, "task", "causal-lm") != "seq2seq-lm"
    unique = list(dict.fromkeys(prompts))
    greedy = dict(zip(unique, handle.generate(unique, max_new_tokens=n_new, temperature=0.0)))
    texts = [greedy[p][0].text for p in prompts]
    hit = np.array([reproduces(t, s, new_word) for t, s in zip(texts, suffixes)], dtype=bool)
    sampled = None
    if samples > 0:
        draws = dict(zip(unique, handle.generate(unique, max_new_tokens=n_new, temperature=float(temperature),
                                                 top_p=1.0, seed=int(seed), samples=int(samples))))
        sampled = np.array([np.mean([reproduces(g.text, s, new_word) for g in draws[p]])
                            for p, s in zip(prompts, suffixes)])
    return {"greedy": hit, "sampled": sampled, "greedy_text": texts}


def canary_prompts(texts: Sequence[str], template: str) -> tuple[list[str], list[list[str]]]:
    """Each canary's prompt (the template before the secret, trailing spaces dropped) and suffix words."""
    pairs = [canary_pair(t, template) for t in texts]
    return [head for head, _ in pairs], [rest.split() for _, rest in pairs]


# ---------------------------------------------------------------------- exposure

def exposure_scorer(handle, template: str):
    """``texts -> per-token log-probs`` of each canary text after the template's head, given the head
    (the whole text where the head is empty)."""
    head = canary_head(template)

    def score(texts: Sequence[str]) -> list[np.ndarray]:
        texts = list(texts)
        if not head or not all(t.startswith(head) and len(t) > len(head) for t in texts):
            return handle.token_logprobs(texts)
        return handle.continuation_logprobs([canary_pair(t, template) for t in texts])

    return score


def blackbox_exposures(handle, canaries: dict, unseen: int) -> dict:
    """Canary exposure from log-probs alone: rank among the references and skew-normal estimate (no
    enumeration of the secret space)."""
    return canary_exposures(handle, canaries, unseen, exact_max=0,
                            score=exposure_scorer(handle, canaries["template"]))


def _secret_pattern(secret: str) -> tuple[str, int, str | None]:
    """(the secret with every digit as ``0``, the number of digits, the separator of ``d<sep>d...``
    secrets or None where the digits are not one-per-slot with one separator)."""
    pattern = re.sub(r"\d", "0", secret)
    n = pattern.count("0")
    pieces = pattern.split("0")
    inner = set(pieces[1:-1])
    sep = next(iter(inner)) if len(inner) == 1 else ("" if not inner else None)
    if pieces[0] or pieces[-1] or (sep is not None and len(sep) > 1):
        sep = None
    return pattern, n, sep


def canaries_from_rows(rows: Sequence[dict], template: str, references: int, seed: int, *,
                       place=lambda i: f"row {i + 1}", file: str | None = None) -> dict:
    """A canary record (as ``finetune.make_canaries`` builds) from ``{"text", "repeats"?}`` rows and the
    template that says where each secret lies; ``references`` seeded random secrets of the same format
    (digits redrawn, the rest kept), none equal to a canary's. Bad rows are AuditInputError."""
    head, tail = template_parts(template)
    cans, pattern = [], None
    for i, row in enumerate(rows):
        text = row.get("text")
        if not isinstance(text, str) or not text.startswith(head) or not text.endswith(tail) \
                or len(text) <= len(head) + len(tail):
            raise AuditInputError(f"canary {place(i)} does not follow canary_template {template!r}",
                                  file=file, place=place(i),
                                  fix="give each canary as the template with its secret in place of {digits}")
        secret = text[len(head):len(text) - len(tail)]
        pat = _secret_pattern(secret)
        if pat[1] == 0:
            raise AuditInputError(f"canary {place(i)}: its secret {'(redacted)'} has no digit to vary",
                                  file=file, place=place(i), fix="use secrets made of digits (e.g. 4-8-1-5-1-6)")
        if pattern is not None and pat[0] != pattern[0]:
            raise AuditInputError(f"canary {place(i)}: its secret has another format than the first canary's",
                                  file=file, place=place(i), fix="give every canary a secret of the same format")
        pattern = pat
        repeats = row.get("repeats", 1)
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 0:
            raise AuditInputError(f"canary {place(i)}: repeats must be a whole number >= 0", file=file,
                                  place=place(i), fix="set repeats to how many times the canary was inserted")
        cans.append({"id": str(row.get("id", f"canary-{i + 1}")), "repeats": int(repeats), "secret": secret,
                     "text": text})
    if not cans:
        raise AuditInputError("the canaries file has no rows", file=file, place="canaries",
                              fix="one {\"text\", \"repeats\"} row per canary")
    shape, n_digits, sep = pattern
    space = 10 ** n_digits
    rng = random.Random(f"memorization:references:{seed}")
    used = {c["secret"] for c in cans}
    refs = []
    want = min(int(references), space - len(used))
    while len(refs) < want:
        s = "".join(str(rng.randrange(10)) if ch == "0" else ch for ch in shape)
        if s not in used:
            used.add(s)
            refs.append(template.format(digits=s))
    return {"template": template, "space_size": space, "digits": n_digits if sep is not None else None,
            "separator": sep if sep is not None else "-", "canaries": cans, "references": refs}
