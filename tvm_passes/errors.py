"""Errors raised by the compiler passes and the pipeline.

Every error carries a one-line message meant for the user; ``python -m mest.compile`` prints it as
``error: <message>`` and exits with code 2. The classes are registered with ``tvm_ffi`` so that an
error raised inside a pass keeps its type when it comes back through TVM's pass infrastructure.
"""

from __future__ import annotations

import tvm_ffi


@tvm_ffi.register_error
class CompileError(Exception):
    """Base class of the errors of ``tvm_passes`` (one-line message)."""


@tvm_ffi.register_error
class UnsupportedModelError(CompileError):
    """The model holds an operator or a layer shape that the import or a pass cannot take."""


@tvm_ffi.register_error
class MaskError(CompileError):
    """A mask does not fit the model: unknown parameter, wrong shape, or not a boolean tensor."""
