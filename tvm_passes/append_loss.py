"""AppendCrossEntropy: the model's logits become the mean cross-entropy loss and per-example correctness.

Where it runs: phase 3 of :func:`tvm_passes.training_pipeline.build_training_step`, after
``TrainBatchNorm`` and before ``Gradient`` (the loss is the first output, the differentiation target).

What it does: adds the inputs ``data:labels`` (``[N]`` int64) and, unless ``TrainBatchNorm`` added it,
``data:example_weights`` (``[N]`` float32); replaces the output ``logits`` by ``loss`` (first) and
``correct`` (second), keeping the other outputs after them:

- ``loss = sum(w * nll(log_softmax(logits), labels)) / sum(w)``: with every weight 1, PyTorch's
  ``F.cross_entropy(logits, labels)`` (mean reduction); padding examples (weight 0) do not count;
- ``correct = argmax(logits, axis=1) == labels`` (bool ``[N]``, for the forgetting statistics).

What it refuses (:class:`~tvm_passes.errors.CompileError`): a function without a ``logits`` output or
whose logits are not ``[N, classes]``.
"""

from __future__ import annotations

import tvm
from tvm import relax

from .errors import CompileError
from .step_signature import input_name, output_exprs, outputs_of, rebuild, replace_function


@tvm.transform.module_pass(opt_level=0, name="mest.AppendCrossEntropy")
class AppendCrossEntropy:
    """Append the loss and the correctness (see the module docstring).

    Parameters
    ----------
    func_name : str
        The function to extend.
    """

    def __init__(self, func_name: str = "main"):
        self.func_name = func_name

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        """Apply the pass (see the module docstring)."""
        func = mod[self.func_name]
        names, values = outputs_of(func), output_exprs(func)
        if "logits" not in names:
            raise CompileError(f"{self.func_name} has no logits output to append a loss to")
        logits = values[names.index("logits")]
        if len(logits.ty.shape) != 2:
            raise CompileError(f"logits must be [N, classes], got {logits.ty}")
        batch = logits.ty.shape[0]
        params = list(func.params)
        weights = next((p for p in params if p.name == input_name("data", "example_weights")), None)
        if weights is None:
            weights = relax.Var(input_name("data", "example_weights"), relax.TensorType((batch,), "float32"))
            params.append(weights)
        labels = relax.Var(input_name("data", "labels"), relax.TensorType((batch,), "int64"))
        params.append(labels)
        rest = [(n, v) for n, v in zip(names, values) if n != "logits"]

        def outputs(bb: relax.BlockBuilder):
            nll = bb.emit(relax.op.nn.nll_loss(relax.op.nn.log_softmax(logits, axis=1), labels, reduction="none"))
            loss = bb.emit(relax.op.divide(relax.op.sum(relax.op.multiply(nll, weights)), relax.op.sum(weights)))
            correct = bb.emit(relax.op.equal(relax.op.argmax(logits, axis=1), labels))
            return [("loss", loss), ("correct", correct), *rest]

        rebuilt = rebuild(func, params, outputs)
        return replace_function(mod, self.func_name, rebuilt)
