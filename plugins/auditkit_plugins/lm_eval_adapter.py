"""lm-evaluation-harness on auditkit's engine: :class:`EngineLM`, an ``lm_eval.api.model.LM`` whose three
requests are answered by the model handle, so an lm-eval task is split across processes, cached and batch-size
invariant like every other check.

- ``loglikelihood``: :meth:`ModelHandle.continuation_logprobs` (``greedy=True``): tokenized as lm-eval's
  ``TemplateLM.loglikelihood``/``_encode_pair``, scored as HFLM's ``_loglikelihood_tokens`` with
  ``max_length`` = the handle's: the same ``(logprob, is_greedy)`` answers.
- ``loglikelihood_rolling``: lm-eval's rolling windows (``get_rolling_token_windows`` + ``make_disjoint_window``
  with ``context_len=1``: the first token is scored after the prefix token, BOS else EOS), each window scored by
  :meth:`ModelHandle.continuation_logprobs_ids`, the sum per document: HFLM's numbers, also beyond max_length.
- ``generate_until``: :meth:`ModelHandle.generate` (greedy, ``stop`` = the task's ``until``; ``max_gen_toks``
  as HFLM reads it, default 256), the text cut at the first stop sequence as HFLM does.

Every process under data parallel runs the same lm-eval loop over all documents (the LM says rank 0 of 1);
the handle deals the model's batches to the processes and gathers the answers, so all of them hold the same
results and rank 0 writes the reports.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from lm_eval.api.model import LM

from auditkit.errors import AuditInputError

#: HFLM's default ``max_gen_toks``
MAX_GEN_TOKS = 256


class EngineLM(LM):
    """An lm-eval LM over an auditkit :class:`~auditkit.models.ModelHandle` (a causal LM)."""

    def __init__(self, handle, *, max_gen_toks: int = MAX_GEN_TOKS) -> None:
        super().__init__()
        handle._require("causal-lm", "lm_eval")
        self.handle = handle
        self.max_gen_toks = max_gen_toks

    # ---------------------------------------------------------------- what lm-eval reads of an LM
    @property
    def tokenizer(self):
        return self.handle.tokenizer

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.handle.tokenizer, "name_or_path", "auditkit").replace("/", "__")

    @property
    def max_length(self) -> int:
        return self.handle.max_length

    @property
    def device(self):
        return self.handle.device

    # ---------------------------------------------------------------- requests
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """``(sum of log-probs, is_greedy)`` of each ``(context, continuation)``."""
        pairs = [tuple(req.args) for req in requests]
        answers = []
        for args, (lp, greedy) in zip(pairs, self.handle.continuation_logprobs(pairs, greedy=True)):
            ans = (float(np.sum(lp)), bool(greedy))  # summed as the accuracy check sums them
            self.cache_hook.add_partial("loglikelihood", args, ans)
            answers.append(ans)
        return answers

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """The log-likelihood of each whole text, in lm-eval's rolling windows of ``max_length`` tokens."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
        h = self.handle
        texts = [req.args[0] for req in requests]
        windows, owner = [], []
        for i, ids in enumerate(h._tok_encode(texts)):
            for ctx, pred in map(make_disjoint_window,
                                 get_rolling_token_windows(token_list=ids, prefix_token=h._prefix_token_id(),
                                                           max_seq_len=h.max_length, context_len=1)):
                windows.append((ctx, pred))
                owner.append(i)
        totals = [0.0] * len(texts)
        for i, lp in zip(owner, h.continuation_logprobs_ids(windows)):
            totals[i] += float(np.sum(lp))
        for text, total in zip(texts, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations, cut at the first of the task's ``until`` strings."""
        generate = getattr(self.handle, "generate", None)
        if generate is None:
            raise AuditInputError("this model engine cannot generate text, which the lm-eval task needs",
                                  fix="use a loglikelihood (multiple-choice or perplexity) task")
        out: list[Any] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        settings = []
        for i, req in enumerate(requests):
            context, kwargs = req.args
            kwargs = dict(kwargs or {})
            until = kwargs.pop("until", None)
            if isinstance(until, str):
                until = [until]
            if not until:  # HFLM: the EOS token as text
                until = [self.handle.tokenizer.decode(self.handle.tokenizer.eos_token_id)]
            max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            if kwargs.get("do_sample") or float(kwargs.get("temperature", 0.0) or 0.0) > 0.0:
                raise AuditInputError("the lm-eval task asks for sampled generation; auditkit's lm_eval check "
                                      "decodes greedily", fix="use a task with greedy generation (do_sample: false)")
            key = (max_new, tuple(until))
            groups.setdefault(key, []).append(i)
            settings.append((context, until))
        for (max_new, until), idx in groups.items():
            prompts = [settings[i][0] for i in idx]
            gens = generate(prompts, max_new_tokens=max_new, temperature=0.0, stop=list(until))
            for i, g in zip(idx, gens):
                text = g[0].text if isinstance(g, (list, tuple)) else g.text
                for s in until:  # HFLM cuts at the first occurrence of each stop sequence
                    if s:
                        text = text.split(s)[0]
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out
