"""Bad arguments to every benchmark command: one ``error:`` line, exit code 2, before any work starts."""

from __future__ import annotations

import pytest

import benchmarks.crossover as crossover
import benchmarks.inference as inference
import benchmarks.kernels as kernels
import benchmarks.train_step as train_step
import benchmarks.harness as harness
from benchmarks.harness import run_command

BAD = {
    train_step: [
        (["--rounds", "0"], "--rounds: must be >= 1, got 0"), (["--batch", "0"], "--batch: must be >= 1"),
        (["--warmup", "-1"], "--warmup: must be >= 0"), (["--steps", "0"], "--steps: must be >= 1"),
        (["--sparsity", "1"], "a sparsity is in [0, 1)"), (["--sparsity", "-0.1"], "a sparsity is in [0, 1)"),
        (["--sparsity", "nan"], "a sparsity is in [0, 1)"), (["--schemes", "diagonal"], "unknown scheme diagonal"),
        (["--model", "resnet1000"], "invalid choice: 'resnet1000'"), (["--variants", "tvm,jax"], "unknown variant jax"),
        (["--window-steps", "0"], "--window-steps: must be >= 1"), (["--rounds", "two"], "invalid integer value"),
    ],
    kernels: [
        (["--densities", "0"], "a density is in (0, 1]"), (["--densities", "0.1,2"], "a density is in (0, 1]"),
        (["--densities", "0.1,abc"], "invalid density list value"), (["--densities", ","], "give at least one density"),
        (["--batch", "0"], "--batch: must be >= 1"), (["--rounds", "0"], "--rounds: must be >= 1"),
        (["--target", "sparc"], "unknown target 'sparc'"), (["--target", "arm64"], "does not run on this machine"),
        (["--layers", "3x3@1 s9"], "no layer of resnet32 is named"), (["--model", "vgg"], "invalid choice: 'vgg'"),
        (["--schemes", "irregular,dense"], "unknown scheme dense"),
        (["--tune-db", __file__], "is a file; a tuning database here is a directory"),
    ],
    inference: [
        (["--sparse-trials", "-1"], "--sparse-trials: must be >= 0"), (["--dense-trials", "-1"], "must be >= 0"),
        (["--target", "sparc"], "unknown target 'sparc'"), (["--batch", "0"], "--batch: must be >= 1"),
        (["--sparsity", "2"], "a sparsity is in [0, 1)"), (["--schemes", "random"], "unknown scheme random"),
        (["--model", "vgg"], "invalid choice: 'vgg'"), (["--steps", "0"], "--steps: must be >= 1"),
        (["--tune-db", __file__], "is a file; a tuning database here is a directory"),
    ],
    crossover: [
        (["--layer", "8,8"], "invalid layer"), (["--layer", "0,8,8"], "must be >= 1, got 0"),
        (["--densities", "2"], "a density is in (0, 1]"), (["--target", "sparc"], "unknown target 'sparc'"),
        (["--schemes", "channel"], "unknown scheme channel"), (["--rounds", "0"], "--rounds: must be >= 1"),
        (["--session", "bogus", "--target", "arm64"], "unknown session kind 'bogus'"),
        (["--session", "rpc:nohost"], "must be rpc:HOST:PORT"),
    ],
}
CASES = [pytest.param(module, argv, message, id=f"{module.__name__.split('.')[-1]} {' '.join(argv)}")
         for module, cases in BAD.items() for argv, message in cases]


@pytest.mark.parametrize(("module", "argv", "message"), CASES)
def test_bad_argument_is_one_line_and_exit_2(module, argv, message, monkeypatch, capsys, tmp_path):
    def no_work(*args, **kwargs):
        raise AssertionError("a benchmark started before its arguments were checked")

    monkeypatch.setattr(harness, "run_rounds", no_work)
    try:
        code = run_command(module.main, [*argv, "--out", str(tmp_path / "report.json")])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "report.json").exists()


def test_an_output_that_is_a_directory_is_refused(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        train_step.main(["--out", str(tmp_path)])
    assert exit_.value.code == 2 and "is a directory" in capsys.readouterr().err
