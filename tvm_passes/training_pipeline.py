"""The training pipeline: a sparse PyTorch model becomes one built TVM function per training step.

The built module holds two functions (inputs and outputs named as :mod:`tvm_passes.step_signature` says):

- ``train_step(data:x, param:..., stat:..., data:example_weights, data:labels, index:..., data:lr,
  momentum:...)`` -> ``loss, correct, stat:..., param:..., momentum:..., grad:<sparse layers>``: forward
  with batch statistics, mean cross entropy, backward, and ``torch.optim.SGD``'s update;
- ``evaluate(data:x, param:..., stat:..., index:...)`` -> ``logits``: the eval-mode forward.

Phases (each optionally dumps its IR to ``dump_dir/NN_<phase>.py``):

1. **import** in train mode, inputs renamed ``data:x`` / ``param:<fqn>`` (:mod:`tvm_passes.importer`);
2. **batch norm**: running statistics as inputs, their updates as outputs, float64 statistics
   (:class:`~tvm_passes.train_batch_norm.TrainBatchNorm`); ``evaluate`` is the eval-mode copy;
3. **channels**: channel-sparse layers become smaller dense convs on their compact values, their batch
   norms and consumers read only the kept channels (:class:`~tvm_passes.channel_training.ChannelTraining`);
   the batch norms' private functions are inlined;
4. **loss**: :class:`~tvm_passes.append_loss.AppendCrossEntropy`; ReLUs get PyTorch's subgradient at
   zero (:class:`~tvm_passes.relu_subgradient.ReluSubgradient`);
5. **differentiate**: Relax ``Gradient`` w.r.t. every ``param:`` input (the adjoint becomes ``train_step``);
6. **lower**: the sparse layers' forward, grad-input and grad-weight convs become the ``schedules``
   kernels, their parameter the compact values (:class:`~tvm_passes.lower_sparse_training.LowerSparseTraining`);
7. **optimizer**: :class:`~tvm_passes.append_sgd.AppendSGD`;
8. **legalize + fuse** the dense glue (:class:`~tvm_passes.legalize_dense_conv.LegalizeDenseConv` for
   the dense convs of the three directions, ``LegalizeOps``, ``FuseOps``, ``FuseTIR``), then the
   batch-norm statistics (:class:`~tvm_passes.schedule_channel_reduction.ScheduleChannelReduction`),
   :class:`~tvm_passes.schedule_dense_ops.ScheduleDenseOps` (dense convs, classifier, pool, dlight's
   CPU reductions) and the element-wise rest (:class:`~tvm_passes.schedule_elementwise.ScheduleElementwise`);
9. **build** for the target of the ``devices`` table; the VM's planned activation workspace is measured
   on the way (:func:`planned_workspace_bytes`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tvm
from tvm import relax

from devices.targets import get_target, tvm_target
from schedules.formats import SparseFormat

from .append_loss import AppendCrossEntropy
from .append_sgd import AppendSGD
from .channel_training import ChannelTraining
from .channel_training import index_values as channel_index_values
from .importer import ImportedModel, import_model
from .lower_sparse_training import LowerSparseTraining, TrainingKernelSource
from .lower_sparse_training import index_values as kernel_index_values
from .phases import PhaseLog
from .relu_subgradient import ReluSubgradient
from .legalize_dense_conv import LegalizeDenseConv
from .schedule_channel_reduction import ScheduleChannelReduction
from .schedule_dense_ops import ScheduleDenseOps
from .schedule_elementwise import ScheduleElementwise
from .step_signature import Slot, input_name, inputs_of_kind, signature
from .train_batch_norm import TrainBatchNorm

#: Names of the two functions of a built training module.
TRAIN_STEP = "train_step"
EVALUATE = "evaluate"
#: The phases of :func:`build_training_step`, in order (the names of its ``phase_seconds``).
TRAINING_PHASES = ("import", "batch norm", "channels", "loss", "differentiate", "lower", "optimizer",
                   "legalize and fuse", "build")


@dataclass(frozen=True)
class TrainingConfig:
    """What a training step is built for.

    Attributes
    ----------
    target : str
        Target name of the ``devices`` table.
    momentum : float
        SGD momentum.
    weight_decay : float
        SGD weight decay (added to every gradient).
    """

    target: str = "host"
    momentum: float = 0.9
    weight_decay: float = 1e-4


@dataclass
class TrainingStep:
    """The result of :func:`build_training_step`.

    Attributes
    ----------
    executable : tvm.runtime.Executable
        The built module (functions :data:`TRAIN_STEP` and :data:`EVALUATE`).
    mod : tvm.IRModule
        The module that was built.
    inputs, outputs : dict of str to tuple of Slot
        Per function, its named inputs and outputs in calling order.
    target : str
        Canonical target name.
    workspace_bytes : dict of str to int
        Per function, the bytes of the VM's planned activation storage (:func:`planned_workspace_bytes`).
    phase_seconds : dict of str to float
        Wall time of each phase.
    """

    executable: Any
    mod: tvm.IRModule
    inputs: dict[str, tuple[Slot, ...]]
    outputs: dict[str, tuple[Slot, ...]]
    target: str
    workspace_bytes: dict[str, int] = field(default_factory=dict)
    phase_seconds: dict[str, float] = field(default_factory=dict)


def _named_main(imported: ImportedModel) -> tuple[tvm.IRModule, dict]:
    """``main`` with its inputs renamed ``data:x`` / ``param:<fqn>``, and the batch norms re-keyed."""
    main = imported.mod["main"]
    names = {main.params[0].name: input_name("data", "x")}
    names.update({name: input_name("param", fqn) for name, fqn in imported.param_fqns.items()})
    params = [relax.Var(names[p.name], p.ty) for p in main.params]
    bound = main.bind_params(dict(zip(main.params, params)))
    renamed = relax.Function(params, bound.body, bound.ret_ty).with_attr("global_symbol", "main")
    batch_norms = {names[gamma]: buffers for gamma, buffers in imported.batch_norms.items()}
    cleaned = tvm.transform.Sequential([relax.transform.CanonicalizeBindings(), relax.transform.DeadCodeElimination()])
    return cleaned(tvm.IRModule({"main": renamed})), batch_norms


def index_inputs(fqn: str, fmt: SparseFormat) -> dict[str, np.ndarray]:
    """Values of every ``index:<fqn>:...`` input of a sparse layer, for its current format.

    A mutation that keeps the format's capacity (and index dtypes) changes these values only: the
    built module stays valid.
    """
    values = channel_index_values(fmt) if fmt.scheme == "channel" else kernel_index_values(fmt)
    return {input_name("index", f"{fqn}:{name}"): value for name, value in values.items()}


def _trainable(func: relax.Function) -> list[relax.Var]:
    return list(inputs_of_kind(func, "param").values())


def _differentiate(mod: tvm.IRModule) -> tvm.IRModule:
    main = mod["main"]
    adjoint = relax.transform.Gradient("main", require_grads=_trainable(main), target_index=0)(mod)["main_adjoint"]
    out = tvm.IRModule({name: mod[name] for name in [gv.name_hint for gv in mod.get_global_vars()] if name != "main"})
    out[TRAIN_STEP] = adjoint.with_attrs(dict(main.attrs)).with_attr("global_symbol", TRAIN_STEP)
    return out


def legalize_and_fuse(spec) -> tvm.transform.Pass:
    """Phase 8's passes: legalize and fuse the dense glue, then schedule the dense operators."""
    return tvm.transform.Sequential(
        [
            LegalizeDenseConv(),
            relax.transform.LegalizeOps(),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
            relax.transform.DeadCodeElimination(),
            ScheduleChannelReduction(spec),
            ScheduleDenseOps(spec),
            ScheduleElementwise(spec),
        ],
        name="legalize and fuse",
    )


def build_training_step(
    model,
    input_shape: tuple[int, ...],
    layers: Mapping[str, SparseFormat],
    config: TrainingConfig,
    kernels: TrainingKernelSource,
    dump_dir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> TrainingStep:
    """Build the training step and the evaluation function of a sparse model.

    Parameters
    ----------
    model : torch.nn.Module
        The model (only its structure matters: the values are inputs of the built functions).
    input_shape : tuple of int
        NCHW shape of a training batch (shorter batches are padded to it with example weight 0).
    layers : Mapping[str, SparseFormat]
        Packed format per sparse conv weight FQN; its shapes, capacity and index dtypes (not its
        contents) shape the code.
    config : TrainingConfig
    kernels : TrainingKernelSource
        Sparse kernels of the three directions (:class:`tvm_passes.kernels.SchedulesKernels`).
    dump_dir : str or Path, optional
        Directory receiving the IR after each phase.
    progress : callable, optional
        Called with a one-line message at the start of each phase.

    Returns
    -------
    TrainingStep
    """
    spec = get_target(config.target)
    target = tvm_target(spec)
    log = PhaseLog(TRAINING_PHASES, Path(dump_dir) if dump_dir is not None else None, progress)
    channel = {fqn: fmt for fqn, fmt in layers.items() if fmt.scheme == "channel"}
    kernel_layers = {fqn: fmt for fqn, fmt in layers.items() if fmt.scheme != "channel"}

    # Phase 1: import in train mode; inputs named after what they are.
    log.begin("import")
    imported = import_model(model, input_shape, train=True)
    log.end("import", imported.mod)
    mod, batch_norms = _named_main(imported)

    # Phase 2: batch norms read running statistics; training updates them, evaluation only reads them.
    def batch_norm(mod: tvm.IRModule) -> tvm.IRModule:
        both = mod.clone()
        both[EVALUATE] = mod["main"].with_attr("global_symbol", EVALUATE)
        both = TrainBatchNorm(batch_norms, training=True, func_name="main")(both)
        return TrainBatchNorm(batch_norms, training=False, func_name=EVALUATE)(both)

    front = tvm.transform.Sequential([
        _phase("batch norm", batch_norm),
        # Phase 3: channel layers become smaller dense convs; the batch-norm functions are inlined.
        tvm.transform.Sequential([
            ChannelTraining(channel, fixed=tuple(kernel_layers), func_names=("main", EVALUATE)),
            relax.transform.InlinePrivateFunctions(), relax.transform.CanonicalizeBindings(),
            relax.transform.DeadCodeElimination()], name="channels"),
        # Phase 4: the mean cross-entropy loss and the per-example correctness; ReLUs take PyTorch's
        # subgradient at zero.
        tvm.transform.Sequential([AppendCrossEntropy("main"), ReluSubgradient("main")], name="loss"),
        # Phase 5: differentiate the loss w.r.t. every parameter (dense convs of the sparse layers too).
        _phase("differentiate", _differentiate),
        # Phase 6: the sparse layers' three convs become kernels of schedules, their weight compact values.
        tvm.transform.Sequential([LowerSparseTraining(kernel_layers, kernels, (TRAIN_STEP, EVALUATE))],
                                 name="lower"),
        # Phase 7: torch.optim.SGD's update of every parameter; the learning rate is an input.
        tvm.transform.Sequential([AppendSGD(config.momentum, config.weight_decay, keep_grads=tuple(layers),
                                            func_name=TRAIN_STEP)], name="optimizer"),
    ], name="mest.train_step")
    # Phase 8: legalize and fuse the dense glue; schedule the dense convs and the reductions.
    back = legalize_and_fuse(spec)
    with target, tvm.transform.PassContext(opt_level=2, instruments=[log]):
        mod = front(mod)
        inputs = {name: signature(mod[name])[0] for name in (TRAIN_STEP, EVALUATE)}
        outputs = {name: signature(mod[name])[1] for name in (TRAIN_STEP, EVALUATE)}
        mod = back(mod)

    # Phase 9: build.
    log.begin("build")
    workspace = planned_workspace_bytes(mod)
    executable = tvm.compile(mod, target)
    log.end("build", None)
    return TrainingStep(executable=executable, mod=mod, inputs=inputs, outputs=outputs, target=spec.name,
                        workspace_bytes=workspace, phase_seconds=log.seconds)


def planned_workspace_bytes(mod: tvm.IRModule) -> dict[str, int]:
    """Per Relax function of a legalized module, the bytes of the storage the VM allocates for its
    intermediate tensors after ``tvm.compile``'s memory planning (``StaticPlanBlockMemory``).

    The same passes as the default build pipeline up to the planning, then the size of every
    ``relax.memory.alloc_storage`` (what :func:`tvm.relax.analysis.estimate_memory_usage` reports as
    planned, as a number). Not counted: the function's outputs (allocated apart, and the next step's
    inputs), and a kernel's own scratch inside its TIR.
    """
    planned = tvm.transform.Sequential([
        relax.transform.RewriteDataflowReshape(), relax.transform.ToNonDataflow(),
        relax.transform.RemovePurityChecking(), relax.transform.CallTIRRewrite(),
        relax.transform.StaticPlanBlockMemory(),
    ])(mod)
    alloc_storage = tvm.ir.Op.get("relax.memory.alloc_storage")
    sizes = {}
    for gvar, func in planned.functions_items():
        if not isinstance(func, relax.Function):
            continue
        total = [0]

        def visit(expr, total=total) -> None:
            if isinstance(expr, relax.Call) and expr.op == alloc_storage:
                size = expr.args[0]
                if isinstance(size, relax.ShapeExpr) and all(isinstance(v, tvm.tirx.IntImm) for v in size.values):
                    total[0] += int(size.values[0])

        relax.analysis.post_order_visit(func, visit)
        sizes[gvar.name_hint] = total[0]
    return sizes


def _phase(name: str, transform: Callable[[tvm.IRModule], tvm.IRModule]) -> tvm.transform.Pass:
    """A step of the pipeline that is a function of the module, as a named pass (a phase of PhaseLog)."""
    return tvm.transform.module_pass(lambda mod, _ctx: transform(mod), opt_level=0, name=name)
