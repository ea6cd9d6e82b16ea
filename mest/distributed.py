"""Data-parallel training under ``torchrun``: the process group, each rank's share, the reductions,
and the cross-rank mask check. One process (no ``torchrun``) is the world of size 1, for which every
operation here is the identity, so the trainer has one code path.

- **Detection**: ``torchrun`` gives each worker ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (and
  ``MASTER_ADDR``/``MASTER_PORT``, ``TORCHELASTIC_RESTART_COUNT``); :meth:`World.from_env` reads them.
- **Group**: gloo, because the trainer trains on the CPU (nccl reduces CUDA tensors only), formed
  with a timeout (``--dist-timeout``): a rank that cannot reach the others, or whose peer stops
  answering in a collective, fails with one ``error:`` line instead of hanging.
- **Batches**: ``batch_size`` stays the global batch, so a checkpoint resumes under any world size;
  a rank trains on ``batch_size / world size`` examples a step. Every rank draws the epoch's
  permutation and each batch's augmentation from the ``(seed, epoch)`` generator, as one process
  does, and takes its :func:`mest.data.shard` of every batch: the union of the shards is the
  single-process epoch. The loss of a rank is its examples' summed loss over ``examples / world
  size``, so DDP's mean of the ranks' gradients is the gradient of the whole batch's mean loss.
- **BatchNorm**: statistics of the whole batch over all ranks (:class:`GlobalBatchNorm2d`), so that
  two ranks at half the batch compute what one process computes. ``torch.nn.SyncBatchNorm`` does
  this for CUDA tensors only (it refuses CPU ones), hence this small module.
- **Masks**: every rank mutates by itself (scores from the DDP-synchronised weights, growth from
  seeds of ``(seed, epoch, FQN)``), then :meth:`World.check_same_masks` compares a digest of all
  masks across ranks and fails loudly on any difference. Compact ``values`` keep their shape through
  a mutation (their buffers are sized for the run's peak), so DDP's buckets stay valid;
  :meth:`World.check_shapes` enforces it.
- **Forgetting**: each rank records its own examples' outcomes; :meth:`World.combine_outcomes`
  gathers the epoch's outcomes of all ranks, so the statistics and the removal ranking are global.
- **Writes**: rank 0 alone holds the run-directory lock and writes checkpoint, metrics, ranking and
  plot; it reads the checkpoint to resume and sends its bytes to the others (:meth:`World.from_main`),
  so other hosts need no shared file system.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from mest.errors import ConfigError, DistributedError, MestError

#: Backends whose training step runs under torchrun (checked at start-up).
DISTRIBUTED_BACKENDS = ("tvm", "torch-mask")
DEFAULT_TIMEOUT_S = 300.0
#: Status of what rank 0 sends with :meth:`World.from_main`.
_NOTHING, _BYTES, _REFUSED = 0, 1, 2


@dataclass(frozen=True)
class World:
    """The ranks of a run and this process's place among them.

    Attributes
    ----------
    rank, size, local_rank : int
        As torchrun numbers them (0, 1, 0 for one process).
    restart : int
        How often torchrun has restarted the group (``TORCHELASTIC_RESTART_COUNT``).
    max_restarts : int
        How often it may (``TORCHELASTIC_MAX_RESTARTS``).
    launched : bool
        Whether torchrun (or its environment) started this process.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    restart: int = 0
    max_restarts: int = 0
    launched: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "World":
        """The world torchrun describes in ``environ`` (one process when it describes none)."""
        if "RANK" not in environ and "WORLD_SIZE" not in environ:
            return cls()
        try:
            values = {name: int(environ.get(var, default)) for name, var, default in (
                ("rank", "RANK", "0"), ("size", "WORLD_SIZE", "1"), ("local_rank", "LOCAL_RANK", "0"),
                ("restart", "TORCHELASTIC_RESTART_COUNT", "0"), ("max_restarts", "TORCHELASTIC_MAX_RESTARTS", "0"))}
        except ValueError:
            raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them)") from None
        if not 0 <= values["rank"] < values["size"]:
            raise ConfigError(f"RANK {values['rank']} is not a rank of WORLD_SIZE {values['size']}")
        return cls(**values, launched=True)

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one that writes the run directory."""
        return self.rank == 0

    def local_batch(self, batch_size: int) -> int:
        """Examples a rank trains on per step: the global ``batch_size`` over the world size."""
        return batch_size // self.size

    # -- checks at start-up ----------------------------------------------------------------------
    def check_config(self, backend: str, batch_size: int) -> None:
        """Refuse a backend that does not run under torchrun, or a batch the ranks cannot share evenly."""
        if not self.launched:
            return
        if backend not in DISTRIBUTED_BACKENDS:
            raise ConfigError(f"backend {backend!r} is not supported under torchrun yet; "
                              f"use {' or '.join(DISTRIBUTED_BACKENDS)}")
        if batch_size % self.size:
            raise ConfigError(f"batch_size {batch_size} (the global batch) is not divisible by the "
                              f"{self.size} ranks; give a multiple of {self.size}")

    def check_epochs(self, batch_size: int, epoch_examples: list[int]) -> None:
        """Refuse epochs whose last, short batch has fewer examples than there are ranks."""
        for examples in epoch_examples:
            last = examples % batch_size
            if 0 < last < self.size:
                raise ConfigError(f"an epoch of {examples} examples ends with a batch of {last}, fewer than the "
                                  f"{self.size} ranks; choose another batch_size")

    # -- collectives --------------------------------------------------------------------------------
    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums of ``values`` over the ranks (float64)."""
        if self.size == 1:
            return list(values)
        total = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(total)
        return total.tolist()

    def combine_outcomes(self, indices: torch.Tensor, correct: torch.Tensor,
                         num_examples: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every rank's outcomes of one epoch (each example presented once, by one rank).

        Returns
        -------
        tuple of torch.Tensor
            Example indices (sorted) and whether each was classified correctly.
        """
        if self.size == 1:
            return indices, correct
        code = torch.zeros(num_examples, dtype=torch.int32)  # 0 not presented, 1 wrong, 2 right
        code[indices] = 1 + correct.to(torch.int32)
        dist.all_reduce(code)
        presented = code.nonzero().squeeze(1)
        return presented, code[presented] == 2

    def check_same_masks(self, masks: Mapping[str, torch.Tensor], epoch: int) -> str:
        """The digest of ``masks``, after checking that every rank holds the same one.

        Raises
        ------
        DistributedError
            On every rank, when the digests differ (naming each rank's).
        """
        digest = mask_digest(masks)
        if self.size == 1:
            return digest
        mine = torch.tensor(list(bytes.fromhex(digest)), dtype=torch.uint8)
        gathered = [torch.empty_like(mine) for _ in range(self.size)]
        dist.all_gather(gathered, mine)
        digests = [bytes(t.tolist()).hex() for t in gathered]
        if len(set(digests)) > 1:
            ranks = ", ".join(f"rank {r} {d[:12]}" for r, d in enumerate(digests))
            raise DistributedError(f"the masks differ across ranks after the mutation of epoch {epoch} ({ranks}): "
                                   "the ranks' training states diverged")
        return digest

    def from_main(self, produce: Callable[[], bytes | None]) -> bytes | None:
        """Rank 0's ``produce()``, on every rank: its bytes, None, or its error raised on every rank."""
        if self.size == 1:
            return produce()
        header = torch.zeros(2, dtype=torch.int64)
        payload, refusal = b"", None
        if self.is_main:
            try:
                data = produce()
            except MestError as err:
                refusal, payload = err, str(err).encode()
                header[0] = _REFUSED
            else:
                payload = data or b""
                header[0] = _NOTHING if data is None else _BYTES
            header[1] = len(payload)
        dist.broadcast(header, src=0)
        received = payload
        if int(header[1]):
            buffer = (torch.frombuffer(bytearray(payload), dtype=torch.uint8) if self.is_main
                      else torch.empty(int(header[1]), dtype=torch.uint8))
            dist.broadcast(buffer, src=0)
            received = payload if self.is_main else bytes(buffer.numpy())
        if int(header[0]) == _REFUSED:
            raise refusal if refusal is not None else DistributedError(f"rank 0 refused the run: {received.decode()}")
        return None if int(header[0]) == _NOTHING else received

    # -- the model ----------------------------------------------------------------------------------
    def prepare(self, model: nn.Module) -> None:
        """Make every BatchNorm of ``model`` use the statistics of all ranks (before the optimizer is
        built; parameters and buffers stay the same tensors)."""
        if self.size == 1:
            return
        group = dist.new_group(backend="gloo")  # its own group: never interleaved with DDP's reductions
        for name, module in list(model.named_modules()):
            for child_name, child in list(module.named_children()):
                if type(child) is nn.BatchNorm2d:
                    setattr(module, child_name, GlobalBatchNorm2d(child, group))

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` under DistributedDataParallel (``model`` itself for one process)."""
        if self.size == 1:
            return model
        # Buffers are not synchronised at each forward: GlobalBatchNorm2d computes the same running
        # statistics on every rank (DDP still broadcasts rank 0's parameters and buffers once, here).
        return nn.parallel.DistributedDataParallel(model, forward_sync_buffers=False)

    def check_shapes(self, model: nn.Module, shapes: dict[str, torch.Size]) -> None:
        """Refuse a parameter whose shape changed since DDP took ``shapes`` (its buckets would be stale)."""
        for name, param in model.named_parameters():
            if param.shape != shapes[name]:
                raise DistributedError(f"parameter {name} changed shape from {tuple(shapes[name])} to "
                                       f"{tuple(param.shape)} in a mutation, which DDP cannot follow")


def mask_digest(masks: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of every mask (by FQN, with its shape): equal digests, equal masks."""
    digest = hashlib.sha256()
    for fqn in sorted(masks):
        mask = masks[fqn].to(torch.bool).contiguous()
        digest.update(f"{fqn}{tuple(mask.shape)}".encode())
        digest.update(mask.numpy().tobytes())
    return digest.hexdigest()


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d that normalises, in training, by the mean and variance of the batch of all ranks.

    Per channel the ranks' sums of ``x`` and ``x**2`` and their counts are all-reduced (float64, one
    reduction forward and one backward: :class:`_SumOverRanks`); the running statistics take the
    global mean and unbiased variance, as one process's BatchNorm would. Evaluation uses the running
    statistics and talks to no one.

    Parameters
    ----------
    bn : torch.nn.BatchNorm2d
        The layer replaced: its parameters and buffers are taken over as they are (same tensors).
    group : torch.distributed.ProcessGroup
        The group of the statistics.
    """

    def __init__(self, bn: nn.BatchNorm2d, group: dist.ProcessGroup) -> None:
        super().__init__(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        self.weight, self.bias = bn.weight, bn.bias
        self.running_mean, self.running_var = bn.running_mean, bn.running_var
        self.num_batches_tracked = bn.num_batches_tracked
        self.train(bn.training)
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        channels = self.num_features
        dims = (0, 2, 3)
        count = torch.tensor([x.numel() // channels], dtype=torch.float64)
        local = torch.cat([x.sum(dims, dtype=torch.float64), (x * x).sum(dims, dtype=torch.float64), count])
        total = _SumOverRanks.apply(local, self.group)
        examples = float(total[-1].detach())
        mean = total[:channels] / examples
        var = (total[channels:2 * channels] / examples - mean * mean).clamp(min=0.0)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), examples)
        scale = (var + self.eps).rsqrt().to(x.dtype)
        if self.affine:
            scale = scale * self.weight
        shift = -mean.to(x.dtype) * scale + (self.bias if self.affine else 0.0)
        return x * scale[None, :, None, None] + shift[None, :, None, None]

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, examples: float) -> None:
        self.num_batches_tracked.add_(1)
        momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        unbiased = var * (examples / max(examples - 1.0, 1.0))
        self.running_mean.mul_(1.0 - momentum).add_(mean.to(self.running_mean.dtype), alpha=momentum)
        self.running_var.mul_(1.0 - momentum).add_(unbiased.to(self.running_var.dtype), alpha=momentum)


class _SumOverRanks(torch.autograd.Function):
    """``all_reduce(SUM)`` as a function of every rank's input: the gradient of each input is the sum
    of the ranks' output gradients (the transpose of a sum is a broadcast of the summed gradient)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:  # noqa: D102
        ctx.group = group
        total = tensor.clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: D102
        total = grad.contiguous().clone()
        dist.all_reduce(total, group=ctx.group)
        return total, None


@contextlib.contextmanager
def process_group(world: World, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[None]:
    """Form the gloo group of a launched world for the ``with`` block (nothing for one process).

    A failure of the group, at start-up or in any collective inside the block (a rank that does not
    answer within ``timeout_s``, a peer that died), becomes one :class:`DistributedError` line.
    """
    if not world.launched:
        yield
        return
    host, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), os.environ.get("MASTER_PORT", "29500")
    where, timeout = f"{host}:{port}", timedelta(seconds=timeout_s)
    try:
        # torchrun's agent hosts the store (else rank 0 does). Its static rendezvous keeps one store
        # across restarts, so a restarted group would read the dead group's addresses: the keys of
        # each attempt get a prefix of their own.
        store = dist.TCPStore(host, int(port), world.size, is_master=world.rank == 0 and not _agent_store(),
                              timeout=timeout)
        store = dist.PrefixStore(f"mest/attempt-{world.restart}", store)
        dist.init_process_group("gloo", store=store, rank=world.rank, world_size=world.size, timeout=timeout)
    except (dist.DistError, RuntimeError, ValueError) as err:
        raise DistributedError(f"rank {world.rank} of {world.size} could not reach the other ranks at {where} "
                               f"within {timeout_s:g} s ({_first_line(err)})") from None
    try:
        yield
    except (dist.DistError, RuntimeError) as err:
        if not isinstance(err, dist.DistError) and "gloo" not in str(err):  # gloo's failures are RuntimeErrors
            raise
        raise DistributedError(f"rank {world.rank} of {world.size} lost the other ranks ({_first_line(err)})") from None
    finally:
        dist.destroy_process_group()


def _agent_store() -> bool:
    """Whether torchrun's agent hosts the store (as ``torch.distributed.rendezvous`` decides it)."""
    return os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"


def _first_line(err: BaseException) -> str:
    """The first line of an error, without the C++ source location gloo starts it with."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    line = lines[0] if lines else type(err).__name__
    return re.sub(r"^\[[^\]]*\.(cc|cpp):\d+\] ", "", line)[:200]
