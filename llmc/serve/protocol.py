"""OpenAI request bodies checked field by field into a ``GenerationSpec``; problems become ``APIError``s."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

MAX_STOP_STRINGS = 4
MAX_TOP_LOGPROBS = 20


class APIError(Exception):
    """An error the client gets as ``{"error": {"message", "type", "param", "code"}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    @property
    def kind(self) -> str:
        return {
            401: "authentication_error",
            404: "not_found_error",
            429: "rate_limit_error",
            503: "server_error",
        }.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class GenerationSpec:
    """Everything the engine needs from one request, plus how to shape the answer."""

    chat: bool
    messages: list[dict] = field(default_factory=list)
    prompt: str | list[int] = ""
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    top_logprobs: int | None = None  # None: no logprobs
    response_format: dict | None = None  # json_object / json_schema; None: free text


def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw or b"")
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise APIError(400, f"the request body is not valid JSON ({err}).") from err
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object.")
    return body


def _typed(body: dict, name: str, kinds: tuple[type, ...], what: str, default=None):
    value = body.get(name, default)
    if value is None:
        return default
    # bool is an int in Python; JSON true is never a number here
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise APIError(400, f"'{name}' must be {what}, got {json.dumps(value)[:60]}.", param=name)
    return value


def _number(body: dict, name: str, low: float, high: float, default: float) -> float:
    value = float(_typed(body, name, (int, float), "a number", default))
    if not low <= value <= high:
        raise APIError(400, f"'{name}' must be between {low:g} and {high:g}, got {value:g}.", param=name)
    return value


def _messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list of {role, content} objects.", param="messages")
    out = []
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise APIError(400, f"'{param}' must be an object with 'role' and 'content'.", param=param)
        role, content = message.get("role"), message.get("content")
        if role not in ("system", "developer", "user", "assistant"):
            raise APIError(
                400, f"'{param}.role' must be system, user or assistant, got {json.dumps(role)}.", param=param
            )
        if isinstance(content, list):  # content parts: only text is understood
            if not all(
                isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
            ):
                raise APIError(400, f"'{param}.content' parts must all be {{type: text, text}}.", param=param)
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise APIError(400, f"'{param}.content' must be a string.", param=param)
        out.append({"role": "system" if role == "developer" else role, "content": content})
    return out


def _prompt(body: dict) -> str | list[int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return prompt
    raise APIError(400, "'prompt' must be a string or a list of token ids (one prompt per request).", param="prompt")


def _stop(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > MAX_STOP_STRINGS:
        raise APIError(400, f"'stop' must be a string or a list of at most {MAX_STOP_STRINGS} strings.", param="stop")
    return [s for s in stops if s]


def _logprobs(body: dict, chat: bool) -> int | None:
    if chat:
        if not _typed(body, "logprobs", (bool,), "true or false", False):
            if body.get("top_logprobs") is not None:
                raise APIError(400, "'top_logprobs' needs 'logprobs': true.", param="top_logprobs")
            return None
        top = _typed(body, "top_logprobs", (int,), "an integer", 0)
    else:
        top = _typed(body, "logprobs", (int,), "an integer", None)
        if top is None:
            return None
    if not 0 <= top <= MAX_TOP_LOGPROBS:
        name = "top_logprobs" if chat else "logprobs"
        raise APIError(400, f"'{name}' must be between 0 and {MAX_TOP_LOGPROBS}, got {top}.", param=name)
    return top


def parse_generation(body: dict, chat: bool) -> GenerationSpec:
    """Check a /v1/chat/completions (``chat``) or /v1/completions body."""
    spec = GenerationSpec(chat=chat)
    if chat:
        spec.messages = _messages(body)
    else:
        spec.prompt = _prompt(body)
    for name in ("max_completion_tokens", "max_tokens"):
        value = _typed(body, name, (int,), "a positive integer")
        if value is not None:
            if value < 1:
                raise APIError(400, f"'{name}' must be at least 1, got {value}.", param=name)
            spec.max_tokens = value
            break
    spec.temperature = _number(body, "temperature", 0.0, 2.0, 1.0)
    spec.top_p = _number(body, "top_p", 0.0, 1.0, 1.0)
    if spec.top_p == 0.0:
        raise APIError(400, "'top_p' must be greater than 0.", param="top_p")
    spec.seed = _typed(body, "seed", (int,), "an integer")
    spec.stop = _stop(body)
    spec.stream = _typed(body, "stream", (bool,), "true or false", False)
    options = _typed(body, "stream_options", (dict,), "an object", {})
    spec.include_usage = bool(options.get("include_usage")) and spec.stream
    spec.top_logprobs = _logprobs(body, chat)
    n = _typed(body, "n", (int,), "an integer", 1)
    if n != 1:
        raise APIError(400, f"'n' must be 1: this server returns one choice per request (got {n}).", param="n")
    for name in ("presence_penalty", "frequency_penalty"):
        if _number(body, name, -2.0, 2.0, 0.0) != 0.0:
            raise APIError(400, f"'{name}' is not supported; leave it at 0.", param=name)
    response_format = _typed(body, "response_format", (dict,), "an object", {"type": "text"})
    kind = response_format.get("type", "text")
    if kind not in ("text", "json_object", "json_schema"):
        raise APIError(
            400,
            f"response_format type must be text, json_object or json_schema, got {json.dumps(kind)}.",
            param="response_format",
        )
    spec.response_format = None if kind == "text" else response_format
    if body.get("tools"):
        raise APIError(400, "'tools' (function calling) is not supported.", param="tools")
    return spec
