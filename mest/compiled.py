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

On a device (a :class:`devices.sessions.Session` other than ``local``: an RPC server, a tracker's
device, the arm64 emulator) the step is built for the device's target (cross-linked), loaded there,
and the state stays there between steps: parameters, momentum, BatchNorm statistics and indices are
pushed once, each step sends the batch, the learning rate and the example weights and reads back the
loss and the per-example correctness. The torch objects are then copies, brought up to date by
:meth:`CompiledTraining.pull` (before a mutation, a checkpoint); :meth:`CompiledTraining.refresh`
pushes what a mutation changed (the sparse layers' values, momentum and indices). The device needs the
TVM runtime only. :meth:`CompiledTraining.residency` counts what it holds, and what was sent.

Buffers are sized once for the run's peak (as the ``tvm`` backend does), so a mutation only re-packs
the index inputs; a capacity change (or a kept-filter count beyond the channel capacity) builds or
loads another module (:mod:`tvm_passes.training_cache`). A short last batch is padded to the built
batch with example weight 0, which the step treats exactly as the short batch (batch statistics and the
loss skip it); evaluation pads with zeros and cuts the logits (eval mode is per example).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
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
from tvm_passes.step_signature import Slot, call_by_name, input_name, split_name
from tvm_passes.training_cache import load_or_build, step_key
from tvm_passes.training_pipeline import EVALUATE, TRAIN_STEP, TrainingConfig, index_inputs

if TYPE_CHECKING:
    from devices.sessions import Session


class CompiledConv(CompactConv):
    """A sparse conv whose compact values and momentum are inputs and outputs of the compiled step.

    Held by a :class:`schedules.layer.CompactWeight` (values and indices, no kernels); mutation is the
    compact layer's (re-pack at the same capacity unless the mask outgrows it, momentum kept at the
    survivors). :class:`CompiledTraining` re-binds the step's inputs after it.
    """


@dataclass
class Traffic:
    """Bytes copied between this process and the device the state lives on (none on the host).

    Attributes
    ----------
    sent, received : int
        All bytes pushed to and pulled from the device.
    steps : int
        Training steps run.
    step_sent, step_received : int
        The part of ``sent`` / ``received`` that the steps moved (batch, scalars; loss, correctness).
    """

    sent: int = 0
    received: int = 0
    steps: int = 0
    step_sent: int = 0
    step_received: int = 0

    def per_step(self) -> dict[str, float]:
        """Mean bytes sent and received per training step."""
        steps = max(self.steps, 1)
        return {"sent": self.step_sent / steps, "received": self.step_received / steps}


class CompiledTraining:
    """The compiled step of one run and the TVM tensors of its state (on the host, or on a device).

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
        Target of the ``devices`` table (this machine's by default; the session's with a session).
    progress : callable, optional
        Receives one line when a module is built.
    session : devices.sessions.Session, optional
        The device to train on (its target's build is loaded there and the state stays there); none
        or a ``local`` session: this process, the state shared with torch.
    """

    def __init__(self, model: nn.Module, structure: nn.Module, sparse: SparseState, optimizer: torch.optim.Optimizer,
                 model_key: str, input_shape: tuple[int, ...], target: str | None = None,
                 progress: Callable[[str], None] | None = None, session: Session | None = None) -> None:
        group = optimizer.param_groups[0]
        if group.get("nesterov") or group.get("dampening", 0) or len(optimizer.param_groups) != 1:
            raise NotImplementedError("the compiled step implements SGD with momentum, no dampening, no Nesterov")
        self.model, self.structure, self.sparse, self.optimizer = model, structure, sparse, optimizer
        self.model_key = model_key
        self.input_shape = tuple(input_shape)
        if session is not None:
            target = session.target.name
        #: The device holding the state; None: this process, where torch shares the TVM tensors.
        self.session = session if session is not None and session.kind != "local" else None
        self.config = TrainingConfig(target or host_target_name(), float(group["momentum"]), float(group["weight_decay"]))
        self.progress = progress
        self.build_seconds = 0.0
        self.builds = 0
        self.traffic = Traffic()
        self.workspace_bytes: dict[str, int] = {}
        self.kernel_knobs: dict[str, str] = {}
        self.tensors: dict[str, Any] = {}
        self._grads: dict[str, Any] = {}  # the last step's gradient of each sparse layer (for the mutation)
        self._stale = False  # on a device: the torch objects lag behind the device's state
        self._dense: dict[str, int] | None = None
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
                             lambda: SchedulesKernels(self.config.target, database), self.progress,
                             load=self.session.load_library if self.session is not None else None)
        if step.built:
            self.builds += 1
        self.build_seconds += step.seconds
        self.vm = (relax.VirtualMachine(step.module, tvm.cpu()) if self.session is None
                   else self.session.relax_vm(step.module))
        self.inputs, self.outputs = step.inputs, step.outputs
        self.workspace_bytes = dict(step.workspace_bytes)
        #: Per sparse kernel of the module, its knobs (``tuned ...`` from a record of the target, or defaults).
        self.kernel_knobs = dict(step.kernel_knobs)
        self.key = step.key
        self._bind()

    def refresh(self) -> None:
        """After a mutation: the step's inputs of the sparse layers (values, momentum, indices) from
        the torch objects, pushed to the device if there is one (a new module if a capacity changed)."""
        if self.vm is None:
            return
        if step_key(self._module_key, self.input_shape, self._formats(), self.config) != self.key:
            self._load()
        else:
            self._bind(changed=set(self.sparse.layers))

    def pull(self) -> None:
        """Bring the torch objects up to date with the step's state (before a mutation or a
        checkpoint): on a device, copy it back if a step ran since; on the host they share it."""
        if self.session is not None and self._stale:
            self._adopt(lambda tensor: torch.from_numpy(self._numpy(tensor)))
            self._stale = False

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

    def _bind(self, changed: set[str] | None = None) -> None:
        """The step's inputs from the torch objects: all, or (``changed``) those of these sparse
        layers and every index; the others keep their tensors."""
        self._by_name = self._targets()
        kept = {} if changed is None else {name: tensor for name, tensor in self.tensors.items()
                                           if split_name(name)[0] != "index" and split_name(name)[1] not in changed}
        self.tensors = {}
        for name, (kind, target) in self._by_name.items():
            if name in kept:
                self.tensors[name] = kept[name]
            elif kind == "param":
                self.tensors[name] = self._tensor(target.data)
            elif kind == "momentum":
                state = self.optimizer.state.setdefault(target, {})
                if state.get("momentum_buffer") is None:  # PyTorch's first step: buffer = gradient
                    state["momentum_buffer"] = torch.zeros_like(target.data)
                self.tensors[name] = self._tensor(state["momentum_buffer"])
            else:
                module, attr = target
                self.tensors[name] = self._tensor(getattr(module, attr))
        for fqn, layer in self.sparse.layers.items():
            for name, array in index_inputs(fqn, layer.module.format).items():
                self.tensors[name] = self._tensor(array)
        self._grads = {fqn: grad for fqn, grad in self._grads.items() if changed is None or fqn not in changed}

    def _tensor(self, value: torch.Tensor | np.ndarray) -> Any:
        """A TVM tensor of ``value`` where the step runs: a torch tensor's is shared with torch on the
        host; on a device it is a copy."""
        if self.session is None:
            return tvm.runtime.from_dlpack(value) if isinstance(value, torch.Tensor) else tvm.runtime.tensor(value)
        array = value.detach().numpy() if isinstance(value, torch.Tensor) else value
        self.traffic.sent += array.nbytes
        return self.session.array(array)

    def _numpy(self, tensor: Any) -> Any:
        if self.session is None:
            return tensor.numpy()
        array = self.session.numpy(tensor)
        self.traffic.received += array.nbytes
        return array

    def _take_outputs(self, results: dict) -> None:
        for name, tensor in results.items():
            kind, key = split_name(name)
            if kind == "grad":
                self._grads[key] = tensor
            elif name in self._by_name:
                self.tensors[name] = tensor
        if self.session is None:
            self._adopt(torch.from_dlpack)  # the torch objects take the outputs' storage
        else:
            self._stale = True

    def _adopt(self, as_torch: Callable[[Any], torch.Tensor]) -> None:
        """The torch objects take the values of the step's state (``as_torch`` of each tensor)."""
        for name, (kind, target) in self._by_name.items():
            value = as_torch(self.tensors[name])
            if kind == "param":
                target.data = value
            elif kind == "momentum":
                self.optimizer.state[target]["momentum_buffer"] = value
            else:
                module, attr = target
                getattr(module, attr).data = value
        for fqn, grad in self._grads.items():
            self.sparse.layers[fqn].module.values.grad = as_torch(grad)

    # -- steps -----------------------------------------------------------------------------------
    def _padded(self, images: torch.Tensor) -> torch.Tensor:
        missing = self.input_shape[0] - len(images)
        if missing < 0:
            raise ValueError(f"batch of {len(images)} is larger than the built batch {self.input_shape[0]}")
        return torch.cat([images, images.new_zeros(missing, *images.shape[1:])]) if missing else images

    def _call(self, name: str, values: dict[str, Any]) -> dict[str, Any]:
        if self.session is None:
            function = self.vm[name]
        else:
            function = lambda *args: self.session.call_relax(self.vm, name, list(args))  # noqa: E731
        return call_by_name(function, self.inputs[name], self.outputs[name], values)

    def step(self, images: torch.Tensor, labels: torch.Tensor, lr: float) -> tuple[float, torch.Tensor]:
        """One training step on a batch; returns its mean loss and per-example correctness."""
        if self.vm is None:
            self._load()
        sent, received = self.traffic.sent, self.traffic.received
        real = len(labels)
        weights = torch.zeros(self.input_shape[0], dtype=torch.float32)
        weights[:real] = 1.0
        data = {
            input_name("data", "x"): self._padded(images.contiguous()),
            input_name("data", "labels"): self._padded(labels.to(torch.int64)),
            input_name("data", "example_weights"): weights,
            input_name("data", "lr"): torch.tensor(lr, dtype=torch.float32),
        }
        values = {**self.tensors, **{k: self._tensor(v.contiguous()) for k, v in data.items()}}
        results = self._call(TRAIN_STEP, values)
        self._take_outputs(results)
        correct = torch.from_numpy(self._numpy(results["correct"]))[:real].clone()
        loss = float(self._numpy(results["loss"]))
        self.traffic.steps += 1
        self.traffic.step_sent += self.traffic.sent - sent
        self.traffic.step_received += self.traffic.received - received
        return loss, correct

    def evaluate(self, images: torch.Tensor) -> torch.Tensor:
        """Eval-mode logits of a batch (padded to the built batch and cut back)."""
        if self.vm is None:
            self._load()
        values = {**self.tensors, input_name("data", "x"): self._tensor(self._padded(images.contiguous()))}
        logits = self._call(EVALUATE, values)["logits"]
        return torch.from_numpy(self._numpy(logits))[: len(images)].clone()

    # -- what it holds ---------------------------------------------------------------------------
    def residency(self) -> dict[str, int]:
        """Bytes held where the step runs, by kind: ``param``, ``momentum``, ``stat``, ``index``,
        ``data`` (the batch inputs), and ``workspace`` (the VM's planned activations of the step)."""
        if self.vm is None:
            self._load()
        return resident_bytes(self.inputs[TRAIN_STEP], self.workspace_bytes.get(TRAIN_STEP, 0))

    def dense_residency(self) -> dict[str, int]:
        """:meth:`residency` of a dense compiled step of the same model and batch (built here once, then
        read from the module cache; not loaded): what a device would hold without the sparse layers."""
        if self._dense is None:
            target = host_target_name()  # the signature and the memory plan do not depend on the target
            config = TrainingConfig(target, self.config.momentum, self.config.weight_decay)
            step = load_or_build(self.structure, f"{self.model_key}/dense", self.input_shape, {}, config,
                                 lambda: SchedulesKernels(target, TuningDatabase()), self.progress,
                                 load=lambda library: None)
            self._dense = resident_bytes(step.inputs[TRAIN_STEP], step.workspace_bytes.get(TRAIN_STEP, 0))
        return self._dense

    def device_metrics(self) -> dict:
        """On a device: what it holds against a dense compiled step, and what crossed to it per step."""
        return {"session": self.session.describe(), "target": self.config.target, "emulated": self.session.emulated,
                "resident_bytes": self.residency(), "dense_resident_bytes": self.dense_residency(),
                "bytes_per_step": self.traffic.per_step(), "bytes_sent": self.traffic.sent,
                "bytes_received": self.traffic.received}


def resident_bytes(inputs: tuple[Slot, ...], workspace: int) -> dict[str, int]:
    """Bytes of a step's inputs by kind (``param``, ``momentum``, ``stat``, ``index``, ``data``), plus its
    planned ``workspace``, and their ``total``."""
    sizes = {kind: 0 for kind in ("param", "momentum", "stat", "index", "data")}
    for slot in inputs:
        count = 1
        for dim in slot.shape:
            count *= dim
        sizes[slot.kind] = sizes.get(slot.kind, 0) + count * tvm.runtime.DataType(slot.dtype).bits // 8
    sizes["workspace"] = workspace
    sizes["total"] = sum(sizes.values())
    return sizes


def to_compiled(model: nn.Module, sparse: SparseState, capacity: dict[str, int] | None = None) -> None:
    """Replace every masked sparse conv of ``model`` by a :class:`schedules.layer.CompactWeight` held by
    a :class:`CompiledConv`, in place, before the optimizer is built (see
    :func:`mest.compact.replace_sparse_convs`, whose parameters these are)."""
    replace_sparse_convs(model, sparse, capacity, _compact_weight, CompiledConv)


def _compact_weight(weight: torch.Tensor, mask: torch.Tensor, scheme: str, stride: int, capacity: int,
                    batch_size: int | None) -> CompactWeight:
    return CompactWeight(weight, mask, scheme, stride=stride, capacity=capacity)

