"""The ``llmc`` command line: parses arguments and prints; the work happens in the workflow modules.

``llmc.compile`` (compile, quantize), ``llmc.evaluate`` (eval), ``llmc.benchmark`` (bench),
``llmc.inspection`` (inspect), ``llmc.package`` (package), ``llmc.runtime`` and ``llmc.serve`` (run, chat,
serve) return data or run the loop; errors of the ``LlmcError`` family become one line on stderr.
"""

from __future__ import annotations

import functools
import json
import sys
import traceback
from pathlib import Path

import click

import llmc
from llmc.errors import LlmcError

DEFAULT_EVAL_TEXT = "<pydoc>"
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class LlmcGroup(click.Group):
    """Turns LlmcError (and anything unexpected) into one line on stderr; ``--verbose`` shows the trace."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            click.echo("llmc: interrupted; partial outputs were removed.", err=True)
            sys.exit(130)
        except LlmcError as err:
            self._fail(ctx, f"llmc: error: {err}")
        except Exception as err:  # noqa: BLE001 - the CLI must not print bare tracebacks
            self._fail(
                ctx,
                f"llmc: internal error: {err.__class__.__name__}: {err}. Re-run with --verbose and report the trace.",
            )

    @staticmethod
    def _fail(ctx: click.Context, message: str) -> None:
        if ctx.obj and ctx.obj.get("verbose"):
            traceback.print_exc()
        click.echo(message, err=True)
        sys.exit(1)


@click.group(cls=LlmcGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(llmc.__version__, prog_name="llmc")
@click.option("-v", "--verbose", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """llmc compiles Hugging Face and GGUF language models into fast TVM libraries and runs them.

    \b
    Typical use:
      llmc compile smollm2-135m --target llvm -o dist/smollm2
      llmc run dist/smollm2 --prompt "What is a compiler?"
      llmc chat dist/smollm2

    MODEL is a checkpoint folder (config.json + *.safetensors), hf://org/name[@revision], a .gguf
    file, or a preset name (`llmc models`).
    """
    ctx.obj = {"verbose": verbose}


@main.command()
@click.argument("model")
@click.option("--target", "-t", default="llvm", show_default=True, help="Target preset (`llmc targets`).")
@click.option(
    "--quant",
    "-q",
    default=None,
    help="Quantization scheme (`llmc quants`) [default: keep for a GGUF file or an MXFP4 checkpoint, a weights "
    "folder's own, an AWQ/GPTQ/fp8 checkpoint's own (awq, gptq, fp8), else q0f32].",
)
@click.option("--fp-embeddings", is_flag=True, help="Keep the embedding and lm_head in full precision.")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="Artifact folder to create [default: dist/<model>-<quant>-<target>].",
)
@click.option(
    "--context-window",
    type=int,
    help="Max tokens per sequence (KV cache size) [default: the model's max_position_embeddings, at most 4096].",
)
@click.option(
    "--prefill-chunk", type=int, help="Max tokens per prefill call; longer prompts are chunked [default: 512]."
)
@click.option(
    "--max-batch-size",
    type=int,
    default=8,
    show_default=True,
    help="Max sequences per batch_decode call (bounds static memory).",
)
@click.option("--force", is_flag=True, help="Replace the output folder if it exists.")
@click.option("--debug-dump", type=click.Path(path_type=Path), help="Write the IR after each pipeline phase here.")
@click.option(
    "--opt",
    type=click.Choice(["O0", "O1", "O2", "O3"]),
    default="O2",
    show_default=True,
    help="O0: no fusion or tuned schedules; O1: + fusion, static memory plan; O2: + tuned schedules; "
    "O3: + CUDA graphs (CUDA targets).",
)
@click.option(
    "--random-weights",
    is_flag=True,
    help="Store no weights: the runtime draws them from a seed (benchmarks and checks of full-size shapes).",
)
@click.option(
    "--system-lib-prefix",
    default=None,
    metavar="PREFIX",
    help="Symbol prefix of a phone build (android, iphone), unique per model so several link into one app "
    "[default: from the model name and quant, e.g. smollm2_135m_q4f16_1_].",
)
@click.option(
    "--cpu-kernels",
    "--cpu-matmul",  # its name before round 5
    "cpu_kernels",
    type=click.Choice(["int8", "float"]),
    default="int8",
    show_default=True,
    help="x86 CPU targets, 4- and 8-bit schemes: int8 quantizes activations per group of 32 and multiplies "
    "in integers (AVX512-VNNI/AVX-VNNI/AVX2, as llama.cpp does); float dequantizes weights to float32 "
    "and keeps TVM's own attention and SiLU kernels (exact, slower: the reference path).",
)
@click.option(
    "--embedding",
    is_flag=True,
    help="Also export the final hidden states (last-token pooling, L2-normalized), for `llmc serve`'s "
    "/v1/embeddings: decoder embedding models such as Qwen3-Embedding.",
)
@click.option(
    "--tensor-parallel-shards",
    type=int,
    default=1,
    show_default=True,
    metavar="N",
    help="Shard the model over N workers (heads and MLP columns split, allreduce after attention and MLP), "
    "run with TVM's disco: one process per GPU (NCCL), or per CPU shard (Gloo, through torch).",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def compile(
    model,
    target,
    quant,
    fp_embeddings,
    output,
    context_window,
    prefill_chunk,
    max_batch_size,
    force,
    debug_dump,
    opt,
    random_weights,
    system_lib_prefix,
    cpu_kernels,
    embedding,
    tensor_parallel_shards,
    quiet,
):
    """Compile MODEL into an artifact folder: weights, tokenizer, config and the model library.

    MODEL may also be a weights folder written by `llmc quantize`: its weights are reused as they
    are and only the library is built. The folder is written under a temporary name and renamed
    into place only when complete, so an interrupted or failed compile leaves nothing behind.
    """
    from llmc.compiler.targets import prepare_target

    preset = prepare_target(target)  # fail fast on unknown names, before any loading
    from llmc.quant import get_quant

    if quant:
        get_quant(quant)
    from llmc.compile import compile_model
    from llmc.plan import CompileOptions

    options = CompileOptions(
        target=target,
        quant=quant,
        output=output,
        context_window=context_window,
        prefill_chunk=prefill_chunk,
        max_batch_size=max_batch_size,
        quantize_embeddings=not fp_embeddings,
        force=force,
        quiet=quiet,
        debug_dump=debug_dump,
        opt_level=int(opt[1]),
        random_weights=random_weights,
        system_lib_prefix=system_lib_prefix,
        cpu_kernels=cpu_kernels,
        embedding=embedding,
        tensor_parallel_shards=tensor_parallel_shards,
    )
    out_dir = compile_model(model, options)  # a failed compile leaves no dist/ behind
    click.echo(f"wrote {out_dir}")
    if preset.note:
        click.echo(f"note: {preset.note}")


@main.command()
@click.argument("model")
@click.option("--quant", "-q", required=True, help="Quantization scheme (`llmc quants`), e.g. q4f16_1.")
@click.option("--fp-embeddings", is_flag=True, help="Keep the embedding and lm_head in full precision.")
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), help="Weights folder to create [default: dist/<model>-<quant>]."
)
@click.option("--force", is_flag=True, help="Replace the output folder if it exists.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option(
    "--eval",
    "eval_text",
    is_flag=False,
    flag_value=DEFAULT_EVAL_TEXT,
    default=None,
    metavar="[TEXT_FILE]",
    help="Then report perplexity beside q0f32's, on TEXT_FILE or a fixed slice of CPython's pydoc topics.",
)
@click.option("--window", type=int, default=512, show_default=True, help="Tokens per perplexity window.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def quantize(model, quant, fp_embeddings, output, force, quiet, eval_text, window, as_json):
    """Convert MODEL's weights to a quantization scheme: weights + tokenizer + llmc-config.json.

    `llmc compile DIR --target ...` then builds a library for the folder without re-quantizing.
    Conversion streams one tensor at a time on two threads.
    """
    from llmc.compile import quantize_report
    from llmc.plan import CompileOptions

    options = CompileOptions(
        quant=quant, output=output, force=force, quiet=quiet, quantize_embeddings=not fp_embeddings
    )
    summary = quantize_report(model, options)
    if not as_json:
        click.echo(
            f"wrote {summary['output']}: {summary['bytes'] / 2**20:.1f} MiB, "
            f"{summary['bits_per_param']:.2f} bits/param, {summary['seconds']:.1f} s"
        )
    if eval_text is not None:
        from llmc.evaluate import quantized_perplexity

        text_file = None if eval_text == DEFAULT_EVAL_TEXT else eval_text
        summary.update(quantized_perplexity(model, Path(summary["output"]), text_file, window, quiet))
        if not as_json:
            click.echo(
                f"perplexity on {summary['text']} ({summary['tokens']} tokens): {summary['quantization']} "
                f"{summary['perplexity']:.4f}, q0f32 {summary['q0f32_perplexity']:.4f}"
            )
    if as_json:
        click.echo(json.dumps(summary))


@main.command(name="eval")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option(
    "--text",
    "text_file",
    type=click.Path(path_type=Path),
    default=None,
    help="Text file to score [default: a fixed slice of CPython's pydoc topics].",
)
@click.option("--window", type=int, default=512, show_default=True, help="Tokens per perplexity window.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def eval_command(artifact, text_file, window, as_json):
    """Perplexity of a compiled ARTIFACT on a text."""
    from llmc.evaluate import text_perplexity

    result = text_perplexity(artifact, text_file, window)
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(
            f"perplexity {result['perplexity']:.4f} over {result['tokens']} tokens of {result['text']} "
            f"({result['seconds']:.1f} s)"
        )


def _sampling_options(func):
    @click.option("--max-tokens", type=int, default=128, show_default=True, help="Max new tokens.")
    @click.option("--temperature", type=float, default=0.7, show_default=True, help="0 means greedy.")
    @click.option("--top-p", type=float, default=0.95, show_default=True, help="Nucleus sampling mass.")
    @click.option("--seed", type=int, default=None, help="Sampling seed (reproducible output).")
    @click.option("--device", default="cpu", show_default=True, help="TVM device to run on (cpu, cuda, ...).")
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)

    return wrapper


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--prompt", "-p", required=True, help="The prompt text.")
@click.option(
    "--chat/--no-chat",
    default=None,
    help="Wrap the prompt in the model's chat template [default: when the model has one].",
)
@click.option("--system", default=None, help="System message (with --chat).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (ids, text, tok/s).")
@_sampling_options
def run(artifact, prompt, chat, system, as_json, max_tokens, temperature, top_p, seed, device):
    """Generate text from a compiled ARTIFACT for one prompt."""
    from llmc.artifact import require_compiled
    from llmc.runtime.session import Session

    require_compiled(artifact)
    session = Session(artifact, device)
    prompt_ids = session.prompt_ids(prompt, chat, system)
    stream = None if as_json else session.streamer(lambda text: click.echo(text, nl=False))
    result = session.generate(prompt_ids, max_tokens, temperature, top_p, seed, on_token=stream)
    text = session.tokenizer.decode(result.output_ids)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "prompt_ids": result.prompt_ids,
                    "output_ids": result.output_ids,
                    "text": text,
                    "finish_reason": result.finish_reason,
                    "prompt_tokens": len(result.prompt_ids),
                    "output_tokens": len(result.output_ids),
                    "prefill_tok_s": round(result.prefill_tok_s, 3),
                    "decode_tok_s": round(result.decode_tok_s, 3),
                },
                ensure_ascii=False,
            )
        )
        return
    click.echo()
    if result.finish_reason == "context_window":
        click.echo(f"[stopped: reached the context window of {session.engine.context_window} tokens]", err=True)
    click.echo(
        f"[prefill {len(result.prompt_ids)} tok, {result.prefill_tok_s:.1f} tok/s; "
        f"decode {len(result.output_ids)} tok, {result.decode_tok_s:.1f} tok/s]",
        err=True,
    )


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--system", default=None, help="System message.")
@_sampling_options
def chat(artifact, system, max_tokens, temperature, top_p, seed, device):
    """Chat with a compiled ARTIFACT. /help lists the commands.

    When the conversation outgrows the context window the oldest turns are dropped (the system
    message stays). Ctrl-C stops an answer; Ctrl-C twice at the prompt, Ctrl-D or /exit quits.
    """
    import signal

    from llmc.artifact import require_compiled
    from llmc.runtime.chat_loop import ChatLoop

    require_compiled(artifact)
    loop = ChatLoop(artifact, device, system, max_tokens, temperature, top_p, seed)
    previous = signal.signal(signal.SIGINT, loop.on_sigint)
    try:
        loop.run()
    finally:
        signal.signal(signal.SIGINT, previous)


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8000, show_default=True, help="Port (0: any free port, printed).")
@click.option("--max-batch", type=int, default=None, help="Sequences decoded together [default: the artifact's].")
@click.option("--max-queue", type=int, default=64, show_default=True, help="Waiting requests before 429 answers.")
@click.option("--api-key", default=None, envvar="LLMC_API_KEY", help="Require 'Authorization: Bearer KEY'.")
@click.option("--model-name", default=None, help="The model id clients send [default: the artifact folder's name].")
@click.option(
    "--prefix-cache/--no-prefix-cache",
    default=True,
    show_default=True,
    help="Keep finished sequences so prompts sharing their start fork them instead of prefilling again.",
)
@click.option("--device", default="cpu", show_default=True, help="TVM device to run on (cpu, cuda, ...).")
def serve(artifact, host, port, max_batch, max_queue, api_key, model_name, prefix_cache, device):
    """Serve a compiled ARTIFACT over the OpenAI API (chat and completions, streaming or not).

    \b
    Routes: GET /v1/models, POST /v1/chat/completions, POST /v1/completions, GET /health,
    GET /metrics (Prometheus). Requests join and leave one running batch at every decode step;
    prompts sharing a prefix with a recent request reuse its KV cache. SIGTERM or Ctrl-C stops
    accepting, lets requests in flight finish, and exits 0.
    """
    from llmc.serve.server import serve as run_server

    if max_batch is not None and max_batch < 1:
        raise LlmcError(f"--max-batch {max_batch}: must be at least 1.")
    if max_queue < 0:
        raise LlmcError(f"--max-queue {max_queue}: must be 0 or more.")
    run_server(artifact, host, port, max_batch, max_queue, api_key, device, model_name, prefix_cache)


@main.command()
@click.argument("model")
@click.option(
    "--random-weights",
    is_flag=True,
    help="MODEL is compiled without weights; they are drawn from --seed where the model runs.",
)
@click.option("--target", "-t", default="llvm", show_default=True, help="Target preset, when MODEL is compiled.")
@click.option(
    "--quant",
    "-q",
    default=None,
    help="Quantization scheme, when MODEL is compiled [default: keep for a GGUF file or an MXFP4 checkpoint, "
    "a checkpoint's own AWQ/GPTQ/fp8, else q0f32].",
)
@click.option("--batch", type=int, default=1, show_default=True, help="Sequences decoded together.")
@click.option("--prompt-len", type=int, default=512, show_default=True, help="Prompt tokens per sequence.")
@click.option("--gen-len", type=int, default=128, show_default=True, help="Generated tokens per sequence.")
@click.option("--repeats", type=int, default=3, show_default=True, help="Runs; medians are reported.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for prompts and random weights.")
@click.option("--device", default=None, help="TVM device [default: the artifact's, e.g. cpu or cuda].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench(model, random_weights, target, quant, batch, prompt_len, gen_len, repeats, seed, device, as_json):
    """Measure prefill and decode tok/s, time to first token and peak memory.

    MODEL is a compiled artifact folder, or anything `llmc compile` takes (it is compiled into a
    temporary folder first; the compile time is reported). Architecture-only presets such as
    llama3-8b need --random-weights: speed does not depend on the weights' values.
    """
    from llmc.benchmark import benchmark

    result = benchmark(
        model,
        target=target,
        quant=quant,
        random_weights=random_weights,
        batch=batch,
        prompt_len=prompt_len,
        gen_len=gen_len,
        repeats=repeats,
        seed=seed,
        device=device,
    )
    compile_seconds = result["compile_seconds"]
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(
        f"{model} [{result['target']}, {result['quantization']}] batch {batch}: "
        f"prefill {result['prefill_tok_s']:.1f} tok/s ({prompt_len} tokens), "
        f"decode {result['decode_tok_s']:.1f} tok/s ({gen_len} steps), TTFT {result['ttft_ms']:.1f} ms, "
        f"peak RSS {result['peak_host_rss_mib']:.0f} MiB"
        + (f", compile {compile_seconds:.1f} s" if compile_seconds is not None else "")
    )


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
def verify(artifact):
    """Check an ARTIFACT's files: config schema, paths, sizes, every shard's md5 and the library's sha256.

    `llmc run` does the same on the first load of an artifact copy and then checks sizes only;
    verify forces the full check (after copying an artifact, or when a disk is suspect).
    """
    from llmc.artifact import read_config
    from llmc.artifact_checks import verify_artifact

    summary = verify_artifact(artifact, read_config(artifact), force=True)
    click.echo(
        f"verified {artifact}: {summary['shards']} weight shards ({summary['weight_bytes'] / 2**20:.1f} MiB)"
        + (f", library {summary['library']}" if summary["library"] else "")
    )


@main.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), default=Path("dist"), show_default=True, help="Folder to create."
)
@click.option("--force", is_flag=True, help="Replace the output folder if it exists.")
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where compiled models are kept for reuse [default: $LLMC_CACHE_DIR or ~/.cache/llmc/package].",
)
@click.option(
    "--target",
    type=click.Choice(["webgpu"]),
    default=None,
    help="webgpu: CONFIG is instead a MODEL (or a --target webgpu artifact); OUTPUT gets the web page bundle.",
)
@click.option(
    "--quant",
    default="q4f32_1",
    show_default=True,
    help="With --target webgpu: the scheme to compile MODEL at (f32 runs on adapters without shader-f16).",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def package(config, output, force, cache_dir, target, quant, quiet, as_json):
    """Bundle the models of CONFIG into a phone app folder: libraries, weights, app project.

    \b
    CONFIG is JSON (examples in configs/package/):
      {"device": "android" | "iphone", "memory_budget_mb": 3000,
       "models": [{"model": "smollm2-135m", "model_id": "smollm2", "quant": "q4f16_1",
                   "context_window": 2048, "prefill_chunk": 256, "bundle_weights": true}]}
    Each model is compiled for the device with its own library prefix, or reused from the cache
    when its inputs (model files, quant, target, overrides, llmc) hash the same. OUTPUT gets
    lib/ (one static archive), bundle/ (llmc-app-config.json with memory estimates, weights,
    tokenizers), android/ or ios/ (the app project) and a README with the next steps.
    """
    if target == "webgpu":
        from llmc.package.web import package_web

        bundle = package_web(str(config), output, force, quant, quiet or as_json)
        click.echo(f"wrote {bundle}; serve it over http (e.g. `python -m http.server -d {bundle}`) and open index.html")
        return
    from llmc.package.bundle import build_package

    def log(message: str) -> None:
        if not quiet or not as_json:
            click.echo(message, err=True)

    result = build_package(config, output, force=force, cache_dir=cache_dir, quiet=quiet or as_json, log=log)
    for warning in result.warnings:
        click.echo(f"llmc: warning: {warning}", err=True)
    if as_json:
        click.echo(json.dumps(result.summary()))
        return
    for p in result.models:
        click.echo(f"{p.entry.model_id}: {'reused' if p.reused else 'compiled'}, memory {p.memory.describe()}")
    click.echo(f"wrote {result.output} in {result.seconds:.1f} s; next steps: {result.output / 'README.md'}")


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def inspect(artifact, as_json):
    """Summarize a compiled ARTIFACT (or weights folder): model, quantization, target, sizes and memory.

    ARTIFACT may also be a folder written by `llmc package`: its models and their estimates are listed.
    """
    from llmc.inspection import inspect_folder

    inspection = inspect_folder(artifact)
    if as_json:
        click.echo(json.dumps(inspection.data))
        return
    for line in inspection.lines():
        click.echo(line)


@main.command()
def targets():
    """List the target presets."""
    from llmc.compiler.targets import ALIASES, TARGETS, get_target

    width = max(len(name) for name in [*TARGETS, *ALIASES])
    for preset in TARGETS.values():
        suffix = get_target(preset.name).library_suffix  # metal: .tar where Xcode's tools are missing
        click.echo(f"{preset.name:{width}s} {suffix:6s} {preset.description}")
    for name, description in ALIASES.items():
        click.echo(f"{name:{width}s} {'':6s} {description}")


@main.command()
def quants():
    """List the quantization schemes."""
    from llmc.quant import QUANTS

    for scheme in QUANTS.values():
        bits = " file's" if scheme.keeps_raw else f"{scheme.bits_per_param:5.1f}"
        click.echo(f"{scheme.name:10s} {bits} bits/param  {scheme.description}")


@main.command()
def models():
    """List the model presets and the supported architectures."""
    from llmc.models import MODELS
    from llmc.source import list_presets

    for name, preset in list_presets().items():
        click.echo(f"{name:16s} {preset.get('description', '')}")
    click.echo("architectures (config.json model_type, GGUF general.architecture):")
    for model_type, family in sorted(MODELS.items()):
        gguf = f" [GGUF: {', '.join(family.gguf.architectures)}]" if family.gguf else ""
        click.echo(f"  {model_type:12s} {family.features}{gguf}")


if __name__ == "__main__":
    main()
