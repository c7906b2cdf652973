"""Requests: greedy and sampled generation with stop sequences.

- Greedy decoding: ``temperature=0`` takes the most likely next token at every step, exactly as
  ``model.generate(do_sample=False)`` does for one prompt alone.
- Sampling: ``temperature > 0`` draws from ``softmax(logits / temperature)`` restricted to the nucleus
  of mass ``top_p`` (Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration"), by the
  Gumbel-max trick (Gumbel 1954; Maddison et al. 2014, "A* Sampling"): ``argmax_v (l_v / T + g_v)``
  with ``g_v`` standard Gumbel noise is a draw from ``softmax(l / T)``. The noise of each row is drawn
  from its own generator, seeded by ``(seed, prompt index, sample, step)``, so a prompt's samples are
  the same whatever batch it shares, the batch size and the number of processes.

Batched decoder-only generation needs LEFT padding (the prompts end where generation begins): each
batch of :meth:`~auditkit.models.ModelHandle.map_batches` is re-padded on the left from the prompt
ids; encoder-decoders (``seq2seq-lm``) read the right-padded encoder input as it comes. Results are
memoized (also on disk) under the prompt ids and every keyword.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from auditkit.errors import AuditInputError

FINISH_REASONS = ("stop", "eos", "length")
_GENERATIVE = ("causal-lm", "seq2seq-lm")


@dataclass
class Generation:
    """One generated continuation.

    ``text``: the decoded new tokens (special tokens skipped), cut before the first stop sequence.
    ``token_ids``: the new tokens, up to and including the one that ended the row (the EOS token when
    ``finish_reason`` is ``"eos"``; the token that completed a stop sequence when it is ``"stop"``).
    ``finish_reason``: ``"stop"`` (a stop sequence), ``"eos"`` (an end-of-sequence token) or
    ``"length"`` (``max_new_tokens`` reached).
    """

    text: str
    token_ids: list[int]
    finish_reason: str


def _row_seed(seed: int, index: int, sample: int, step: int) -> int:
    """A 63-bit seed for one row's noise at one step (independent streams via numpy's SeedSequence)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index), int(sample), int(step)]).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1])) & 0x7FFFFFFFFFFFFFFF


def _cut(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` before the earliest stop sequence in it, and whether there was one."""
    hits = [text.find(s) for s in stop if s]
    hits = [h for h in hits if h >= 0]
    return (text[:min(hits)], True) if hits else (text, False)


def prompt_list(prompts) -> list:
    """The prompts of a generation request as a list; one bare string is a TypeError (a list of prompts
    was meant, not a list of its characters)."""
    if isinstance(prompts, str):
        raise TypeError("generate takes a list of prompts, not one string")
    return list(prompts)


def generation_options(*, max_new_tokens=32, temperature=0.0, top_p=1.0, stop=(), seed=0, samples=1) -> dict:
    """The keywords of a generation request, checked and normalised (ints, floats, ``stop`` a list of
    non-empty strings, one string standing for itself); ValueError on a negative ``max_new_tokens`` or
    ``temperature``, ``samples < 1`` or ``top_p`` outside (0, 1]. Every backend checks with this."""
    stop = [str(s) for s in ([stop] if isinstance(stop, str) else stop) if str(s)]
    kw = dict(max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_p=float(top_p),
              stop=stop, seed=int(seed), samples=int(samples))
    if kw["max_new_tokens"] < 0 or kw["samples"] < 1 or kw["temperature"] < 0 or not 0 < kw["top_p"] <= 1:
        raise ValueError(f"generate: bad arguments {kw}")
    return kw


class GenerationRequests:
    """Mixin of ModelHandle: greedy and sampled generation (causal and seq2seq LMs)."""

    # ------------------------------------------------------------------ prompts
    def render_prompts(self, prompts: Sequence[Any]) -> list[str]:
        """Each prompt as text: a str as is; a list of chat messages ``[{"role", "content"}]`` through the
        tokenizer's chat template (``add_generation_prompt=True``). No template, or one that fails to
        render, is an :class:`AuditInputError` at place ``chat_template``."""
        out = []
        for k, p in enumerate(prompts):
            if isinstance(p, str):
                out.append(p)
                continue
            if not isinstance(p, (list, tuple)) or not all(isinstance(m, dict) for m in p):
                raise AuditInputError(f"prompt {k} is neither text nor a list of chat messages "
                                      f"({type(p).__name__})", place="prompt",
                                      fix='give a string or a list of {"role": ..., "content": ...} messages')
            if not getattr(self.tokenizer, "chat_template", None):
                raise AuditInputError(f"prompt {k} is a list of chat messages but the tokenizer of {self.source} has "
                                      "no chat template", place="chat_template",
                                      fix="give plain-text prompts, or a model whose tokenizer has a chat template")
            try:
                text = self.tokenizer.apply_chat_template([dict(m) for m in p], tokenize=False,
                                                          add_generation_prompt=True)
            except Exception as exc:  # jinja2 TemplateError, a raise_exception() in the template, a bad role...
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise AuditInputError(f"the chat template of {self.source} failed to render prompt {k}: "
                                      f"{type(exc).__name__}: {first}", place="chat_template",
                                      fix="check the messages' roles and order, or turn the chat template off") \
                    from None
            if not isinstance(text, str):
                raise AuditInputError(f"the chat template of {self.source} rendered prompt {k} as "
                                      f"{type(text).__name__}, not text", place="chat_template",
                                      fix="use a tokenizer whose chat template renders text")
            out.append(text)
        return out

    def _prompt_ids(self, prompts: Sequence[Any]) -> list[list[int]]:
        """Token ids of each prompt (chat-rendered text carries its own special tokens), the last
        ``max_length`` kept."""
        texts = self.render_prompts(prompts)
        ids = []
        for p, t in zip(prompts, texts):
            enc = list(self.tokenizer(t, add_special_tokens=isinstance(p, str))["input_ids"])
            ids.append(enc[-self.max_length:] if self.max_length else enc)
        return ids

    # ------------------------------------------------------------------ requests
    def generate(self, prompts, *, max_new_tokens=32, temperature=0.0, top_p=1.0, stop=(), seed=0,
                 samples=1) -> list[list[Generation]]:
        """Generate from each prompt (text, or chat messages rendered with the chat template):
        ``[prompt][sample]`` :class:`Generation`. ``temperature=0`` is greedy decoding (every sample the
        same); otherwise seeded nucleus sampling by the Gumbel-max trick (see the module docstring).
        Stop sequences cut the text (the stop itself excluded) and end that row early."""
        self._require_lm("generate")
        ids = self._prompt_ids(prompt_list(prompts))
        return self.generate_ids(ids, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                 stop=stop, seed=seed, samples=samples)

    def generate_ids(self, prefix_ids, *, max_new_tokens=32, temperature=0.0, top_p=1.0, stop=(), seed=0,
                     samples=1) -> list[list[Generation]]:
        """:meth:`generate` from token-id prefixes (used as given: no special tokens added, no truncation)."""
        self._require_lm("generate")
        ids = [[int(t) for t in p] for p in prefix_ids]
        kw = generation_options(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stop=stop,
                                seed=seed, samples=samples)
        if not ids:
            return []
        res = self.memo("generate", ids, lambda: self._generate(ids, **kw), persist=True, **kw)
        k = kw["samples"]
        return [[Generation(str(res["text"][j]), [int(x) for x in res["ids"][j]], str(res["reason"][j]))
                 for j in range(p * k, (p + 1) * k)] for p in range(len(ids))]

    def _require_lm(self, op: str) -> None:
        """A causal or seq2seq LM (generation and the log-likelihood requests serve both); the one check
        of every handle (``ModelHandle``, ``VLLMHandle``)."""
        if self.task not in _GENERATIVE:
            from auditkit.models import UnservedRequest
            raise UnservedRequest(f"{op} needs a causal-lm model (or a seq2seq-lm model) but {self.source} is "
                                  f"loaded as {self.task}")

    # ------------------------------------------------------------------ the pass
    def _generate(self, ids: list[list[int]], *, max_new_tokens: int, temperature: float, top_p: float,
                  stop: list[str], seed: int, samples: int) -> list:
        import torch
        from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, \
            StoppingCriteriaList, TemperatureLogitsWarper, TopPLogitsWarper

        model, tok = self.model, self.tokenizer
        seq2seq = self.task == "seq2seq-lm"
        pad = tok.pad_token_id
        if pad is None:
            pad = tok.eos_token_id or 0
        eos = getattr(model.generation_config, "eos_token_id", None)
        if eos is None:
            eos = tok.eos_token_id
        eos_ids = [] if eos is None else [int(eos)] if isinstance(eos, int) else [int(e) for e in eos]
        start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        sampled = temperature > 0
        per = samples if sampled else 1  # greedy: one row per prompt, copied to every sample
        # our own config: a model's defaults (a chat model's sampling settings, a repetition penalty)
        # must not change what greedy decoding or plain sampling means; what is left None is filled from
        # the model's generation config (decoder start, forced BOS/EOS of BART, ...) as generate() does
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                  num_return_sequences=1, pad_token_id=pad, eos_token_id=eos_ids or None,
                                  repetition_penalty=1.0, no_repeat_ngram_size=0, temperature=1.0, top_p=1.0,
                                  top_k=50, renormalize_logits=False)
        self.stats["forward_passes"] += 1

        class _Gumbel(LogitsProcessor):
            """Adds each row's seeded Gumbel noise; the argmax is then a draw from the warped softmax."""

            def __init__(self, owners, first):
                self.owners, self.first = owners, first

            def __call__(self, input_ids, scores):
                step = input_ids.shape[1] - self.first
                noise = torch.empty(scores.shape, dtype=torch.float32)
                for r, (i, s) in enumerate(self.owners):
                    g = torch.Generator().manual_seed(_row_seed(seed, i, s, step))
                    u = torch.rand(scores.shape[1], generator=g, dtype=torch.float64)
                    noise[r] = (-torch.log(-torch.log(u.clamp(1e-300, 1.0 - 1e-16)))).float()
                return scores.float() + noise.to(scores.device)

        class _Stops(StoppingCriteria):
            """Ends a row once its decoded new text holds a stop sequence; remembers the step."""

            def __init__(self, first, n):
                self.first = first
                self.ended = [None] * n

            def __call__(self, input_ids, scores, **kw):
                done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
                new = input_ids[:, self.first:].tolist()
                for r, row in enumerate(new):
                    if self.ended[r] is None:
                        if _cut(tok.decode(row, skip_special_tokens=True), stop)[1]:
                            self.ended[r] = len(row)
                    done[r] = self.ended[r] is not None
                return done

        def run(idx, inp, mask):
            owners = [(i, s) for i in idx for s in range(per)]
            prompts = [ids[i] if ids[i] else [start if start is not None else pad] for i in idx]
            width = max(len(p) for p in prompts)
            n = len(owners)
            x = torch.full((n, width), pad, dtype=torch.long)
            m = torch.zeros((n, width), dtype=torch.long)
            for r in range(n):
                p = prompts[r // per]  # owners run prompt by prompt, ``per`` rows each
                if seq2seq:  # the encoder reads right-padded input
                    x[r, :len(p)] = torch.tensor(p, dtype=torch.long)
                    m[r, :len(p)] = 1
                else:  # left padding: every prompt ends where generation begins
                    x[r, width - len(p):] = torch.tensor(p, dtype=torch.long)
                    m[r, width - len(p):] = 1
            first = 1 if seq2seq else width  # where the new tokens begin in generate's output
            procs = LogitsProcessorList()
            if sampled:
                procs.append(TemperatureLogitsWarper(temperature))
                if top_p < 1.0:
                    procs.append(TopPLogitsWarper(top_p))
                procs.append(_Gumbel(owners, first))
            stops = _Stops(first, n) if stop else None
            with torch.inference_mode():
                out = model.generate(input_ids=x.to(self.device), attention_mask=m.to(self.device),
                                     generation_config=config, logits_processor=procs,
                                     stopping_criteria=StoppingCriteriaList([stops] if stops else []))
            new = out[:, first:].cpu().tolist()
            result = []
            for k in range(len(idx)):
                gens = []
                for r in range(k * per, (k + 1) * per):
                    row = new[r]
                    end_eos = next((j + 1 for j, t in enumerate(row) if t in eos_ids), None)
                    end_stop = stops.ended[r] if stops else None
                    if end_stop is not None and (end_eos is None or end_stop < end_eos):
                        toks, reason = row[:end_stop], "stop"
                    elif end_eos is not None:
                        toks, reason = row[:end_eos], "eos"
                    else:
                        toks, reason = row[:max_new_tokens], "length"
                    text, hit = _cut(tok.decode(toks, skip_special_tokens=True), stop)
                    if hit:
                        reason = "stop"
                    gens.append((text, toks, reason))
                result.append(gens * samples if not sampled else gens)
            return result

        rows = self.map_batches(ids, run, batch_size=max(1, self.batch_size // per))
        # flat columns (prompt-major, then sample) so the disk cache can keep any number of them
        flat = [g for per_prompt in rows for g in per_prompt]
        return {"text": np.array([g[0] for g in flat], dtype=str), "ids": [list(g[1]) for g in flat],
                "reason": np.array([g[2] for g in flat], dtype=str)}
