"""An OpenAI-compatible server on 127.0.0.1 serving a small causal LM, for the API-model tests and the
API benchmark (a helper module, not a test).

Routes (under ``/v1``): ``GET /models``; ``POST /completions`` (``prompt`` a string or a list of them,
``max_tokens``, ``temperature``, ``top_p``, ``stop``, ``n``, ``seed``, ``echo``, ``logprobs`` ->
``choices[i].logprobs.{tokens, token_logprobs, text_offset}``, null for the first token, as OpenAI and
vLLM answer); ``POST /chat/completions`` (a minimal chat template, ``<|role|>\\ncontent\\n`` per
message then ``<|assistant|>\\n``).

Switches, set on the :class:`OpenAIServer` while it runs: ``api_key`` (401 without the right
``Authorization: Bearer``), ``fail_status`` (answer every request with it, ``/models`` included),
``fail_next`` (statuses for the next POSTs, one each), ``fail_after`` (answer 500 to every POST after
that many were let through), ``no_logprobs`` (never return log-probs), ``reject_max_tokens_zero`` (400 for
``max_tokens: 0``, as some servers do), ``delay_s`` (sleep before each POST: network latency),
``drop_next`` (close the connection without an answer for that many POSTs: a reset),
``no_chat_template`` (400 to chat requests, as vLLM answers for a tokenizer without a template),
``memoize`` (answer a body seen before from memory: a server whose compute is negligible beside the
latency, for the benchmark).
``posts`` counts the POSTs answered with 200, ``log`` keeps every request (method, path, headers, body).

The model runs under a lock (one forward at a time, like a server's single GPU); the simulated latency
lies outside it, so concurrent clients overlap their waits.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def chat_prompt(messages: list[dict]) -> str:
    """The server's chat template."""
    return "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages) + "<|assistant|>\n"


class _QuietServer(ThreadingHTTPServer):
    """A client that gave up (the timeout tests) closes its socket before the answer: not an error."""

    daemon_threads = True

    def handle_error(self, request, client_address):
        import sys
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


class OpenAIServer:
    """Serve ``model`` + ``tokenizer`` (a transformers causal LM) as ``name`` on 127.0.0.1:PORT/v1."""

    def __init__(self, model, tokenizer, *, name: str = "tiny-gpt2", api_key: str | None = None,
                 delay_s: float = 0.0):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.api_key = api_key
        self.delay_s = delay_s
        self.fail_status: int | None = None
        self.fail_next: list[int] = []
        self.fail_after: int | None = None
        self.no_logprobs = False
        self.reject_max_tokens_zero = False
        self.memoize = False
        self.no_chat_template = False
        self.drop_next = 0
        self._answers: dict[str, dict] = {}
        self.posts = 0
        self._admitted = 0  # POSTs let through to the model (what fail_after counts)
        self.log: list[tuple[str, str, dict, object]] = []
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "OpenAIServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # keep-alive + Nagle + delayed ACK would add ~40 ms per answer

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                server._handle(self, "GET")

            def do_POST(self):
                server._handle(self, "POST")

        self._httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def reset(self) -> None:
        """Switch every failure off and clear the counters."""
        with self._lock:
            self.api_key, self.delay_s, self.fail_status, self.fail_next, self.fail_after = None, 0.0, None, [], None
            self.no_logprobs = self.reject_max_tokens_zero = self.memoize = self.no_chat_template = False
            self.drop_next = 0
            self._answers = {}
            self.posts = self._admitted = 0
            self.log = []

    # ------------------------------------------------------------------ HTTP
    @staticmethod
    def _reply(h: BaseHTTPRequestHandler, status: int, obj: dict) -> None:
        data = json.dumps(obj).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    @staticmethod
    def _error(h, status: int, message: str) -> None:
        OpenAIServer._reply(h, status, {"error": {"message": message, "type": "error", "code": status}})

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        body = None
        if method == "POST":
            length = int(h.headers.get("Content-Length") or 0)
            raw = h.rfile.read(length) if length else b""
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                return self._error(h, 400, "body is not JSON")
        path = h.path.split("?", 1)[0]
        with self._lock:
            self.log.append((method, path, dict(h.headers), body))
            drop = method == "POST" and self.drop_next > 0
            if drop:
                self.drop_next -= 1
            status = self.fail_status
            if status is None and method == "POST":
                if self.fail_next:
                    status = self.fail_next.pop(0)
                elif self.fail_after is not None and self._admitted >= self.fail_after:
                    status = 500
                else:
                    self._admitted += 1
        if drop:
            h.close_connection = True
            return None  # no status line: the client sees the connection closed
        if self.api_key is not None and h.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._error(h, 401, "Incorrect API key provided")
        if status is not None:
            return self._error(h, status, f"simulated failure {status}")
        if method == "GET" and path == "/v1/models":
            return self._reply(h, 200, {"object": "list", "data": [
                {"id": self.name, "object": "model", "created": int(time.time()), "owned_by": "auditkit-tests",
                 "max_model_len": 1024}]})
        if method != "POST" or path not in ("/v1/completions", "/v1/chat/completions"):
            return self._error(h, 404, f"no route {method} {path}")
        if self.delay_s:
            time.sleep(self.delay_s)
        if not isinstance(body, dict) or body.get("model") != self.name:
            return self._error(h, 404, f"model {body.get('model') if isinstance(body, dict) else None!r} not found")
        if path == "/v1/chat/completions" and self.no_chat_template:
            return self._error(h, 400, "As of transformers v4.44, default chat template is no longer allowed, so you "
                                       "must provide a chat template if the tokenizer does not define one.")
        if body.get("max_tokens", 16) == 0 and self.reject_max_tokens_zero:
            return self._error(h, 400, "max_tokens must be at least 1")
        memo_key = json.dumps([path, body, self.no_logprobs], sort_keys=True)
        answer = self._answers.get(memo_key) if self.memoize else None
        if answer is None:
            try:
                answer = self._completions(body) if path == "/v1/completions" else self._chat(body)
            except (ValueError, TypeError, KeyError) as exc:
                return self._error(h, 400, f"bad request: {exc}")
            if self.memoize:
                self._answers[memo_key] = answer
        with self._lock:
            self.posts += 1
        return self._reply(h, 200, answer)

    # ------------------------------------------------------------------ the model
    def _run(self, prompt: str, body: dict, choice: int) -> dict:
        """One choice: generated ids, text, finish reason and (echo/logprobs) the scored tokens."""
        import torch
        tok = self.tokenizer
        ids = tok(prompt)["input_ids"] if prompt else []
        max_tokens = int(body.get("max_tokens", 16))
        temperature = float(body.get("temperature", 1.0))
        top_p = float(body.get("top_p", 1.0))
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        gen = torch.Generator().manual_seed(int(body.get("seed") or 0) * 1000 + choice)
        out: list[int] = []
        finish, stop_reason = "length", None
        text = ""
        with self._model_lock, torch.inference_mode():
            for _ in range(max_tokens):
                seq = ids + out
                if not seq:
                    seq = [tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id]
                logits = self.model(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1].float()
                if temperature == 0:
                    nxt = int(torch.argmax(logits))
                else:
                    probs = torch.softmax(logits / temperature, dim=-1)
                    if top_p < 1.0:
                        sp, si = torch.sort(probs, descending=True)
                        keep = torch.cumsum(sp, 0) - sp < top_p
                        probs = torch.zeros_like(probs).scatter(0, si[keep], sp[keep])
                    nxt = int(torch.multinomial(probs / probs.sum(), 1, generator=gen))
                if nxt == tok.eos_token_id:
                    finish = "stop"
                    break
                out.append(nxt)
                text = tok.decode(out)
                hit = min((text.find(s) for s in stop if s and s in text), default=-1)
                if hit >= 0:
                    stop_reason = next(s for s in stop if s and text.find(s) == hit)
                    text, finish = text[:hit], "stop"
                    break
            res = {"text": text, "finish_reason": finish, "stop_reason": stop_reason, "token_ids": out}
            if body.get("logprobs") is not None and not self.no_logprobs:
                full = ids + out
                lp_all: list = [None] * len(full)
                if len(full) > 1:
                    logits = self.model(input_ids=torch.tensor([full]), use_cache=False).logits[0].float()
                    lp = torch.log_softmax(logits[:-1], dim=-1).gather(-1, torch.tensor(full[1:]).unsqueeze(-1))
                    lp_all[1:] = lp.squeeze(-1).tolist()
                offsets = [len(tok.decode(full[:i])) for i in range(len(full))]
                first = 0 if body.get("echo") else len(ids)
                res["logprobs"] = {"tokens": [tok.decode([t]) for t in full[first:]],
                                   "token_logprobs": lp_all[first:], "text_offset": offsets[first:],
                                   "top_logprobs": None}
        return res

    def _completions(self, body: dict) -> dict:
        prompts = body.get("prompt", "")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        n = int(body.get("n", 1))
        choices = []
        for p_i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise TypeError("prompt must be a string or a list of strings")
            for k in range(n):
                r = self._run(prompt, body, k)
                choice = {"index": p_i * n + k, "text": (prompt if body.get("echo") else "") + r["text"],
                          "finish_reason": r["finish_reason"], "stop_reason": r["stop_reason"],
                          "logprobs": r.get("logprobs")}
                choices.append(choice)
        return {"id": "cmpl-test", "object": "text_completion", "created": int(time.time()), "model": self.name,
                "choices": choices, "usage": {}}

    def _chat(self, body: dict) -> dict:
        prompt = chat_prompt(body["messages"])
        n = int(body.get("n", 1))
        choices = []
        for k in range(n):
            r = self._run(prompt, dict(body, logprobs=None, echo=False), k)
            choices.append({"index": k, "message": {"role": "assistant", "content": r["text"]},
                            "finish_reason": r["finish_reason"], "stop_reason": r["stop_reason"]})
        return {"id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()),
                "model": self.name, "choices": choices, "usage": {}}


def tiny_server(**kw) -> OpenAIServer:
    """A started server for ``builtin:tiny-gpt2`` (seed 0), as the test fixture and the benchmark use."""
    from auditkit.models import load_model
    from auditkit.plugins import registry
    handle = load_model("builtin:tiny-gpt2", "causal-lm", registry(), device="cpu")
    return OpenAIServer(handle.model, handle.tokenizer, **kw).start()
