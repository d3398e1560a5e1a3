"""Named networks, each nothing more than a layer spec."""

from .errors import SpecError

PRESETS = {
    # The Keras "simple MNIST convnet" example: 34,826 parameters.
    "keras-convnet": "conv2d(32,3) relu maxpool2d(2) conv2d(64,3) relu maxpool2d(2) flatten dropout(0.5) dense(10)",
    # LeCun et al. 1998, as usually rebuilt for 28x28 inputs: padding 2 on the first convolution, average pooling.
    "lenet5": "conv2d(6,5,padding=2) relu avgpool2d(2) conv2d(16,5) relu avgpool2d(2) flatten "
              "dense(120) relu dense(84) relu dense(10)",
    # A quick one for smoke tests and first tries: one block and a classifier.
    "tiny": "conv2d(8,3) relu maxpool2d(2) flatten dense(10)",
}

DEFAULT_PRESET = "keras-convnet"


def preset_spec(name: str) -> str:
    """The spec of the preset ``name``; ``SpecError`` listing the presets when there is none."""
    try:
        return PRESETS[name]
    except KeyError:
        raise SpecError(f"Unknown model {name!r}; choose one of: {', '.join(PRESETS)}, or give --layers.") from None
