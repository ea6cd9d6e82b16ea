"""Small kernels of the devices tests (matmul, 3x3 conv, a parallel vectorised axpy) and references."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import tvm
from tvm import te, topi


@dataclass(frozen=True)
class KernelCase:
    """A TE kernel, inputs for it, and the expected output."""

    name: str
    module: tvm.IRModule
    inputs: tuple[np.ndarray, ...]
    expected: np.ndarray

    def output_buffer(self) -> np.ndarray:
        """A zeroed array of the output's shape and dtype."""
        return np.zeros_like(self.expected)


def _prim_module(name: str, tensors: list[te.Tensor]) -> tvm.IRModule:
    return tvm.IRModule({name: te.create_prim_func(tensors).with_attr("global_symbol", name)})


def build_matmul_case(m: int = 12, k: int = 20, n: int = 8, seed: int = 0) -> KernelCase:
    """``C = A @ B`` in float32, checked against NumPy."""
    a = te.placeholder((m, k), name="A")
    b = te.placeholder((k, n), name="B")
    r = te.reduce_axis((0, k), name="r")
    c = te.compute((m, n), lambda i, j: te.sum(a[i, r] * b[r, j], axis=r), name="C")
    rng = np.random.default_rng(seed)
    a_np = rng.standard_normal((m, k), dtype=np.float32)
    b_np = rng.standard_normal((k, n), dtype=np.float32)
    return KernelCase("matmul", _prim_module("matmul", [a, b, c]), (a_np, b_np), a_np @ b_np)


def build_conv3x3_case(batch: int = 1, in_channels: int = 3, out_channels: int = 4, size: int = 8,
                       seed: int = 1) -> KernelCase:
    """A 3x3 convolution, stride 1, padding 1, NCHW float32, checked against PyTorch."""
    data = te.placeholder((batch, in_channels, size, size), name="data")
    weight = te.placeholder((out_channels, in_channels, 3, 3), name="weight")
    out = topi.nn.conv2d_nchw(data, weight, 1, 1, 1)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, in_channels, size, size), dtype=np.float32)
    w = rng.standard_normal((out_channels, in_channels, 3, 3), dtype=np.float32)
    expected = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1)
    return KernelCase("conv3x3", _prim_module("conv3x3", [data, weight, out]), (x, w),
                      expected.numpy())


def build_parallel_axpy_case(n: int = 64, seed: int = 2) -> KernelCase:
    """``z = 2 x + y`` scheduled with a parallel outer loop and 4-lane vectors (NEON on ARM)."""
    x = te.placeholder((n,), name="x")
    y = te.placeholder((n,), name="y")
    z = te.compute((n,), lambda i: x[i] * 2.0 + y[i], name="z")
    schedule = tvm.s_tir.Schedule(_prim_module("axpy", [x, y, z]))
    (loop,) = schedule.get_loops(schedule.get_sblock("z", func_name="axpy"))
    outer, lanes = schedule.split(loop, [None, 4])
    schedule.parallel(outer)
    schedule.vectorize(lanes)
    rng = np.random.default_rng(seed)
    x_np = rng.standard_normal(n, dtype=np.float32)
    y_np = rng.standard_normal(n, dtype=np.float32)
    return KernelCase("axpy", schedule.mod, (x_np, y_np), 2 * x_np + y_np)


KERNEL_BUILDERS: dict[str, Callable[[], KernelCase]] = {
    "matmul": build_matmul_case,
    "conv3x3": build_conv3x3_case,
    "parallel_axpy": build_parallel_axpy_case,
}

#: float32 results of different summation orders (vectorised, emulated) agree to this.
RTOL, ATOL = 1e-5, 1e-5


class TinyConvNet(torch.nn.Module):
    """A 3x3 conv, ReLU and a linear layer: a whole model for the Relax VM path."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def build_tiny_relax_model(seed: int = 3) -> tuple[tvm.IRModule, np.ndarray, np.ndarray]:
    """The Relax module of :class:`TinyConvNet` (weights bound), an input and PyTorch's logits."""
    from tvm.relax.frontend.torch import from_exported_program

    torch.manual_seed(seed)
    model = TinyConvNet().eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        logits = model(x).numpy()
    module = from_exported_program(torch.export.export(model, (x,)), keep_params_as_input=False)
    return module, x.numpy(), logits
