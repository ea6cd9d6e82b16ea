"""The sparse state of a model: which parameters are sparse, their masks, and the mutation step.

Masks are bool tensors keyed by the parameter's fully qualified name (``layer2.3.conv1.weight``);
a mask's identity never changes, only its contents, so every holder of a mask sees the mutation.
Under the channel scheme the BatchNorm channel of a pruned filter is masked as well (its weight and
bias), so that a pruned filter really outputs zero.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
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


def load_profile(path: Path, model: nn.Module) -> dict[str, float]:
    """Read a per-layer profile: a JSON object ``{parameter FQN: sparsity}``."""
    try:
        profile = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read sparsity profile {path}: {err}") from None
    params = dict(model.named_parameters())
    if not isinstance(profile, dict):
        raise ConfigError(f"sparsity profile {path} must be a JSON object of FQN -> sparsity")
    for fqn, sparsity in profile.items():
        if fqn not in params:
            raise ConfigError(f"sparsity profile names {fqn!r}, which is not a parameter of the model")
        if not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
            raise ConfigError(f"sparsity {sparsity!r} of {fqn} is outside [0, 1)")
    return {fqn: float(s) for fqn, s in profile.items()}


@dataclass
class MutationRecord:
    """What one mutation did to one layer (counts of weights)."""

    pruned: int
    grown: int
    density: float


@dataclass
class SparseState:
    """Masks, schemes and target sparsities of the sparse parameters of one model.

    Attributes
    ----------
    masks : dict of str to torch.Tensor
        Mask of every masked parameter: the sparse conv weights, and under the channel scheme the
        weight and bias of the BN that follows each of them.
    schemes : dict of str to str
        Scheme name per sparse conv weight FQN.
    sparsity : dict of str to float
        Target sparsity per sparse conv weight FQN.
    coupled : dict of str to str
        BN parameter FQN -> the conv weight FQN whose output channels it follows (channel scheme).
    """

    masks: dict[str, torch.Tensor]
    schemes: dict[str, str]
    sparsity: dict[str, float]
    coupled: dict[str, str] = field(default_factory=dict)

    @classmethod
    def prune_init(cls, model: nn.Module, profile: dict[str, float], scheme: str) -> "SparseState":
        """Prune a (random-init) model once to the profile's densities, by weight magnitude."""
        params = dict(model.named_parameters())
        rule = get_scheme(scheme)
        masks, coupled = {}, {}
        pairs = conv_bn_pairs(model)
        for fqn, sparsity in profile.items():
            weight = params[fqn].detach()
            rule.check(weight.shape, 1.0 - sparsity)
            masks[fqn] = rule.prune(weight.abs(), torch.ones_like(weight, dtype=torch.bool), 1.0 - sparsity)
            if scheme == "channel" and fqn in pairs:
                for suffix in ("weight", "bias"):
                    coupled[f"{pairs[fqn]}.{suffix}"] = fqn
        state = cls(masks=masks, schemes={f: scheme for f in profile}, sparsity=dict(profile), coupled=coupled)
        for bn_fqn, conv_fqn in coupled.items():
            state.masks[bn_fqn] = _channel_mask(state.masks[conv_fqn])
        state.apply_to_weights(model)
        return state

    def sparse_layers(self) -> list[str]:
        """FQNs of the sparse conv weights, in model order."""
        return list(self.schemes)

    @torch.no_grad()
    def apply_to_weights(self, model: nn.Module) -> None:
        """``weight *= mask`` for every masked parameter."""
        params = dict(model.named_parameters())
        for fqn, mask in self.masks.items():
            params[fqn].mul_(mask)

    @torch.no_grad()
    def apply_to_grads(self, model: nn.Module) -> None:
        """``grad *= mask`` for every masked parameter that has a gradient."""
        params = dict(model.named_parameters())
        for fqn, mask in self.masks.items():
            if params[fqn].grad is not None:
                params[fqn].grad.mul_(mask)

    def densities(self) -> dict[str, float]:
        """Current density of every sparse conv weight."""
        return {fqn: self.masks[fqn].float().mean().item() for fqn in self.schemes}

    def overall_density(self) -> float:
        """Non-zeros over all sparse conv weights divided by their size."""
        kept = sum(int(self.masks[f].sum()) for f in self.schemes)
        return kept / sum(self.masks[f].numel() for f in self.schemes)

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
        as is the momentum of pruned weights. Random growth is seeded by ``(seed, epoch, layer)``.
        """
        params = dict(model.named_parameters())
        modules = dict(model.named_modules())
        records, survivors = {}, {}
        for fqn, scheme in self.schemes.items():
            weight, mask = params[fqn], self.masks[fqn]
            bounds = schedule.bounds(epoch, self.sparsity[fqn])
            score = weight.abs()
            if grad_weight and weight.grad is not None:
                score = score + grad_weight * weight.grad.abs()
            rule = get_scheme(scheme)
            pruned = rule.prune(score, mask, bounds.lower)
            grown = rule.grow(pruned, bounds.upper, derived_generator(seed, epoch, fqn))
            records[fqn] = MutationRecord(
                pruned=int((mask & ~pruned).sum()), grown=int((grown & ~pruned).sum()),
                density=grown.float().mean().item(),
            )
            # Growth may re-open a just-pruned position: it restarts at zero like any grown weight.
            weight.mul_(pruned)
            _reset_momentum(optimizer, weight, pruned)
            mask.copy_(grown)
            survivors[fqn] = pruned
        for bn_fqn, conv_fqn in self.coupled.items():
            surviving = _channel_mask(survivors[conv_fqn])
            self.masks[bn_fqn].copy_(_channel_mask(self.masks[conv_fqn]))
            new_channels = self.masks[bn_fqn] & ~surviving
            param = params[bn_fqn]
            # A regrown channel restarts as a fresh BN channel: gamma 1 (else its conv gets no
            # gradient and the channel stays dead), beta 0, and fresh running statistics.
            param[new_channels] = 1.0 if bn_fqn.endswith(".weight") else 0.0
            param.mul_(self.masks[bn_fqn])
            _reset_momentum(optimizer, param, surviving)
            if bn_fqn.endswith(".weight"):
                bn = modules[bn_fqn.rsplit(".", 1)[0]]
                bn.running_mean[new_channels] = 0.0
                bn.running_var[new_channels] = 1.0
        return records

    def state_dict(self) -> dict:
        """Plain tensors and strings, loadable with ``torch.load(weights_only=True)``."""
        return {"masks": dict(self.masks), "schemes": dict(self.schemes),
                "sparsity": dict(self.sparsity), "coupled": dict(self.coupled)}

    @classmethod
    def from_state_dict(cls, state: dict) -> "SparseState":
        """Inverse of :meth:`state_dict`."""
        return cls(masks={k: v.bool() for k, v in state["masks"].items()}, schemes=dict(state["schemes"]),
                   sparsity={k: float(v) for k, v in state["sparsity"].items()}, coupled=dict(state["coupled"]))


def _channel_mask(conv_mask: torch.Tensor) -> torch.Tensor:
    """bool ``[out]``: output filters of a conv mask that keep any weight."""
    return conv_mask.reshape(conv_mask.shape[0], -1).any(dim=1)


def _reset_momentum(optimizer: torch.optim.Optimizer, param: torch.Tensor, keep: torch.Tensor) -> None:
    """Zero the momentum of ``param`` outside ``keep`` (pruned and regrown positions)."""
    buf = optimizer.state.get(param, {}).get("momentum_buffer")
    if buf is not None:
        buf.mul_(keep)
