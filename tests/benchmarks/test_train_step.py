"""``python -m benchmarks.train_step`` at a tiny size: JSON, table, processes and their environments."""

from __future__ import annotations

import benchmarks.train_step as train_step
from benchmarks.train_step import STEP_VARIANTS, StepVariant, build_variants, pytorch_nchw

TINY = ("--model", "tiny", "--batch", "4", "--image-size", "16", "--rounds", "1", "--warmup", "1", "--steps", "2")


def test_dense_tvm_and_compiled_steps_in_processes_of_their_own(run_benchmark):
    completed, payload = run_benchmark("train_step", *TINY, "--schemes", "irregular", "--variants",
                                       "pytorch-nchw,tvm,compiled")
    assert completed.returncode == 0, completed.stderr
    dense, ours, compiled = payload["variants"]
    assert (dense["name"], ours["name"], compiled["name"]) == ("pytorch-nchw", "tvm irregular", "compiled irregular")
    compiled_info = compiled["processes"][0]["info"]
    assert compiled_info["first_step_s"] >= compiled_info["build_s"] > 0 and compiled_info["module_builds"] <= 1
    assert compiled_info["mutation"]["em"]["rebuild_s"] == 0  # a mutation within the peak capacity
    assert 0 < payload["table"][2]["state_bytes"] < payload["table"][2]["dense_state_bytes"]
    assert dense["processes"][0]["pid"] != ours["processes"][0]["pid"]
    # The dense process has the user's environment (their wait policy, nothing of ours); ours is
    # configured by mest. (test_harness starts a dense step with no wait policy at all.)
    assert dense["processes"][0]["environment"] == {"OMP_WAIT_POLICY": "PASSIVE", "TVM_NUM_THREADS": None}
    assert ours["processes"][0]["environment"]["TVM_NUM_THREADS"] is not None
    assert payload["user_thread_settings"] == {"OMP_WAIT_POLICY": "PASSIVE", "TVM_NUM_THREADS": None}
    machine = payload["machine"]
    assert machine["cores"] >= 1 and len(machine["load_before"]) == 3 and len(machine["load_after"]) == 3
    assert machine["torch"] and machine["tvm"]
    dense_row, ours_row, _ = payload["table"]
    assert dense_row["vs_dense"] == 1.0 and ours_row["vs_dense"] > 0
    assert 0 < ours_row["state_bytes"] < ours_row["dense_state_bytes"]
    assert set(ours_row["mutation_share_of_window"]) == {"ems", "em"}
    info = ours["processes"][0]["info"]
    assert info["kernel_builds"] > 0 and info["mutation"]["ems"]["mutate_s"] > 0
    assert all(p["peak_rss_bytes"] > 0 for v in payload["variants"] for p in v["processes"])
    assert "| variant | step ms, median (min-max) | vs dense |" in completed.stdout


def test_a_new_backend_is_one_registry_entry(monkeypatch):
    monkeypatch.setitem(STEP_VARIANTS, "compiled", StepVariant(pytorch_nchw, "mest", per_scheme=True))
    variants = build_variants(["pytorch-nchw", "compiled", "tvm"], ["block", "channel"], {"model": "tiny"})
    assert [v.name for v in variants] == ["pytorch-nchw", "tvm block", "compiled block", "tvm channel", "compiled channel"]
    assert variants[2].params == {"model": "tiny", "scheme": "block"} and variants[2].imports_first == "mest"
    assert train_step.build_parser().parse_args(["--variants", "compiled"]).variants == ["compiled"]
