"""AppendSGD: the gradients of the adjoint function update the parameters as ``torch.optim.SGD`` does.

Where it runs: phase 6 of :func:`tvm_passes.training_pipeline.build_training_step`, on the adjoint
function that ``Gradient`` made (``main_adjoint``), after ``LowerSparseTraining`` (so a sparse layer's
parameter, gradient and momentum are its compact values), before legalization.

Why not ``tvm.relax.training.optimizer.MomentumSGD``: it bakes the learning rate into the function as a
constant (the cosine schedule would rebuild the module every epoch), keeps a step counter the trainer
does not need, and is a separate function (one more VM call and a copy of every parameter per step).

What it does: adds the inputs ``data:lr`` (float32 scalar) and ``momentum:<fqn>`` for every parameter
input ``param:<fqn>`` (same shape), and turns ``((outputs...), (grads...))`` into the flat outputs
``outputs..., param:<fqn>..., momentum:<fqn>..., grad:<fqn>...`` with, per parameter,
``torch.optim.SGD(momentum=m, dampening=0, weight_decay=wd, nesterov=False)``:

- ``d = grad + wd * param`` (weight decay added to the gradient, every parameter);
- ``buf = m * buf + d`` (a zero buffer gives ``buf = d``, PyTorch's first step);
- ``param = param - lr * buf``.

``grad:<fqn>`` outputs are the raw gradients of the parameters named in ``keep_grads`` (the sparse
layers', for a mutation that scores by gradient).

What it refuses (:class:`~tvm_passes.errors.CompileError`): a function that does not return the
``(outputs, grads)`` pair of ``Gradient`` with one gradient per ``param:`` input.
"""

from __future__ import annotations

from collections.abc import Sequence

import tvm
from tvm import relax

from .errors import CompileError
from .step_signature import OUTPUTS_ATTR, input_name, inputs_of_kind, outputs_of, rebuild, replace_function, split_name


def _adjoint_parts(func: relax.Function) -> tuple[list[relax.Expr], list[relax.Expr]]:
    bindings = {b.var: b.value for block in func.body.blocks for b in block.bindings}

    def fields(expr):
        expr = bindings.get(expr, expr) if isinstance(expr, relax.Var) else expr
        if not isinstance(expr, relax.Tuple):
            raise CompileError("the adjoint function must return Gradient's (outputs, grads) tuples")
        return list(expr.fields)

    parts = fields(func.body.body)
    if len(parts) != 2:
        raise CompileError("the adjoint function must return Gradient's (outputs, grads) pair")
    outputs = parts[0]
    outputs = fields(outputs) if isinstance(outputs.ty, relax.TupleType) else [outputs]
    return outputs, fields(parts[1])


@tvm.transform.module_pass(opt_level=0, name="mest.AppendSGD")
class AppendSGD:
    """Append ``torch.optim.SGD``'s update (see the module docstring).

    Parameters
    ----------
    momentum : float
        Momentum factor.
    weight_decay : float
        L2 penalty added to every gradient.
    keep_grads : sequence of str
        FQNs of the parameters whose gradient is an output too.
    func_name : str
        The adjoint function to extend.
    """

    def __init__(self, momentum: float, weight_decay: float, keep_grads: Sequence[str] = (),
                 func_name: str = "main_adjoint"):
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.keep_grads = tuple(keep_grads)
        self.func_name = func_name

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        """Apply the pass (see the module docstring)."""
        func = mod[self.func_name]
        outputs, grads = _adjoint_parts(func)
        names = outputs_of(func)
        if len(names) != len(outputs):
            raise CompileError(f"{self.func_name} returns {len(outputs)} outputs, {OUTPUTS_ATTR} names {len(names)}")
        params = list(inputs_of_kind(func, "param").values())
        if len(params) != len(grads):
            raise CompileError(f"{self.func_name} has {len(params)} parameters but {len(grads)} gradients")
        lr = relax.Var(input_name("data", "lr"), relax.TensorType((), "float32"))
        buffers = [relax.Var(input_name("momentum", split_name(p.name)[1]), p.ty) for p in params]

        def update(bb: relax.BlockBuilder):
            new_params, new_buffers, kept = [], [], []
            decay = relax.const(self.weight_decay, "float32")
            momentum = relax.const(self.momentum, "float32")
            for param, grad, buf in zip(params, grads, buffers):
                fqn = split_name(param.name)[1]
                step = bb.emit(relax.op.add(grad, relax.op.multiply(decay, param))) if self.weight_decay else grad
                new_buf = bb.emit(relax.op.add(relax.op.multiply(momentum, buf), step))
                new_params.append((input_name("param", fqn), bb.emit(relax.op.subtract(param, relax.op.multiply(lr, new_buf)))))
                new_buffers.append((input_name("momentum", fqn), new_buf))
                if fqn in self.keep_grads:
                    kept.append((input_name("grad", fqn), grad))
            return [*zip(names, outputs), *new_params, *new_buffers, *kept]

        rebuilt = rebuild(func, [*func.params, lr, *buffers], update)
        return replace_function(mod, self.func_name, rebuilt)
