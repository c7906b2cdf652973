"""What is explained: one :class:`Example` per row, with the token ids the handle scores it with,
the positions that may be explained (every non-special token), the target and its probability.

Targets (the model's own decision, as ERASER, DeYoung et al. 2020, explains predictions):

- classifiers: the predicted class (argmax of the handle's cached ``class_logits``); the explained
  position (the "query" row of attention maps) is ``[CLS]`` when the tokenizer puts one first, the
  last token otherwise (decoder classifiers pool the last token);
- causal LMs on text: the greedy next token after the text; the query row is the last token;
- causal LMs on multiple choice ``{"question","choices","label"}``: the first token of the answer the
  model chooses (lm-eval's ``acc``: argmax summed log-likelihood, from the accuracy check's cached
  pass) as the next token after the question.

- seq2seq LMs (T5, BART): the encoder reads the text (the question for multiple choice, else the prompt
  or text) and the target is the model's own greedy answer, a token sequence (its EOS included when the
  model ended it), or for multiple choice the tokens of the chosen answer; the target score is
  ``log p(answer | input)``, the decoder teacher-forced on the answer (Integrated Gradients on the
  encoder embeddings: :meth:`auditkit.models.ModelHandle.integrated_gradients`).

The target score is the log-probability of the target (log-softmax over classes or the vocabulary),
for gradients; faithfulness reads it as a probability.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Example:
    """One explained input."""

    row: int                # index of the row in the dataset
    text: str               # the text (context) the handle encodes
    ids: list[int]          # token ids as the handle scores the text
    candidates: np.ndarray  # positions that may be explained (non-special tokens)
    target: int | list      # class index (classifier), token id (causal LM) or answer token ids (seq2seq)
    prob: float             # p(target | full input)
    query: int              # the position whose prediction is explained
    label: str = ""         # human-readable target


def special_positions(tokenizer, ids: list[int]) -> np.ndarray:
    """Boolean mask of special tokens ([CLS], [SEP], <|endoftext|>, padding...)."""
    special = set(tokenizer.all_special_ids or [])
    return np.array([i in special for i in ids], dtype=bool)


def token_texts(tokenizer, ids: list[int]) -> list[str]:
    """Readable token strings: WordPiece ``##`` and byte-level ``Ġ``/SentencePiece ``▁`` markers removed."""
    out = []
    for tok in tokenizer.convert_ids_to_tokens(list(ids)):
        tok = str(tok or "")
        if tok.startswith("##"):
            tok = tok[2:]
        tok = tok.replace("Ġ", "").replace("▁", "").replace("Ċ", "\\n")
        out.append(tok)
    return out


def query_position(handle, ids: list[int]) -> int:
    """``[CLS]`` for classifiers that put one first, else the last token (the handle's default query)."""
    from auditkit.passes.attention import default_query
    return default_query(handle, ids)


def score_ids(handle, ids: list[list[int]], targets: list[int]) -> np.ndarray:
    """log p(target | ids) for arbitrary (e.g. perturbed) token sequences, batched by the handle and
    memoized on it. Causal LMs score the target appended as the next token."""
    if handle.task == "seq2seq-lm":  # log p(answer | encoder input), the answer a token-id list
        pairs = [(list(map(int, x)), [int(a) for a in t]) for x, t in zip(ids, targets)]
        if not pairs:
            return np.zeros(0)
        return np.array([float(np.sum(lp, dtype=np.float64)) for lp in handle.continuation_logprobs_ids(pairs)])
    items = [[list(map(int, x)), int(t)] for x, t in zip(ids, targets)]
    if not items:
        return np.zeros(0)

    def compute():
        # identical sequences (e.g. the same top-k set under two methods) are scored once
        uniq: dict[tuple, int] = {}
        for x, t in items:
            uniq.setdefault((tuple(x), t), len(uniq))
        keys = list(uniq)
        if handle.task == "causal-lm":
            limit = handle.max_length
            seqs = [list(x)[-(limit - 1):] + [t] for x, t in keys]
            lps = handle.score_ids(seqs)
            vals = np.array([float(lp[-1]) for lp in lps])
        else:
            logits = handle.score_ids([list(x) for x, _ in keys]).astype(np.float64)
            logz = np.logaddexp.reduce(logits, axis=-1)
            vals = np.array([logits[j, t] - logz[j] for j, (_, t) in enumerate(keys)])
        return np.array([vals[uniq[(tuple(x), t)]] for x, t in items])

    return handle.memo("explain.score_ids", items, compute, persist=True)


def _next_tokens(handle, ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Greedy next token after each sequence and its log-prob (the handle's next-token request)."""
    tokens, logps = handle.next_token_topk(ids, k=1)
    return tokens[:, 0], logps[:, 0]


def context_texts(ds, task: str) -> tuple[list[str], str]:
    """The text each row is explained on, and the data kind ("classification", "mc", "text")."""
    if task == "sequence-classification":
        ds.require("text", fmt="classification")
        return [r["text"] for r in ds.rows], "classification"
    if ds.has("question", "choices"):
        ds.require_choices()
        return [r["question"] for r in ds.rows], "mc"
    if ds.has("prompt"):
        ds.require("prompt")
        return [r["prompt"] for r in ds.rows], "text"
    ds.require("text", fmt="causal LM text")
    return [r["text"] for r in ds.rows], "text"


def prepare(handle, ds, rows: list[int], texts: list[str], kind: str, delimiter: str = " ",
            answer_tokens: int = 16) -> list[Example]:
    """Targets and token positions for the selected rows (``texts`` are their contexts)."""
    tok = handle.tokenizer
    ids = handle.token_ids(texts)
    if handle.task == "seq2seq-lm":
        return _prepare_seq2seq(handle, ds, rows, texts, ids, kind, delimiter, answer_tokens)
    if kind == "classification":
        logits = handle.class_logits(texts).astype(np.float64)
        logz = np.logaddexp.reduce(logits, axis=-1)
        targets = logits.argmax(-1)
        logps = logits[np.arange(len(texts)), targets] - logz
        labels = [f"class {int(t)}" for t in targets]
    elif kind == "mc":
        from auditkit_plugins.accuracy import multiple_choice_scores
        chosen_rows = [ds.rows[r] for r in rows]
        _, _, lls = multiple_choice_scores(handle, chosen_rows, delimiter)
        targets, labels = [], []
        for row, ll in zip(chosen_rows, lls):
            choice = row["choices"][int(np.argmax(ll))]
            first = tok(delimiter + choice, add_special_tokens=False)["input_ids"]
            targets.append(int(first[0]) if first else int(tok.eos_token_id or 0))
            labels.append(f"answer {choice!r}")
        logps = score_ids(handle, ids, targets)
    else:
        targets, logps = _next_tokens(handle, ids)
        labels = [f"next token {t!r}" for t in token_texts(tok, [int(t) for t in targets])]
    out = []
    for j, r in enumerate(rows):
        cand = np.flatnonzero(~special_positions(tok, ids[j]))
        if cand.size == 0:
            continue
        out.append(Example(row=r, text=texts[j], ids=list(ids[j]), candidates=cand, target=int(targets[j]),
                           prob=float(np.exp(logps[j])), query=query_position(handle, ids[j]), label=labels[j]))
    return out


def _prepare_seq2seq(handle, ds, rows, texts, ids, kind, delimiter, answer_tokens) -> list[Example]:
    """Seq2seq targets: the chosen answer's tokens (multiple choice, lm-eval's acc) or the greedy answer
    (at most ``answer_tokens`` new tokens, EOS included when the model ended there)."""
    tok = handle.tokenizer
    if kind == "mc":
        from auditkit_plugins.accuracy import multiple_choice_scores
        chosen_rows = [ds.rows[r] for r in rows]
        _, _, lls = multiple_choice_scores(handle, chosen_rows, delimiter)
        choices = [row["choices"][int(np.argmax(ll))] for row, ll in zip(chosen_rows, lls)]
        enc = handle.encode_pairs([(row["question"], delimiter + c) for row, c in zip(chosen_rows, choices)])
        answers = [list(c) or [int(tok.eos_token_id or 0)] for _, c in enc]
        labels = [f"answer {c!r}" for c in choices]
    else:
        gens = handle.generate_ids(ids, max_new_tokens=int(answer_tokens))
        answers = [list(g[0].token_ids) or [int(tok.eos_token_id or 0)] for g in gens]
        labels = [f"greedy answer {g[0].text[:60]!r}" for g in gens]
    logps = score_ids(handle, ids, answers)
    out = []
    for j, r in enumerate(rows):
        cand = np.flatnonzero(~special_positions(tok, ids[j]))
        if cand.size == 0:
            continue
        out.append(Example(row=r, text=texts[j], ids=list(ids[j]), candidates=cand, target=answers[j],
                           prob=float(np.exp(logps[j])), query=len(ids[j]) - 1, label=labels[j]))
    return out
