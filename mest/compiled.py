"""The ``compiled`` backend: each training step is one call of a TVM function built by our passes.

:func:`tvm_passes.training_pipeline.build_training_step` builds forward, loss, backward and the SGD
update of the whole model into ``train_step`` (the sparse layers' convs as the ``schedules`` kernels,
the dense glue fused), plus an eval-mode ``evaluate``. The run's state lives in TVM tensors shared
zero-copy (DLPack) with the torch objects the rest of the trainer reads: the model's parameters and
BatchNorm statistics, the optimizer's momentum buffers, and each sparse layer's compact values held by a
:class:`schedules.layer.CompactWeight` (:class:`CompiledConv`). After each step the outputs become the
storage of those torch objects; before a step after a mutation or a restore, the inputs are taken from
them again. So checkpoints (:func:`mest.compact.dense_equivalent_state`), mutation
(:meth:`mest.sparsity.SparseState.mutate`) and the forgetting statistics work unchanged.

Buffers are sized once for the run's peak (as the ``tvm`` backend does), so a mutation only re-packs
the index inputs; a capacity change (or a kept-filter count beyond the channel capacity) builds or
loads another module (:mod:`tvm_passes.training_cache`). A short last batch is padded to the built
batch with example weight 0, which the step treats exactly as the short batch (batch statistics and the
loss skip it); evaluation pads with zeros and cuts the logits (eval mode is per example).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
import tvm
from torch import nn
from tvm import relax

from devices.targets import host_target_name

from mest.compact import CompactConv, replace_sparse_convs
from mest.sparsity import SparseState
from schedules.database import TuningDatabase
from schedules.layer import CompactWeight
from tvm_passes.kernels import SchedulesKernels
from tvm_passes.step_signature import call_by_name, input_name
from tvm_passes.training_cache import load_or_build, step_key
from tvm_passes.training_pipeline import EVALUATE, TRAIN_STEP, TrainingConfig, index_inputs


class CompiledConv(CompactConv):
    """A sparse conv whose compact values and momentum are inputs and outputs of the compiled step.

    Held by a :class:`schedules.layer.CompactWeight` (values and indices, no kernels); mutation is the
    compact layer's (re-pack at the same capacity unless the mask outgrows it, momentum kept at the
    survivors). :class:`CompiledTraining` re-binds the step's inputs after it.
    """


class CompiledTraining:
    """The compiled step of one run and the TVM tensors of its state.

    Parameters
    ----------
    model : torch.nn.Module
        The run's model, converted by :func:`to_compiled` before its optimizer was built.
    structure : torch.nn.Module
        A model of the same structure with ordinary convs, for the pipeline to export (its values
        are not read).
    sparse : SparseState
        Its sparse layers, :class:`CompiledConv` after :func:`to_compiled`.
    optimizer : torch.optim.SGD
        The run's optimizer (momentum, weight decay; its momentum buffers become step outputs).
    model_key : str
        Identifies the model's structure for the module cache.
    input_shape : tuple of int
        NCHW shape of a training batch.
    target : str, optional
        Target of the ``devices`` table (this machine's by default).
    progress : callable, optional
        Receives one line when a module is built.
    """

    def __init__(self, model: nn.Module, structure: nn.Module, sparse: SparseState, optimizer: torch.optim.Optimizer,
                 model_key: str, input_shape: tuple[int, ...], target: str | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        group = optimizer.param_groups[0]
        if group.get("nesterov") or group.get("dampening", 0) or len(optimizer.param_groups) != 1:
            raise NotImplementedError("the compiled step implements SGD with momentum, no dampening, no Nesterov")
        self.model, self.structure, self.sparse, self.optimizer = model, structure, sparse, optimizer
        self.model_key = model_key
        self.input_shape = tuple(input_shape)
        self.config = TrainingConfig(target or host_target_name(), float(group["momentum"]), float(group["weight_decay"]))
        self.progress = progress
        self.build_seconds = 0.0
        self.builds = 0
        self.vm = None  # built or loaded at the first step, inside the first epoch's time

    # -- the module ---------------------------------------------------------------------------
    def _formats(self) -> dict:
        return {fqn: layer.module.format for fqn, layer in self.sparse.layers.items()}

    def _load(self) -> None:
        formats = self._formats()
        # The sparse kernels take their knobs from the tuning database, as the tvm backend's: its
        # records are part of what the built module is (a new record builds a new module).
        database = TuningDatabase()  # the default one, as the tvm backend's kernel cache
        records = database.sparse_path
        tuned = hashlib.sha256(records.read_bytes()).hexdigest()[:12] if records.exists() else "untuned"
        self._module_key = f"{self.model_key}/{tuned}"
        step = load_or_build(self.structure, self._module_key, self.input_shape, formats, self.config,
                             lambda: SchedulesKernels(self.config.target, database), self.progress)
        if step.built:
            self.builds += 1
        self.build_seconds += step.seconds
        self.vm = relax.VirtualMachine(step.module, tvm.cpu())
        self.inputs, self.outputs = step.inputs, step.outputs
        self.key = step.key
        self._bind()

    def refresh(self) -> None:
        """After a mutation or a restore: the step's inputs from the torch objects (a new module if a
        capacity changed)."""
        if self.vm is None:
            return
        if step_key(self._module_key, self.input_shape, self._formats(), self.config) != self.key:
            self._load()
        else:
            self._bind()

    # -- binding torch objects to the step's names ---------------------------------------------
    def _targets(self) -> dict[str, tuple]:
        """name -> (object, attribute) holding that input's torch tensor."""
        params = dict(self.model.named_parameters())
        buffers = {}
        for name, _ in self.model.named_buffers():
            owner, _, attr = name.rpartition(".")
            buffers[name] = (self.model.get_submodule(owner), attr)
        compact = {fqn: layer.module.values for fqn, layer in self.sparse.layers.items()}
        targets = {}
        for slot in self.inputs[TRAIN_STEP]:
            if slot.kind == "param":
                targets[slot.name] = ("param", compact.get(slot.key, params.get(slot.key)))
            elif slot.kind == "momentum":
                targets[slot.name] = ("momentum", compact.get(slot.key, params.get(slot.key)))
            elif slot.kind == "stat":
                targets[slot.name] = ("stat", buffers[slot.key])
        return targets

    def _bind(self) -> None:
        self._by_name = self._targets()
        self.tensors: dict[str, tvm.runtime.Tensor] = {}
        for name, (kind, target) in self._by_name.items():
            if kind == "param":
                self.tensors[name] = tvm.runtime.from_dlpack(target.data)
            elif kind == "momentum":
                state = self.optimizer.state.setdefault(target, {})
                if state.get("momentum_buffer") is None:  # PyTorch's first step: buffer = gradient
                    state["momentum_buffer"] = torch.zeros_like(target.data)
                self.tensors[name] = tvm.runtime.from_dlpack(state["momentum_buffer"])
            else:
                module, attr = target
                self.tensors[name] = tvm.runtime.from_dlpack(getattr(module, attr))
        for fqn, layer in self.sparse.layers.items():
            for name, array in index_inputs(fqn, layer.module.format).items():
                self.tensors[name] = tvm.runtime.tensor(array)

    def _take_outputs(self, results: dict) -> None:
        for name, tensor in results.items():
            target = self._by_name.get(name)
            kind = name.split(":", 1)[0]
            if kind == "grad":
                fqn = name.split(":", 1)[1]
                self.sparse.layers[fqn].module.values.grad = torch.from_dlpack(tensor)
                continue
            if target is None:
                continue
            self.tensors[name] = tensor
            if kind == "param":
                target[1].data = torch.from_dlpack(tensor)
            elif kind == "momentum":
                self.optimizer.state[target[1]]["momentum_buffer"] = torch.from_dlpack(tensor)
            else:
                module, attr = target[1]
                getattr(module, attr).data = torch.from_dlpack(tensor)

    # -- steps -----------------------------------------------------------------------------------
    def _padded(self, images: torch.Tensor) -> torch.Tensor:
        missing = self.input_shape[0] - len(images)
        if missing < 0:
            raise ValueError(f"batch of {len(images)} is larger than the built batch {self.input_shape[0]}")
        return torch.cat([images, images.new_zeros(missing, *images.shape[1:])]) if missing else images

    def step(self, images: torch.Tensor, labels: torch.Tensor, lr: float) -> tuple[float, torch.Tensor]:
        """One training step on a batch; returns its mean loss and per-example correctness."""
        if self.vm is None:
            self._load()
        real = len(labels)
        weights = torch.zeros(self.input_shape[0], dtype=torch.float32)
        weights[:real] = 1.0
        data = {
            input_name("data", "x"): self._padded(images.contiguous()),
            input_name("data", "labels"): self._padded(labels.to(torch.int64)),
            input_name("data", "example_weights"): weights,
            input_name("data", "lr"): torch.tensor(lr, dtype=torch.float32),
        }
        values = {**self.tensors, **{k: tvm.runtime.from_dlpack(v.contiguous()) for k, v in data.items()}}
        results = call_by_name(self.vm[TRAIN_STEP], self.inputs[TRAIN_STEP], self.outputs[TRAIN_STEP], values)
        self._take_outputs(results)
        correct = torch.from_dlpack(results["correct"])[:real].clone()
        return float(results["loss"].numpy()), correct

    def evaluate(self, images: torch.Tensor) -> torch.Tensor:
        """Eval-mode logits of a batch (padded to the built batch and cut back)."""
        if self.vm is None:
            self._load()
        values = {**self.tensors, input_name("data", "x"): tvm.runtime.from_dlpack(self._padded(images.contiguous()))}
        logits = call_by_name(self.vm[EVALUATE], self.inputs[EVALUATE], self.outputs[EVALUATE], values)["logits"]
        return torch.from_dlpack(logits)[: len(images)].clone()


def to_compiled(model: nn.Module, sparse: SparseState, capacity: dict[str, int] | None = None) -> None:
    """Replace every masked sparse conv of ``model`` by a :class:`schedules.layer.CompactWeight` held by
    a :class:`CompiledConv`, in place, before the optimizer is built (see
    :func:`mest.compact.replace_sparse_convs`, whose parameters these are)."""
    replace_sparse_convs(model, sparse, capacity, _compact_weight, CompiledConv)


def _compact_weight(weight: torch.Tensor, mask: torch.Tensor, scheme: str, stride: int, capacity: int,
                    batch_size: int | None) -> CompactWeight:
    return CompactWeight(weight, mask, scheme, stride=stride, capacity=capacity)

