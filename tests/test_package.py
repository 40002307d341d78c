"""``llmc package`` (phone bundles), memory estimates and ``llmc inspect``, on the tiny checkpoints.

The Android and iPhone libraries are real cross builds (aarch64 ELF / arm64 Mach-O objects); the
app projects cannot be built here (no NDK or Xcode), so their files are checked for the names
they must agree on. llmc's C++ engine (llmc/templates/common) is compiled and run for real against the
wheel's TVM runtime on this CPU, with a host system-lib build of the tiny model.
"""

from __future__ import annotations

import json
import platform
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from llmc.cli import main
from llmc.memory import estimate, kv_cache_bytes
from llmc.package.objfile import library_symbol, parse_object
from llmc.package.spec import APP_CONFIG_FILE, load_spec
from llmc.package.staticlib import N_WEAK_DEF, SHARED_HELPERS, find_archiver

CONTEXT, CHUNK = 64, 16
JNI_METHODS = ("nativeCreate", "nativeSend", "nativeStop", "nativeReset", "nativeDestroy")
ENGINE_SOURCES = (
    "llmc_chat.cc",
    "llmc_engine.cc",
    "llmc_tokenizer.cc",
    "llmc_regex.cc",
    "llmc_json.cc",
    "llmc_unicode.cc",
)


def write_config(folder: Path, models: list[dict], device: str = "android", **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / f"{device}-{len(list(folder.glob('*.json')))}.json"
    file.write_text(json.dumps({"device": device, "models": models, **extra}))
    return file


def tiny(checkpoints, name: str, model_id: str, **overrides) -> dict:
    return {
        "model": str(checkpoints[name]),
        "model_id": model_id,
        "quant": "q4f16_1",
        "context_window": CONTEXT,
        "prefill_chunk": CHUNK,
        **overrides,
    }


def package(config: Path, out: Path, cache: Path, *flags: str):
    result = CliRunner().invoke(
        main, ["package", str(config), "-o", str(out), "--cache-dir", str(cache), "--json", *flags]
    )
    return result


def read_ar(path: Path) -> dict[str, bytes]:
    """Members of a GNU / BSD (darwin) ``ar`` archive, by name (our own reader: no binutils needed)."""
    data = path.read_bytes()
    assert data[:8] == b"!<arch>\n"
    members, offset, long_names = {}, 8, b""
    while offset + 60 <= len(data):
        header = data[offset : offset + 60]
        name, size = header[:16].decode().strip(), int(header[48:58].decode().strip())
        body = data[offset + 60 : offset + 60 + size]
        if name.startswith("#1/"):  # BSD: the name precedes the data
            length = int(name[3:])
            name, body = body[:length].rstrip(b"\0").decode(), body[length:]
        elif name == "//":
            long_names = body
        elif name.startswith("/") and name[1:].isdigit():
            start = int(name[1:])
            name = long_names[start : long_names.index(b"/\n", start)].decode()
        if name not in ("/", "//", "__.SYMDEF", "__.SYMDEF SORTED", "/SYM64/"):
            members[name.rstrip("/")] = body
        offset += 60 + size + (size & 1)
    return members


def model_objects(out: Path, app: dict) -> dict[str, bytes]:
    """The objects of lib/: members of the merged archive, or per-model objects when no archiver was found."""
    if app["model_library"] is not None:
        assert app["model_library"] == "lib/libllmc_models.a"
        return read_ar(out / app["model_library"])
    darwin = app["device"] == "iphone"
    assert find_archiver() is None or (darwin and "llvm-ar" not in find_archiver()[0])
    return {f.name: f.read_bytes() for f in (out / "lib" / "objects").glob("*/*.o")}


@pytest.fixture(scope="module")
def android(checkpoints, tmp_path_factory):
    """Two models in one Android package (one with weights left out), built once."""
    root = tmp_path_factory.mktemp("android-package")
    config = write_config(
        root / "configs",
        [
            tiny(checkpoints, "llama_tied", "tiny-llama"),
            tiny(
                checkpoints,
                "qwen2_bias",
                "tiny.qwen",
                quant="q0f16",
                bundle_weights=False,
                model_url="https://example.com/tiny-qwen",
            ),
        ],
        app_id="com.example.tinychat",
        app_name="TinyChat",
    )
    result = package(config, root / "dist", root / "cache")
    assert result.exit_code == 0, result.output
    return {"root": root, "config": config, "out": root / "dist", "cache": root / "cache", "summary": result.stdout}


def test_android_bundle_layout_and_app_config(android):
    out = android["out"]
    summary = json.loads(android["summary"].strip().splitlines()[-1])
    assert [m["reused"] for m in summary["models"]] == [False, False]
    app = json.loads((out / "bundle" / APP_CONFIG_FILE).read_text())
    assert app["device"] == "android" and app["target"] == "android" and app["runtime_device"] == "opencl"
    assert [m["model_id"] for m in app["models"]] == ["tiny-llama", "tiny.qwen"]
    prefixes = [m["model_lib"] for m in app["models"]]
    assert prefixes == ["tiny_llama_q4f16_1_", "tiny_qwen_q0f16_"]

    for entry in app["models"]:
        folder = out / "bundle" / entry["model_path"]
        config = json.loads((folder / "llmc-config.json").read_text())
        assert config["system_lib_prefix"] == entry["model_lib"] and config["target"] == "android"
        assert (folder / "tokenizer.json").exists()
        assert not list(folder.glob("*.tar")) and not list(folder.glob("*.cl"))  # code is in lib/
        memory = entry["memory"]
        assert memory["weights_bytes"] == config["param_bytes"] > 0
        assert memory["kv_cache_bytes"] == kv_cache_bytes(config["model"], config["dtype"], CONTEXT)
        assert memory["activation_bytes"] == max(config["static_plan_bytes"].values()) > 0
        assert entry["estimated_memory_bytes"] == memory["total_bytes"] == estimate(config).total_bytes
        # the chat template (ChatML in the tiny checkpoints) rendered into fixed strings for the app
        assert entry["chat"]["user_to_assistant"] == "<|im_end|>\n<|im_start|>assistant\n", entry["chat_note"]
        assert entry["chat"]["checked_turns"] >= 3
    llama, qwen = (out / "bundle" / m["model_path"] for m in app["models"])
    assert (llama / "tensor-cache.json").exists() and list(llama.glob("params_shard_*.bin"))
    assert not (qwen / "tensor-cache.json").exists() and not list(qwen.glob("params_shard_*.bin"))
    assert app["models"][1]["model_url"] == "https://example.com/tiny-qwen"

    # one static archive holding both models, each registered under its own prefix
    members = model_objects(out, app)
    assert sorted(members) == sorted(p + name for p in prefixes for name in ("lib0.o", "devc.o"))
    objects = [parse_object(name, data) for name, data in members.items()]
    assert {(o.format, o.arch) for o in objects} == {("elf", "aarch64")}
    defined = set().union(*(o.defined for o in objects))
    assert {library_symbol(p) for p in prefixes} <= defined
    readme = (out / "README.md").read_text()
    assert "next steps" in readme.lower()
    # the device runtime is built from a pinned TVM release, the one that compiled the models
    tag = "v" + ".".join(json.loads((out / "bundle" / APP_CONFIG_FILE).read_text())["tvm_version"].split(".")[:3])
    assert f"git clone --branch {tag} --depth 1 --recursive" in readme
    assert "rendered, checked over 3 turns" in readme


def test_android_project_references_library_and_models(android):
    project = android["out"] / "android"
    kotlin = project / "app/src/main/java/com/example/tinychat"
    models_kt = (kotlin / "LlmcModels.kt").read_text()
    for model_id, prefix in [("tiny-llama", "tiny_llama_q4f16_1_"), ("tiny.qwen", "tiny_qwen_q0f16_")]:
        assert f'modelId = "{model_id}"' in models_kt and f'modelLib = "{prefix}"' in models_kt
    chat_kt = (kotlin / "LlmcChat.kt").read_text()
    assert "package com.example.tinychat" in chat_kt
    activity = (kotlin / "MainActivity.kt").read_text()
    for widget in ("EditText", "ScrollView", "Spinner", "tok/s", "chat?.stop()", "LlmcChat.load"):
        assert widget in activity
    jni = (project / "app/src/main/cpp/llmc_jni.cc").read_text()
    for method in JNI_METHODS:
        assert f"Java_com_example_tinychat_LlmcChat_{method}(" in jni
        assert f"fun {method}(" in chat_kt
    assert "kDLOpenCL" in jni
    cmake = (project / "app/src/main/cpp/CMakeLists.txt").read_text()
    assert "libllmc_models.a" in cmake and "--whole-archive" in cmake
    for source in ENGINE_SOURCES:
        assert source in cmake and (project / "app/src/main/cpp" / source).exists()
    # LLMC_DIST_DIR (5 levels up from src/main/cpp) is the package folder
    assert (project / "app/src/main/cpp" / "../../../../.." / "bundle" / APP_CONFIG_FILE).resolve().exists()
    if (android["out"] / "lib/libllmc_models.a").exists():
        assert '"${LLMC_DIST_DIR}/lib/libllmc_models.a"' in cmake
    else:  # no archiver here: CMake archives the objects
        assert '"${LLMC_DIST_DIR}/lib/objects/*.o"' in cmake
    gradle = (project / "app/build.gradle").read_text()
    assert 'applicationId "com.example.tinychat"' in gradle and '"../../bundle"' in gradle
    assert (project / "app" / "../../bundle" / APP_CONFIG_FILE).resolve().exists()
    assert 'rootProject.name = "TinyChat"' in (project / "settings.gradle").read_text()
    assert (project / "app/src/main/cpp/llmc_engine.cc").exists()


def test_android_jni_glue_compiles(android):
    """The rendered JNI glue + C++ engine compile against jni.h and TVM's tvm-ffi headers (syntax only)."""
    compiler = shutil.which("g++") or shutil.which("clang++")
    jdk_headers = sorted(Path("/usr/lib/jvm").glob("*/include/jni.h")) if Path("/usr/lib/jvm").is_dir() else []
    if compiler is None or not jdk_headers:
        pytest.skip("needs g++/clang++ and a JDK's jni.h (apt-get install default-jdk-headless)")
    import tvm_ffi

    include = jdk_headers[0].parent
    cpp = android["out"] / "android/app/src/main/cpp"
    for source in ("llmc_jni.cc", "llmc_chat.cc", "llmc_engine.cc"):
        done = subprocess.run(
            [compiler, "-std=c++17", "-fsyntax-only", f"-I{include}", f"-I{include / 'linux'}",
             f"-I{Path(tvm_ffi.__file__).parent / 'include'}", str(cpp / source)],
            capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]


JNI_TYPES = {
    "jlong": "J",
    "jint": "I",
    "jfloat": "F",
    "jstring": "Ljava/lang/String;",
    "void": "V",
    "jdoubleArray": "[D",
}


def test_android_kotlin_compiles_against_android_stubs(android, tmp_path):
    """The generated Kotlin (chat screen, engine wrapper, model list) compiles with kotlinc against compile-only
    stubs of the Android widgets it uses (tests/android_stubs; no Android SDK here), and each `external fun`
    has the JNI signature the C++ glue implements."""
    kotlinc, javac, javap = shutil.which("kotlinc"), shutil.which("javac"), shutil.which("javap")
    if not (kotlinc and javac and javap):
        pytest.skip("needs kotlinc and a JDK (apt-get install kotlin default-jdk-headless)")
    stubs = sorted(map(str, (Path(__file__).parent / "android_stubs").rglob("*.java")))
    done = subprocess.run([javac, "-d", str(tmp_path / "stubs"), *stubs], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    kotlin = sorted(map(str, (android["out"] / "android/app/src/main/java").rglob("*.kt")))
    done = subprocess.run(
        [kotlinc, "-cp", str(tmp_path / "stubs"), "-d", str(tmp_path / "classes"), *kotlin],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    described = subprocess.run(
        [javap, "-p", "-s", "-cp", str(tmp_path / "classes"), "com.example.tinychat.LlmcChat"],
        capture_output=True, text=True,
    ).stdout  # fmt: skip
    natives = dict(re.findall(r"native \S+ (\w+)\(.*\);\n\s+descriptor: (\S+)", described))
    assert sorted(natives) == sorted(JNI_METHODS)
    jni = (android["out"] / "android/app/src/main/cpp/llmc_jni.cc").read_text()
    prefix = "JNIEXPORT (\\w+) JNICALL Java_com_example_tinychat_LlmcChat_"
    for method, descriptor in natives.items():
        returns, params = re.search(prefix + method + r"\(\s*JNIEnv\*[^,]*, jclass,?([^)]*)\)", jni).groups()
        types = [p.split()[0] for p in params.replace("\n", " ").split(",") if p.strip()]
        pattern = "".join(r"L[\w/$]+;" if t == "jobject" else re.escape(JNI_TYPES[t]) for t in types)
        assert re.fullmatch(r"\(" + pattern + r"\)" + re.escape(JNI_TYPES[returns]), descriptor), (method, descriptor)
    classes = str(tmp_path / "classes")
    listener = subprocess.run(
        [javap, "-s", "-cp", classes, "com.example.tinychat.TextListener"], capture_output=True, text=True
    ).stdout
    assert "onText(java.lang.String);\n    descriptor: (Ljava/lang/String;)V" in listener
    assert 'GetMethodID(listener_class, "onText", "(Ljava/lang/String;)V")' in jni


def test_second_run_reuses_and_changed_override_recompiles(android, checkpoints):
    # same inputs: nothing is compiled again
    result = package(android["config"], android["out"], android["cache"], "--force")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert [m["reused"] for m in summary["models"]] == [True, True]
    assert all(m["seconds"] < 5 for m in summary["models"])
    # a changed override rebuilds that model only; a tight budget warns with the estimate
    data = json.loads(android["config"].read_text())
    data["models"][0]["context_window"] = CONTEXT * 2
    data["memory_budget_mb"] = 0.05
    changed = android["config"].with_name("changed.json")
    changed.write_text(json.dumps(data))
    result = package(changed, android["root"] / "dist2", android["cache"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert [m["reused"] for m in summary["models"]] == [False, True]
    assert "llmc: warning: model tiny-llama needs an estimated" in result.stderr
    assert "over the memory budget of 0.05 MiB" in result.stderr
    app = json.loads((android["root"] / "dist2" / "bundle" / APP_CONFIG_FILE).read_text())
    assert app["models"][0]["context_window"] == CONTEXT * 2
    assert app["models"][0]["fits_memory_budget"] is False


def test_without_an_archiver_objects_stay_per_model(android, monkeypatch):
    monkeypatch.setattr("llmc.package.staticlib.find_archiver", lambda: None)
    out = android["root"] / "dist-no-ar"
    result = package(android["config"], out, android["cache"])
    assert result.exit_code == 0, result.output
    app = json.loads((out / "bundle" / APP_CONFIG_FILE).read_text())
    assert app["model_library"] is None and not (out / "lib/libllmc_models.a").exists()
    assert sorted(f.name for f in (out / "lib/objects/tiny-llama").iterdir()) == [
        "tiny_llama_q4f16_1_devc.o",
        "tiny_llama_q4f16_1_lib0.o",
    ]
    cmake = (out / "android/app/src/main/cpp/CMakeLists.txt").read_text()
    assert 'file(GLOB_RECURSE LLMC_MODEL_OBJECTS "${LLMC_DIST_DIR}/lib/objects/*.o")' in cmake
    assert "No `llvm-ar`/`ar` was found" in (out / "README.md").read_text()


def test_output_exists_needs_force(android):
    result = package(android["config"], android["out"], android["cache"])
    assert result.exit_code == 1
    assert "already exists. Pass --force" in result.stderr


def test_inspect_prints_config_and_memory(android):
    app = json.loads((android["out"] / "bundle" / APP_CONFIG_FILE).read_text())
    # the cache may also hold the recompile of test_second_run_reuses_... (context_window doubled)
    artifact = next(
        folder
        for folder in android["cache"].glob("artifacts/tiny-llama-android-*")
        if json.loads((folder / "llmc-config.json").read_text())["context_window"] == CONTEXT
    )
    result = CliRunner().invoke(main, ["inspect", str(artifact), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["quantization"] == "q4f16_1" and info["target"] == "android"
    assert info["system_lib_prefix"] == "tiny_llama_q4f16_1_"
    assert info["memory"]["total_bytes"] == app["models"][0]["estimated_memory_bytes"]
    text = CliRunner().invoke(main, ["inspect", str(artifact)]).stdout
    for field in ("quantization:", "weights:", "KV cache:", "activations:", "memory:"):
        assert field in text
    # a package folder: its models and estimates
    text = CliRunner().invoke(main, ["inspect", str(android["out"])]).stdout
    assert "package for android" in text and "tiny_llama_q4f16_1_" in text and "tiny_qwen_q0f16_" in text
    assert "weights from https://example.com/tiny-qwen" in text
    as_json = json.loads(CliRunner().invoke(main, ["inspect", str(android["out"]), "--json"]).stdout)
    assert as_json == app


def test_iphone_package(checkpoints, tmp_path):
    config = write_config(tmp_path / "configs", [tiny(checkpoints, "llama_tied", "tiny-llama")], device="iphone")
    result = package(config, tmp_path / "dist", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    out = tmp_path / "dist"
    app = json.loads((out / "bundle" / APP_CONFIG_FILE).read_text())
    assert app["target"] == "iphone" and app["runtime_device"] == "metal"
    members = model_objects(out, app)
    objects = {name: parse_object(name, data) for name, data in members.items()}
    assert {(o.format, o.arch) for o in objects.values()} == {("macho", "arm64")}
    assert library_symbol("tiny_llama_q4f16_1_") in set().union(*(o.defined for o in objects.values()))
    # TVM's strong fp16 helpers are weak in the archive, so a second model links beside this one
    assert _macho_weak(members["tiny_llama_q4f16_1_lib0.o"]) >= set(SHARED_HELPERS)
    swift = (out / "ios/Sources/LLMC/LLMCModels.swift").read_text()
    assert 'modelId: "tiny-llama"' in swift and 'modelLib: "tiny_llama_q4f16_1_"' in swift
    manifest = (out / "ios/Package.swift").read_text()
    assert '"-Wl,-force_load,\\(dist)/lib/libllmc_models.a"' in manifest  # made on the Mac when no llvm-ar
    bridge = (out / "ios/Sources/LLMCRuntime/LLMCRuntime.mm").read_text()
    header = (out / "ios/Sources/LLMCRuntime/include/LLMCRuntime.h").read_text()
    for selector in ("initWithAppConfig:", "sendMessage:", "- (void)stop", "resetWithSystemPrompt:"):
        assert selector in bridge and selector in header
    assert "llmc::Chat" in bridge and "kDLMetal" in bridge
    for source in ENGINE_SOURCES:
        assert (out / "ios/Sources/LLMCRuntime" / source).exists()
    chat_swift = (out / "ios/Sources/LLMC/LLMCChat.swift").read_text()
    assert "native.sendMessage(" in chat_swift and "native.reset(withSystemPrompt:" in chat_swift
    view = (out / "ios/Sources/LLMC/LLMCChatView.swift").read_text()
    for part in ("TextField(", 'Button("Stop")', "tok/s", "Picker(", "ScrollViewReader"):
        assert part in view
    assert "Xcode" in (out / "README.md").read_text()


BLOCKS_RUNTIME_SHIM = """#pragma once
extern "C" void *_Block_copy(const void *);
extern "C" void _Block_release(const void *);
"""


def test_ios_bridge_compiles_against_gnustep_foundation(tmp_path):
    """The Objective-C++ bridge (LLMCRuntime.mm over llmc::Chat) passes clang's syntax check with GNUstep's
    Foundation headers and TVM's tvm-ffi headers (no Xcode or Swift compiler here: the Swift is not compiled)."""
    clang = shutil.which("clang++")
    gcc_objc = sorted(Path("/usr/lib/gcc").glob("*/*/include/objc/objc.h"))
    if clang is None or not Path("/usr/include/GNUstep/Foundation/Foundation.h").exists() or not gcc_objc:
        pytest.skip("needs clang++ and GNUstep's Foundation headers (apt-get install clang libgnustep-base-dev)")
    import tvm_ffi

    (tmp_path / "objc").mkdir()
    (tmp_path / "objc/blocks_runtime.h").write_text(BLOCKS_RUNTIME_SHIM)  # Debian ships GCC's runtime headers only
    templates = Path(__file__).resolve().parents[1] / "llmc/templates"
    runtime = templates / "ios/Sources/LLMCRuntime"
    done = subprocess.run(
        [clang, "-x", "objective-c++", "-std=c++17", "-fsyntax-only", "-fblocks", "-fobjc-runtime=gnustep-2.0",
         "-fexceptions", "-fobjc-exceptions", "-DGNUSTEP", "-DGNUSTEP_BASE_LIBRARY=1", "-DGNU_RUNTIME=1",
         f"-I{tmp_path}", f"-I{gcc_objc[0].parent.parent}", "-I/usr/include/GNUstep", f"-I{runtime / 'include'}",
         f"-I{templates / 'common'}", f"-I{Path(tvm_ffi.__file__).parent / 'include'}",
         str(runtime / "LLMCRuntime.mm")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


def _macho_weak(data: bytes) -> set[str]:
    """Names of the weak defined symbols of a Mach-O 64 object."""
    ncmds, offset, weak = struct.unpack_from("<I", data, 16)[0], 32, set()
    for _ in range(ncmds):
        cmd, size = struct.unpack_from("<II", data, offset)
        if cmd == 0x2:
            symoff, nsyms, stroff, _ = struct.unpack_from("<IIII", data, offset + 8)
            for i in range(nsyms):
                strx, n_type, _, n_desc = struct.unpack_from("<IBBH", data, symoff + 16 * i)
                if n_desc & N_WEAK_DEF and n_type & 0x0E:
                    weak.add(data[stroff + strx : data.index(0, stroff + strx)].decode())
        offset += size
    return weak


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"device": "blackberry"}, "unknown device 'blackberry'; use one of: android, iphone"),
        ({"target": "iphone"}, "target 'iphone' does not run on android"),
        ({"models": []}, "'models' must be a non-empty list"),
        ({"models": [{"model": "m", "model_id": "a"}, {"model": "n", "model_id": "a"}]}, "duplicate model_id 'a'"),
        ({"models": [{"model": "m", "model_id": "a", "quant": "q9"}]}, "unknown quant 'q9'"),
        ({"models": [{"model": "m", "model_id": "a", "bundle_weights": False}]}, "give 'model_url'"),
        ({"models": [{"model": "m", "model_id": "a-b"}, {"model": "m", "model_id": "a_b"}]}, "same library symbol"),
        ({"models": [{"model": "m", "model_id": "a", "context_window": 0}]}, "must be a positive integer"),
        ({"colour": "red"}, "unknown key(s) colour"),
        ({"models": [{"model": "no/such/folder", "model_id": "a"}]}, "models[0] (a): no/such/folder: no such file"),
        ({"models": [{"model": "llama3-8b", "model_id": "a"}]}, "architecture-only preset without weights"),
    ],
)
def test_bad_config(tmp_path, change, message):
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"device": "android", "models": [{"model": "m", "model_id": "a"}], **change}))
    result = CliRunner().invoke(
        main, ["package", str(config), "-o", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    )
    assert result.exit_code == 1
    assert result.stderr.startswith(f"llmc: error: {config}: ")
    assert message in result.stderr
    assert not (tmp_path / "out").exists()


def test_example_configs_are_valid():
    root = Path(__file__).resolve().parents[1] / "configs" / "package"
    for name, device in [("android-example.json", "android"), ("iphone-example.json", "iphone")]:
        spec = load_spec(root / name)
        assert spec.device.name == device
        assert [(m.model, m.quant) for m in spec.models] == [("smollm2-135m", "q4f16_1")]


# ---------------------------------------------------------------------- the C++ engine, for real
ENGINE_MAIN = r"""
#include <cstdio>
#include <fstream>
#include <sstream>
#include "llmc_engine.h"
// usage: engine_main PREFIX MODEL_DIR CONTEXT CHUNK PARAM_FILE TOKEN...
int main(int argc, char** argv) {
  llmc::ModelSpec spec;
  spec.model_lib = argv[1];
  spec.model_dir = argv[2];
  spec.context_window = std::stoll(argv[3]);
  spec.prefill_chunk = std::stoll(argv[4]);
  std::ifstream names(argv[5]);
  for (std::string name; std::getline(names, name);) spec.param_names.push_back(name);
  std::vector<int32_t> prompt;
  for (int i = 6; i < argc; ++i) prompt.push_back(std::stoi(argv[i]));
  llmc::Engine engine(spec, kDLCPU);
  std::vector<float> logits = engine.Prefill(prompt);
  for (float v : logits) std::printf("%.6g ", v);
  std::printf("\n");
  int32_t token = llmc::Engine::Argmax(logits);
  for (int step = 0; step < 4; ++step) {
    std::printf("%d ", token);
    token = llmc::Engine::Argmax(engine.Decode(token));
  }
  std::printf("\n");
  engine.Reset();  // a new conversation gives the first prompt's logits again
  for (float v : engine.Prefill(prompt)) std::printf("%.6g ", v);
  std::printf("\n%lld\n", static_cast<long long>(engine.Length()));
  return 0;
}
"""


def test_cpp_engine_runs_two_models_from_one_archive(checkpoints, compiled, tmp_path, monkeypatch):
    """llmc/templates/common/llmc_engine.cc, linked with host system-lib builds of two models merged into one
    archive (as `llmc package` merges phone builds), gives each model's logits as the Python engine does."""
    compiler = shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        pytest.skip("no C++ compiler (g++ or clang++) to build llmc's C++ engine")
    if platform.machine() != "x86_64" or sys.platform != "linux":
        pytest.skip("the host system-lib preset here is x86-64 Linux")
    import tvm
    import tvm_ffi

    from llmc.compile import CompileOptions, compile_model
    from llmc.compiler import backends, targets
    from llmc.package.staticlib import extract_objects, make_archive
    from llmc.runtime.engine import Engine

    host = {"kind": "llvm", "mtriple": "x86_64-unknown-linux-gnu"}
    preset = targets.TargetPreset(
        "llvm-syslib", "test: this CPU as a static system lib", {**targets.TARGETS["llvm"].target, **host}, ".tar",
        host=host, system_lib=True, backend=backends.SystemLibBackend("elf", "x86_64"),
    )  # fmt: skip
    monkeypatch.setitem(targets.TARGETS, "llvm-syslib", preset)
    models = {"llama_tied": "tinyllama_q0f32_", "qwen2_bias": "tinyqwen_q0f32_"}
    artifacts, objects = {}, []
    for name, prefix in models.items():
        options = CompileOptions(
            target="llvm-syslib", quant="q0f32", output=tmp_path / name, quiet=True, context_window=128,
            prefill_chunk=24, max_batch_size=4, system_lib_prefix=prefix,
        )  # fmt: skip
        artifacts[name] = compile_model(str(checkpoints[name]), options)
        library = artifacts[name] / json.loads((artifacts[name] / "llmc-config.json").read_text())["library"]
        objects += extract_objects(library, prefix, tmp_path / "objects" / name)
    archive = tmp_path / "libllmc_models.a"
    model_code = [str(archive)] if make_archive(objects, archive, darwin=False) else list(map(str, objects))

    common = Path(__file__).resolve().parents[1] / "llmc" / "templates" / "common"
    (tmp_path / "main.cc").write_text(ENGINE_MAIN)
    tvm_lib = Path(tvm.__file__).parent / "lib"
    ffi_root = Path(tvm_ffi.__file__).parent
    binary = tmp_path / "engine_main"
    command = [
        compiler, "-std=c++17", f"-I{common}", f"-I{ffi_root / 'include'}",
        str(tmp_path / "main.cc"), str(common / "llmc_engine.cc"),
        "-Wl,--whole-archive", *model_code, "-Wl,--no-whole-archive",
        f"-L{tvm_lib}", f"-L{ffi_root / 'lib'}", "-ltvm_runtime", "-ltvm_ffi",
        f"-Wl,-rpath,{tvm_lib}", f"-Wl,-rpath,{ffi_root / 'lib'}", "-o", str(binary),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    prompt = np.random.default_rng(0).integers(3, 300, 30).tolist()  # two prefill chunks: 24 + 6
    for name, prefix in models.items():
        config = json.loads((artifacts[name] / "llmc-config.json").read_text())
        (tmp_path / "params.txt").write_text("\n".join(config["params"]))
        run = subprocess.run(
            [str(binary), prefix, str(artifacts[name]), "128", "24", str(tmp_path / "params.txt"), *map(str, prompt)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        logits_line, tokens_line, again_line, length_line = run.stdout.strip().splitlines()
        cpp_logits = np.array([float(v) for v in logits_line.split()], dtype=np.float32)
        assert again_line == logits_line and int(length_line) == len(prompt)

        reference = Engine(compiled(name, "q0f32"))
        reference.add_sequence(0)
        py_logits = reference.prefill(0, prompt)
        np.testing.assert_allclose(cpp_logits, py_logits, rtol=1e-4, atol=1e-4 * float(np.abs(py_logits).max()))
        token, expected = int(np.argmax(py_logits)), []
        for _ in range(4):
            expected.append(token)
            token = int(np.argmax(reference.decode(0, token)))
        assert [int(t) for t in tokens_line.split()] == expected, name
