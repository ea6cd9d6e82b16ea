"""Per-layer report of a compilation: scheme, density, kernel, bytes dense vs stored, time.

Built from the IR itself: the ``mest.layers`` attribute ``KeepDense`` sets on the module says what each
layer became, the sparse kernels added by ``LowerSparseConv`` carry their bytes and knobs as attributes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import tvm
from tvm import relax, tirx

from .annotate import LayerMask
from .keep_dense import LAYERS_ATTR
from .sparse_conv import const_value

_FLOAT_BYTES = 4


@dataclass
class LayerReport:
    """What became of one masked parameter.

    Attributes
    ----------
    fqn : str
        Parameter FQN.
    scheme : str
        Scheme the trainer used.
    density : float
        Kept fraction of its mask.
    kernel : str
        ``irregular`` / ``block`` / ``pattern`` (sparse kernel), ``channel`` (smaller dense conv),
        or ``dense``.
    reason : str
        Why the layer is dense, or what the kernel does.
    shape : list[int]
        Dense weight shape.
    bytes_dense : int
        float32 bytes of the dense weight.
    bytes_stored : int
        Bytes the compiled module stores for it (format values + indices, compact weight, or dense).
    time_ms : float or None
        Median time of the layer's kernel on the target (None where it cannot be timed alone or the
        target cannot be timed from here).
    """

    fqn: str
    scheme: str
    density: float
    kernel: str
    reason: str
    shape: list[int]
    bytes_dense: int
    bytes_stored: int
    time_ms: float | None = None

    def to_json(self) -> dict:
        """Plain dict for the JSON report."""
        return asdict(self)


def sparse_kernels(mod: tvm.IRModule) -> dict[str, tuple[tvm.ir.GlobalVar, tirx.PrimFunc]]:
    """The PrimFuncs added by ``LowerSparseConv``, keyed by the FQN of their layer."""
    found = {}
    for gvar, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc) and func.attrs is not None and "mest.fqn" in func.attrs:
            found[str(func.attrs["mest.fqn"])] = (gvar, func)
    return found


def kernel_arguments(mod: tvm.IRModule, gvar: tvm.ir.GlobalVar) -> list[np.ndarray]:
    """Constant arguments (the format buffers) of the ``call_tir`` of ``gvar`` in ``main``."""
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and len(value.args) == 2 and value.args[0].same_as(gvar):
                return [const_value(arg) for arg in value.args[1].fields[1:]]
    return []


def layer_reports(mod: tvm.IRModule, layers: Mapping[str, LayerMask]) -> tuple[list[LayerReport], dict[str, np.ndarray]]:
    """Report of every masked layer of a lowered module.

    Parameters
    ----------
    mod : tvm.IRModule
        The module after ``LowerSparseConv`` (or any later phase): its ``mest.layers`` attribute (set by
        ``KeepDense``) says what each annotated layer became, its sparse kernels carry their bytes
        and knobs, and the calls of ``main`` hold their format buffers.
    layers : Mapping[str, LayerMask]
        Masks and schemes given to the compiler, by FQN.

    Returns
    -------
    tuple[list[LayerReport], dict[str, numpy.ndarray]]
        The reports, and the sparse layers' stored buffers by ``<fqn>/<buffer name>``.
    """
    kernels = sparse_kernels(mod)
    decided = mod.attrs[LAYERS_ATTR] if mod.attrs is not None and LAYERS_ATTR in mod.attrs else {}
    reports, stored = [], {}
    for fqn, layer in layers.items():
        shape = [int(d) for d in layer.mask.shape]
        dense = int(np.prod(shape)) * _FLOAT_BYTES
        report = LayerReport(fqn, layer.scheme, round(layer.density, 4), "dense", "", shape, dense, dense)
        kernel = str(decided[fqn]["kernel"]) if fqn in decided else None
        if kernel is None:
            report.reason = "not a conv2d weight: no sparse kernel, runs dense"
        elif kernel == "dense":
            report.reason = str(decided[fqn]["reason"])
        elif kernel == "channel":
            kept = int(layer.mask.reshape(shape[0], -1).any(axis=1).sum())
            report.kernel = "channel"
            report.reason = f"dense conv on {kept} of {shape[0]} filters"
            report.bytes_stored = kept * int(np.prod(shape[1:])) * _FLOAT_BYTES
        elif fqn in kernels:
            gvar, prim = kernels[fqn]
            report.kernel = kernel
            report.reason = f"{gvar.name_hint} ({prim.attrs['mest.knobs']})"
            report.bytes_stored = int(prim.attrs["mest.bytes_stored"])
            names = [str(p.name) for p in prim.params[1:-1]]
            for name, value in zip(names, kernel_arguments(mod, gvar)):
                stored[f"{fqn}/{name}"] = value
        reports.append(report)
    return reports, stored


def time_layers(mod: tvm.IRModule, layers: list[LayerReport], target: tvm.target.Target, session) -> None:
    """Fill ``time_ms`` of the sparse layers by running each kernel alone on ``session``.

    Each kernel is built on its own (a few hundredths of a second) and timed with its real format
    buffers and a zero input. Dense and channel layers are fused with their neighbours in the built
    module and have no kernel of their own: their ``time_ms`` stays None. Under emulation nothing is
    filled in (an emulated time is no speed).

    Parameters
    ----------
    mod : tvm.IRModule
        The module that was built (``CompiledModel.mod``).
    layers : list[LayerReport]
        The reports to complete.
    target : tvm.target.Target
        The target ``mod`` was built for.
    session : devices.sessions.Session
        Where to run.
    """
    if session.emulated:
        return
    kernels = sparse_kernels(mod)
    for layer in layers:
        if layer.fqn not in kernels:
            continue
        gvar, prim = kernels[layer.fqn]
        name = gvar.name_hint
        lib = tvm.compile(tvm.IRModule({name: prim.with_attr("global_symbol", name)}), target)
        loaded = session.load(lib, name)
        x = np.zeros([int(d) for d in prim.params[0].shape], dtype=str(prim.params[0].dtype))
        y = np.zeros([int(d) for d in prim.params[-1].shape], dtype=str(prim.params[-1].dtype))
        args = [session.array(a) for a in (x, *kernel_arguments(mod, gvar), y)]
        layer.time_ms = session.time(loaded, name, args, number=5, repeat=5).median_s * 1e3


def check_kernels(mod: tvm.IRModule, target: tvm.target.Target, session) -> tuple[int, float]:
    """Run each sparse kernel on ``session`` and compare it with the same kernel built for this host.

    For targets whose whole model cannot run under emulation (armv7: no TVM runtime), this checks the
    cross-compiled kernels themselves, with their real format buffers and a random input.

    Parameters
    ----------
    mod : tvm.IRModule
        The module that was built (``CompiledModel.mod``).
    target : tvm.target.Target
        The target of ``session``.
    session : devices.sessions.Session
        Where to run the target's kernels.

    Returns
    -------
    tuple[int, float]
        Number of kernels checked and the largest absolute difference, relative to the largest
        output magnitude.
    """
    host = tvm.target.Target("llvm")
    rng = np.random.default_rng(0)
    worst = 0.0
    kernels = sparse_kernels(mod)
    for gvar, prim in kernels.values():
        name = gvar.name_hint
        single = tvm.IRModule({name: prim.with_attr("global_symbol", name)})
        x = rng.standard_normal([int(d) for d in prim.params[0].shape]).astype(str(prim.params[0].dtype))
        y_shape = [int(d) for d in prim.params[-1].shape]
        inputs = [x, *kernel_arguments(mod, gvar)]
        expected = tvm.runtime.tensor(np.zeros(y_shape, dtype=str(prim.params[-1].dtype)))
        tvm.compile(single, host)[name](*(tvm.runtime.tensor(a) for a in inputs), expected)
        loaded = session.load(tvm.compile(single, target), name)
        out = session.array(np.zeros(y_shape, dtype=str(prim.params[-1].dtype)))
        loaded[name](*(session.array(a) for a in inputs), out)
        reference = expected.numpy()
        scale = max(float(np.abs(reference).max()), 1e-12)
        worst = max(worst, float(np.abs(session.numpy(out) - reference).max()) / scale)
    return len(kernels), worst
