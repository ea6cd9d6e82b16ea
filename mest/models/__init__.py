"""Models of the trainer, built by name, and the conv -> BN pairs that the channel scheme couples."""

from __future__ import annotations

from torch import nn

from mest.errors import ConfigError
from mest.models.resnet import RESNET_SPECS, CifarResNet

MODEL_NAMES = tuple(RESNET_SPECS)


def build_model(name: str, num_classes: int, in_channels: int) -> nn.Module:
    """Build a model with the reference initialisation.

    Parameters
    ----------
    name : str
        One of :data:`MODEL_NAMES` (``resnet32``, ``resnet20``, ``tiny``).
    num_classes : int
        Classifier outputs.
    in_channels : int
        Image channels (3 for CIFAR, 1 for digits).

    Returns
    -------
    torch.nn.Module
        The model, in training mode, with the reference's random init.
    """
    if name not in RESNET_SPECS:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
    return CifarResNet(RESNET_SPECS[name], num_classes=num_classes, in_channels=in_channels)


def conv_bn_pairs(model: nn.Module) -> dict[str, str]:
    """Map each conv weight FQN to the FQN prefix of the BatchNorm that normalises its output.

    A conv is paired with the BN that directly follows it in its parent module (``convN`` with
    ``bnN``, a shortcut ``Sequential``'s conv with the BN after it).
    """
    pairs: dict[str, str] = {}
    for parent_name, parent in model.named_modules():
        children = list(parent.named_children())
        prefix = f"{parent_name}." if parent_name else ""
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                pairs[f"{prefix}{conv_name}.weight"] = f"{prefix}{bn_name}"
    return pairs
