"""Helpers of the training-pipeline tests: a built step run on a model's values, and torch-mask's step."""

from __future__ import annotations

import copy

import numpy as np
import torch
import tvm
from tvm import relax

from mest.models import build_model
from mest.sparsity import SparseState, default_profile
from mest.trainer import train_step
from schedules.formats import SparseFormat, pack
from tvm_passes.kernels import SchedulesKernels
from tvm_passes.step_signature import call_by_name
from tvm_passes.training_pipeline import TRAIN_STEP, TrainingConfig, TrainingStep, build_training_step, index_inputs

#: Relative tolerance of every parameter, momentum and statistic: to the tensor's largest entry, or to
#: :data:`SCALE_FLOOR` for a tensor whose entries are all smaller (a batch norm's bias after a few steps
#: is ~1e-5: its value is the cancelling sum of the steps' updates, so its rounding is relatively large).
RTOL = 1e-5
SCALE_FLOOR = 1e-4
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 1e-4


def sparse_tiny(scheme: str, seed: int = 0, in_channels: int = 1) -> tuple[torch.nn.Module, SparseState]:
    """The tiny model at its reference init, pruned once to 90% with ``scheme``."""
    torch.manual_seed(seed)
    model = build_model("tiny", 10, in_channels)
    return model, SparseState.prune_init(model, default_profile(model, 0.9), scheme)


def formats_for(model: torch.nn.Module, state: SparseState, slack: float = 1.5) -> dict[str, SparseFormat]:
    """Packed formats of the sparse layers, with room for ``slack`` times their non-zeros (padding slots)."""
    return {fqn: pack(scheme, model.get_parameter(fqn).detach(), state.masks[fqn],
                      capacity=int(state.masks[fqn].sum() * slack))
            for fqn, scheme in state.schemes.items()}


def build(model, formats, shape, weight_decay: float = WEIGHT_DECAY, target: str = "host") -> TrainingStep:
    """The training step of ``model`` for batches of ``shape``, built for ``target``."""
    return build_training_step(model, shape, formats, TrainingConfig(target, MOMENTUM, weight_decay),
                               SchedulesKernels(target))


class CompiledState:
    """Values of a built step's inputs, kept between steps as the trainer would (numpy here)."""

    def __init__(self, step: TrainingStep, model: torch.nn.Module, formats: dict[str, SparseFormat]):
        self.step = step
        self.vm = relax.VirtualMachine(step.executable, tvm.cpu())
        self.formats = dict(formats)
        self.values: dict[str, np.ndarray] = {}
        self.set_model(model)

    def set_model(self, model: torch.nn.Module) -> None:
        """Take the parameters and statistics of ``model`` (sparse layers through their formats), zero momenta."""
        state = model.state_dict()
        for slot in self.step.inputs[TRAIN_STEP]:
            if slot.kind in ("param", "stat"):
                fmt = self.formats.get(slot.key)
                value = fmt.gather(state[slot.key]) if fmt is not None and slot.kind == "param" else state[slot.key]
                self.values[slot.name] = value.detach().numpy().copy()
            elif slot.kind == "momentum":
                self.values[slot.name] = np.zeros(slot.shape, np.float32)
        for fqn, fmt in self.formats.items():
            self.values.update(index_inputs(fqn, fmt))

    def run(self, x: torch.Tensor, labels: torch.Tensor, lr: float = LR, weights: np.ndarray | None = None) -> dict:
        """One step on a batch (padded to the built batch with weight 0 if shorter); returns the outputs."""
        batch = self.step.inputs[TRAIN_STEP][0].shape[0]
        real = len(labels)
        data = {
            "data:x": np.concatenate([x.numpy(), np.zeros((batch - real, *x.shape[1:]), np.float32)]),
            "data:labels": np.concatenate([labels.numpy(), np.zeros(batch - real, np.int64)]),
            "data:example_weights": np.concatenate([np.ones(real, np.float32), np.zeros(batch - real, np.float32)])
            if weights is None else weights,
            "data:lr": np.array(lr, np.float32),
        }
        tensors = {name: tvm.runtime.tensor(np.array(v, copy=True, order="C")) for name, v in {**self.values, **data}.items()}
        slots = self.step
        out = call_by_name(self.vm[TRAIN_STEP], slots.inputs[TRAIN_STEP], slots.outputs[TRAIN_STEP], tensors)
        out = {name: value.numpy() for name, value in out.items()}
        for name, value in out.items():
            if name in self.values:
                self.values[name] = value
        return out

    def dense(self, name: str) -> np.ndarray:
        """A parameter or momentum as its dense tensor (a sparse layer's through its format)."""
        kind, key = name.split(":", 1)
        value = self.values[name]
        if key in self.formats and kind in ("param", "momentum"):
            return self.formats[key].with_values(torch.from_numpy(value.copy())).to_dense().numpy()
        return value


class TorchMask:
    """The ``torch-mask`` backend's step: forward, loss, backward, grad *= mask, SGD, weight *= mask."""

    def __init__(self, model: torch.nn.Module, state: SparseState):
        self.model = copy.deepcopy(model).train()
        self.state = SparseState.from_masks(self.model, state.masks, state.schemes, state.sparsity)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)

    def run(self, x: torch.Tensor, labels: torch.Tensor, lr: float = LR) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return train_step(self.model, self.optimizer, self.state, x, labels)[1].item() / len(labels)  # mean loss

    def expected(self, name: str) -> np.ndarray:
        """The torch value of an output name (``param:``, ``momentum:``, ``stat:``)."""
        kind, key = name.split(":", 1)
        if kind == "momentum":
            return self.optimizer.state[self.model.get_parameter(key)]["momentum_buffer"].numpy()
        return self.model.state_dict()[key].numpy()


def assert_state_close(compiled: CompiledState, reference: TorchMask, rtol: float = RTOL) -> None:
    """Every parameter, momentum and BN statistic within ``rtol`` of torch's, relative to its largest entry."""
    checked = 0
    for name in compiled.values:
        if name.split(":", 1)[0] not in ("param", "momentum", "stat"):
            continue
        actual, expected = compiled.dense(name).astype(np.float64), reference.expected(name).astype(np.float64)
        scale = max(float(np.abs(expected).max()), SCALE_FLOOR)
        error = float(np.abs(actual - expected).max()) / scale
        assert error <= rtol, f"{name}: relative error {error:.2e} > {rtol:.0e}"
        checked += 1
    assert checked


def renamed(mod: tvm.IRModule, func_name: str, names: list[str]) -> tvm.IRModule:
    """``mod`` with the inputs of ``func_name`` renamed (``param:w`` is no TVMScript identifier)."""
    func = mod[func_name]
    params = [relax.Var(n, p.ty) for n, p in zip(names, func.params)]
    bound = func.bind_params(dict(zip(func.params, params)))
    out = mod.clone()
    out[func_name] = relax.Function(params, bound.body, bound.ret_ty, attrs=func.attrs)
    return out
