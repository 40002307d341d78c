"""The fuzz harness's seeded 200-input subset (``make fuzz`` runs 10,000; tests/support/fuzzing.py): every
mutated GGUF, safetensors (single and sharded), tensor-cache.json and llmc-config.json is refused with an
LlmcError or read to the same weights; none escapes as another exception, crashes, hangs or exceeds the memory limit."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def fuzz():
    from support import fuzzing

    return fuzzing


def test_seeded_fuzz_subset(fuzz, checkpoints, tmp_path):
    seeds = fuzz.make_seeds(tmp_path / "seeds", checkpoint=checkpoints["llama_gqa"])
    results = fuzz.run_fuzz(200, seed=15, workdir=tmp_path, seeds=seeds, workers=2)
    table = "\n".join(fuzz.markdown_table(results))
    assert len(results) == 200
    failures = [r for r in results if r.outcome in fuzz.FAILURES]
    assert not failures, table
    summary = fuzz.summarize(results)
    for target in fuzz.TARGETS:
        assert summary[target].get("refused", 0) >= 20, table  # the mutations do reach the checks
    # the formats without checksums may accept a valid value of another meaning (a different in-vocabulary
    # token id); the artifact's files are checksummed and schema-checked: nothing changed gets through
    changed = [r for r in results if r.outcome == "accepted, changed"]
    assert all(r.target == "gguf" and "token_id" in r.mutation for r in changed), table


def test_harness_reports_escaping_exceptions(fuzz, checkpoints, tmp_path, monkeypatch):
    """A reader bug (here: a plain ValueError) shows up as an 'exception' outcome, not as a refusal."""

    def broken_reader(folder):
        raise ValueError("a reader bug")

    seeds = fuzz.make_seeds(tmp_path / "seeds", checkpoint=checkpoints["llama_gqa"])
    monkeypatch.setitem(fuzz.READERS, "llmc-config", broken_reader)
    monkeypatch.setattr(fuzz, "_baseline", lambda target, seeds, folder: "")
    results = fuzz.run_fuzz(4, seed=1, workdir=tmp_path, seeds=seeds, workers=1, targets=("llmc-config",))
    assert {r.outcome for r in results} == {"exception"}
    assert "a reader bug" in results[0].message


@pytest.mark.parametrize(
    "behaviour, outcome",
    [("spin", "hang"), ("segfault", "crash"), ("allocate", "over-memory")],
)
def test_harness_reports_hangs_crashes_and_memory(fuzz, checkpoints, tmp_path, monkeypatch, behaviour, outcome):
    import os
    import signal

    import numpy as np

    def misbehaving_reader(folder):
        if behaviour == "spin":
            while True:
                pass
        if behaviour == "segfault":
            os.kill(os.getpid(), signal.SIGSEGV)
        return str(np.ones(1 << 30, dtype=np.float32).sum())  # 4 GiB > the 2 GiB address-space cap

    seeds = fuzz.make_seeds(tmp_path / "seeds", checkpoint=checkpoints["llama_gqa"])
    monkeypatch.setitem(fuzz.READERS, "llmc-config", misbehaving_reader)
    monkeypatch.setattr(fuzz, "_baseline", lambda target, seeds, folder: "")
    results = fuzz.run_fuzz(1, 1, tmp_path, seeds, workers=1, cpu_seconds=1, targets=("llmc-config",))
    assert results[0].outcome == outcome, results[0]
