"""The training pipeline: a built step is torch-mask's step (forward, loss, backward, grad *= mask, SGD,
weight *= mask), for every scheme, on odd shapes, with padded batches and re-packed masks."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import tvm
from tvm import relax, tirx
from tvm.script import relax as R

from schedules.formats import pack
from tvm_passes.step_signature import call_by_name
from tvm_passes.training_pipeline import EVALUATE, TRAIN_STEP, planned_workspace_bytes

from training_helpers import CompiledState, TorchMask, assert_state_close, build, formats_for, sparse_tiny

SCHEMES = ("irregular", "block", "pattern", "channel")
SHAPE = (5, 1, 9, 9)  # odd batch and image: the stride-2 stage runs 9x9 -> 5x5


def _batch(seed: int, batch: int = SHAPE[0]) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *SHAPE[1:], generator=generator), torch.randint(0, 10, (batch,), generator=generator)


@pytest.fixture(scope="module")
def builds():
    """One built step per scheme (the model's values are inputs: every test reuses it)."""
    out = {}
    for scheme in SCHEMES:
        model, state = sparse_tiny(scheme)
        formats = formats_for(model, state)
        out[scheme] = (model, state, formats, build(model, formats, SHAPE))
    return out


@pytest.mark.parametrize("scheme", SCHEMES)
def test_one_and_three_steps_match_torch_mask(scheme, builds):
    model, state, formats, step = builds[scheme]
    compiled, reference = CompiledState(step, model, formats), TorchMask(model, state)
    for i, lr in enumerate((0.1, 0.05, 0.02)):  # the learning rate is an input: no rebuild per epoch
        x, labels = _batch(i)
        out = compiled.run(x, labels, lr)
        loss = reference.run(x, labels, lr)
        assert out["loss"] == pytest.approx(loss, rel=1e-5)
        if i == 0:
            assert_state_close(compiled, reference)
    assert_state_close(compiled, reference)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_correct_is_argmax_of_the_training_forward(scheme, builds):
    model, state, formats, step = builds[scheme]
    x, labels = _batch(7)
    out = CompiledState(step, model, formats).run(x, labels)
    reference = TorchMask(model, state)
    logits = reference.model(x)  # train mode: batch statistics, as the step's forward
    assert np.array_equal(out["correct"], (logits.argmax(1) == labels).numpy())


def test_short_batch_padded_with_weight_zero_is_the_short_batch_step(builds):
    model, state, formats, step = builds["irregular"]
    x, labels = _batch(3, batch=3)
    compiled, reference = CompiledState(step, model, formats), TorchMask(model, state)
    out = compiled.run(x, labels)  # 3 real examples + 2 zero images of weight 0
    assert out["loss"] == pytest.approx(reference.run(x, labels), rel=1e-5)
    assert_state_close(compiled, reference)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_new_mask_of_the_same_capacity_runs_on_the_same_module(scheme, builds):
    _, _, formats, step = builds[scheme]
    model, state = sparse_tiny(scheme, seed=1)  # other weights and masks of the same shapes
    repacked = {fqn: pack(scheme, model.get_parameter(fqn).detach(), state.masks[fqn], capacity=fmt.capacity)
                for fqn, fmt in formats.items()}
    assert any(not torch.equal(repacked[fqn].to_mask(), fmt.to_mask()) for fqn, fmt in formats.items())
    compiled, reference = CompiledState(step, model, repacked), TorchMask(model, state)
    x, labels = _batch(5)
    compiled.run(x, labels)
    reference.run(x, labels)
    assert_state_close(compiled, reference)


def _tensor_shapes(mod) -> set[tuple[int, ...]]:
    shapes = set()
    for _, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc):  # every buffer's shape, as the printed TIR declares it
            for dims in re.findall(r"(?:T\.Buffer|alloc_buffer|match_buffer)\(\(((?:[^()]|\([^()]*\))*)\)", func.script()):
                dims = re.sub(r"T\.int(?:32|64)\((\d+)\)", r"\1", dims)
                if re.fullmatch(r"[0-9, ]*", dims):
                    shapes.add(tuple(int(d) for d in dims.split(",") if d.strip()))
        elif isinstance(func, relax.Function):
            types = [p.ty for p in func.params]
            types += [b.var.ty for block in func.body.blocks for b in block.bindings]
            for ty in types:
                fields = ty.fields if isinstance(ty, relax.TupleType) else [ty]
                shapes.update(tuple(int(d) for d in f.shape) for f in fields if isinstance(f, relax.TensorType))
    return shapes


@pytest.mark.parametrize("scheme", SCHEMES)
def test_no_tensor_of_a_sparse_layers_dense_shape_remains(scheme, builds):
    _, _, formats, step = builds[scheme]
    shapes = _tensor_shapes(step.mod)
    inputs = {slot.name: slot for slot in step.inputs[TRAIN_STEP]}
    assert inputs["param:conv1.weight"].shape in shapes  # the dense stem's weight is seen where it is
    for fqn, fmt in formats.items():
        assert fmt.weight_shape not in shapes, f"{fqn}: a tensor of its dense shape {fmt.weight_shape} remains"
    for fqn, fmt in formats.items():
        for kind in ("param", "momentum"):
            assert inputs[f"{kind}:{fqn}"].shape == (fmt.capacity,)
        assert {s.shape for s in step.outputs[TRAIN_STEP] if s.key == fqn} == {(fmt.capacity,)}
    assert {s.name for s in step.inputs[EVALUATE]} <= set(inputs) | {"data:x"}


def test_evaluate_is_the_eval_mode_forward(builds):
    model, state, formats, step = builds["block"]
    compiled = CompiledState(step, model, formats)
    compiled.run(*_batch(0))  # move the running statistics away from their init
    reference = TorchMask(model, state)
    reference.run(*_batch(0))
    x, _ = _batch(9)
    values = {s.name: compiled.values.get(s.name) for s in step.inputs[EVALUATE] if s.name != "data:x"}
    tensors = {k: tvm.runtime.tensor(np.array(v, copy=True, order="C")) for k, v in values.items()}
    tensors["data:x"] = tvm.runtime.tensor(x.numpy())
    logits = call_by_name(compiled.vm[EVALUATE], step.inputs[EVALUATE], step.outputs[EVALUATE], tensors)["logits"]
    with torch.no_grad():
        expected = reference.model.eval()(x).numpy()
    np.testing.assert_allclose(logits.numpy(), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def _host_and_device_outputs(step, device_step, session, model, formats) -> tuple[dict, dict]:
    start = dict(CompiledState(step, model, formats).values)  # the inputs the host step starts from
    compiled = CompiledState(step, model, formats)
    x, labels = _batch(11)
    host = compiled.run(x, labels)
    module = session.load(device_step.executable, "train_step_tiny")
    data = {"data:x": x.numpy(), "data:labels": labels.numpy(), "data:example_weights": np.ones(len(labels), np.float32),
            "data:lr": np.array(0.1, np.float32)}
    values = {**start, **data}
    outputs = session.run_relax(module, [values[slot.name] for slot in device_step.inputs[TRAIN_STEP]], TRAIN_STEP)
    return host, {slot.name: value for slot, value in zip(device_step.outputs[TRAIN_STEP], outputs)}


def test_the_step_built_for_arm64_runs_under_the_emulator_as_on_the_host(builds, request, require_target_tools):
    require_target_tools("arm64")
    session = request.getfixturevalue("arm64_emulator_session")
    model, _, formats, step = builds["irregular"]
    arm = build(model, formats, SHAPE, target="arm64")
    assert [s.name for s in arm.inputs[TRAIN_STEP]] == [s.name for s in step.inputs[TRAIN_STEP]]
    host, device = _host_and_device_outputs(step, arm, session, model, formats)
    assert set(host) == set(device)
    for name, expected in host.items():
        scale = max(float(np.abs(expected).max()), 1e-4) if expected.dtype != np.bool_ else 1.0
        np.testing.assert_allclose(device[name].astype(np.float64), expected.astype(np.float64), rtol=0,
                                   atol=1e-5 * scale, err_msg=name)


def test_the_step_compiles_and_links_for_armv7(builds, require_target_tools, tmp_path):
    require_target_tools("armv7", need_qemu=False)
    from devices.targets import export_library, get_target

    model, _, formats, _ = builds["block"]
    armv7 = build(model, formats, SHAPE, target="armv7")
    library = export_library(armv7.executable, tmp_path / "train_step.so", get_target("armv7"))
    assert library.read_bytes()[:4] == b"\x7fELF" and library.read_bytes()[18] == 40  # e_machine EM_ARM


@tvm.script.ir_module
class _Chain:
    @R.function
    def main(x: R.Tensor((4, 8), "float32")):
        with R.dataflow():
            a = R.add(x, x)
            b = R.multiply(a, a)
            c = R.subtract(b, x)  # a is dead: c takes its storage
            d = R.add(c, b)
            R.output(d)
        return d


def test_planned_workspace_counts_the_planned_storage_of_intermediates_not_the_output():
    # Three 128-byte intermediates in two storages (c reuses a's); the output is allocated apart.
    assert planned_workspace_bytes(relax.transform.LegalizeOps()(_Chain)) == {"main": 2 * 4 * 8 * 4}
