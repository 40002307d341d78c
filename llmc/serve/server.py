"""The HTTP layer: stdlib ``ThreadingHTTPServer`` speaking the OpenAI API, with server-sent events.

A handler thread per connection validates the request, submits it to the ``ServingEngine`` and relays
its deltas; the engine's scheduler thread owns the model. SIGTERM/SIGINT stop accepting, let in-flight
requests finish (or cancel them after a grace period) and exit 0.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from llmc.errors import GenerationError, LlmcError
from llmc.runtime.sampling import Sampler
from llmc.runtime.scheduler import QueueFullError, Request, ServingEngine, ShuttingDownError
from llmc.serve.embeddings_api import embedding_answer, parse_embedding
from llmc.serve.grammar import GrammarFactory
from llmc.serve.metrics import ServerMetrics
from llmc.serve.protocol import APIError, GenerationSpec, parse_generation, parse_json
from llmc.serve.responses import ResponseShape

MAX_BODY_BYTES = 8 * 2**20
ROUTES = {
    ("GET", "/health"),
    ("GET", "/metrics"),
    ("GET", "/v1/models"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/embeddings"),
}


class LlmcHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, engine: ServingEngine, model_name: str, api_key: str | None, aliases: set[str]):
        super().__init__(address, Handler)
        self.engine = engine
        self.model_name = model_name
        self.model_names = {model_name, *aliases}
        self.api_key = api_key
        self.metrics = ServerMetrics(engine)
        tokenizer_file = engine.engine.folder / "tokenizer.json"
        self.grammars = GrammarFactory(tokenizer_file, engine.engine.vocab_size, sorted(engine.tokenizer.eos_token_ids))
        self.created = int(time.time())
        self.active = 0
        self.active_lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive for plain answers; streams close their connection
    server: LlmcHTTPServer

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        pass

    # ------------------------------------------------------------------ plumbing
    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def _route(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/") or "/"

    def _dispatch(self, method: str) -> None:
        route = self._route()
        self._body_read = False
        with self.server.active_lock:
            self.server.active += 1
        status = 200
        try:
            if (method, route) not in ROUTES:
                known = {r for _, r in ROUTES}
                if route in known:
                    raise APIError(405, f"{method} is not allowed on {route}.", code="method_not_allowed")
                raise APIError(404, f"no route {method} {route}; see GET /v1/models.", code="not_found")
            if route.startswith("/v1/"):
                self._check_key()
            status = getattr(self, "_" + route.strip("/").replace("/", "_"))() or 200
        except APIError as err:
            status = err.status
            self._fail(err)
        except (BrokenPipeError, ConnectionResetError):
            status = 499
        except Exception as err:  # noqa: BLE001 - a bug answers 500 and the server keeps serving
            status = 500
            traceback.print_exc()
            self._fail(APIError(500, f"internal error: {err.__class__.__name__}: {err}", code="internal_error"))
        finally:
            self.server.metrics.count_request(route if (method, route) in ROUTES else "other", status)
            with self.server.active_lock:
                self.server.active -= 1

    def _fail(self, err: APIError) -> None:
        if self.command == "POST" and not self._body_read:
            self.close_connection = True  # an unread body would be taken for the next request
        self._send_json(err.status, err.body())

    def _check_key(self) -> None:
        key = self.server.api_key
        if key and self.headers.get("Authorization", "") != f"Bearer {key}":
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'.", code="invalid_api_key")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, obj: dict) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False).encode(), "application/json")

    def _read_body(self) -> dict:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError as err:
            raise APIError(400, "Content-Length is not a number.") from err
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise APIError(413, f"the request body is {length} bytes; the limit is {MAX_BODY_BYTES}.")
        raw = self.rfile.read(length)
        self._body_read = True
        return parse_json(raw)

    # ------------------------------------------------------------------ routes
    def _health(self) -> None:
        self._send_json(200, {"status": "ok", "running": self.server.engine.running})

    def _metrics(self) -> None:
        self._send(200, self.server.metrics.render().encode(), "text/plain; version=0.0.4; charset=utf-8")

    def _v1_models(self) -> None:
        model = {"id": self.server.model_name, "object": "model", "created": self.server.created, "owned_by": "llmc"}
        self._send_json(200, {"object": "list", "data": [model]})

    def _v1_chat_completions(self) -> int:
        return self._generate(chat=True)

    def _v1_completions(self) -> int:
        return self._generate(chat=False)

    def _v1_embeddings(self) -> None:
        body = self._read_body()
        self._check_model(body)
        spec = parse_embedding(body)
        engine = self.server.engine
        if not getattr(engine.engine, "has_embedding", False):
            raise APIError(
                400,
                "this model was compiled without --embedding: recompile it with `llmc compile ... --embedding` "
                "to serve /v1/embeddings.",
                param="model",
                code="embeddings_not_supported",
            )
        vocab = engine.engine.vocab_size
        prompts = []
        for item in spec.inputs:
            ids = engine.tokenizer.encode(item) if isinstance(item, str) else item
            bad = [t for t in ids if not 0 <= t < vocab]
            if bad:
                raise APIError(400, f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1}).", param="input")
            if len(ids) > engine.context_window:
                raise APIError(
                    400,
                    f"an input is {len(ids)} tokens; this model's context window is {engine.context_window}.",
                    param="input",
                    code="context_length_exceeded",
                )
            prompts.append(ids)
        try:
            job = engine.submit_embedding(prompts)
        except QueueFullError as err:
            raise APIError(429, f"the server is busy: {err}", code="queue_full") from err
        except ShuttingDownError as err:
            raise APIError(503, str(err), code="shutting_down") from err
        except GenerationError as err:
            raise APIError(400, str(err), param="input") from err
        job.done.wait()
        if job.error is not None:
            raise APIError(500, f"embedding failed: {job.error}", code="internal_error")
        tokens = sum(len(p) for p in prompts)
        self._send_json(200, embedding_answer(spec, job.vectors, self.server.model_name, tokens))

    def _check_model(self, body: dict) -> None:
        model = body.get("model")
        if model is not None and model not in self.server.model_names:
            raise APIError(
                404,
                f"model {json.dumps(model)} is not served here; use '{self.server.model_name}'.",
                param="model",
                code="model_not_found",
            )

    # ------------------------------------------------------------------ generation
    def _generate(self, chat: bool) -> int:
        body = self._read_body()
        self._check_model(body)
        spec = parse_generation(body, chat)
        request = self._make_request(spec)
        engine = self.server.engine
        try:
            engine.submit(request)
        except QueueFullError as err:
            raise APIError(429, f"the server is busy: {err}", code="queue_full") from err
        except ShuttingDownError as err:
            raise APIError(503, str(err), code="shutting_down") from err
        prefix = "chatcmpl-" if chat else "cmpl-"
        shape = ResponseShape(
            chat, prefix + uuid.uuid4().hex[:24], self.server.model_name, int(time.time()), engine.tokenizer
        )
        try:
            if spec.stream:
                self._stream(spec, request, shape)
            else:
                self._answer(spec, request, shape)
        finally:
            if request.finish_reason is None:
                engine.cancel(request)
            self.server.metrics.observe_finished(request)
        return 200

    def _make_request(self, spec: GenerationSpec) -> Request:
        engine = self.server.engine
        tokenizer = engine.tokenizer
        try:
            if spec.chat:
                ids = tokenizer.encode(tokenizer.apply_chat_template(spec.messages))
            elif isinstance(spec.prompt, str):
                ids = tokenizer.encode(spec.prompt)
            else:
                ids = spec.prompt
                bad = [t for t in ids if not 0 <= t < engine.engine.vocab_size]
                if bad:
                    raise APIError(
                        400,
                        f"token id {bad[0]} is outside the vocabulary (0..{engine.engine.vocab_size - 1}).",
                        param="prompt",
                    )
        except GenerationError as err:
            raise APIError(400, str(err), param="messages" if spec.chat else "prompt") from err
        window = engine.context_window
        if not ids:
            raise APIError(400, "the prompt is empty.", param="prompt")
        if len(ids) >= window:
            raise APIError(
                400,
                f"this model's context window is {window} tokens; the prompt is {len(ids)} tokens. Shorten it.",
                param="messages" if spec.chat else "prompt",
                code="context_length_exceeded",
            )
        room = window - len(ids)
        if spec.max_tokens is not None and spec.max_tokens > room:
            raise APIError(
                400,
                f"max_tokens is {spec.max_tokens} but only {room} tokens fit after the {len(ids)}-token prompt "
                f"(context window {window}).",
                param="max_tokens",
                code="context_length_exceeded",
            )
        constraint = self.server.grammars.constraint(spec.response_format) if spec.response_format else None
        sampler = Sampler(spec.temperature, spec.top_p, spec.seed, spec.top_logprobs, constraint)
        return Request(ids, spec.max_tokens or room, sampler, spec.stop)

    def _answer(self, spec: GenerationSpec, request: Request, shape: ResponseShape) -> None:
        texts, logprobs, final = [], [], None
        for delta in request:
            texts.append(delta.text)
            logprobs.extend(delta.logprobs)
            final = delta
        self._raise_if_failed(final)
        answer = shape.full(
            "".join(texts), final.finish_reason, logprobs if spec.top_logprobs is not None else None, request
        )
        self._send_json(200, answer)

    @staticmethod
    def _raise_if_failed(final) -> None:
        if final.finish_reason == "cancelled":
            raise APIError(503, "the request was cancelled: the server is shutting down.", code="shutting_down")
        if final.finish_reason == "error":
            raise APIError(500, f"generation failed: {final.error}", code="internal_error")

    def _stream(self, spec: GenerationSpec, request: Request, shape: ResponseShape) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        want_logprobs = spec.top_logprobs is not None
        try:
            if spec.chat:
                self._event(shape.chunk(None, role=True))
            for delta in request:
                if delta.finish_reason is None:
                    if delta.text or want_logprobs:
                        self._event(shape.chunk(delta.text, logprobs=delta.logprobs if want_logprobs else None))
                    continue
                if delta.finish_reason in ("cancelled", "error"):
                    message = "the server is shutting down" if delta.finish_reason == "cancelled" else delta.error
                    self._event(
                        {
                            "error": {
                                "message": message,
                                "type": "server_error",
                                "param": None,
                                "code": delta.finish_reason,
                            }
                        }
                    )
                else:
                    self._event(shape.chunk(None, finish_reason=delta.finish_reason))
                    if spec.include_usage:
                        self._event(shape.usage_chunk(request))
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.server.engine.cancel(request)  # the client hung up: free its sequence now
            with self.server.metrics.lock:
                self.server.metrics.disconnects += 1

    def _event(self, obj: dict) -> None:
        self.wfile.write(b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n")
        self.wfile.flush()


def serve(
    artifact: Path,
    host: str,
    port: int,
    max_batch: int | None,
    max_queue: int,
    api_key: str | None,
    device: str,
    model_name: str | None = None,
    prefix_cache: bool = True,
    grace_seconds: float = 10.0,
    log=lambda message: print(message, file=sys.stderr, flush=True),
) -> None:
    """Run the server until SIGTERM or SIGINT; return once in-flight requests are done or cancelled."""
    engine = ServingEngine(artifact, device, max_batch=max_batch, max_queue=max_queue, prefix_cache=prefix_cache)
    name = model_name or Path(artifact).resolve().name
    try:
        httpd = LlmcHTTPServer((host, port), engine, name, api_key, {str(artifact)})
    except OSError as err:
        engine.stop(0)
        raise LlmcError(f"cannot listen on {host}:{port} ({err.strerror}); pick another --port.") from err
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    bound = httpd.server_address[1]
    log(
        f"llmc serve: {name} on http://{host}:{bound}/v1 (max batch {engine.max_batch}, "
        f"context {engine.context_window}); SIGTERM or Ctrl-C stops"
    )
    try:
        while not stop.wait(0.5):
            pass
        log("llmc serve: stopping: no new requests, finishing the ones in flight")
        httpd.shutdown()  # no new connections
        engine.stop(grace_seconds)
        deadline = time.monotonic() + 5
        while httpd.active and time.monotonic() < deadline:  # let handlers write their last events
            time.sleep(0.02)
        httpd.server_close()
        log("llmc serve: stopped")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
