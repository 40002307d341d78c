"""OpenAI response objects: chat.completion(.chunk) and text_completion, usage and logprobs."""

from __future__ import annotations

from llmc.runtime.sampling import TokenLogprob
from llmc.runtime.scheduler import Request
from llmc.runtime.tokenizer import ArtifactTokenizer


def usage(request: Request) -> dict:
    prompt, completion = len(request.prompt_ids), len(request.output_ids)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": request.cached_tokens},
    }


def _token_text(tokenizer: ArtifactTokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id])


def chat_logprobs(tokenizer: ArtifactTokenizer, items: list[TokenLogprob]) -> dict:
    def entry(token_id: int, logprob: float) -> dict:
        text = _token_text(tokenizer, token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    return {
        "content": [{**entry(i.token_id, i.logprob), "top_logprobs": [entry(t, lp) for t, lp in i.top]} for i in items]
    }


def completion_logprobs(tokenizer: ArtifactTokenizer, items: list[TokenLogprob], offset: int = 0) -> dict:
    tokens = [_token_text(tokenizer, i.token_id) for i in items]
    offsets = []
    for text in tokens:
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": [i.logprob for i in items],
        "top_logprobs": [{_token_text(tokenizer, t): lp for t, lp in i.top} for i in items],
        "text_offset": offsets,
    }


class ResponseShape:
    """Builds the objects of one request's answer (ids, model name and chat-or-completion shape fixed)."""

    def __init__(self, chat: bool, response_id: str, model: str, created: int, tokenizer: ArtifactTokenizer):
        self.chat, self.id, self.model, self.created, self.tokenizer = chat, response_id, model, created, tokenizer
        self.text_offset = 0

    def _envelope(self, streaming: bool) -> dict:
        kind = "chat.completion" if self.chat else "text_completion"
        return {
            "id": self.id,
            "object": kind + (".chunk" if streaming and self.chat else ""),
            "created": self.created,
            "model": self.model,
        }

    def _logprobs(self, items: list[TokenLogprob] | None) -> dict | None:
        if items is None:
            return None
        if self.chat:
            return chat_logprobs(self.tokenizer, items)
        shaped = completion_logprobs(self.tokenizer, items, self.text_offset)
        self.text_offset += sum(len(t) for t in shaped["tokens"])
        return shaped

    def full(self, text: str, finish_reason: str, logprobs: list[TokenLogprob] | None, request: Request) -> dict:
        """The non-streaming answer."""
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}}
        else:
            choice = {"index": 0, "text": text}
        choice.update(logprobs=self._logprobs(logprobs), finish_reason=finish_reason)
        return {**self._envelope(False), "choices": [choice], "usage": usage(request)}

    def chunk(
        self,
        text: str | None,
        finish_reason: str | None = None,
        logprobs: list[TokenLogprob] | None = None,
        role: bool = False,
    ) -> dict:
        """One server-sent event of a stream (``role``: the chat stream's opening delta)."""
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text is not None else {})
            choice = {"index": 0, "delta": delta}
        else:
            choice = {"index": 0, "text": text or ""}
        choice.update(logprobs=self._logprobs(logprobs), finish_reason=finish_reason)
        return {**self._envelope(True), "choices": [choice]}

    def usage_chunk(self, request: Request) -> dict:
        return {**self._envelope(True), "choices": [], "usage": usage(request)}
