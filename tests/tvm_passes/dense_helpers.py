"""Helpers of the dense-op tests: one-op Relax modules, the legalize-schedule-build path, PyTorch references."""

from __future__ import annotations

import numpy as np
import torch
import tvm
from tvm import relax, tirx
from tvm.script import relax as R

from devices.targets import tvm_target

#: float32 against PyTorch, the same sums in another order; relative to the largest output.
RTOL = 1e-4


def one_op(params: list[tuple[str, tuple[int, ...]]], body) -> tvm.IRModule:
    """``main(*params) = body(*params)`` as a Relax module."""
    bb = relax.BlockBuilder()
    variables = [relax.Var(name, R.Tensor(shape, "float32")) for name, shape in params]
    with bb.function("main", variables):
        with bb.dataflow():
            out = bb.emit_output(body(*variables))
        bb.emit_func_output(out)
    return bb.get()


def legalized(mod: tvm.IRModule, *before: tvm.transform.Pass) -> tvm.IRModule:
    """``before`` passes, then LegalizeOps, AnnotateTIROpPattern, FuseOps, FuseTIR."""
    return tvm.transform.Sequential([*before, relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                                     relax.transform.FuseOps(), relax.transform.FuseTIR()])(mod)


def prim_funcs(mod: tvm.IRModule) -> dict[str, tirx.PrimFunc]:
    """The PrimFuncs of ``mod`` by name."""
    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}


def has_parallel_loop(func: tirx.PrimFunc) -> bool:
    """Whether ``func`` has a parallel loop (checked on its TVMScript, which names the loop kind)."""
    return "T.parallel(" in func.script()


def run(mod: tvm.IRModule, arrays: list[np.ndarray], func: str = "main"):
    """Build ``mod`` for this machine and call ``func`` on ``arrays``: the outputs as (nested lists of) arrays."""
    vm = relax.VirtualMachine(tvm.compile(mod, tvm_target("host")), tvm.cpu())
    return _numpy(vm[func](*(tvm.runtime.tensor(a) for a in arrays)))


def _numpy(value):
    if isinstance(value, tvm.runtime.Tensor):
        return value.numpy()
    return [_numpy(item) for item in value]


def conv_reference(kind: str, x: np.ndarray, w: np.ndarray, dy: np.ndarray | None, stride: int,
                   padding: int) -> np.ndarray:
    """PyTorch's forward (``kind="forward"``, no ``dy``), grad-input or grad-weight of ``conv2d(x, w)``."""
    tx, tw = torch.from_numpy(x), torch.from_numpy(w)
    if kind == "forward":
        return torch.nn.functional.conv2d(tx, tw, stride=stride, padding=padding).numpy()
    tdy = torch.from_numpy(dy)
    mask = [kind == "grad_input", kind == "grad_weight", False]
    grads = torch.ops.aten.convolution_backward(tdy, tx, tw, None, [stride] * 2, [padding] * 2, [1, 1], False,
                                                [0, 0], 1, mask)
    return (grads[0] if kind == "grad_input" else grads[1]).numpy()


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    """Within :data:`RTOL` of the largest magnitude of ``expected``."""
    scale = max(float(np.abs(expected).max()), 1e-6)
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=RTOL * scale)
