"""The artifact's tokenizer (``tokenizers``) and chat template (jinja2, as transformers renders it)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from llmc.errors import ArtifactError, GenerationError


class ArtifactTokenizer:
    """Encode/decode with the artifact's ``tokenizer.json``; render its chat template."""

    def __init__(self, folder: Path, info: dict):
        from tokenizers import Tokenizer

        file = Path(folder) / "tokenizer.json"
        if not info.get("has_tokenizer") or not file.exists():
            raise ArtifactError(
                f"{folder}: the artifact has no tokenizer.json (the checkpoint had none). "
                "Add tokenizer.json to the checkpoint folder and recompile."
            )
        self.tokenizer = Tokenizer.from_file(str(file))
        self.info = info
        self.bos_token_id = info.get("bos_token_id")
        self.eos_token_ids = set(info.get("eos_token_ids") or [])
        self.chat_template = info.get("chat_template")

    def encode(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if self.info.get("add_bos_token") and self.bos_token_id is not None and ids[:1] != [self.bos_token_id]:
            ids = [self.bos_token_id] + ids
        return ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        if not self.chat_template:
            raise GenerationError("this model has no chat template; use --no-chat to send the prompt as is.")
        return render_chat_template(
            self.chat_template,
            messages,
            add_generation_prompt,
            bos_token=self.info.get("bos_token") or "",
            eos_token=self.info.get("eos_token") or "",
        )


def render_chat_template(template: str, messages: list[dict], add_generation_prompt: bool, **extra) -> str:
    """Render a Hugging Face chat template the way transformers does (sandboxed jinja2)."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise GenerationError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, indent=indent, ensure_ascii=False)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt, **extra)
    except GenerationError:
        raise
    except (TemplateError, ArithmeticError, LookupError, TypeError, ValueError, AttributeError) as err:
        raise GenerationError(f"the model's chat template failed to render: {err}") from err


class StreamDecoder:
    """Turns a growing list of token ids into text increments, holding back split UTF-8 characters."""

    def __init__(self, tokenizer: ArtifactTokenizer):
        self.tokenizer, self.ids, self.emitted = tokenizer, [], ""

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        new, self.emitted = text[len(self.emitted) :], text
        return new
