"""Errors raised by the compiler passes and the pipeline.

Every error carries a one-line message meant for the user; ``python -m mest.compile`` prints it as
``error: <message>`` and exits with code 2.
"""

from __future__ import annotations


class CompileError(Exception):
    """Base class of the errors of ``tvm_passes`` (one-line message)."""


class UnsupportedModelError(CompileError):
    """The model holds an operator or a layer shape that the import or a pass cannot take."""


class MaskError(CompileError):
    """A mask does not fit the model: unknown parameter, wrong shape, or not a boolean tensor."""
