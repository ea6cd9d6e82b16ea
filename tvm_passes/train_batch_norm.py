"""TrainBatchNorm: batch norms read their running statistics from inputs and, in training, update them.

Where it runs: phase 2 of :func:`tvm_passes.training_pipeline.build_training_step`, on the train-mode
import (:func:`tvm_passes.importer.import_model` with ``train=True``) after ``ChannelTraining``, and
before the loss is appended and ``Gradient`` runs (it replaces ``DecomposeOpsForTraining``).

Why not the stock passes: the frontend freezes the running statistics as constants and drops their
updates; ``DecomposeOpsForTraining`` updates ``running_var`` with the *biased* batch variance (PyTorch
uses the unbiased one), and its float32 reductions over ``N*H*W`` values (TOPI sums serially) lose
digits where PyTorch's CPU batch norm accumulates in float64 (``acc_type<float>`` is double); the
difference reaches 1e-2 relative in the gradients of a ResNet-32 at init (see the README's Training
section).

What it does, to every ``relax.nn.batch_norm`` of the function whose ``gamma`` is an input named in
``batch_norms``:

- **training** (``training=True`` calls, when ``training``): adds the inputs ``stat:<running_mean>``,
  ``stat:<running_var>``, ``stat:<num_batches_tracked>`` and, once, ``data:example_weights`` (``[N]``,
  1 for a real example, 0 for a padding one) and replaces the call by

  ``mean = sum(x*w)/n``, ``var = sum((x - mean)^2*w)/n`` (biased, for normalising), with ``n`` the
  weighted count, every sum over the batch accumulated in float64; ``y = (x - mean) * gamma /
  sqrt(var + eps) + beta`` in float32, the per-channel values broadcast in float64 so that the
  reductions ``Gradient`` derives from the broadcasts (``d beta``, ``d gamma``, ``d mean``) are float64
  too; the updated statistics ``(1-m)*running + m*batch`` (the unbiased ``var * n/(n-1)`` for the
  variance, as ``torch.nn.BatchNorm2d``) in float64, and ``num_batches_tracked + 1``, appended to the
  outputs under their ``stat:`` names. Padding examples take no part in any statistic, so a short
  batch padded to the built batch gives exactly the short batch's step.
- **evaluation** (when not ``training``, for ``training=False`` and ``training=True`` calls alike):
  adds the ``stat:`` inputs of the two running statistics and normalises with them (``x * a + b``,
  ``a = gamma / sqrt(running_var + eps)``, ``b = beta - running_mean * a``, as PyTorch's eval).

What it refuses (:class:`~tvm_passes.errors.UnsupportedModelError`): a batch norm without scale and
center, one whose ``gamma`` is not an input listed in ``batch_norms``, a function whose body is not one
dataflow block.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .errors import UnsupportedModelError
from .importer import BatchNormBuffers
from .sparse_conv import function_name
from .step_signature import input_name, output_exprs, outputs_of, rebuild, split_name

_BATCH_NORM = "relax.nn.batch_norm"

#: ``Composite`` attribute of a batch norm's private function.
COMPOSITE = "mest.batch_norm"
_F64 = "float64"
_F32 = "float32"


def _c(value: float, dtype: str = _F64) -> relax.Expr:
    return relax.const(value, dtype)


def _channel_shape(ndim: int, axis: int, channels: int) -> list[int]:
    return [channels if i == axis else 1 for i in range(ndim)]


class _Emitter:
    """Emits one batch norm's decomposition into a block builder (inside its private function)."""

    def __init__(self, bb: relax.BlockBuilder, spec: "BatchNormSpec"):
        self.bb = bb
        self.spec = spec
        self.shape = list(spec.x_shape)
        self.axis = spec.axis
        self.channels = self.shape[self.axis]
        self.axes = [i for i in range(len(self.shape)) if i != self.axis]

    def emit(self, expr: relax.Expr) -> relax.Var:
        return self.bb.emit(expr)

    def broadcast(self, per_channel64: relax.Expr) -> relax.Var:
        """A float64 ``[C]`` value broadcast to the data's shape, then cast to float32."""
        shaped = relax.op.reshape(per_channel64, _channel_shape(len(self.shape), self.axis, self.channels))
        return self.emit(relax.op.astype(relax.op.broadcast_to(shaped, self.shape), _F32))

    def sum64(self, big32: relax.Expr) -> relax.Var:
        """Per-channel sum of a float32 tensor of the data's shape, accumulated in float64."""
        return self.emit(relax.op.sum(relax.op.astype(big32, _F64), axis=self.axes))

    def gathered(self, per_channel, gather, pad: float) -> relax.Expr:
        """``per_channel[gather]`` where ``gather == C`` reads ``pad`` (the padding channels)."""
        padding = relax.const(np.full(1, pad, dtype=str(per_channel.ty.dtype)))
        return self.emit(relax.op.take(relax.op.concat([per_channel, padding]), gather, axis=0))

    def scattered(self, compact64, scatter) -> relax.Expr:
        """A compact float64 ``[F]`` value put back in place over ``C`` channels, 0 where ``scatter == F``."""
        return self.emit(relax.op.take(relax.op.concat([compact64, _c(np.zeros(1))]), scatter, axis=0))

    def training(self, x, gamma, beta, mean_in, var_in, count_in, weights, gather=None, scatter=None):
        eps, momentum = self.spec.epsilon, self.spec.momentum
        if gather is not None:  # compact channels: the padding ones read gamma = beta = 0 (their output is 0)
            gamma, beta = self.gathered(gamma, gather, 0.0), self.gathered(beta, gather, 0.0)
        example_shape = [self.shape[0]] + [1] * (len(self.shape) - 1)
        w = self.emit(relax.op.reshape(weights, example_shape))
        per_example = float(np.prod(self.shape[1:]) / self.channels)
        count = self.emit(relax.op.multiply(relax.op.sum(relax.op.astype(weights, _F64)), _c(per_example)))
        mean = self.emit(relax.op.divide(self.sum64(relax.op.multiply(x, w)), count))
        centered = self.emit(relax.op.subtract(x, self.broadcast(mean)))
        squares = self.emit(relax.op.multiply(relax.op.multiply(centered, centered), w))
        var = self.emit(relax.op.divide(self.sum64(squares), count))
        inv_std = self.emit(relax.op.divide(_c(1.0), relax.op.sqrt(relax.op.add(var, _c(eps)))))
        scale = self.emit(relax.op.multiply(relax.op.astype(gamma, _F64), inv_std))
        scaled = self.emit(relax.op.multiply(centered, self.broadcast(scale)))
        y = self.emit(relax.op.add(scaled, self.broadcast(relax.op.astype(beta, _F64))))
        unbiased = self.emit(relax.op.multiply(var, relax.op.divide(count, relax.op.subtract(count, _c(1.0)))))
        if scatter is not None:  # a pruned channel's batch statistics are those of a zero channel: 0
            mean, unbiased = self.scattered(mean, scatter), self.scattered(unbiased, scatter)
        updates = []
        for running, batch in ((mean_in, mean), (var_in, unbiased)):
            new = relax.op.add(relax.op.multiply(_c(1.0 - momentum), relax.op.astype(running, _F64)),
                               relax.op.multiply(_c(momentum), batch))
            updates.append(self.emit(relax.op.astype(new, _F32)))
        updates.append(self.emit(relax.op.add(count_in, relax.const(1, "int64"))))
        return relax.Tuple([y, *updates])

    def evaluation(self, x, gamma, beta, mean_in, var_in, gather=None):
        if gather is not None:
            gamma, beta = self.gathered(gamma, gather, 0.0), self.gathered(beta, gather, 0.0)
            mean_in, var_in = self.gathered(mean_in, gather, 0.0), self.gathered(var_in, gather, 1.0)
        shape = _channel_shape(len(self.shape), self.axis, self.channels)
        eps = relax.const(self.spec.epsilon, _F32)
        scale = self.emit(relax.op.divide(gamma, relax.op.sqrt(relax.op.add(var_in, eps))))
        shift = self.emit(relax.op.subtract(beta, relax.op.multiply(mean_in, scale)))
        scaled = self.emit(relax.op.multiply(x, relax.op.reshape(scale, shape)))
        return self.emit(relax.op.add(scaled, relax.op.reshape(shift, shape)))


@dataclass(frozen=True)
class BatchNormSpec:
    """What the private function of one batch norm is built from.

    Attributes
    ----------
    x_shape : tuple of int
        Shape of the data (``F`` channels on ``axis`` when compact).
    channels : int
        Channels of the parameters and statistics (``C``).
    axis : int
        Channel axis.
    epsilon, momentum : float
        As ``torch.nn.BatchNorm2d``.
    training : bool
        Batch statistics and updates, or the running statistics.
    compact : bool
        The data holds only the ``F`` kept (and padding) channels of ``C``: extra inputs ``gather``
        (``[F]`` int32, channel of each compact one, ``C`` for padding) and, in training, ``scatter``
        (``[C]`` int32, compact position of each channel, ``F`` for a pruned one).
    """

    x_shape: tuple[int, ...]
    channels: int
    axis: int
    epsilon: float
    momentum: float
    training: bool
    compact: bool = False


def batch_norm_function(spec: BatchNormSpec) -> relax.Function:
    """The private function of one batch norm (see the module docstring).

    Training: ``(x, gamma, beta, running_mean, running_var, num_batches_tracked, example_weights
    [, gather, scatter]) -> (y, running_mean', running_var', num_batches_tracked')``; evaluation:
    ``(x, gamma, beta, running_mean, running_var [, gather]) -> y``.
    """
    channel = relax.TensorType((spec.channels,), _F32)
    params = [relax.Var("x", relax.TensorType(spec.x_shape, _F32))]
    params += [relax.Var(n, channel) for n in ("gamma", "beta", "running_mean", "running_var")]
    if spec.training:
        params += [relax.Var("num_batches_tracked", relax.TensorType((), "int64")),
                   relax.Var("example_weights", relax.TensorType((spec.x_shape[0],), _F32))]
    if spec.compact:
        params.append(relax.Var("gather", relax.TensorType((spec.x_shape[spec.axis],), "int32")))
        if spec.training:
            params.append(relax.Var("scatter", relax.TensorType((spec.channels,), "int32")))
    attrs = {"Composite": COMPOSITE, "mest.training": spec.training, "mest.compact": spec.compact,
             "mest.epsilon": spec.epsilon, "mest.momentum": spec.momentum, "mest.axis": spec.axis}
    bb = relax.BlockBuilder()
    with bb.function("f", params, attrs=attrs, private=True):
        with bb.dataflow():
            emitter = _Emitter(bb, spec)
            result = emitter.training(*params) if spec.training else emitter.evaluation(*params)
            out = bb.emit_output(result)
        bb.emit_func_output(out)
    return bb.get()["f"]


def batch_norm_spec(func) -> BatchNormSpec | None:
    """The spec of a batch norm's private function, or None if ``func`` is not one."""
    attrs = func.attrs if isinstance(func, relax.Function) else None
    if attrs is None or "Composite" not in attrs or str(attrs["Composite"]) != COMPOSITE:
        return None
    x_shape = tuple(int(d) for d in func.params[0].ty.shape)
    return BatchNormSpec(x_shape, int(func.params[1].ty.shape[0]), int(attrs["mest.axis"]),
                         float(attrs["mest.epsilon"]), float(attrs["mest.momentum"]),
                         bool(attrs["mest.training"]), bool(attrs["mest.compact"]))


@mutator
class _BatchNormRewriter(PyExprMutator):
    def __init__(self, mod, stats: Mapping[str, tuple[relax.Var, ...]], weights: relax.Var | None):
        super().__init__(mod)
        self.stats = stats
        self.weights = weights
        self.updates: list[tuple[str, relax.Var]] = []
        self.used_weights = False

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == _BATCH_NORM):
            return call
        gamma, beta = call.args[1], call.args[2]
        if not (call.attrs.scale and call.attrs.center):
            raise UnsupportedModelError("a batch norm without scale and center is not supported in training")
        if not isinstance(gamma, relax.Var) or gamma.name not in self.stats:
            raise UnsupportedModelError(f"batch norm on {call.args[0].ty} has no known running statistics")
        mean_in, var_in, count_in = self.stats[gamma.name]
        x = call.args[0]
        shape = tuple(int(d) for d in x.ty.shape)
        training = self.weights is not None and bool(call.attrs.training)
        spec = BatchNormSpec(shape, int(gamma.ty.shape[0]), int(call.attrs.axis) % len(shape),
                             float(call.attrs.epsilon), float(call.attrs.momentum), training)
        stem = function_name(split_name(gamma.name)[1] or gamma.name)
        gvar = self.builder_.add_func(batch_norm_function(spec), f"{stem}_{'train' if training else 'eval'}")
        if not training:
            y = self.builder_.emit(relax.Call(gvar, [x, gamma, beta, mean_in, var_in]))
            return relax.Tuple([y, mean_in, var_in])
        result = self.builder_.emit(relax.Call(gvar, [x, gamma, beta, mean_in, var_in, count_in, self.weights]))
        self.used_weights = True
        for i, var in enumerate((mean_in, var_in, count_in), start=1):
            self.updates.append((var.name, self.builder_.emit(relax.TupleGetItem(result, i))))
        return result


@tvm.transform.module_pass(opt_level=0, name="mest.TrainBatchNorm")
class TrainBatchNorm:
    """Running statistics as inputs (and, in training, their updates as outputs); see the module docstring.

    Parameters
    ----------
    batch_norms : Mapping[str, BatchNormBuffers]
        Name of each batch norm's ``gamma`` input -> FQNs of its running statistics.
    training : bool
        Batch statistics and updates (True), or normalisation by the running statistics (False).
    func_name : str
        The function to rewrite.
    """

    def __init__(self, batch_norms: Mapping[str, BatchNormBuffers], training: bool = True, func_name: str = "main"):
        self.batch_norms = dict(batch_norms)
        self.training = training
        self.func_name = func_name

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        """Apply the pass (see the module docstring)."""
        func = mod[self.func_name]
        params = {p.name: p for p in func.params}
        stats, new_params = {}, []
        for gamma_name, buffers in self.batch_norms.items():
            if gamma_name not in params:
                continue
            channels = params[gamma_name].ty.shape
            names = (buffers.running_mean, buffers.running_var, buffers.num_batches_tracked)
            found = [relax.Var(input_name("stat", n), relax.TensorType(channels, _F32)) for n in names[:2]]
            if self.training:
                found.append(relax.Var(input_name("stat", names[2]), relax.TensorType((), "int64")))
            else:
                found.append(None)
            stats[gamma_name] = tuple(found)
            new_params.extend(v for v in found if v is not None)
        weights = None
        if self.training:
            batch = func.params[0].ty.shape[0]
            weights = relax.Var(input_name("data", "example_weights"), relax.TensorType((batch,), _F32))
        rewriter = _BatchNormRewriter(mod.clone(), stats, weights)  # the builder adds to its module in place
        body = rewriter.visit_expr(func)
        if weights is not None and rewriter.used_weights:
            new_params.append(weights)
        outputs = list(zip(outputs_of(body), output_exprs(body)))
        outputs += rewriter.updates
        rebuilt = rebuild(body, [*body.params, *new_params], lambda bb: outputs)
        out = rewriter.builder_.get()
        out[self.func_name] = rebuilt.with_attr("global_symbol", self.func_name)
        return tvm.transform.Sequential([relax.transform.CanonicalizeBindings(), relax.transform.DeadCodeElimination()])(out)
