"""The harness: a process per variant and round, the user's environment, failures on one line, RSS."""

from __future__ import annotations

import os

import pytest

import schedules.threads as threads
from benchmarks.harness import Variant, exit_code, import_only, peak_rss_bytes, run_rounds, user_environment
from benchmarks.train_step import pytorch_nchw

TINY = {"model": "tiny", "sparsity": 0.9, "batch": 4, "image_size": 16, "window_steps": 10}  # train_step's params


def _bare(name: str, modules: tuple[str, ...] = ()) -> Variant:
    return Variant(name, import_only, "torch", {"modules": list(modules)})


def test_the_thread_settings_mest_made_are_taken_out(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "SET_HERE", {})
    threads.configure_threads()  # what `import mest` does
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    environment = user_environment()
    assert "OMP_WAIT_POLICY" not in environment and "TVM_NUM_THREADS" not in environment
    results = run_rounds([Variant("dense", pytorch_nchw, "torch", TINY)], rounds=1, warmup=0, steps=1,
                         log=lambda line: None)
    assert results[0].processes[0]["environment"] == {"OMP_WAIT_POLICY": None, "TVM_NUM_THREADS": None}
    assert results[0].summary().median_s > 0


def test_a_wait_policy_the_user_set_is_kept(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setattr(threads, "SET_HERE", {"OMP_WAIT_POLICY": "PASSIVE"})  # ours was overridden since
    results = run_rounds([_bare("pytorch")], rounds=1, warmup=0, steps=1, log=lambda line: None)
    assert results[0].processes[0]["environment"]["OMP_WAIT_POLICY"] == "ACTIVE"


def test_each_round_is_a_process_and_a_failing_variant_is_one_line(capfd):
    variants = [Variant("no-such-model", pytorch_nchw, "torch", {**TINY, "model": "resnet1000"}),
                Variant("broken", pytorch_nchw, "torch", {"model": "tiny"}), _bare("bare")]
    results = run_rounds(variants, rounds=2, warmup=0, steps=1, log=lambda line: None)
    pids = [p["pid"] for r in results for p in r.processes]
    assert len(pids) == 4 and len(set(pids)) == 4 and os.getpid() not in pids
    err = capfd.readouterr().err.splitlines()
    assert [line.split(":")[0] for line in err] == ["error", "error"]
    assert err[0].startswith("error: variant no-such-model failed: unknown model 'resnet1000'")
    assert err[1].startswith("error: variant broken failed: KeyError: ")
    refused, broken, bare = results
    assert bare.ok and len(bare.processes) == 2 and bare.peak_rss_bytes() > 0  # the others still report
    assert not refused.ok and refused.user_error and len(refused.processes) == 1  # not started again
    assert not broken.ok and not broken.user_error and "Traceback" in broken.processes[0]["traceback"]
    assert refused.to_json()["status"] == "failed" and refused.summary() is None
    assert exit_code(results) == 1 and exit_code([bare, refused]) == 2 and exit_code([bare]) == 0


def test_peak_rss_is_the_workers_own_not_its_parents():
    ballast = b"\x01" * (400 * 2**20)  # the parent is now larger than a bare `import torch`
    assert peak_rss_bytes() > len(ballast)
    results = run_rounds([_bare("torch")], rounds=1, warmup=0, steps=1, log=lambda line: None)
    assert 0 < results[0].peak_rss_bytes() < len(ballast)
    del ballast


def test_a_setup_must_be_a_module_level_function():
    def local(params):
        return None

    with pytest.raises(ValueError, match="module-level"):
        Variant("local", local, "torch").spec(0, 1)
    with pytest.raises(ValueError, match="imports_first"):
        Variant("x", import_only, "numpy")
