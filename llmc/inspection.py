"""``llmc inspect``: what an artifact, weights folder or ``llmc package`` output holds, as data.

``inspect_folder`` returns the JSON object ``--json`` prints and the labelled lines of the text form;
the CLI only prints them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from llmc.artifact import read_config
from llmc.cpu_features import missing_extensions
from llmc.errors import ArtifactError
from llmc.memory import MIB, MemoryEstimate, estimate
from llmc.shard_memory import per_shard_memory

APP_CONFIG = Path("bundle") / "llmc-app-config.json"  # inside a folder written by `llmc package`


@dataclass
class ArtifactInspection:
    """A compiled artifact or weights folder: its config, the memory estimate and the summary."""

    config: dict
    memory: MemoryEstimate
    data: dict  # the `llmc inspect --json` object

    def lines(self) -> list[str]:
        """The text form: one ``label:  value`` line per row (continuation rows have no label)."""
        return [f"{name + ':' if name else '':14s}{value}" for name, value in self.rows()]

    def rows(self) -> list[tuple[str, str]]:
        config, memory, summary = self.config, self.memory, self.data
        model = config["model"]
        rows = [
            (
                "model",
                f"{model['model_type']}, {model['num_hidden_layers']} layers, hidden {model['hidden_size']}, "
                f"vocab {model['vocab_size']} ({summary['source']})",
            ),
            ("quantization", config["quantization"] + (" (random weights)" if summary["random_weights"] else "")),
            (
                "target",
                f"{summary['target'] or '(weights only)'}"
                + (f", library {summary['library']}" if summary["library"] else "")
                + (f", prefix {summary['system_lib_prefix']}" if summary["system_lib_prefix"] else ""),
            ),
            *([("cpu", describe_cpu(summary["cpu"]))] if summary["cpu"] else []),
            (
                "sizes",
                f"context {config['context_window']}, prefill chunk {config['prefill_chunk']}, "
                f"max batch {config['max_batch_size']}",
            ),
            ("weights", f"{memory.weights_bytes / MIB:.1f} MiB"),
            ("KV cache", f"{memory.kv_cache_bytes / MIB:.1f} MiB ({memory.kv_summary()})"),
            (
                "activations",
                f"{memory.activation_bytes / MIB:.1f} MiB"
                + ("" if config.get("static_plan_bytes") else " (no static memory plan recorded)"),
            ),
            ("memory", f"{memory.total_bytes / MIB:.1f} MiB estimated on the device"),
        ]
        shard = summary.get("tensor_parallel")
        if shard:  # the rows above are the whole model's; each of the shards' devices holds this much
            each = f"{shard['total_bytes'] / MIB:.1f} MiB estimated on each of {shard['shards']} devices"
            rows[-1] = ("memory", each)
            rows.insert(
                -1,
                (
                    "shards",
                    f"{shard['shards']} tensor-parallel (LM head {shard['lm_head']}); per shard: weights "
                    f"{shard['weights_bytes'] / MIB:.1f} MiB, KV cache {shard['kv_cache_bytes'] / MIB:.1f} MiB, "
                    f"activations {shard['activation_bytes'] / MIB:.1f} MiB",
                ),
            )
        if config.get("bits_per_param") is not None:
            rows.insert(2, ("bits/weight", f"{config['bits_per_param']:.3f} on average"))
        if config.get("tensor_groups"):  # --quant keep: the format of each tensor group
            from llmc.quant.keep import describe_groups

            groups = describe_groups(config["tensor_groups"])
            width = max(len(group) for group, _ in groups)
            rows[3:3] = [("formats" if i == 0 else "", f"{g:{width}s}  {f}") for i, (g, f) in enumerate(groups)]
        if model.get("moe_experts"):
            sparse = len(model.get("moe_layers", []))
            rows.insert(
                1,
                (
                    "experts",
                    f"{model['moe_experts']} of {model['moe_intermediate_size']} per MoE layer, "
                    f"top-{model['moe_top_k']} per token, {sparse} of {model['num_hidden_layers']} layers sparse",
                ),
            )
        return rows


@dataclass
class PackageInspection:
    """A folder written by ``llmc package``: its app config and each model's memory estimate."""

    data: dict  # bundle/llmc-app-config.json as written

    def lines(self) -> list[str]:
        app = self.data
        lines = [
            f"package for {app['device']} (target {app['target']}), library {app['model_library'] or 'lib/objects/'}"
        ]
        for model in app["models"]:
            memory = model["memory"]
            lines.append(
                f"{model['model_id']:24s} {model['quantization']:8s} prefix {model['model_lib']:28s} "
                f"context {model['context_window']:6d}  ~{memory['total_bytes'] / MIB:.1f} MiB "
                f"(weights {memory['weights_bytes'] / MIB:.1f}, KV {memory['kv_cache_bytes'] / MIB:.1f}, "
                f"activations {memory['activation_bytes'] / MIB:.1f})"
                + ("" if model["bundle_weights"] else f"  weights from {model['model_url']}")
            )
        return lines


def describe_cpu(cpu: dict) -> str:
    """The CPU an x86 library was built for, its widest extensions, and whether this CPU runs it."""
    widest = [name for name in cpu["extensions"] if name.startswith(("avx512", "avx", "amx"))]
    lacking = missing_extensions(cpu["extensions"])
    here = f"this CPU lacks {', '.join(lacking)}" if lacking else "runs on this CPU"
    return f"{cpu['mcpu']}{''.join(' ' + flag for flag in cpu.get('mattr', []))} ({', '.join(widest)}); {here}"


def inspect_folder(folder: Path) -> ArtifactInspection | PackageInspection:
    """What ``folder`` (an artifact, a weights folder or a package) holds."""
    if Path(folder).is_file() and Path(folder).suffix == ".gguf":
        from llmc.checkpoint.gguf_reader import GGUFCheckpoint

        gguf = GGUFCheckpoint(Path(folder))  # an architecture no family reads: an error naming the supported ones
        raise ArtifactError(
            f"{folder}: a GGUF file (architecture {gguf.arch!r}, model_type {gguf.config['model_type']!r}), not an "
            f"artifact; compile it first (`llmc compile {folder} -o DIR`) and inspect DIR."
        )
    app_config = folder / APP_CONFIG
    if app_config.is_file():
        try:
            return PackageInspection(json.loads(app_config.read_text()))
        except json.JSONDecodeError as err:
            raise ArtifactError(f"{app_config}: not valid JSON ({err}). Re-run `llmc package`.") from err
    config = read_config(folder)
    model = config["model"]
    memory = estimate(config)
    summary = {
        "artifact": str(folder),
        "stage": config.get("stage"),
        "model_type": model["model_type"],
        "source": config.get("source", {}).get("spec"),
        "quantization": config["quantization"],
        "target": config.get("target"),
        "library": config.get("library"),
        "system_lib_prefix": config.get("system_lib_prefix"),
        "cpu": (config.get("runs_on") or {}).get("cpu"),
        "layers": model["num_hidden_layers"],
        "hidden_size": model["hidden_size"],
        "vocab_size": model["vocab_size"],
        "context_window": config["context_window"],
        "prefill_chunk": config["prefill_chunk"],
        "max_batch_size": config["max_batch_size"],
        "random_weights": bool(config.get("random_weights")),
        "memory": memory.as_dict(),
        "static_plan_bytes": config.get("static_plan_bytes"),
        "bits_per_param": config.get("bits_per_param"),
        "tensor_groups": config.get("tensor_groups"),
        "tensor_parallel": per_shard_memory(config, memory),
    }
    return ArtifactInspection(config, memory, summary)
