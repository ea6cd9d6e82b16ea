"""The kernel cache: built once per (shapes, capacity, stride, target, knobs), tuned knobs first, kept on disk."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from devices.targets import host_target_name
from schedules.cache import KernelCache, workload
from schedules.database import Record, TuningDatabase
from schedules.formats import pack
from schedules.kernels import Knobs
from schedules.layer import SparseConv2d


def test_cache_rebuilds_only_for_new_shapes_or_capacity(make_mask, kernel_cache):
    generator = torch.Generator().manual_seed(12)
    weight = torch.randn(8, 5, 3, 3, generator=generator)
    mask = make_mask("block", weight.shape, 0.3, generator)
    layer = SparseConv2d(weight, mask, "block", capacity=200, cache=kernel_cache)
    x = torch.randn(1, 5, 8, 8, generator=generator)
    layer(x)
    builds = kernel_cache.builds
    layer.repack(weight, make_mask("block", weight.shape, 0.3, generator))
    layer(x)
    assert kernel_cache.builds == builds
    layer.repack(weight, mask, capacity=240)
    layer(x)
    assert kernel_cache.builds == builds + 3
    layer(torch.randn(2, 5, 8, 8, generator=generator))
    assert kernel_cache.builds == builds + 6


def test_database_knobs_are_used(tmp_path, make_mask):
    generator = torch.Generator().manual_seed(13)
    weight = torch.randn(8, 4, 3, 3, generator=generator)
    fmt = pack("irregular", weight, make_mask("irregular", weight.shape, 0.2, generator))
    database = TuningDatabase(tmp_path / "db")
    tuned = Knobs(rows=2, width=4, tile_outer=False)
    database.commit(workload(fmt, "forward", (1, 4, 8, 8), 1, host_target_name()), Record(tuned, 1e-4, trials=1))
    cache = KernelCache(database)
    assert cache.get(fmt, "forward", (1, 4, 8, 8), 1).key.knobs == tuned
    assert cache.get(fmt, "grad_input", (1, 4, 8, 8), 1).key.knobs == Knobs()


_LAYER_SCRIPT = """
import json, sys
import torch
from schedules.cache import KernelCache
from schedules.database import TuningDatabase
from schedules.layer import SparseConv2d
from schedules.masks import random_mask

generator = torch.Generator().manual_seed(21)
weight = torch.randn(8, 5, 3, 3, generator=generator)
mask = random_mask("irregular", weight.shape, 0.3, generator)
cache = KernelCache(TuningDatabase(sys.argv[1]), directory=sys.argv[2])
layer = SparseConv2d(weight, mask, "irregular", stride=2, cache=cache)
x = torch.randn(3, 5, 9, 7, generator=generator, requires_grad=True)
y = layer(x)
y.backward(torch.ones_like(y))
reference = torch.nn.functional.conv2d(x.detach(), weight * mask, stride=2, padding=1)
print(json.dumps({"builds": cache.builds, "loads": cache.loads,
                  "error": float((y.detach() - reference).abs().max()),
                  "dx": float(x.grad.abs().sum())}))
"""


def _run_layer(tmp_path) -> dict:
    result = subprocess.run([sys.executable, "-c", _LAYER_SCRIPT, str(tmp_path / "db"), str(tmp_path / "kernels")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_second_process_loads_every_kernel_from_disk(tmp_path):
    first = _run_layer(tmp_path)
    assert first["builds"] == 3 and first["loads"] == 0
    second = _run_layer(tmp_path)
    assert second["builds"] == 0 and second["loads"] == 3
    assert second["error"] < 1e-4 and second["dx"] == first["dx"]
    libraries = list((tmp_path / "kernels").rglob("*"))
    assert sum(p.suffix == ".so" for p in libraries) == 3
    assert not [p for p in libraries if p.name.endswith(".tmp.so")]


def test_a_corrupt_library_is_set_aside_and_rebuilt(tmp_path, make_mask):
    generator = torch.Generator().manual_seed(22)
    weight = torch.randn(8, 4, 3, 3, generator=generator)
    mask = make_mask("block", weight.shape, 0.25, generator)
    fmt = pack("block", weight, mask)
    x = torch.randn(2, 4, 6, 6, generator=generator)
    first = KernelCache(TuningDatabase(tmp_path / "db"), directory=tmp_path / "kernels")
    first.get(fmt, "forward", tuple(x.shape), 1)
    first.flush()
    [library] = (tmp_path / "kernels").rglob("*.so")
    library.write_bytes(b"\x7fELF but cut short")

    second = KernelCache(TuningDatabase(tmp_path / "db"), directory=tmp_path / "kernels")
    with pytest.warns(UserWarning, match="does not load"):
        kernel = second.get(fmt, "forward", tuple(x.shape), 1)
    assert second.builds == 1 and second.loads == 0
    [aside] = library.parent.glob(f"{library.name}.corrupt-*")
    assert aside.read_bytes() == b"\x7fELF but cut short"
    y = torch.empty(2, 8, 6, 6)
    buffers = [torch.from_numpy(b) if not isinstance(b, torch.Tensor) else b for b in fmt.buffers("forward").values()]
    kernel(x, *buffers, y)
    assert torch.allclose(y, torch.nn.functional.conv2d(x, weight * mask, padding=1), atol=1e-5)
    third = KernelCache(TuningDatabase(tmp_path / "db"), directory=tmp_path / "kernels")
    second.flush()
    third.get(fmt, "forward", tuple(x.shape), 1)
    assert third.loads == 1 and third.builds == 0
