"""A web bundle: a static folder that runs a ``--target webgpu`` artifact in the browser.

The folder holds the artifact (``llmc-config.json``, the .wasm, tensor cache, tokenizer), the page
from ``llmc/templates/web`` and TVM's JS runtime (``tvmjs.bundle.js``, from the npm package
``@mlc-ai/web-runtime`` that ``make install-web`` installs under ``~/.cache/llmc/web-runtime``). Serve it
over http(s) and open ``index.html`` in a browser with WebGPU.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import shutil
from pathlib import Path

from llmc.artifact import atomic_output_dir, is_compiled, read_config
from llmc.assets import TEMPLATES_DIR
from llmc.errors import ArtifactError, LlmcError

TEMPLATE = TEMPLATES_DIR / "web"
# TVM's JS runtime, which `make install-web` installs with npm into a cache folder (as naga and the emcc objects are)
WEB_RUNTIME_VERSION = "0.27.0-dev0"
WEB_RUNTIME_DIR = Path(os.environ.get("LLMC_WEB_RUNTIME_DIR", Path.home() / ".cache" / "llmc" / "web-runtime"))
TVMJS_IN_PACKAGE = Path("node_modules") / "@mlc-ai" / "web-runtime" / "lib" / "index.js"
PAGE_FILES = ("llmc.js", "tokenizer.js")
WEB_CONFIG = "llmc-web.json"  # the page's settings: chat format, browser-cache scope of the weights
DEFAULT_PROMPT = "Once upon a time"


def find_tvmjs() -> Path:
    """TVM's JS runtime (UMD build): ``$LLMC_TVMJS``, else the npm package under ``$LLMC_WEB_RUNTIME_DIR``
    (default ``~/.cache/llmc/web-runtime``)."""
    path = Path(os.environ.get("LLMC_TVMJS") or WEB_RUNTIME_DIR / TVMJS_IN_PACKAGE)
    if not path.is_file():
        raise LlmcError(
            f"{path}: TVM's JS runtime (@mlc-ai/web-runtime@{WEB_RUNTIME_VERSION}) is missing. Run `make install-web` "
            f"(or `npm install --prefix {WEB_RUNTIME_DIR} @mlc-ai/web-runtime@{WEB_RUNTIME_VERSION}`)."
        )
    return path


def _render(template: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        template = template.replace("{{" + key + "}}", html.escape(value))
    return template


def _place(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_web_bundle(artifact: str | Path, out_dir: str | Path, force: bool = False) -> Path:
    """Write the static web bundle for a webgpu artifact into ``out_dir`` (atomically); return it."""
    artifact, out_dir = Path(artifact), Path(out_dir)
    config = read_config(artifact)
    if config.get("stage") != "compiled" or config.get("target") != "webgpu":
        raise ArtifactError(
            f"{artifact}: compiled for {config.get('target', 'no target')}; a web bundle needs an artifact from "
            "`llmc compile MODEL --target webgpu`."
        )
    if config.get("random_weights"):
        raise ArtifactError(f"{artifact}: has no weights (random-weights build); compile it from a checkpoint.")
    library = artifact / config["library"]
    if not library.is_file() or not (artifact / "tensor-cache.json").is_file():
        raise ArtifactError(f"{artifact}: {config['library']} or tensor-cache.json is missing. Re-run `llmc compile`.")
    if not (artifact / "tokenizer.json").is_file():
        raise ArtifactError(f"{artifact}: no tokenizer.json; the page tokenizes with it. Re-run `llmc compile`.")
    tvmjs = find_tvmjs()
    name = Path(config.get("source", {}).get("spec", artifact.name).rstrip("/")).name or artifact.name
    page = _render(
        (TEMPLATE / "index.html").read_text(),
        {"MODEL_NAME": name, "QUANT": config["quantization"], "DEFAULT_PROMPT": DEFAULT_PROMPT},
    )
    web_config = web_settings(artifact, config)
    with atomic_output_dir(out_dir, force) as tmp:
        for file in sorted(artifact.iterdir()):
            if file.is_file() and (file.suffix != ".wasm" or file.name == config["library"]):
                _place(file, tmp / file.name)
        for name in PAGE_FILES:
            shutil.copy2(TEMPLATE / name, tmp / name)
        shutil.copy2(tvmjs, tmp / "tvmjs.bundle.js")
        (tmp / "index.html").write_text(page)
        (tmp / WEB_CONFIG).write_text(json.dumps(web_config, indent=2, ensure_ascii=False))
    return out_dir


def web_settings(artifact: Path, config: dict) -> dict:
    """The chat format (the template rendered into fixed strings, as for phone apps) and the Cache API scope of
    the weights: named after tensor-cache.json (which holds each shard's md5), so new weights get a new scope."""
    from llmc.package.app import chat_entry

    chat, why_not = chat_entry(config.get("tokenizer") or {}, artifact / "tokenizer.json")
    digest = hashlib.sha256((artifact / "tensor-cache.json").read_bytes()).hexdigest()[:16]
    return {"chat": chat, "chat_note": why_not or None, "cache_scope": f"llmc-{digest}"}


def package_web(model: str, output: Path, force: bool = False, quant: str = "q4f32_1", quiet: bool = False) -> Path:
    """``llmc package --target webgpu``: compile MODEL for webgpu (unless it is such an artifact), write the page."""
    import tempfile

    if is_compiled(Path(model)):
        return write_web_bundle(model, output, force=force)
    if output.exists() and not force:  # before minutes of compiling
        raise LlmcError(f"{output} already exists; pass --force to replace it.")
    from llmc.compile import compile_model
    from llmc.plan import CompileOptions

    with tempfile.TemporaryDirectory(prefix="llmc-web-") as tmp:
        options = CompileOptions(target="webgpu", quant=quant, output=Path(tmp) / "model", quiet=quiet)
        return write_web_bundle(compile_model(model, options), output, force=force)
