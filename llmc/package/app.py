"""The app projects of ``llmc package``: ``templates/<device>`` rendered with jinja2, and the bundle README."""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
from pathlib import Path

import llmc
from llmc.assets import TEMPLATES_DIR
from llmc.errors import LlmcError
from llmc.package.chat_format import derive_chat_format
from llmc.package.spec import APP_CONFIG_FILE, ARCHIVE_NAME, PackagedModel, PackageSpec


def app_model_entry(spec: PackageSpec, p: PackagedModel) -> dict:
    fits = None if spec.memory_budget_bytes is None else p.memory.total_bytes <= spec.memory_budget_bytes
    chat, why_not = chat_entry(p.config.get("tokenizer") or {}, p.artifact / "tokenizer.json")
    return {
        "model_id": p.entry.model_id,
        "model_lib": p.entry.system_lib_prefix,
        "model_path": p.entry.model_id,
        "bundle_weights": p.entry.bundle_weights,
        "model_url": p.entry.model_url,
        "quantization": p.config["quantization"],
        "context_window": p.config["context_window"],
        "prefill_chunk": p.config["prefill_chunk"],
        "max_batch_size": p.config["max_batch_size"],
        "estimated_memory_bytes": p.memory.total_bytes,
        "memory": p.memory.as_dict(),
        "fits_memory_budget": fits,
        "chat": chat,
        "chat_note": why_not or None,
    }


def chat_entry(info: dict, tokenizer_file: Path) -> tuple[dict | None, str]:
    """The chat format apps use (the template rendered into fixed strings), or None and the reason."""
    chat, why_not = _chat_entry(json.dumps(info, sort_keys=True), str(tokenizer_file))
    return copy.deepcopy(chat), why_not


@functools.lru_cache(maxsize=16)
def _chat_entry(info_json: str, tokenizer_file: str) -> tuple[dict | None, str]:
    file = Path(tokenizer_file)
    chat, why_not = derive_chat_format(json.loads(info_json), file if file.exists() else None)
    return (chat.as_dict() if chat else None), why_not


def _template_context(spec: PackageSpec, packaged: list[PackagedModel], archive: str | None) -> dict:
    return {
        "app_name": spec.app_name,
        "app_id": spec.app_id,
        "device": spec.device.name,
        "target": spec.target,
        "runtime_device": packaged[0].config["device"],
        "archive": archive,
        "archive_name": ARCHIVE_NAME,
        "app_config_file": APP_CONFIG_FILE,
        "tvm_version": packaged[0].config.get("tvm_version"),
        "tvm_git_ref": tvm_git_ref(packaged[0].config.get("tvm_version")),
        "llmc_version": llmc.__version__,
        "models": [app_model_entry(spec, p) | {"symbol": _identifier(p.entry.model_id)} for p in packaged],
    }


def tvm_git_ref(tvm_version: str | None) -> str:
    """The apache/tvm release tag whose runtime loads libraries this TVM built: 0.27.0.post1 -> v0.27.0."""
    match = re.match(r"(\d+\.\d+\.\d+)", tvm_version or "")
    if match is None:
        raise LlmcError(f"unknown TVM version {tvm_version!r} in the artifact; recompile it with this llmc.")
    return f"v{match.group(1)}"


def _identifier(model_id: str) -> str:
    parts = re.split(r"[^A-Za-z0-9]+", model_id)
    name = parts[0].lower() + "".join(part[:1].upper() + part[1:] for part in parts[1:])
    return name if name[:1].isalpha() else f"m{name}"


def render_app(spec: PackageSpec, packaged: list[PackagedModel], out: Path, archive: str | None) -> Path:
    """Render ``templates/<device>`` into ``out/<device>``: ``*.j2`` through jinja2, other files copied.

    ``__app_id__`` in a path becomes the app id as folders (``ai/llmc/chat``).
    """
    import jinja2

    source = TEMPLATES_DIR / spec.device.template
    if not source.is_dir():
        raise LlmcError(f"{source}: app template missing; reinstall llmc.")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    context = _template_context(spec, packaged, archive)
    dest_root = out / spec.device.template
    for file in sorted(source.rglob("*")):
        if not file.is_file():
            continue
        relative = str(file.relative_to(source)).replace("__app_id__", spec.app_id.replace(".", "/"))
        dest = dest_root / relative.removesuffix(".j2")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if file.suffix == ".j2":
            template = env.get_template(file.relative_to(TEMPLATES_DIR).as_posix())
            dest.write_text(template.render(**context))
        else:
            shutil.copy2(file, dest)
    for file in sorted((TEMPLATES_DIR / "common").iterdir()):
        shutil.copy2(file, dest_root / spec.device.native_dir / file.name)
    return dest_root


def render_readme(spec: PackageSpec, packaged: list[PackagedModel], archive: str | None, archiver: str | None) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)), undefined=jinja2.StrictUndefined)
    context = _template_context(spec, packaged, archive) | {
        "archiver": archiver,
        "memory": {p.entry.model_id: p.memory.describe() for p in packaged},
        "config_file": spec.file.name,
    }
    return env.get_template(f"bundle/README-{spec.device.template}.md.j2").render(**context) + "\n"
