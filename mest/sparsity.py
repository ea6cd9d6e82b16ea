"""The sparse state of a model: which parameters are sparse, their masks, and the mutation step.

Sparse conv weights are keyed by the parameter's fully qualified name (``layer2.3.conv1.weight``).
How a sparse layer is held is its backend's business, behind :class:`SparseConv`: the reference's
dense weight times a bool mask (:class:`MaskedConv`, ``torch-mask``), or compact values run by the TVM
kernels (:class:`mest.compact.CompactConv`, ``tvm``). The mutation step is shared: score, prune, grow
with the scheme, then hand the new masks to the layer. Under the channel scheme the BatchNorm channel
of a pruned filter is masked as well (its weight and bias), so that a pruned filter outputs zero.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol
from pathlib import Path

import torch
from torch import nn

from mest.errors import ConfigError
from mest.models import conv_bn_pairs
from mest.mutation import MutationSchedule
from mest.schemes import derived_generator, get_scheme


def default_profile(model: nn.Module, sparsity: float) -> dict[str, float]:
    """Uniform sparsity over the 3x3 convs of the residual stages.

    The stem (the first conv), the 1x1 shortcut convs, the classifier and BN stay dense.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"sparsity {sparsity:g} is outside [0, 1)")
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    return {f"{name}.weight": sparsity for name, m in convs[1:] if m.kernel_size == (3, 3)}


def read_profile(path: Path) -> dict[str, float]:
    """Read a per-layer profile: a JSON object ``{parameter FQN: sparsity}`` naming at least one layer.

    Raises
    ------
    ConfigError
        The file is unreadable, not such an object, empty, names a layer twice, or gives a
        sparsity that is not a number in ``[0, 1)``.
    """
    def unique(pairs: list[tuple[str, object]]) -> dict[str, object]:
        twice = next((fqn for fqn, count in Counter(fqn for fqn, _ in pairs).items() if count > 1), None)
        if twice is not None:
            raise ConfigError(f"sparsity profile {path} names {twice!r} twice")
        return dict(pairs)

    try:
        profile = json.loads(Path(path).read_text(), object_pairs_hook=unique)
    except ConfigError:
        raise
    except (OSError, ValueError, RecursionError) as err:
        raise ConfigError(f"cannot read sparsity profile {path}: {str(err)[:120]}") from None
    if not isinstance(profile, dict):
        raise ConfigError(f"sparsity profile {path} must be a JSON object of FQN -> sparsity")
    if not profile:
        raise ConfigError(f"sparsity profile {path} names no layer: nothing would be sparse")
    for fqn, sparsity in profile.items():
        if type(sparsity) not in (int, float) or not 0.0 <= sparsity < 1.0:
            raise ConfigError(f"sparsity {sparsity!r} of {fqn} in {path} is not a number in [0, 1)"[:200])
    return {fqn: float(s) for fqn, s in profile.items()}


def check_profile(profile: dict[str, float], model: nn.Module, path: Path) -> dict[str, float]:
    """``profile`` (from :func:`read_profile`) if every FQN it names is a parameter of ``model``."""
    params = dict(model.named_parameters())
    for fqn in profile:
        if fqn not in params:
            raise ConfigError(f"sparsity profile {path} names {fqn[:80]!r}, which is not a parameter of the model")
    return profile


@dataclass
class MutationRecord:
    """What one mutation did to one layer (counts of weights)."""

    pruned: int
    grown: int
    density: float


class SparseConv(Protocol):
    """One sparse conv weight as a backend holds it."""

    def mask(self) -> torch.Tensor:
        """Bool mask of the kept positions (dense shape)."""

    def nnz(self) -> int:
        """Kept weights."""

    def dense_weight(self) -> torch.Tensor:
        """Dense weight, zero outside the mask (materialised only to score a mutation)."""

    def dense_grad(self) -> torch.Tensor | None:
        """Dense gradient of the last step, zero outside the mask, or None."""

    def mutate(self, survivors: torch.Tensor, mask: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Keep the weights at ``survivors``, zero the rest, and take ``mask`` (a superset) as the
        new mask; momentum survives only at ``survivors``."""

    def apply_mask(self) -> None:
        """After an optimizer step: ``weight *= mask`` (a no-op for a compact layer)."""

    def mask_grad(self) -> None:
        """After backward: ``grad *= mask`` (a no-op for a compact layer)."""

    def state_bytes(self) -> int:
        """Bytes of training state: weight, gradient and momentum, plus indices or mask."""


class MaskedConv:
    """The reference's way: a dense weight parameter multiplied by a bool mask."""

    def __init__(self, weight: nn.Parameter, mask: torch.Tensor) -> None:
        self.weight = weight
        self._mask = mask

    def mask(self) -> torch.Tensor:
        return self._mask

    def nnz(self) -> int:
        return int(self._mask.sum())

    def dense_weight(self) -> torch.Tensor:
        return self.weight.detach()

    def dense_grad(self) -> torch.Tensor | None:
        return self.weight.grad

    @torch.no_grad()
    def mutate(self, survivors: torch.Tensor, mask: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        self.weight.mul_(survivors)
        reset_momentum(optimizer, self.weight, survivors)
        self._mask.copy_(mask)

    @torch.no_grad()
    def apply_mask(self) -> None:
        self.weight.mul_(self._mask)

    @torch.no_grad()
    def mask_grad(self) -> None:
        if self.weight.grad is not None:
            self.weight.grad.mul_(self._mask)

    def state_bytes(self) -> int:
        return 3 * self.weight.numel() * self.weight.element_size() + self._mask.numel()


@dataclass
class SparseState:
    """The sparse conv layers of one model, their schemes and targets, and coupled BN masks.

    Attributes
    ----------
    layers : dict of str to SparseConv
        Every sparse conv weight FQN and how its backend holds it.
    schemes : dict of str to str
        Scheme name per sparse conv weight FQN.
    sparsity : dict of str to float
        Target sparsity per sparse conv weight FQN.
    coupled : dict of str to str
        BN parameter FQN -> the conv weight FQN whose output channels it follows (channel scheme).
    coupled_masks : dict of str to torch.Tensor
        Bool ``[channels]`` mask of each coupled BN parameter.
    bn_params : dict of str to torch.nn.Parameter
        The coupled BN parameters themselves.
    """

    layers: dict[str, SparseConv]
    schemes: dict[str, str]
    sparsity: dict[str, float]
    coupled: dict[str, str] = field(default_factory=dict)
    coupled_masks: dict[str, torch.Tensor] = field(default_factory=dict)
    bn_params: dict[str, nn.Parameter] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._sizes = {fqn: layer.mask().numel() for fqn, layer in self.layers.items()}
        self._densities = self._measure_densities()

    @classmethod
    def prune_init(cls, model: nn.Module, profile: dict[str, float], scheme: str) -> "SparseState":
        """Prune a (random-init) model once to the profile's densities, by weight magnitude."""
        params = dict(model.named_parameters())
        rule = get_scheme(scheme)
        masks = {}
        for fqn, sparsity in profile.items():
            weight = params[fqn].detach()
            rule.check(weight.shape, 1.0 - sparsity)
            masks[fqn] = rule.prune(weight.abs(), torch.ones_like(weight, dtype=torch.bool), 1.0 - sparsity)
        state = cls.from_masks(model, masks, {f: scheme for f in profile}, dict(profile))
        state.apply_to_weights()
        return state

    @classmethod
    def from_masks(cls, model: nn.Module, masks: dict[str, torch.Tensor], schemes: dict[str, str],
                   sparsity: dict[str, float]) -> "SparseState":
        """Masked layers of ``model`` from conv masks; coupled BN masks follow a scheme that masks BN (channel)."""
        params = dict(model.named_parameters())
        pairs = conv_bn_pairs(model)
        layers = {fqn: MaskedConv(params[fqn], masks[fqn].bool().clone()) for fqn in schemes}
        coupled = {f"{pairs[fqn]}.{suffix}": fqn for fqn, scheme in schemes.items()
                   if get_scheme(scheme).masks_batch_norm and fqn in pairs for suffix in ("weight", "bias")}
        coupled_masks = {bn: _channel_mask(layers[conv].mask()) for bn, conv in coupled.items()}
        return cls(layers=layers, schemes=dict(schemes), sparsity=dict(sparsity), coupled=coupled,
                   coupled_masks=coupled_masks, bn_params={bn: params[bn] for bn in coupled})

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """Mask of every masked parameter by FQN (conv weights, then coupled BN parameters)."""
        return {**{fqn: layer.mask() for fqn, layer in self.layers.items()}, **self.coupled_masks}

    def sparse_layers(self) -> list[str]:
        """FQNs of the sparse conv weights, in model order."""
        return list(self.layers)

    @torch.no_grad()
    def apply_to_weights(self) -> None:
        """``weight *= mask`` for every masked parameter (after each optimizer step)."""
        for layer in self.layers.values():
            layer.apply_mask()
        for bn_fqn, mask in self.coupled_masks.items():
            self.bn_params[bn_fqn].mul_(mask)

    @torch.no_grad()
    def apply_to_grads(self) -> None:
        """``grad *= mask`` for every masked parameter that has a gradient (after backward)."""
        for layer in self.layers.values():
            layer.mask_grad()
        for bn_fqn, mask in self.coupled_masks.items():
            if self.bn_params[bn_fqn].grad is not None:
                self.bn_params[bn_fqn].grad.mul_(mask)

    def _measure_densities(self) -> dict[str, float]:
        return {fqn: layer.nnz() / self._sizes[fqn] for fqn, layer in self.layers.items()}

    def densities(self) -> dict[str, float]:
        """Current density of every sparse conv weight."""
        return dict(self._densities)

    def overall_density(self) -> float:
        """Non-zeros over all sparse conv weights divided by their size."""
        return sum(self._densities[f] * n for f, n in self._sizes.items()) / sum(self._sizes.values())

    def state_bytes(self) -> tuple[int, int]:
        """Bytes of the sparse layers' training state, and of the same layers trained dense."""
        held = sum(layer.state_bytes() for layer in self.layers.values())
        dense = sum(3 * 4 * n for n in self._sizes.values())
        return held, dense

    def peak_counts(self, schedule: MutationSchedule) -> dict[str, int]:
        """Per layer, the most weights it will hold in the run (its largest upper bound)."""
        epochs = (0, *schedule.decay_epochs)
        counts = {}
        for fqn, layer in self.layers.items():
            density = max([1.0 - self.sparsity[fqn]] + [schedule.bounds(e, self.sparsity[fqn]).upper for e in epochs])
            empty = torch.zeros_like(layer.mask())
            counts[fqn] = int(get_scheme(self.schemes[fqn]).grow(empty, density, torch.Generator()).sum())
        return counts

    @torch.no_grad()
    def mutate(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: MutationSchedule,
        epoch: int,
        seed: int,
        grad_weight: float = 0.0,
    ) -> dict[str, MutationRecord]:
        """Prune every sparse layer to the epoch's lower bound, then grow it to the upper bound.

        The importance score is ``|w| + grad_weight * |grad|`` with the gradient of the last step
        (zero where there is none). Grown weights start at exactly zero and their momentum is reset,
        as is the momentum of pruned weights; growth may re-open a just-pruned position, which then
        restarts at zero like any grown weight. Random growth is seeded by ``(seed, epoch, layer)``.
        """
        modules = dict(model.named_modules())
        records, survivors = {}, {}
        for fqn, layer in self.layers.items():
            mask = layer.mask()
            bounds = schedule.bounds(epoch, self.sparsity[fqn])
            score = layer.dense_weight().abs()
            grad = layer.dense_grad() if grad_weight else None
            if grad is not None:
                score = score + grad_weight * grad.abs()
            rule = get_scheme(self.schemes[fqn])
            pruned = rule.prune(score, mask, bounds.lower)
            grown = rule.grow(pruned, bounds.upper, derived_generator(seed, epoch, fqn))
            records[fqn] = MutationRecord(
                pruned=int((mask & ~pruned).sum()), grown=int((grown & ~pruned).sum()),
                density=grown.float().mean().item(),
            )
            layer.mutate(pruned, grown, optimizer)
            survivors[fqn] = pruned
        for bn_fqn, conv_fqn in self.coupled.items():
            surviving = _channel_mask(survivors[conv_fqn])
            self.coupled_masks[bn_fqn].copy_(_channel_mask(self.layers[conv_fqn].mask()))
            new_channels = self.coupled_masks[bn_fqn] & ~surviving
            param = self.bn_params[bn_fqn]
            # A regrown channel restarts as a fresh BN channel: gamma 1 (else its conv gets no
            # gradient and the channel stays dead), beta 0, and fresh running statistics.
            param[new_channels] = 1.0 if bn_fqn.endswith(".weight") else 0.0
            param.mul_(self.coupled_masks[bn_fqn])
            reset_momentum(optimizer, param, surviving)
            if bn_fqn.endswith(".weight"):
                bn = modules[bn_fqn.rsplit(".", 1)[0]]
                bn.running_mean[new_channels] = 0.0
                bn.running_var[new_channels] = 1.0
        self._densities = self._measure_densities()
        return records

    def state_dict(self) -> dict:
        """Plain tensors and strings, loadable with ``torch.load(weights_only=True)``."""
        return {"masks": self.masks, "schemes": dict(self.schemes), "sparsity": dict(self.sparsity)}

    @classmethod
    def from_state_dict(cls, model: nn.Module, state: dict) -> "SparseState":
        """Inverse of :meth:`state_dict`, attached to ``model`` (masked layers)."""
        return cls.from_masks(model, state["masks"], state["schemes"],
                              {k: float(v) for k, v in state["sparsity"].items()})


def _channel_mask(conv_mask: torch.Tensor) -> torch.Tensor:
    """bool ``[out]``: output filters of a conv mask that keep any weight."""
    return conv_mask.reshape(conv_mask.shape[0], -1).any(dim=1)


def reset_momentum(optimizer: torch.optim.Optimizer, param: torch.Tensor, keep: torch.Tensor) -> None:
    """Zero the momentum of ``param`` outside ``keep`` (pruned and regrown positions)."""
    buf = optimizer.state.get(param, {}).get("momentum_buffer")
    if buf is not None:
        buf.mul_(keep)
