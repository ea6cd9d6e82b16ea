"""Schedule knobs of the sparse convolution templates, their defaults and their search space.

The gather kernels (forward, grad-input) tile the output as ``rows`` output rows by ``width`` output
columns per register accumulator (vectorised over the width), with the row-tile loop either outside
(``tile_outer``) or inside the output-channel loop, parallel over the batch. The grad-weight kernel
accumulates ``lanes``-wide vectors per sampled position and splits the batch into ``chunks`` parallel
slices whose partial gradients are summed at the end.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, replace

#: Accumulator floats that fit in the 16 AVX2 registers with room for loads (12 of 16 registers).
REGISTER_FLOATS = 96
#: Accumulator floats of the default gather tile (8 registers: measured best on most layers here).
DEFAULT_TILE_FLOATS = 64


@dataclass(frozen=True)
class Knobs:
    """One point of a template's schedule space (0 means "choose from the shape").

    Attributes
    ----------
    rows : int
        Output rows per accumulator tile (gather kernels).
    width : int
        Output columns per accumulator tile, vectorised (gather kernels).
    tile_outer : bool
        Row-tile loop outside the output-channel loop (gather kernels).
    lanes : int
        Vector width of the grad-weight accumulators (``rows`` of them per gradient, independent).
    chunks : int
        Parallel batch slices of the grad-weight kernel.
    images : int
        Images whose products a grad-weight accumulator sums before its horizontal reduction.
    unroll : int
        Entries of a row the grad-weight kernel correlates together (sharing the ``dy`` loads).
    """

    rows: int = 0
    width: int = 0
    tile_outer: bool = True
    lanes: int = 0
    chunks: int = 0
    images: int = 0
    unroll: int = 0

    def to_json(self) -> dict:
        """Plain dict for the tuning database."""
        return asdict(self)

    @classmethod
    def from_json(cls, record: dict) -> "Knobs":
        """Inverse of :meth:`to_json`.

        Raises
        ------
        TypeError, ValueError
            When ``record`` is not a dict of knobs (``tile_outer`` a bool, the others counts).
        """
        if not isinstance(record, dict):
            raise TypeError(f"knobs must be a JSON object, not {type(record).__name__}")
        knobs = {name: record[name] for name in asdict(cls()) if name in record}
        for name, value in knobs.items():
            wanted = bool if name == "tile_outer" else int
            if not isinstance(value, wanted) or (wanted is int and (isinstance(value, bool) or value < 0)):
                raise ValueError(f"knob {name}={value!r} is not a {'bool' if wanted is bool else 'count'}")
        return cls(**knobs)


def _divisors(value: int) -> list[int]:
    return [d for d in range(1, value + 1) if value % d == 0]


def _largest_divisor_at_most(value: int, limit: int) -> int:
    return max(d for d in _divisors(value) if d <= max(1, limit))


def resolve_gather(knobs: Knobs, out_height: int, out_width: int, group: int) -> Knobs:
    """Concrete gather knobs for an output of ``out_height x out_width`` and ``group`` channels per row.

    Requested values are rounded down to divisors of the output size; unset ones default to the
    widest tile of at most 32 columns (16 for 4-filter groups) and as many rows as fit
    :data:`DEFAULT_TILE_FLOATS`.
    """
    width = _largest_divisor_at_most(out_width, knobs.width or min(32, DEFAULT_TILE_FLOATS // group))
    rows_limit = knobs.rows or max(1, DEFAULT_TILE_FLOATS // (width * group))
    rows = _largest_divisor_at_most(out_height, rows_limit)
    return replace(knobs, rows=rows, width=width, lanes=0, chunks=0, images=0, unroll=0)


def resolve_grad_weight(knobs: Knobs, out_height: int, out_width: int, batch: int, streams: int, threads: int) -> Knobs:
    """Concrete grad-weight knobs for ``streams`` (group x taps) gradients per entry.

    ``lanes`` divides the output width, ``rows`` (independent accumulator rows, to hide FMA latency)
    divides the output height, ``chunks`` divides the batch and ``images`` (by default enough for
    256 output pixels per reduction) divides the images of a chunk.
    """
    lanes = _largest_divisor_at_most(out_width, knobs.lanes or 16)
    unroll = knobs.unroll or (4 if streams == 1 else 1)
    rows_limit = knobs.rows or max(1, (REGISTER_FLOATS * 2 // 3) // (lanes * streams * unroll))
    rows = _largest_divisor_at_most(out_height, rows_limit)
    chunks = _largest_divisor_at_most(batch, knobs.chunks or threads)
    images = _largest_divisor_at_most(batch // chunks, knobs.images or max(1, 256 // (out_height * out_width)))
    return replace(knobs, rows=rows, lanes=lanes, chunks=chunks, images=images, unroll=unroll, width=0, tile_outer=True)


def gather_space(out_height: int, out_width: int, group: int) -> list[Knobs]:
    """Distinct resolved gather knobs worth measuring for this output size."""
    space = {
        resolve_gather(Knobs(rows=r, width=w, tile_outer=o), out_height, out_width, group)
        for r, w, o in itertools.product((1, 2, 4, 8), (4, 8, 16, 32), (True, False))
    }
    return sorted((k for k in space if k.rows * k.width * group <= 2 * REGISTER_FLOATS), key=lambda k: (k.rows, k.width, k.tile_outer))


def grad_weight_space(out_height: int, out_width: int, batch: int, streams: int, threads: int) -> list[Knobs]:
    """Distinct resolved grad-weight knobs worth measuring."""
    space = {
        resolve_grad_weight(Knobs(rows=rows, lanes=lanes, chunks=chunks, images=images, unroll=unroll), out_height, out_width, batch, streams, threads)
        for rows, lanes, chunks, images, unroll in itertools.product((1, 2, 4), (8, 16), (threads, 2 * threads), (1, 2, 4, 8), (1, 2, 4))
    }
    fits = (k for k in space if k.rows * k.lanes * streams * k.unroll <= REGISTER_FLOATS)
    return sorted(fits, key=lambda k: (k.rows, k.lanes, k.chunks, k.images, k.unroll))
