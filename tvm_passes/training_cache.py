"""Built training steps cached on disk, keyed by what shapes their code.

A built step (:func:`tvm_passes.training_pipeline.build_training_step`) depends on the model's
structure, the batch shape, every sparse layer's scheme, shape, stride, capacity and index dtypes, the
optimizer's constants, the target, and the code of the passes and kernels; not on any value (weights,
masks, statistics and the learning rate are inputs). The key hashes all of that; the exported library
and its signature (JSON) live under ``cache_dir("training-steps", <target>)`` of ``devices.cache``, written
atomically (the signature also records each sparse kernel's knobs, so a loaded step says which tuning
records it was built with); an entry that does not load is set aside (:func:`devices.files.set_aside`) and rebuilt. A mutation that keeps every capacity finds the module it already has; one that changes a
capacity (or a channel layer's filter count) builds or loads another.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import tvm

from devices.cache import cache_dir
from devices.errors import DeviceError
from devices.files import atomic_write_bytes, set_aside
from devices.targets import export_library
from schedules.formats import SparseFormat

from .step_signature import Slot
from .training_pipeline import EVALUATE, TRAIN_STEP, TrainingConfig, TrainingStep, build_training_step

_ROOT = Path(__file__).resolve().parent.parent


@lru_cache(maxsize=1)
def code_version() -> str:
    """Hash of the sources that shape a built step (passes, formats, kernels) and of TVM's version."""
    digest = hashlib.sha256(tvm.__version__.encode())
    for path in sorted([*(_ROOT / "tvm_passes").glob("*.py"), *(_ROOT / "schedules").glob("*.py"),
                        *(_ROOT / "schedules" / "kernels").glob("*.py")]):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def layer_structure(fmt: SparseFormat) -> dict:
    """What of a format shapes the code: scheme, dense shape, capacity, shape and dtype of every index."""
    return {
        "scheme": fmt.scheme,
        "weight_shape": list(fmt.weight_shape),
        "capacity": fmt.capacity,
        "indices": {name: [list(array.shape), str(array.dtype)] for name, array in sorted(fmt.indices.items())},
    }


def step_key(model_key: str, input_shape: tuple[int, ...], formats: Mapping[str, SparseFormat],
             config: TrainingConfig) -> str:
    """The cache key of a built step (hex digest)."""
    structure = {
        "model": model_key,
        "input_shape": list(input_shape),
        "layers": {fqn: layer_structure(fmt) for fqn, fmt in sorted(formats.items())},
        "config": [config.target, config.momentum, config.weight_decay],
        "code": code_version(),
    }
    return hashlib.sha256(json.dumps(structure, sort_keys=True).encode()).hexdigest()[:24]


@dataclass
class CachedStep:
    """A built step, loaded (or just built) for this host.

    Attributes
    ----------
    module : Any
        The loaded library: what the ``load`` of :func:`load_or_build` returned for it (by default
        this process's ``tvm.runtime.Module``, which ``relax.VirtualMachine(module, device)`` runs).
    library : Path
        The exported library in the cache (for the target: cross-linked for ARM).
    inputs, outputs : dict of str to tuple of Slot
        Signature of :data:`~tvm_passes.training_pipeline.TRAIN_STEP` and
        :data:`~tvm_passes.training_pipeline.EVALUATE`.
    workspace_bytes : dict of str to int
        Per function, the VM's planned activation storage (:attr:`TrainingStep.workspace_bytes`).
    kernel_knobs : dict of str to str
        Per sparse kernel of the module (by name), its knobs' description (``tuned ...`` from a record
        of the tuning database, or ``default knobs``): what the lowering pass recorded as ``mest.knobs``.
    key : str
        The cache key.
    built : bool
        Built in this call (not found in the cache).
    seconds : float
        Time to build (and export) or to load.
    """

    module: Any
    library: Path
    inputs: dict[str, tuple[Slot, ...]]
    outputs: dict[str, tuple[Slot, ...]]
    workspace_bytes: dict[str, int]
    kernel_knobs: dict[str, str]
    key: str
    built: bool
    seconds: float


def kernel_knobs(mod: tvm.IRModule) -> dict[str, str]:
    """The ``mest.knobs`` attribute of every sparse kernel of ``mod``, by kernel name."""
    return {gvar.name_hint: str(func.attrs["mest.knobs"]) for gvar, func in mod.functions_items()
            if isinstance(func, tvm.tirx.PrimFunc) and func.attrs is not None and "mest.knobs" in func.attrs}


def _signature_json(step: TrainingStep) -> bytes:
    functions = {name: {"inputs": [s.to_json() for s in step.inputs[name]],
                        "outputs": [s.to_json() for s in step.outputs[name]],
                        "workspace_bytes": step.workspace_bytes[name]}
                 for name in (TRAIN_STEP, EVALUATE)}
    return json.dumps({"functions": functions, "kernels": kernel_knobs(step.mod)}).encode()


def _read_signature(path: Path) -> tuple[dict, dict, dict, dict]:
    data = json.loads(path.read_text())
    functions = data["functions"]
    inputs = {name: tuple(Slot.from_json(s) for s in entry["inputs"]) for name, entry in functions.items()}
    outputs = {name: tuple(Slot.from_json(s) for s in entry["outputs"]) for name, entry in functions.items()}
    workspace = {name: int(entry["workspace_bytes"]) for name, entry in functions.items()}
    knobs = {str(name): str(text) for name, text in data["kernels"].items()}
    return inputs, outputs, workspace, knobs


def load_or_build(model, model_key: str, input_shape: tuple[int, ...], formats: Mapping[str, SparseFormat],
                  config: TrainingConfig, kernels: Callable[[], Any],
                  progress: Callable[[str], None] | None = None,
                  load: Callable[[Path], Any] | None = None) -> CachedStep:
    """The built step of this structure: from the cache, or built, exported and cached.

    Parameters
    ----------
    model : torch.nn.Module
        The model (its structure; values do not matter).
    model_key : str
        What identifies the model's structure (e.g. ``resnet32/10/3/32``: name, classes, channels, size).
    input_shape, formats, config
        As :func:`tvm_passes.training_pipeline.build_training_step`.
    kernels : callable
        Makes the kernel source, only when a build is needed.
    progress : callable, optional
        Receives one line when a build starts.
    load : callable, optional
        Loads the library where it runs (e.g. ``session.load_library`` for a device); by default
        ``tvm.runtime.load_module`` in this process, which only a host target can be.

    Returns
    -------
    CachedStep
    """
    key = step_key(model_key, input_shape, formats, config)
    directory = cache_dir("training-steps", config.target)
    library, signature = directory / f"{key}.so", directory / f"{key}.json"
    load = load if load is not None else _load_here
    start = time.perf_counter()
    if library.exists() and signature.exists():
        try:
            inputs, outputs, workspace, knobs = _read_signature(signature)
            module = load(library)
            return CachedStep(module, library, inputs, outputs, workspace, knobs, key, False,
                              time.perf_counter() - start)
        except DeviceError:
            raise  # the device failed (its session died), not the file
        except (OSError, RuntimeError, ValueError, KeyError, TypeError):  # tvm_ffi raises built-in kinds
            for path in (library, signature):  # kept for a look, out of the way of the rebuild below
                set_aside(path, "corrupt")
    if progress:
        progress(f"building the training step ({len(formats)} sparse layers, batch {input_shape[0]})")
    step = build_training_step(model, input_shape, formats, config, kernels())
    export_library(step.executable, library, config.target)  # atomic; cross-linked for ARM
    atomic_write_bytes(signature, _signature_json(step))
    module = load(library)
    return CachedStep(module, library, step.inputs, step.outputs, step.workspace_bytes, kernel_knobs(step.mod),
                      key, True, time.perf_counter() - start)


def _load_here(library: Path) -> Any:
    return tvm.runtime.load_module(str(library))
