"""How large a register-tiled accumulator may be on a target, and which tile a loop nest gets.

The dense schedules (:class:`~tvm_passes.schedule_dense_conv.ScheduleDenseConv`,
:class:`~tvm_passes.schedule_dense_matmul.ScheduleDenseMatmul`) keep a block of outputs in vector
registers while the reduction runs. Its size comes from the target's row of the ``devices`` table:
float32 lanes per vector register, and the registers left for accumulators once a few are kept for
the operands.
"""

from __future__ import annotations

from dataclasses import dataclass

from devices.targets import TargetSpec, get_target

#: Vector registers kept for the operands (a broadcast weight, input vectors) and not accumulated in.
OPERAND_REGISTERS = 4
#: Largest accumulator in bytes: above TVM's stack-allocation limit (``kMaxStackAlloca``) a buffer
#: becomes a workspace allocation, which LLVM does not keep in registers.
MAX_TILE_BYTES = 1024
#: The cost model of :func:`outer_product_tile` (Zen 3, Skylake and Cortex-A76 alike): FMAs and vector
#: loads issued per cycle, and FMA latency in cycles (an accumulator is updated once per reduction step).
FMAS_PER_CYCLE = 2
LOADS_PER_CYCLE = 2
FMA_LATENCY = 4


@dataclass(frozen=True)
class RegisterTile:
    """The accumulator budget of one target.

    Attributes
    ----------
    lanes : int
        float32 lanes of a vector register (AVX2: 8, NEON: 4).
    accumulators : int
        Vector registers an accumulator tile may take.
    """

    lanes: int
    accumulators: int

    @classmethod
    def for_target(cls, target: str | TargetSpec) -> "RegisterTile":
        """The budget of a target of the ``devices`` table (x86 AVX2: 8 lanes, 12 accumulators).

        Parameters
        ----------
        target : str or TargetSpec

        Returns
        -------
        RegisterTile
        """
        spec = get_target(target)
        lanes = spec.vector_bits // 32
        accumulators = min(spec.vector_registers - OPERAND_REGISTERS, MAX_TILE_BYTES // (4 * lanes))
        return cls(lanes=lanes, accumulators=accumulators)

    def vectors(self, width: int) -> int:
        """Vector registers a row of ``width`` floats takes."""
        return -(-width // self.lanes)


def divisors(value: int, limit: int) -> list[int]:
    """Divisors of ``value`` not above ``limit``, ascending."""
    return [d for d in range(1, min(value, limit) + 1) if value % d == 0]


def largest_divisor(value: int, limit: int) -> int:
    """The largest divisor of ``value`` not above ``limit`` (at least 1)."""
    return divisors(value, max(limit, 1))[-1]


def _lanes_per_cycle(lanes: int, fmas: int, loads: int) -> float:
    return lanes / max(fmas / FMAS_PER_CYCLE, loads / LOADS_PER_CYCLE, FMA_LATENCY)


def outer_product_tile(tile: RegisterTile, broadcast_extent: int, rows_extent: int,
                       vector_extent: int) -> tuple[int, int, int]:
    """The ``(broadcast, rows, width)`` tile of an outer-product update ``acc[b, r, w] += u[b] * v[r, w]``.

    Every reduction step loads ``broadcast`` scalars (broadcast to a vector) and ``rows`` vectors per
    vector of width, and issues ``broadcast * rows * vectors`` FMAs. The tile fits the accumulators,
    each extent divides its loop (a width below one vector is allowed), and among those the one with
    the most useful lanes per cycle wins, a step taking the longest of its FMAs, its loads and the FMA
    latency (:data:`FMAS_PER_CYCLE`, :data:`LOADS_PER_CYCLE`, :data:`FMA_LATENCY`). Ties go to more
    rows, then wider vectors.

    Parameters
    ----------
    tile : RegisterTile
    broadcast_extent, rows_extent, vector_extent : int
        Extents of the three loops.

    Returns
    -------
    tuple of int
    """
    best, best_key = (1, 1, 1), None
    for width in divisors(vector_extent, tile.lanes * tile.accumulators):
        vectors = tile.vectors(width)
        for rows in divisors(rows_extent, tile.accumulators // vectors):
            for broadcast in divisors(broadcast_extent, tile.accumulators // (vectors * rows)):
                fmas, loads = broadcast * rows * vectors, broadcast + rows * vectors
                key = (_lanes_per_cycle(broadcast * rows * width, fmas, loads), rows, width, broadcast)
                if best_key is None or key > best_key:
                    best, best_key = (broadcast, rows, width), key
    return best


def inner_product_tile(tile: RegisterTile, filters: int, channels: int, taps: int, width: int) -> tuple[int, int]:
    """The ``(filters, channels)`` tile of a weight gradient ``acc[f, c, t, w] += dy[f, w] * x[c, t + w]``.

    The reduction runs along ``width`` lanes (one accumulator vector per output and ``width`` floats);
    every step loads one vector per filter and per channel and tap, and issues one FMA per
    accumulator. Same fit and cost model as :func:`outer_product_tile`; ties go to more channels.

    Parameters
    ----------
    tile : RegisterTile
    filters, channels : int
        Extents of the filter and channel loops (each tile extent divides its loop).
    taps : int
        Taps along a row, all in the tile.
    width : int
        Lanes of the partial sums.

    Returns
    -------
    tuple of int
    """
    vectors = tile.vectors(width)
    best, best_key = (1, 1), None
    for ci in divisors(channels, max(1, tile.accumulators // (vectors * taps))):
        for fi in divisors(filters, max(1, tile.accumulators // (vectors * taps * ci))):
            fmas, loads = fi * ci * taps * vectors, (fi + ci * taps) * vectors
            key = (_lanes_per_cycle(fi * ci * taps * width, fmas, loads), ci, fi)
            if best_key is None or key > best_key:
                best, best_key = (fi, ci), key
    return best
