"""A model's chat template turned into plain strings for apps, which have no Jinja engine.

The template is rendered with marker contents; the text between the markers gives the pieces of
any conversation::

    [prefix_no_system | prefix_with_system SYSTEM system_to_user] USER1 user_to_assistant
    ASSISTANT1 assistant_to_user USER2 user_to_assistant ...

The result is checked against the real template (jinja2, as transformers renders it) on
multi-turn conversations with and without a system prompt; a template these strings cannot
express gives ``None`` and a reason. The turn-end the model generates becomes a stop token id (or
a stop string when it is not a single special token).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from llmc.errors import GenerationError
from llmc.runtime.tokenizer import render_chat_template

SYSTEM, USERS, ASSISTANTS = "LLMCSYSTEMTEXT", ["LLMCUSERONE", "LLMCUSERTWO"], ["LLMCASSISTANTONE"]
CHECK_SYSTEM = "You are a terse assistant."
CHECK_TURNS = [
    ("What is the capital of France?", "Paris."),
    ("And of Italy? Answer in one word.", "Rome."),
    ("Thanks! 日本語でも? 🙂", "はい、ローマです。"),
]


@dataclass
class ChatFormat:
    prefix_no_system: str
    prefix_with_system: str | None  # None: the template has no system role
    system_to_user: str
    user_to_assistant: str
    assistant_to_user: str
    stop_token_ids: list[int] = field(default_factory=list)
    stop_strings: list[str] = field(default_factory=list)
    checked_turns: int = 0

    def render(self, system: str | None, messages: list[dict]) -> str:
        """The prompt for ``messages`` (user/assistant alternating, ending with user), generation prompt added."""
        if system and self.prefix_with_system is not None:
            text = self.prefix_with_system + system + self.system_to_user
        else:
            text = self.prefix_no_system
        for index, message in enumerate(messages):
            text += message["content"]
            text += self.user_to_assistant if message["role"] == "user" else self.assistant_to_user
            if (message["role"] == "user") != (index % 2 == 0):
                raise ValueError("messages must alternate user / assistant, starting with user")
        return text

    def as_dict(self) -> dict:
        return asdict(self)


def _render(template: str, info: dict, system: str | None, turns: list[tuple[str, str | None]]) -> str:
    messages = [{"role": "system", "content": system}] if system is not None else []
    for user, assistant in turns:
        messages.append({"role": "user", "content": user})
        if assistant is not None:
            messages.append({"role": "assistant", "content": assistant})
    return render_chat_template(
        template, messages, True, bos_token=info.get("bos_token") or "", eos_token=info.get("eos_token") or ""
    )


def _cut(text: str, markers: list[str]) -> list[str] | None:
    """The text before, between and after ``markers`` (each exactly once, in order)."""
    pieces = []
    for marker in markers:
        if text.count(marker) != 1:
            return None
        before, text = text.split(marker)
        pieces.append(before)
    return pieces + [text]


def derive_chat_format(info: dict, tokenizer_file=None) -> tuple[ChatFormat | None, str]:
    """The chat format of a model's tokenizer info (llmc-config.json's "tokenizer"), and why not when None."""
    template = info.get("chat_template")
    if not template:
        return None, "the model has no chat template (a base model): the app sends the text as it is"
    turns = [(USERS[0], ASSISTANTS[0]), (USERS[1], None)]
    try:
        plain = _cut(_render(template, info, None, turns), [USERS[0], ASSISTANTS[0], USERS[1]])
    except GenerationError as err:
        return None, str(err)
    if plain is None:
        return None, "the template changes or repeats message contents"
    prefix, user_to_assistant, assistant_to_user, last = plain
    if last != user_to_assistant:
        return None, "the generation prompt differs between turns"
    prefix_with_system, system_to_user = None, ""
    try:
        with_system = _cut(_render(template, info, SYSTEM, turns), [SYSTEM, USERS[0], ASSISTANTS[0], USERS[1]])
    except GenerationError:
        with_system = None  # e.g. "System role not supported"
    if with_system is not None and with_system[2:] == plain[1:]:
        prefix_with_system, system_to_user = with_system[0], with_system[1]
    chat = ChatFormat(prefix, prefix_with_system, system_to_user, user_to_assistant, assistant_to_user)
    for system in (None, CHECK_SYSTEM) if prefix_with_system is not None else (None,):
        for count in range(1, len(CHECK_TURNS) + 1):
            turns_so_far = CHECK_TURNS[:count]
            messages = []
            for user, assistant in turns_so_far[:-1]:
                messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
            messages.append({"role": "user", "content": turns_so_far[-1][0]})
            expected = _render(template, info, system, [*turns_so_far[:-1], (turns_so_far[-1][0], None)])
            if chat.render(system, messages) != expected:
                return None, f"the template renders a {count}-turn conversation differently than fixed strings can"
    chat.checked_turns = len(CHECK_TURNS)
    _add_stops(chat, info, tokenizer_file)
    return chat, ""


def _add_stops(chat: ChatFormat, info: dict, tokenizer_file) -> None:
    """Where an answer ends: the first token of ``assistant_to_user`` if special, else its first line."""
    chat.stop_token_ids = list(info.get("eos_token_ids") or [])
    turn_end = chat.assistant_to_user
    if tokenizer_file is not None and turn_end.strip():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        ids = tokenizer.encode(turn_end, add_special_tokens=False).ids
        specials = {i for i, token in tokenizer.get_added_tokens_decoder().items() if token.special}
        if ids and ids[0] in specials:
            if ids[0] not in chat.stop_token_ids:
                chat.stop_token_ids.append(ids[0])
            return
    line = turn_end.strip().split("\n")[0].strip()
    if line:
        chat.stop_strings.append(line)
