"""Models behind an OpenAI-compatible HTTP API (``model.base: openai-compatible``): vLLM, TGI, a
llama.cpp server, OpenAI itself.

:class:`APIModelHandle` offers the black-box part of the handle's request surface for causal LMs:

- ``generate(prompts, ...)``: a ``str`` prompt goes to ``POST {endpoint}/completions``, a list of
  chat messages (``[{"role", "content"}]``) to ``POST {endpoint}/chat/completions`` (the server applies
  its chat template). ``seed`` is sent as OpenAI's ``seed`` parameter and ``samples > 1`` as ``n``.
- ``continuation_logprobs(pairs)`` and ``token_logprobs(texts)``: ``/completions`` with
  ``echo: true, logprobs: 1, max_tokens: 0``, the way lm-eval's API models score a prompt: the server
  returns each prompt token's log-prob and character offset (``logprobs.{tokens, token_logprobs,
  text_offset}``, null for the first token). A continuation's tokens are those starting at or after
  the end of its context (``text_offset >= len(context)``), the context's trailing spaces moved to the
  continuation first, as lm-eval's ``_encode_pair`` does. A server that rejects ``max_tokens: 0`` is
  asked for one token, which is then ignored. A server that returns no prompt log-probs is bad input
  for a check that needs them (:class:`~auditkit.errors.AuditInputError`, exit 2).

Every request runs through one road (:meth:`APIModelHandle._post_many`):

- bounded concurrency: a thread pool of ``model.concurrency`` workers (requests are I/O-bound);
- retries of 408/409/429/5xx answers, timeouts and refused or reset connections, ``retries`` times at
  most, with exponential backoff (``backoff_s * 2**attempt``, capped, ``Retry-After`` honoured) and a
  jitter drawn from a generator seeded by the request itself (so a rerun waits the same);
- an on-disk request cache, ``AUDITKIT_CACHE/requests/<fingerprint>/<key>.json``, the key hashing the
  request's path and body (model name, prompt, every sampling parameter; never the API key), each
  answer written atomically (a temporary file renamed into place) as soon as it arrives, so a run cut
  off mid-way resumes from the answers it already had. ``AUDITKIT_DISK_CACHE=0`` turns it off, as it
  does the pass cache.

The API key is read from the environment variable ``model.api_key_env`` when the handle opens, sent
as ``Authorization: Bearer`` and written nowhere: not in cache keys or files, not in
:meth:`~APIModelHandle.describe`, not in error messages (an answer that quotes it is masked).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from auditkit.errors import AuditInputError, dotted
from auditkit.models import PassMemo, UnservedRequest, cache_dir, disk_cache_enabled, pass_cache_path

from auditkit.passes.generation import Generation, generation_options, prompt_list
from auditkit.results import write_text_atomic

#: what each scoring request is needed for (named when the endpoint returns no prompt log-probs)
LOGPROB_NEEDS = {
    "continuation_logprobs": "multiple-choice accuracy needs them (and log-likelihood bias and robustness)",
    "token_logprobs": "perplexity, forgetting and membership-inference scores need them",
}
#: HTTP statuses worth another try: request timeout, conflict, rate limit, any server error
RETRY_STATUSES = frozenset({408, 409, 429})
_CACHE_FORMAT = 1
#: fields of a /models entry that change from call to call (vLLM stamps ``created`` with the time)
_VOLATILE_CARD_KEYS = ("created", "permission")


class APIRequestError(RuntimeError):
    """A request the server did not answer usefully, after the retries (a crash of the check, exit 3
    unless every check is resumed later: the answers received so far stay in the request cache)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def _public_endpoint(endpoint: str) -> str:
    """The endpoint without a trailing slash and without ``user:password@`` (never shown or keyed)."""
    parts = urlsplit(endpoint.strip())
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), parts.query, "")).rstrip("/")


def _first_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text[:limit] + ("..." if len(text) > limit else "")


def _server_message(resp) -> str:
    """The server's error text (OpenAI's ``{"error": {"message"}}``, FastAPI's ``detail``, or the body)."""
    try:
        obj = resp.json()
    except ValueError:
        return _first_line(resp.text or resp.reason or "")
    if isinstance(obj, dict):
        err = obj.get("error", obj.get("detail", obj.get("message")))
        if isinstance(err, dict):
            err = err.get("message", err)
        if err is not None:
            return _first_line(err if isinstance(err, str) else json.dumps(err))
    return _first_line(json.dumps(obj))


class APIModelHandle(PassMemo):
    """A causal LM served over an OpenAI-compatible API: generation and log-probs, no weights.

    ``capabilities`` says what it can do; a check that needs the weights (explainability, CKA,
    fine-tuning, cost) must be refused before the run starts. Open one with :func:`open_api_model`.
    """

    capabilities = frozenset({"generate", "logprobs"})
    task = "causal-lm"
    device = "api"
    num_labels = 0
    tokenizer = None
    model = None
    new_weights: list[str] = []

    def __init__(self, endpoint: str, name: str, *, api_key: str | None = None, model_card: dict | None = None,
                 concurrency: int = 8, chat_template: bool = True, timeout_s: float = 120.0, retries: int = 5,
                 backoff_s: float = 0.5, backoff_max_s: float = 20.0, max_length: int = 256, batch_size: int = 32):
        self.endpoint = _public_endpoint(endpoint)
        self._base_url = endpoint.strip().rstrip("/")  # may carry user:password, used only to send
        self.name = name
        self._api_key = api_key or None
        self.model_card = {k: v for k, v in (model_card or {}).items() if k not in _VOLATILE_CARD_KEYS}
        self.concurrency = max(1, int(concurrency))
        #: whether generation checks should send chat messages (``model.chat_template``)
        self.chat_template = chat_template
        self.timeout_s, self.retries = float(timeout_s), int(retries)
        self.backoff_s, self.backoff_max_s = float(backoff_s), float(backoff_max_s)
        self.max_length, self.batch_size = max_length, batch_size
        self.source = f"openai-compatible:{name}@{self.endpoint}"
        self.stats = {"forward_passes": 0, "cache_hits": 0, "disk_hits": 0, "requests": 0,
                      "request_cache_hits": 0, "retries": 0}
        self._cache: dict = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._score_max_tokens: int | None = None  # 0, or 1 where the server refuses 0
        self._fingerprint: str | None = None
        self._pool: ThreadPoolExecutor | None = None

    @property
    def has_chat_template(self) -> bool:
        """Whether chat prompts should be sent: the server holds the template, so this is the suite's
        ``model.chat_template`` (a server without one answers with an error that says so, exit 2)."""
        return bool(self.chat_template)

    def __repr__(self) -> str:  # never the key
        return f"APIModelHandle({self.source!r}, concurrency={self.concurrency})"

    # ------------------------------------------------------------------ identity
    @property
    def fingerprint(self) -> str:
        """Hash of the endpoint, the model name and what ``/models`` says of the model."""
        if self._fingerprint is None:
            blob = json.dumps([self.endpoint, self.name, self.model_card], sort_keys=True, default=str)
            self._fingerprint = hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()
        return self._fingerprint

    def describe(self) -> dict:
        # "parameters": unknown behind an API (the HTML report's model table reads the key)
        return {"id": self.source, "fingerprint": self.fingerprint, "task": self.task, "architecture": "api",
                "parameters": None}

    def invalidate(self) -> None:
        """Forget the passes held in memory (the request cache on disk stays: the server did not change)."""
        self._cache.clear()

    def _require(self, task: str, op: str) -> None:
        if task != self.task:
            raise UnservedRequest(f"{op} needs a {task} model but {self.source} is an API causal LM")

    # ------------------------------------------------------------------ caching (memo: PassMemo)
    def _disk_path(self, op: str, items_key: str, kw_json: str) -> Path:
        from auditkit import __version__
        return pass_cache_path(self.fingerprint, op, [__version__, self.fingerprint, op, items_key, kw_json])

    def _request_path(self, path: str, body: dict) -> Path:
        blob = json.dumps([_CACHE_FORMAT, path, body], sort_keys=True, ensure_ascii=False)
        digest = hashlib.blake2b(blob.encode(), digest_size=20).hexdigest()
        return cache_dir() / "requests" / self.fingerprint / digest[:2] / f"{digest}.json"

    @staticmethod
    def _cache_read(path: Path) -> dict | None:
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # absent, or a foreign or damaged file: ask again
        return obj.get("response") if isinstance(obj, dict) and obj.get("format") == _CACHE_FORMAT else None

    @staticmethod
    def _cache_write(path: Path, response: dict) -> None:
        """Keep an answer (atomically: :func:`auditkit.results.write_text_atomic`, readable by its owner only:
        answers hold what the reports redact, such as canary continuations); a cache that cannot be written
        is no error."""
        try:
            write_text_atomic(path, json.dumps({"format": _CACHE_FORMAT, "response": response}, ensure_ascii=False),
                              private=True)
        except OSError:
            pass

    # ------------------------------------------------------------------ HTTP
    def _session(self):
        s = getattr(self._local, "session", None)
        if s is None:
            import requests
            s = requests.Session()
            s.trust_env = False  # no proxy or netrc credentials picked up from the environment
            self._local.session = s
        return s

    def _headers(self) -> dict:
        h = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            h["Authorization"] = f"Bearer {self._api_key}"
        return h

    def _mask(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _send(self, path: str, body: dict) -> dict:
        """POST ``body`` to ``endpoint + path``, retrying what may pass; the answer's JSON object."""
        import requests
        url = self._base_url + path
        rng = random.Random(hashlib.blake2b(json.dumps([path, body], sort_keys=True).encode(),
                                            digest_size=8).hexdigest())
        last = ""
        status = None
        for attempt in range(self.retries + 1):
            retry_after = None
            try:
                resp = self._session().post(url, json=body, headers=self._headers(), timeout=self.timeout_s)
            except requests.Timeout:
                last, status = f"no answer within {self.timeout_s:g} s", None
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                # refused, reset or dropped mid-answer
                last, status = f"connection failed ({type(exc).__name__})", None
            else:
                status = resp.status_code
                if status == 200:
                    try:
                        obj = resp.json()
                    except ValueError:
                        obj = None
                    if isinstance(obj, dict):
                        return obj
                    last = "the answer is not a JSON object"
                elif status in (401, 403):
                    raise AuditInputError(f"{self.endpoint}{path} refused the API key (HTTP {status}: "
                                          f"{self._mask(_server_message(resp))})", place="model.api_key_env",
                                          fix="check the key in the variable model.api_key_env names")
                elif status in RETRY_STATUSES or status >= 500:
                    last = f"HTTP {status}: {self._mask(_server_message(resp))}"
                    try:
                        retry_after = float(resp.headers.get("Retry-After", ""))
                    except ValueError:
                        retry_after = None
                elif path == "/chat/completions" and status in (400, 422) \
                        and "template" in _server_message(resp).lower():
                    raise AuditInputError(f"{self.endpoint} could not render the chat template of {self.name} "
                                          f"(HTTP {status}: {self._mask(_server_message(resp))})",
                                          place="model.chat_template",
                                          fix="set model.chat_template: false to send plain completions, or "
                                              "serve the model with a chat template")
                else:  # 400, 404, 422...: asking again will not help
                    raise APIRequestError(f"{self.endpoint}{path} answered HTTP {status}: "
                                          f"{self._mask(_server_message(resp))}", status)
            if attempt == self.retries:
                break
            with self._lock:
                self.stats["retries"] += 1
            delay = min(self.backoff_max_s, self.backoff_s * 2 ** attempt) * (0.5 + rng.random())
            if retry_after is not None and retry_after >= 0:
                delay = min(max(delay, retry_after), self.backoff_max_s)
            time.sleep(delay)
        raise APIRequestError(f"{self.endpoint}{path} failed after {self.retries + 1} tries ({last}); the "
                              "answers received so far are cached, so a rerun resumes from them", status)

    def _post(self, path: str, body: dict) -> dict:
        """One request through the on-disk cache."""
        cpath = self._request_path(path, body) if disk_cache_enabled() else None
        if cpath is not None:
            cached = self._cache_read(cpath)
            if cached is not None:
                with self._lock:
                    self.stats["request_cache_hits"] += 1
                return cached
        obj = self._send(path, body)
        with self._lock:
            self.stats["requests"] += 1
        if cpath is not None:
            self._cache_write(cpath, obj)
        return obj

    def _post_many(self, calls: list[tuple[str, dict]]) -> list[dict]:
        """Answers to ``(path, body)`` requests, in order, at most ``concurrency`` in flight; identical
        requests are sent once. The first failure cancels the requests not yet started (those under
        way finish, and their answers are cached)."""
        keys = [json.dumps(c, sort_keys=True) for c in calls]
        first: dict[str, tuple[str, dict]] = {}
        for k, c in zip(keys, calls):
            first.setdefault(k, c)
        unique = list(first)
        if len(unique) <= 1 or self.concurrency == 1:
            answers = {k: self._post(*first[k]) for k in unique}
        else:
            pool = self._executor()
            futures = {k: pool.submit(self._post, *first[k]) for k in unique}
            try:
                answers = {k: f.result() for k, f in futures.items()}
            except BaseException:
                for f in futures.values():
                    f.cancel()
                raise
        return [answers[k] for k in keys]

    def _executor(self) -> ThreadPoolExecutor:
        """One pool per handle, kept between calls (its threads keep their connections open)."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="auditkit-api")
            return self._pool

    def close(self) -> None:
        """Stop the request threads (a later request starts them again)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: Sequence, *, max_new_tokens: int = 32, temperature: float = 0.0, top_p: float = 1.0,
                 stop: Sequence[str] = (), seed: int = 0, samples: int = 1) -> list[list[Generation]]:
        """``samples`` generations per prompt (greedy at temperature 0), as the generation request.

        A ``str`` prompt is completed by ``/completions``; a list of ``{"role", "content"}`` messages
        by ``/chat/completions``. ``seed`` (OpenAI's parameter) and ``n = samples`` are sent as they are;
        a server that ignores ``seed`` samples differently on each uncached run.
        """
        prompts = prompt_list(prompts)
        opts = generation_options(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stop=stop,
                                  seed=seed, samples=samples)
        if not prompts:
            return []

        def compute():
            self.stats["forward_passes"] += 1
            calls = [self._generation_call(p, opts) for p in prompts]
            answers = self._post_many(calls)
            return [self._generations(a, path, opts["samples"], opts["stop"]) for a, (path, _) in zip(answers, calls)]

        return self.memo("generate", prompts, compute, **opts)

    def _generation_call(self, prompt, opts: dict) -> tuple[str, dict]:
        body: dict[str, Any] = {"model": self.name, "max_tokens": opts["max_new_tokens"],
                                "temperature": opts["temperature"], "top_p": opts["top_p"], "seed": opts["seed"]}
        if opts["samples"] != 1:
            body["n"] = opts["samples"]
        if opts["stop"]:
            body["stop"] = opts["stop"]
        if isinstance(prompt, str):
            return "/completions", dict(body, prompt=prompt)
        if isinstance(prompt, (list, tuple)) and all(isinstance(m, dict) and "role" in m and "content" in m
                                                     for m in prompt):
            return "/chat/completions", dict(body, messages=[{"role": str(m["role"]), "content": m["content"]}
                                                             for m in prompt])
        raise TypeError(f"a prompt must be a str or a list of chat messages, not {type(prompt).__name__}")

    @staticmethod
    def _finish_reason(choice: dict, stop: list[str]) -> str:
        """OpenAI's ``finish_reason`` in the generation request's terms: ``length``, ``stop`` (a stop
        sequence) or ``eos``. OpenAI says ``stop`` for both of the latter; vLLM's ``stop_reason`` tells
        them apart (the stop string, else None or the stop token's id: an end-of-sequence token); without
        it, ``stop`` where stop sequences were asked for, else ``eos``."""
        reason = choice.get("finish_reason")
        if reason == "length":
            return "length"
        if "stop_reason" in choice:
            return "stop" if isinstance(choice["stop_reason"], str) else "eos"
        return "stop" if stop else "eos"

    def _generations(self, answer: dict, path: str, samples: int, stop: list[str]) -> list[Generation]:
        choices = answer.get("choices")
        if not isinstance(choices, list) or len(choices) != samples:
            got = len(choices) if isinstance(choices, list) else "no"
            raise APIRequestError(f"{self.endpoint}{path} returned {got} choices for n={samples}")
        choices = sorted(choices, key=lambda c: c.get("index", 0))
        out = []
        for c in choices:
            text = c.get("text") if path == "/completions" else (c.get("message") or {}).get("content")
            ids = c.get("token_ids")
            out.append(Generation(text=text or "", token_ids=[int(t) for t in ids] if isinstance(ids, list) else [],
                                  finish_reason=self._finish_reason(c, stop)))
        return out

    # ------------------------------------------------------------------ log-probs
    def _score_prompts(self, prompts: list[str], op: str) -> list[tuple[list[float | None], list[int]]]:
        """Each prompt's echoed ``(token log-probs, text offsets)``, the tokens lying inside the prompt."""
        self.stats["forward_passes"] += 1

        def call(p: str, max_tokens: int) -> tuple[str, dict]:
            return "/completions", {"model": self.name, "prompt": p, "max_tokens": max_tokens, "echo": True,
                                    "logprobs": 1, "temperature": 0.0}

        todo = list(dict.fromkeys(p for p in prompts if p))
        answers: dict[str, dict] = {}
        if todo and self._score_max_tokens is None:  # the first request finds whether max_tokens 0 is taken
            try:
                answers[todo[0]] = self._post(*call(todo[0], 0))
                self._score_max_tokens = 0
            except APIRequestError as exc:
                if exc.status not in (400, 422):
                    raise
                self._score_max_tokens = 1
        rest = [p for p in todo if p not in answers]
        answers.update(zip(rest, self._post_many([call(p, self._score_max_tokens or 0) for p in rest])))
        return [self._prompt_logprobs(answers[p], p, op) if p else ([], []) for p in prompts]

    def _prompt_logprobs(self, answer: dict, prompt: str, op: str) -> tuple[list, list[int]]:
        try:
            lp = answer["choices"][0]["logprobs"]
            lps, offsets = list(lp["token_logprobs"]), [int(o) for o in lp["text_offset"]]
        except (KeyError, IndexError, TypeError, ValueError):
            lps, offsets = [], []
        if not offsets or len(lps) != len(offsets) or (len(lps) > 1 and all(v is None for v in lps)):
            raise AuditInputError(f"{self.endpoint} returns no prompt log-probs (echo with logprobs) for "
                                  f"{self.name}; {LOGPROB_NEEDS.get(op, 'this check needs them')}",
                                  place="model.endpoint",
                                  fix="serve the model with a server that returns prompt log-probs (vLLM does), "
                                      "or drop the checks that need them")
        keep = [i for i, o in enumerate(offsets) if o < len(prompt)]  # a generated token lies beyond
        lps, offsets = [lps[i] for i in keep], [offsets[i] for i in keep]
        # a prefix token the server adds (Llama's BOS) spans no text: drop it
        while len(offsets) > 1 and lps[0] is None and offsets[1] == offsets[0]:
            lps, offsets = lps[1:], offsets[1:]
        return lps, offsets

    def token_logprobs(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Log-prob of every token given its prefix (the first token, which the server cannot score, left
        out), as :meth:`auditkit.models.ModelHandle.token_logprobs`, from the server's echoed prompt."""
        texts = list(texts)

        def compute():
            out = []
            for text, (lps, _) in zip(texts, self._score_prompts(texts, "token_logprobs")):
                vals = lps[1:]
                if any(v is None for v in vals):
                    self._missing(text, "token_logprobs")
                out.append(np.asarray(vals, dtype=np.float32))
            return out

        return self.memo("token_logprobs", texts, compute, persist=True)

    def continuation_logprobs(self, pairs: Sequence[tuple[str, str]]) -> list[np.ndarray]:
        """Per-token log-probs of ``continuation`` given ``context`` (lm-eval's loglikelihood through an
        API): the server scores ``context + continuation`` whole, and the continuation's tokens are those
        whose ``text_offset`` is at or past the end of the context (its trailing spaces moved to the
        continuation first, as lm-eval's ``_encode_pair``). A token that straddles the boundary counts
        with the context."""
        pairs = [tuple(p) for p in pairs]

        def compute():
            split = []
            for ctx, cont in pairs:
                n_sp = len(ctx) - len(ctx.rstrip())
                if n_sp:
                    cont, ctx = ctx[-n_sp:] + cont, ctx[:-n_sp]
                split.append((ctx, cont))
            scored = self._score_prompts([c + x if x else "" for c, x in split], "continuation_logprobs")
            out = []
            for (ctx, cont), (lps, offsets) in zip(split, scored):
                if not cont:
                    out.append(np.zeros(0, dtype=np.float32))
                    continue
                vals = [v for v, o in zip(lps, offsets) if o >= len(ctx)]
                if not vals or any(v is None for v in vals):
                    self._missing(ctx + cont, "continuation_logprobs", empty_context=not ctx)
                out.append(np.asarray(vals, dtype=np.float32))
            return out

        return self.memo("continuation_logprobs", pairs, compute, persist=True)

    # ------------------------------------------------------------------ what an API cannot serve
    def _no_weights(self, op: str):
        raise AuditInputError(f"{op} needs the model's weights or tokenizer; an API model has neither",
                              place="model.base", fix="declare the check's needs (Check.needs) so that it is refused "
                              "before the run, or audit a local copy of the model")

    def token_ids(self, texts):
        """Not served: the server's tokenizer is not reachable through the OpenAI API."""
        self._no_weights("token_ids")

    def class_logits(self, texts):
        self._no_weights("class_logits")

    def hidden_states(self, texts):
        self._no_weights("hidden_states")

    def attentions(self, texts):
        self._no_weights("attentions")

    def score_ids(self, ids):
        self._no_weights("score_ids")

    def generate_ids(self, prefix_ids, **kw):
        self._no_weights("generate_ids (generation from token ids)")

    def _missing(self, text: str, op: str, empty_context: bool = False) -> None:
        why = ("the first token of a continuation with an empty context has no log-prob over an API "
               "(nothing precedes it)") if empty_context else "a prompt token came back without a log-prob"
        raise AuditInputError(f"{self.endpoint}: {why}; {LOGPROB_NEEDS.get(op, 'this check needs them')}",
                              place="model.endpoint",
                              fix="give every continuation a non-empty context" if empty_context
                              else "use a server that returns every prompt token's log-prob (vLLM does)")


# ---------------------------------------------------------------------- before anything runs

def preflight_api(checks: Sequence, *, task: str = "causal-lm", finetune: bool = False, file: str | None = None,
                  where: Callable[..., str] | None = None, processes: int = 1,
                  all_checks: Sequence | None = None) -> None:
    """Refuse, before anything connects or loads, what an API model cannot do (AuditInputError, exit 2):
    a check whose ``needs`` (``Check.needs_for(params, task)``, see :data:`auditkit.api.CAPABILITIES`)
    go beyond :attr:`APIModelHandle.capabilities` (explainability, CKA, cost...), a ``finetune:``
    section, a task other than ``causal-lm``, or more than one process. ``checks`` are the
    ``CheckSpec``s that will run (``all_checks``, the suite's, number them); ``where(*path)`` turns a
    suite key path into "line N (path)"."""
    def place(*path) -> str:
        return where(*path) if where is not None else dotted(path)

    if task != "causal-lm":
        raise AuditInputError(f"an openai-compatible model is audited as a causal-lm, not {task}", file=file,
                              place=place("model", "task"), fix="set model.task: causal-lm, or leave it out")
    if finetune:
        raise AuditInputError("fine-tuning needs the model's weights; an API model has none", file=file,
                              place=place("finetune"), fix="remove finetune:, or fine-tune a local copy of the model")
    if processes > 1:
        raise AuditInputError(f"an API model is audited from one process, not {processes}", file=file,
                              place=place("model", "base"), fix="drop --processes; model.concurrency sets how many "
                              "requests run at once")
    from auditkit.backends import check_place, first_unserved
    unserved = first_unserved(checks, APIModelHandle.capabilities, task)
    if unserved:
        spec, missing = unserved
        raise AuditInputError(f"check {spec.id!r} needs the model's weights; an API model has none (it asks "
                              f"for {', '.join(missing)}; an API serves only generation and log-probs)",
                              file=file, place=check_place(spec, all_checks or checks),
                              fix="drop the check, or audit a local copy of the model (model.base: a folder)")


# ---------------------------------------------------------------------- opening

def open_api_model(spec, *, file: str | None = None, connect_timeout_s: float = 10.0, **handle_kw) -> APIModelHandle:
    """Connect to ``spec.endpoint`` before anything runs: ``GET {endpoint}/models`` must list
    ``spec.name``. An unset key variable, a refused or silent connection, HTTP 401/403, 404 or 5xx, an
    answer that is not a model list and a name the server does not serve are all
    :class:`AuditInputError` (one line, naming the suite ``file`` and the key to fix).
    ``handle_kw`` go to :class:`APIModelHandle` (``retries``, ``backoff_s``, ``timeout_s`` of requests...).
    """
    import requests
    from auditkit.api import did_you_mean
    endpoint = _public_endpoint(spec.endpoint)
    key = None
    if spec.api_key_env:
        key = os.environ.get(spec.api_key_env)
        if not key:
            raise AuditInputError(f"model.api_key_env names the environment variable {spec.api_key_env}, "
                                  "which is not set", file=file, place="model.api_key_env",
                                  fix=f"export {spec.api_key_env}=YOUR_KEY, or remove api_key_env for a "
                                      "server without a key")
    headers = {"Accept": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    url = spec.endpoint.strip().rstrip("/") + "/models"

    def fail(message: str, fix: str, place: str = "model.endpoint") -> AuditInputError:
        if key:
            message = message.replace(key, "***")
        return AuditInputError(message, file=file, place=place, fix=fix)

    session = requests.Session()
    session.trust_env = False
    try:
        resp = session.get(url, headers=headers, timeout=connect_timeout_s)
    except requests.Timeout:
        raise fail(f"{endpoint} did not answer within {connect_timeout_s:g} s", "check that the server is up and the URL "
                   "is right") from None
    except requests.ConnectionError as exc:
        text = str(exc)
        why = ("the connection was refused" if "refused" in text.lower() else
               "the host name does not resolve" if "resolve" in text.lower() or "getaddrinfo" in text.lower()
               else f"cannot connect ({type(exc).__name__})")
        raise fail(f"cannot reach {endpoint}: {why}", "start the server, or fix model.endpoint "
                   "(e.g. http://127.0.0.1:8000/v1)") from None
    except requests.RequestException as exc:
        raise fail(f"cannot reach {endpoint} ({type(exc).__name__})", "fix model.endpoint") from None
    finally:
        session.close()
    status = resp.status_code
    if status in (401, 403):
        raise fail(f"{endpoint} refused the request (HTTP {status}: {_server_message(resp)})",
                   f"set {spec.api_key_env} (model.api_key_env) to a valid key" if spec.api_key_env
                   else "the server needs a key: set model.api_key_env to the variable that holds it",
                   place="model.api_key_env")
    if status == 404:
        raise fail(f"{endpoint}/models is not found (HTTP 404): the endpoint is not an OpenAI-compatible API "
                   "root", "point model.endpoint at the API root, usually ending in /v1 "
                   "(e.g. http://127.0.0.1:8000/v1)")
    if status != 200:
        raise fail(f"{endpoint}/models answered HTTP {status} ({_server_message(resp)})",
                   "check the server's log; it must answer GET /models")
    try:
        listing = resp.json()
        cards = [c for c in listing["data"] if isinstance(c, dict) and "id" in c]
    except (ValueError, KeyError, TypeError):
        raise fail(f"{endpoint}/models did not answer with an OpenAI model list", "point model.endpoint at the "
                   "API root of an OpenAI-compatible server (e.g. http://127.0.0.1:8000/v1)") from None
    served = [str(c["id"]) for c in cards]
    card = next((c for c in cards if str(c["id"]) == spec.name), None)
    if card is None:
        listed = ", ".join(served[:10]) + (f" and {len(served) - 10} more" if len(served) > 10 else "")
        hint = did_you_mean(spec.name, served) if served else "the server lists no models"
        raise fail(f"{endpoint} does not serve a model named {spec.name!r} (it serves: {listed or 'none'})",
                   hint, place="model.name")
    return APIModelHandle(spec.endpoint, spec.name, api_key=key, model_card=card, concurrency=spec.concurrency,
                          chat_template=spec.chat_template, max_length=spec.max_length, batch_size=spec.batch_size,
                          **handle_kw)
