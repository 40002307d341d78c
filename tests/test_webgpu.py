"""--target webgpu: the preset, the stand-in headers, the .wasm build (emcc), the web bundle, and the whole
tiny model generating in headless Chromium on WebGPU (SwiftShader), matching the llvm build's greedy tokens.

The .wasm build and the browser run are slow (a few minutes on 2 cores): they run under `make test-web`
(``--run web``), and skip with a reason when emcc / chromium / the npm packages are missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from support.artifacts import fake_model_section
from support.checkpoints import TINY_PREFILL_CHUNK

from llmc.artifact import FORMAT_VERSION
from llmc.compile import CompileOptions, compile_model
from llmc.compiler.targets import get_target
from llmc.errors import ArtifactError, LlmcError
from llmc.package.web import write_web_bundle

REPO = Path(__file__).resolve().parents[1]
HEADERS = REPO / "llmc" / "compiler" / "web_headers"
PLAYWRIGHT = REPO / "web" / "node_modules" / "playwright-core"
slow_web = pytest.mark.web
needs_emcc = pytest.mark.skipif(shutil.which("emcc") is None, reason="emcc missing (make install-web)")
needs_browser = pytest.mark.skipif(
    shutil.which("chromium") is None or shutil.which("node") is None or not PLAYWRIGHT.is_dir(),
    reason="chromium, node or web/node_modules missing (make install-web)",
)


def test_webgpu_preset_is_wasm32_host_with_wgsl_device():
    preset = get_target("webgpu")
    target = preset.tvm_target()
    assert (preset.library_suffix, target.kind.name) == (".wasm", "webgpu")
    assert str(target.host.attrs["mtriple"]) == "wasm32-unknown-unknown-wasm"


def test_webgpu_without_emcc_names_make_install_web(checkpoints, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no emcc anywhere
    monkeypatch.delenv("EMCC", raising=False)
    monkeypatch.setenv("LLMC_WEB_CACHE", str(tmp_path / "cache"))  # and no runtime built before
    out = tmp_path / "out"
    with pytest.raises(LlmcError, match="make install-web"):
        compile_model(str(checkpoints["llama_gqa"]), CompileOptions(target="webgpu", output=out, quiet=True))
    assert not out.exists()


HEADER_CHECK = r"""
#include <tvm/support/serializer.h>
#include "src/support/base64.h"
#include "src/support/bytes_io.h"
#include "src/support/ring_buffer.h"
#include "src/support/utils.h"
#include "builtin_fp16.h"
#include <cstdio>
using namespace tvm::support;
int main() {
  std::string blob;
  BytesOutStream out(&blob);
  std::vector<int32_t> v = {1, -2, 3};
  std::unordered_map<std::string, std::string> m = {{"k", "value"}};
  DLDataType t{2, 32, 1};
  out.Write(uint64_t(7)), out.Write(v), out.Write(m), out.Write(t), out.Write(std::string("tvm"));
  BytesInStream in(blob);
  uint64_t seven; std::vector<int32_t> v2; std::unordered_map<std::string, std::string> m2; DLDataType t2;
  std::string s;
  bool ok = in.Read(&seven) && in.Read(&v2) && in.Read(&m2) && in.Read(&t2) && in.Read(&s);
  std::printf("roundtrip %d %d %d %d %d %s %zu\n", ok, int(seven), int(v2 == v), int(m2 == m), int(t2.bits), s.c_str(),
              blob.size());
  std::string text;
  BytesOutStream text_out(&text);
  Base64OutStream b64(&text_out);
  b64.Write("llmc!", 5);
  b64.Finish();
  BytesInStream text_in(text);
  Base64InStream decode(&text_in);
  decode.InitPosition();
  char back[6] = {0};
  std::printf("base64 %s %zu %s\n", text.c_str(), decode.Read(back, 5), back);
  RingBuffer ring;
  ring.Write("abcdef", 6);
  char two[3] = {0};
  ring.Read(two, 2);
  size_t taken = ring.ReadWithCallback([](const void*, size_t n) { return n - 1; }, 4);
  std::printf("ring %s %zu %zu %d\n", two, taken, ring.bytes_available(), int(StartsWith("prefix-x", "prefix")));
  for (unsigned h = 0; h < 65536; ++h) {
    float f = __extendXfYf2__<uint16_t, uint16_t, 10, float, uint32_t, 23>(uint16_t(h));
    std::printf("%08x\n", *reinterpret_cast<uint32_t*>(&f));
  }
}
"""


def test_stand_in_headers_on_the_host_compiler(tmp_path):
    """llmc's own headers for TVM's web runtime: byte formats, base64, ring buffer and half->float, checked natively."""
    import tvm_ffi

    cxx = shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no host C++ compiler (g++ or clang++)")
    ffi = Path(tvm_ffi.__file__).parent
    (tmp_path / "check.cc").write_text(HEADER_CHECK)
    includes = [HEADERS / "include", HEADERS, HEADERS / "3rdparty" / "compiler-rt", ffi / "include"]
    subprocess.run(
        [cxx, "-std=c++17", "-O1", *[f"-I{p}" for p in includes], "check.cc", "-o", "check"], cwd=tmp_path, check=True
    )
    lines = subprocess.run([str(tmp_path / "check")], capture_output=True, text=True, check=True).stdout.splitlines()
    # u64 7 | u64 3 + 3 x i32 | u64 1 + (u64 1 "k") + (u64 5 "value") | u8 u8 u16 | u64 3 "tvm"
    assert lines[0] == f"roundtrip 1 7 1 1 32 tvm {8 + 8 + 12 + 8 + 9 + 13 + 4 + 11}"
    assert lines[1] == "base64 bGxtYyE= 5 llmc!"
    assert lines[2] == "ring ab 3 1 1"
    ours = np.array([int(x, 16) for x in lines[3:]], dtype=np.uint32).view(np.float32)
    expected = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
    np.testing.assert_array_equal(ours, expected)  # NaN payloads included: bit-exact as floats


def _fake_webgpu_artifact(folder: Path, target: str = "webgpu") -> Path:
    """An artifact folder as `llmc compile --target webgpu` lays it out, with placeholder bytes for the .wasm."""
    folder.mkdir()
    config = {
        "format_version": FORMAT_VERSION,
        "stage": "compiled",
        "target": target,
        "library": f"model-{target}.wasm",
        "quantization": "q0f32",
        "source": {"spec": "/models/tiny-llama/"},
        "params": [],
        "weights": [],
        "dtype": "float32",
        "model": fake_model_section(),
        "context_window": 128,
        "prefill_chunk": 24,
        "max_batch_size": 1,
    }
    preset = get_target(target) if target == "webgpu" else get_target("llvm")
    config["runs_on"] = preset.backend.runs_on(preset, config["library"])
    (folder / "llmc-config.json").write_text(json.dumps(config))
    for name in ("model-webgpu.wasm", "tensor-cache.json", "params_shard_0.bin", "tokenizer.json"):
        (folder / name).write_bytes(b"\0asm" if name.endswith(".wasm") else b"{}")
    (folder / "model-old.wasm").write_bytes(b"stale")
    return folder


def test_web_bundle_holds_page_runtime_and_artifact(tmp_path, monkeypatch):
    artifact = _fake_webgpu_artifact(tmp_path / "art")
    tvmjs = tmp_path / "tvmjs.js"
    tvmjs.write_text("// runtime")
    monkeypatch.setenv("LLMC_TVMJS", str(tvmjs))
    out = write_web_bundle(artifact, tmp_path / "bundle")
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [
            "index.html",
            "llmc.js",
            "tokenizer.js",
            "tvmjs.bundle.js",
            "llmc-config.json",
            "model-webgpu.wasm",
            "tensor-cache.json",
            "params_shard_0.bin",
            "tokenizer.json",
            "llmc-web.json",
        ]
    )
    web = json.loads((out / "llmc-web.json").read_text())
    assert web["chat"] is None and "no chat template" in web["chat_note"]
    assert web["cache_scope"].startswith("llmc-") and len(web["cache_scope"]) == 21
    page = (out / "index.html").read_text()
    for part in ('id="conversation"', 'id="progress"', 'id="send"', "tok/s", "LlmcChat"):
        assert part in page
    assert "{{" not in page and "<title>llmc: tiny-llama on WebGPU</title>" in page and "q0f32" in page
    assert (out / "tvmjs.bundle.js").read_text() == "// runtime"
    with pytest.raises(ArtifactError, match="already exists"):
        write_web_bundle(artifact, out)


def test_llmc_package_target_webgpu_writes_the_page_bundle(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from llmc.cli import main

    artifact = _fake_webgpu_artifact(tmp_path / "art")
    tvmjs = tmp_path / "tvmjs.js"
    tvmjs.write_text("// runtime")
    monkeypatch.setenv("LLMC_TVMJS", str(tvmjs))
    done = CliRunner().invoke(main, ["package", str(artifact), "--target", "webgpu", "-o", str(tmp_path / "web")])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "web" / "index.html").is_file() and (tmp_path / "web" / "model-webgpu.wasm").is_file()
    again = CliRunner().invoke(main, ["package", str(artifact), "--target", "webgpu", "-o", str(tmp_path / "web")])
    assert again.exit_code == 1 and "already exists" in again.output and "Traceback" not in again.output


def test_web_bundle_refuses_other_targets_and_missing_runtime(tmp_path, monkeypatch):
    llvm = _fake_webgpu_artifact(tmp_path / "llvm", target="llvm")
    with pytest.raises(ArtifactError, match="--target webgpu"):
        write_web_bundle(llvm, tmp_path / "b1")
    monkeypatch.setenv("LLMC_TVMJS", str(tmp_path / "missing.js"))
    with pytest.raises(LlmcError, match="make install-web"):
        write_web_bundle(_fake_webgpu_artifact(tmp_path / "web"), tmp_path / "b2")
    assert not (tmp_path / "b1").exists() and not (tmp_path / "b2").exists()


def test_running_a_webgpu_artifact_locally_points_to_the_browser(tmp_path):
    from llmc.runtime.engine import Engine

    with pytest.raises(ArtifactError, match="runs in a browser"):
        Engine(_fake_webgpu_artifact(tmp_path / "art"))


TOKENIZER_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b\n\n\nNumbers 0123456789 and 42!",
    "<|im_start|>user\nWhat's it? They'll SEE, IT'S WE'LL<|im_end|>\n",
    "  leading spaces, tabs\tand caf\u00e9 \u65e5\u672c\u8a9e \U0001f600",
]


@pytest.mark.skipif(shutil.which("node") is None, reason="node missing (make install-web)")
@pytest.mark.parametrize("pre", ["hf-bytelevel", "smollm", "llama3", "qwen2"])
def test_page_tokenizer_matches_tokenizers(pre, checkpoints, tmp_path):
    """llmc/templates/web/tokenizer.js (run by node) against `tokenizers`: the fixture's ByteLevel tokenizer and
    the Split+ByteLevel ones llmc writes for GGUF models (SmolLM2, Llama 3, Qwen2 pre-tokenizers)."""
    from tokenizers import Tokenizer

    from llmc.checkpoint.tokenizer_files import build_bpe_tokenizer

    file = checkpoints["llama_gqa"] / "tokenizer.json"
    if pre != "hf-bytelevel":
        spec = json.loads(file.read_text())
        vocab = spec["model"]["vocab"]
        tokens = sorted(vocab, key=vocab.get)
        merges = [" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]]
        types = [3 if t.startswith("<|") else 1 for t in tokens]
        file = tmp_path / "tokenizer.json"
        build_bpe_tokenizer(tokens, merges, types, pre).save(str(file))
    reference = Tokenizer.from_file(str(file))
    done = subprocess.run(
        ["node", str(REPO / "web" / "tokenize.mjs"), str(file), json.dumps(TOKENIZER_TEXTS)],
        capture_output=True,
        text=True,
        check=True,
    )
    for text, ours in zip(TOKENIZER_TEXTS, json.loads(done.stdout)):
        expected = reference.encode(text).ids
        assert ours["ids"] == expected, text
        assert ours["decoded"] == reference.decode(expected, skip_special_tokens=False) == text


# ------------------------------------------------------------------ slow: real .wasm, real browser
@pytest.fixture(scope="module")
def webgpu_artifact(compiled):
    """webgpu_artifact(quant) -> the tiny Llama compiled for webgpu, once per quant (SwiftShader, the
    test's adapter, has no shader-f16: the browser runs fp32 schemes)."""
    return lambda quant: compiled("llama_gqa", quant, "webgpu")


@slow_web
@needs_emcc
def test_compile_webgpu_writes_a_standalone_wasm(webgpu_artifact):
    artifact = webgpu_artifact("q0f32")
    config = json.loads((artifact / "llmc-config.json").read_text())
    wasm = (artifact / config["library"]).read_bytes()
    assert config["target"] == "webgpu" and config["library"].endswith(".wasm")
    assert wasm[:4] == b"\0asm"
    assert b"@compute" in wasm and b"enable f16" not in wasm  # WGSL kernels inside, fp32 only


@slow_web
@needs_emcc
@needs_browser
@pytest.mark.parametrize("quant", ["q0f32", "q4f32_1"])
def test_whole_model_in_headless_chromium_matches_llvm(quant, webgpu_artifact, compiled, tmp_path):
    from tokenizers import Tokenizer

    from llmc.runtime.engine import Engine

    artifact = webgpu_artifact(quant)
    prompt = "The quick brown fox jumps over the lazy dog. A compiler turns"  # > 24 tokens: two prefill chunks
    tokenizer = Tokenizer.from_file(str(artifact / "tokenizer.json"))
    ids = tokenizer.encode(prompt).ids
    steps = 12
    engine = Engine(compiled("llama_gqa", quant, cpu_kernels="float"))  # the float maths the browser runs
    engine.add_sequence(0)
    logits, expected = engine.prefill(0, ids), []
    for _ in range(steps):
        expected.append(int(np.argmax(logits)))
        logits = engine.decode(0, expected[-1])

    bundle = write_web_bundle(artifact, tmp_path / "bundle")
    started = time.time()
    request = json.dumps({"ids": ids, "max_tokens": steps, "text": prompt})
    done = subprocess.run(
        ["node", str(REPO / "web" / "run_page.mjs"), str(bundle), request], capture_output=True, text=True, timeout=600
    )
    result = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {"error": done.stderr}
    print(f"browser run {time.time() - started:.1f} s: {json.dumps({k: v for k, v in result.items() if k != 'logs'})}")
    assert result.get("ok"), result
    assert "swiftshader" in result["ready"]["adapter"].lower()
    assert len(ids) > TINY_PREFILL_CHUNK
    assert result["encoded"] == ids  # the page's JS tokenizer agrees with tokenizers
    assert result["tokens"] == expected
    assert result["decoded"] == tokenizer.decode(expected, skip_special_tokens=False)


@slow_web
@needs_emcc
@needs_browser
def test_f16_kernels_on_an_adapter_without_shader_f16_fail_clearly(webgpu_artifact, tmp_path):
    bundle = write_web_bundle(webgpu_artifact("q4f16_1"), tmp_path / "bundle")
    request = json.dumps({"ids": [5, 6], "max_tokens": 1})
    done = subprocess.run(
        ["node", str(REPO / "web" / "run_page.mjs"), str(bundle), request], capture_output=True, text=True, timeout=600
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert not result["ok"] and "no shader-f16" in result["error"] and "q4f32_1" in result["error"], result
    assert "the page shows: Error: this WebGPU adapter has no shader-f16" in result["error"]


@slow_web
@needs_emcc
@needs_browser
def test_browser_without_webgpu_gets_a_clear_message(webgpu_artifact, tmp_path):
    bundle = write_web_bundle(webgpu_artifact("q0f32"), tmp_path / "bundle")
    request = json.dumps({"ids": [5, 6], "max_tokens": 1, "hide_webgpu": True})
    done = subprocess.run(
        ["node", str(REPO / "web" / "run_page.mjs"), str(bundle), request], capture_output=True, text=True, timeout=600
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert not result["ok"], result
    assert "the page shows: Error: this browser has no WebGPU (navigator.gpu is missing)" in result["error"]


CHAT_TURNS = ["Hello there, how are you?", "Tell me about compilers."]


@slow_web
@needs_emcc
@needs_browser
def test_chat_page_two_turns_match_llmc_chat_and_second_load_uses_the_cache(webgpu_artifact, compiled, tmp_path):
    """The page's chat mode in headless Chromium: typed turns, greedy answers equal to `llmc chat` (ChatSession) on
    the same model, tok/s shown; a reload reads every weight shard from the browser's Cache API (the server sees
    no shard request); a screenshot after the answers is saved (dist/test-web/chat.png)."""
    from llmc.runtime.session import ChatSession

    max_tokens = 8
    session = ChatSession(compiled("llama_gqa", "q0f32", cpu_kernels="float"))  # the float maths the browser runs
    expected = []
    for text in CHAT_TURNS:
        pieces: list[str] = []
        result = session.send(text, max_tokens, 0.0, 1.0, None, pieces.append)
        expected.append({"ids": result.output_ids, "text": "".join(pieces), "prompt_tokens": len(result.prompt_ids)})

    artifact = webgpu_artifact("q0f32")
    bundle = write_web_bundle(artifact, tmp_path / "bundle")
    assert json.loads((bundle / "llmc-web.json").read_text())["chat"] is not None  # ChatML in the tiny tokenizer
    shards = len(json.loads((bundle / "tensor-cache.json").read_text())["records"])
    screenshot = REPO / "dist" / "test-web" / "chat.png"
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    screenshot.unlink(missing_ok=True)
    request = json.dumps({"chat": CHAT_TURNS, "max_tokens": max_tokens, "screenshot": str(screenshot)})
    done = subprocess.run(
        ["node", str(REPO / "web" / "run_page.mjs"), str(bundle), request], capture_output=True, text=True, timeout=900
    )
    result = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {"error": done.stderr}
    summary = {k: v for k, v in result.items() if k not in ("logs",)}
    print(f"browser chat: {json.dumps(summary)[:3000]}\nscreenshot: {screenshot}")
    assert result.get("ok"), result
    for turn, reference in zip(result["turns"], expected):
        assert turn["ids"] == reference["ids"]
        assert turn["text"] == reference["text"]
        assert turn["promptTokens"] == reference["prompt_tokens"]  # the second turn prefills only its new tokens
        assert "tok/s" in turn["status"]
    assert result["transcript"] == [CHAT_TURNS[0], expected[0]["text"], CHAT_TURNS[1], expected[1]["text"]]
    assert result["first_load"]["shards_fetched"] == shards and not result["first_load"]["ready"]["cachedBeforeLoad"]
    assert result["second_load"]["shards_fetched"] == 0 and result["second_load"]["ready"]["cachedBeforeLoad"]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
