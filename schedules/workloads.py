"""The sparse 3x3 convolution layers of the CIFAR ResNets, as shapes (what the bench and tuner run).

``schedules/`` does not import the trainer's models; these tables mirror them (ResNet-32 with the
reference's widths 32-64-128, ResNet-20 with 16-32-64, the tests' ``tiny`` with 8-12; CIFAR's 32x32
inputs by default, the digits' 8x8 with ``image_size=8``) and are checked against nothing but this
docstring, so keep them in step with ``mest/models/resnet.py``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConvLayer:
    """One distinct sparse 3x3 conv shape of a model.

    Attributes
    ----------
    name : str
        Short label, e.g. ``"64x64@16 s1"``.
    in_channels, out_channels : int
        Channels.
    size : int
        Input height and width.
    stride : int
        1 or 2.
    count : int
        How many layers of the model have this shape.
    """

    name: str
    in_channels: int
    out_channels: int
    size: int
    stride: int
    count: int

    def weight_shape(self) -> tuple[int, int, int, int]:
        """``(O, I, 3, 3)``."""
        return (self.out_channels, self.in_channels, 3, 3)

    def x_shape(self, batch: int) -> tuple[int, int, int, int]:
        """NCHW input shape."""
        return (batch, self.in_channels, self.size, self.size)


def _resnet_layers(widths: tuple[int, ...], blocks: int, size: int = 32) -> list[ConvLayer]:
    layers = []
    previous = widths[0]
    for stage, width in enumerate(widths):
        stride = 1 if stage == 0 else 2
        if stride == 2:
            layers.append(ConvLayer(f"{previous}x{width}@{size} s2", previous, width, size, 2, 1))
            size //= 2
        same = 2 * blocks - (1 if stride == 2 else 0)
        layers.append(ConvLayer(f"{width}x{width}@{size} s1", width, width, size, 1, same))
        previous = width
    return layers


#: Stage widths and blocks per stage of each model.
MODELS: dict[str, tuple[tuple[int, ...], int]] = {
    "resnet32": ((32, 64, 128), 5),
    "resnet20": ((16, 32, 64), 3),
    "tiny": ((8, 12), 1),
}


def model_layers(model: str, image_size: int = 32) -> list[ConvLayer]:
    """Distinct sparse conv layers of ``model`` (a name of :data:`MODELS`) on ``image_size`` inputs.

    Raises
    ------
    ValueError
        For an unknown model (the message lists the known ones).
    """
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; known: {', '.join(MODELS)}")
    widths, blocks = MODELS[model]
    return _resnet_layers(widths, blocks, image_size)


def select_layers(model: str, names: str = "", image_size: int = 32) -> list[ConvLayer]:
    """The layers of ``model`` named in a comma-separated ``names`` (all of them when empty).

    Raises
    ------
    ValueError
        For an unknown model, or when no layer has one of the names.
    """
    wanted = [name.strip() for name in names.split(",") if name.strip()]
    layers = [layer for layer in model_layers(model, image_size) if not wanted or layer.name in wanted]
    if not layers:
        raise ValueError(f"no layer of {model} is named {names!r}")
    return layers
