"""``python -m benchmarks.dense_ops`` on the tiny model: every variant reports every op, JSON and table written."""

from __future__ import annotations

from benchmarks.dense_ops import dense_ops


def test_the_dense_ops_are_read_off_the_model():
    ops = {op.name: op for op in dense_ops("resnet32", 64, 32)}
    assert list(ops) == [
        "conv1 forward", "conv1 grad_weight",
        "layer2.0.shortcut.0 forward", "layer2.0.shortcut.0 grad_input", "layer2.0.shortcut.0 grad_weight",
        "layer3.0.shortcut.0 forward", "layer3.0.shortcut.0 grad_input", "layer3.0.shortcut.0 grad_weight",
        "pool forward", "linear forward", "linear grad_input", "linear grad_weight",
    ]
    shortcut = ops["layer2.0.shortcut.0 grad_input"]
    assert (shortcut.x_shape, shortcut.w_shape, shortcut.y_shape, shortcut.stride) == (
        (64, 32, 32, 32), (64, 32, 1, 1), (64, 64, 16, 16), 2)
    assert ops["pool forward"].x_shape == (64, 128, 8, 8) and ops["linear forward"].w_shape == (10, 128)


def test_each_op_against_pytorch_in_processes_of_their_own(run_benchmark):
    completed, payload = run_benchmark("dense_ops", "--model", "tiny", "--batch", "2", "--image-size", "8",
                                       "--rounds", "1", "--warmup", "1", "--steps", "1")
    assert completed.returncode == 0, completed.stderr
    assert [v["name"] for v in payload["variants"]] == ["pytorch-nchw", "pytorch-channels-last", "ours"]
    assert len({v["processes"][0]["pid"] for v in payload["variants"]}) == 3
    assert len(payload["records"]) == 9
    for record in payload["records"]:
        assert record["ours"]["median_s"] > 0 and record["vs_dense"] > 0
    (ours,) = [v for v in payload["variants"] if v["name"] == "ours"]
    unscheduled = ours["processes"][0]["info"]["unscheduled_functions"]
    assert not any(unscheduled.values())
    assert "| op | x / w / y shapes |" in completed.stdout
