"""The whole pipeline: trained sparse models compiled for this machine and for aarch64 give PyTorch's logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from devices.targets import get_target, host_target_name
from tvm_passes.config import CompileConfig
from tvm_passes.kernels import SchedulesKernels
from tvm_passes.pipeline import compile_model

from passes_helpers import SCHEMES, assert_logits_close, skip_without_tools, trained_sparse_model

INPUT = (2, 1, 8, 8)
#: This machine's target: the builds run here are for it.
HOST = host_target_name()


def _compile(model, state, target=None, **kwargs):
    target = get_target(target or "host").name
    return compile_model(model, state.masks, state.schemes, INPUT, CompileConfig(target), SchedulesKernels(target),
                         **kwargs)


def _logits(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def x86_builds(tiny_models):
    return {scheme: _compile(*tiny_models[scheme]) for scheme in SCHEMES}


@pytest.mark.parametrize("scheme", SCHEMES)
def test_tiny_x86_matches_pytorch_eval(scheme, tiny_models, x86_builds):
    model, _ = tiny_models[scheme]
    x = np.random.default_rng(0).standard_normal(INPUT).astype(np.float32)
    vm = relax.VirtualMachine(x86_builds[scheme].executable, tvm.cpu())
    assert_logits_close(vm["main"](tvm.runtime.tensor(x)).numpy(), _logits(model, x))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_report_says_what_each_layer_became(scheme, tiny_models, x86_builds):
    _, state = tiny_models[scheme]
    layers = {layer.fqn: layer for layer in x86_builds[scheme].layers}
    assert set(layers) == set(state.schemes)
    for fqn, layer in layers.items():
        assert layer.scheme == scheme
        assert layer.density == pytest.approx(state.masks[fqn].float().mean().item(), abs=1e-4)
        assert layer.bytes_dense == state.masks[fqn].numel() * 4
        if layer.kernel == "dense":
            assert layer.reason and layer.bytes_stored == layer.bytes_dense
        else:
            assert layer.kernel == scheme and layer.bytes_stored < layer.bytes_dense
    arrays = x86_builds[scheme].stored_arrays
    if scheme != "channel":
        assert any(key.endswith("/values") for key in arrays)


def test_dense_layers_above_crossover_stay_dense_and_still_match(tiny_models):
    model, state = tiny_models["irregular"]
    config = CompileConfig(HOST, crossover={"irregular": 0.0})
    compiled = compile_model(model, state.masks, state.schemes, INPUT, config, SchedulesKernels(HOST))
    assert {layer.kernel for layer in compiled.layers} == {"dense"}
    assert all("crossover" in layer.reason for layer in compiled.layers)
    x = np.random.default_rng(1).standard_normal(INPUT).astype(np.float32)
    vm = relax.VirtualMachine(compiled.executable, tvm.cpu())
    assert_logits_close(vm["main"](tvm.runtime.tensor(x)).numpy(), _logits(model, x))


def test_ir_is_dumped_after_every_phase(tiny_models, tmp_path):
    model, state = tiny_models["block"]
    _compile(model, state, dump_dir=tmp_path)
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == ["01_import.py", "02_annotate.py", "03_fold.py", "04_lower.py", "05_legalize_and_fuse.py",
                     "06_tuning_database.py"]
    assert "mest.sparse_conv2d" in (tmp_path / "02_annotate.py").read_text()
    assert "R.call_tir(cls.sparse_block_" in (tmp_path / "04_lower.py").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("scheme", SCHEMES)
def test_resnet32_x86_matches_pytorch_eval(scheme):
    model, state = trained_sparse_model("resnet32", scheme, steps=2)
    compiled = _compile(model, state)
    x = np.random.default_rng(2).standard_normal(INPUT).astype(np.float32)
    vm = relax.VirtualMachine(compiled.executable, tvm.cpu())
    assert_logits_close(vm["main"](tvm.runtime.tensor(x)).numpy(), _logits(model, x))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_tiny_aarch64_under_emulator_matches_pytorch_eval(scheme, tiny_models, request):
    skip_without_tools("arm64")
    session = request.getfixturevalue("arm64_emulator_session")
    model, state = tiny_models[scheme]
    compiled = _compile(model, state, target="arm")
    vm = relax.VirtualMachine(session.load(compiled.executable, f"tiny_{scheme}").module, session.device)
    x = np.random.default_rng(3).standard_normal(INPUT).astype(np.float32)
    assert_logits_close(session.numpy(vm["main"](session.array(x))), _logits(model, x))


def test_a_mask_for_no_parameter_is_refused(tiny_models):
    from tvm_passes.errors import MaskError

    model, state = tiny_models["irregular"]
    masks = {**state.masks, "layer9.conv.weight": torch.ones(3, dtype=torch.bool)}
    with pytest.raises(MaskError, match="'layer9.conv.weight' names no parameter"):
        compile_model(model, masks, state.schemes, INPUT, CompileConfig("host"), SchedulesKernels(HOST))


def test_sparse_kernels_tuned_once_are_reused_from_the_database(tiny_models, tmp_path):
    from devices.sessions import open_session
    from tvm_passes.kernels import SparseTuning
    from schedules.database import TuningDatabase

    model, state = tiny_models["block"]
    database = TuningDatabase(tmp_path / "db")
    with open_session("local", HOST) as session:
        kernels = SchedulesKernels(HOST, database, SparseTuning(session, trials=2))
        first = compile_model(model, state.masks, state.schemes, INPUT, CompileConfig(HOST), kernels, database=database)
    assert all("tuned" in layer.reason for layer in first.layers)
    assert (tmp_path / "db" / "sparse.json").is_file()
    reopened = TuningDatabase(tmp_path / "db")
    second = compile_model(model, state.masks, state.schemes, INPUT, CompileConfig(HOST),
                           SchedulesKernels(HOST, reopened), database=reopened)
    assert [layer.reason for layer in second.layers] == [layer.reason for layer in first.layers]


def test_phases_are_timed_dumped_and_profiled_by_the_instruments(tiny_models, tmp_path):
    from tvm_passes.pipeline import PHASES

    model, state = tiny_models["irregular"]
    said: list[str] = []
    compiled = _compile(model, state, dump_dir=tmp_path / "ir", progress=said.append)
    assert list(compiled.phase_seconds) == list(PHASES)
    assert said == [f"phase {n}: {name}" for n, name in enumerate(PHASES, start=1)]
    dumped = sorted(p.name for p in (tmp_path / "ir").iterdir())
    assert dumped == [f"{n:02d}_{name.replace(' ', '_')}.py" for n, name in enumerate(PHASES[:-1], start=1)]
    assert "sparse_irregular_" in (tmp_path / "ir" / "04_lower.py").read_text()
    for name in ("mest.KeepDense", "mest.LowerSparseConv", "FuseOps", "mest.ScheduleDenseConv"):
        assert name in compiled.pass_profile, compiled.pass_profile
