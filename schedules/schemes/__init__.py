"""The registry of sparsity schemes: one :class:`~schedules.schemes.base.SchemeSpec` per file here.

``mest.schemes`` extends each with scoring, prune and grow; :func:`schedules.formats.pack`,
:func:`schedules.masks.random_mask`, the kernels (through the format's walk) and
``tvm_passes.keep_dense`` ask the spec. Adding a scheme: see the README ("Adding a sparsity scheme").
"""

from __future__ import annotations

from schedules.errors import SparseFormatError
from schedules.schemes.base import SchemeSpec
from schedules.schemes.block import BLOCK
from schedules.schemes.channel import CHANNEL
from schedules.schemes.irregular import IRREGULAR
from schedules.schemes.pattern import PATTERN

#: Every scheme by name, in the order commands list them.
SCHEME_SPECS: dict[str, SchemeSpec] = {spec.name: spec for spec in (IRREGULAR, BLOCK, PATTERN, CHANNEL)}
SCHEMES = tuple(SCHEME_SPECS)


def get_spec(name: str) -> SchemeSpec:
    """The spec of scheme ``name``.

    Raises
    ------
    SparseFormatError
        For an unknown name (the message lists the known ones).
    """
    try:
        return SCHEME_SPECS[name]
    except (KeyError, TypeError):
        raise SparseFormatError(f"unknown scheme {name!r}; expected one of {', '.join(SCHEMES)}") from None


__all__ = ["SCHEMES", "SCHEME_SPECS", "SchemeSpec", "get_spec"]
