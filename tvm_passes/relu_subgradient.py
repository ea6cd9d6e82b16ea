"""ReluSubgradient: ReLUs take PyTorch's subgradient at zero before Relax differentiates them.

Where it runs: phase 4 of :func:`tvm_passes.training_pipeline.build_training_step`, after the loss is
appended and before ``Gradient``.

Why: Relax's registered gradient of ``relax.nn.relu`` is ``where(x < 0, 0, dy)``, which passes the
gradient where ``x == 0``; PyTorch's (``threshold_backward``) passes it only where ``x > 0``. Inputs of
exactly zero are common in sparse training, not rare: a filter regrown with zero weights and its batch
norm's ``beta = 0`` give a ReLU input of exactly 0 everywhere, and under the Relax rule that filter
gets a gradient PyTorch (and the masked dense step) never gives it.

What it does: every ``relax.nn.relu(x)`` of the function becomes ``relax.maximum(0, x)``, the same
values, whose Relax gradient with respect to ``x`` is ``where(0 >= x, 0, dy)``: PyTorch's rule.

What it refuses: nothing.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator


@mutator
class _Rewriter(PyExprMutator):
    def visit_call_(self, call):
        call = super().visit_call_(call)
        if isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.relu":
            x = call.args[0]
            return relax.op.maximum(relax.const(0, str(x.ty.dtype)), x)
        return call


@tvm.transform.module_pass(opt_level=0, name="mest.ReluSubgradient")
class ReluSubgradient:
    """Rewrite the ReLUs of ``func_name`` (see the module docstring).

    Parameters
    ----------
    func_name : str
        The function to rewrite.
    """

    def __init__(self, func_name: str = "main"):
        self.func_name = func_name

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        """Apply the pass (see the module docstring)."""
        rewriter = _Rewriter(mod.clone())  # the block builder adds to its module in place
        func = rewriter.visit_expr(mod[self.func_name])
        out = rewriter.builder_.get()
        out[self.func_name] = func
        return out
