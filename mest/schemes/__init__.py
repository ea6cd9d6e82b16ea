"""The four sparsity schemes of MEST, one per file: each extends its spec of :mod:`schedules.schemes`
(unit, valid weights, format) with scoring, prune and grow; looked up by name."""

from __future__ import annotations

from mest.errors import SchemeError
from mest.schemes.base import Scheme, derived_generator
from mest.schemes.block import BlockScheme
from mest.schemes.channel import ChannelScheme
from mest.schemes.irregular import IrregularScheme
from mest.schemes.pattern import PatternScheme

SCHEMES: dict[str, Scheme] = {s.name: s for s in (IrregularScheme(), BlockScheme(), PatternScheme(), ChannelScheme())}


def get_scheme(name: str) -> Scheme:
    """The scheme called ``name``; :class:`SchemeError` listing the known ones otherwise."""
    try:
        return SCHEMES[name]
    except KeyError:
        raise SchemeError(f"unknown sparsity scheme {name!r}; known schemes: {', '.join(SCHEMES)}") from None


__all__ = ["SCHEMES", "Scheme", "derived_generator", "get_scheme"]
