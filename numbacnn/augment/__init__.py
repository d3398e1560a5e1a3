"""Data augmentation for training: each image of a batch gets its own random shift, and optionally a small
rotation and scaling and a left-right mirror, drawn from (seed, step, image) alone.

The draws come from a counter-based hash computed inside the kernels (see ``cpu.compile_with``), so the CPU
and the GPU give the same batches, nothing random travels to the device, and the same seed gives the same run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..device import Device, get_device, kernels_for
from ..errors import ShapeError, SpecError
from ..layer import check_int, check_number

NAME = "augment"
OFF = ("none", "off")
KEYS = {"shift": "max_shift", "rotate": "max_rotation", "scale": "max_scale"}  # text form -> field
FLIP = "flip"  # the one key without a value


@dataclass
class Augment:
    """Random transforms of training images (N, H, W, C), filled with 0 where they uncover the frame.

    Args: max_shift: each image moves by whole pixels (dy, dx), each uniform on [-max_shift, max_shift];
    max_rotation: and turns by an angle uniform on [-max_rotation, max_rotation) degrees; max_scale: and
    is scaled by 1 + u * max_scale, u uniform on [-1, 1); flip: and, with probability one half, is mirrored
    left to right (for pictures that mean the same mirrored, such as clothes; not for digits). With rotation
    or scaling on, all of it is one bilinear resample; otherwise pixels are copied exactly.
    """

    max_shift: int = 2
    max_rotation: float = 0.0
    max_scale: float = 0.0
    flip: bool = False

    def __post_init__(self):
        self._out = None  # the output kept across calls: an attribute, not a field, so asdict() stays plain
        self.max_shift = check_int(NAME, "shift", self.max_shift, minimum=0)
        self.max_rotation = check_number(NAME, "rotate", self.max_rotation, 0.0, below=180.0)
        self.max_scale = check_number(NAME, "scale", self.max_scale, 0.0, below=1.0)
        if not isinstance(self.flip, (bool, np.bool_)):
            raise SpecError(f"{NAME}: flip must be True or False, got {self.flip!r}.")
        self.flip = bool(self.flip)

    @classmethod
    def off(cls) -> Augment:
        """No augmentation: ``apply`` hands the batch back as it is."""
        return cls(0, 0.0, 0.0, False)

    @property
    def enabled(self) -> bool:
        return bool(self.max_shift or self.max_rotation or self.max_scale or self.flip)

    @property
    def resamples(self) -> bool:
        """Whether images are resampled (rotation or scaling on) rather than shifted by whole pixels."""
        return bool(self.max_rotation or self.max_scale)

    # -- the text form --------------------------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str) -> Augment:
        """An ``Augment`` from its text form: "none" (or "off"), or a comma-separated list of key=value pairs
        of shift (pixels), rotate (degrees) and scale (a fraction), and the word flip, e.g.
        "shift=2,rotate=10,scale=0.1" or "shift=1,flip". Keys left out are off."""
        text = text.strip().lower()
        if text in OFF:
            return cls.off()
        values = {}
        for part in text.split(","):
            key, sep, value = (s.strip() for s in part.partition("="))
            if key in values or not (key in KEYS and sep or key == FLIP and not sep):
                raise SpecError(f"{NAME}: cannot read {text!r}; write none, or key=value pairs of "
                                f"{', '.join(KEYS)} and the word {FLIP}, each at most once, e.g. "
                                f"shift=2,rotate=10 or shift=1,{FLIP}.")
            values[key] = True if key == FLIP else _number(key, value)
        return cls(**{KEYS[key]: values.get(key, 0) for key in KEYS}, flip=values.get(FLIP, False))

    def __str__(self) -> str:
        """The text form ``parse`` reads back."""
        if not self.enabled:
            return "none"
        parts = [f"shift={self.max_shift}"] if self.max_shift else []
        parts += [f"rotate={self.max_rotation:g}"] if self.max_rotation else []
        parts += [f"scale={self.max_scale:g}"] if self.max_scale else []
        parts += [FLIP] if self.flip else []
        return ",".join(parts)

    # -- applying it ----------------------------------------------------------------------------------------

    def apply(self, x, seed: int, step: int, device: str | Device = "cpu", first: int = 0):
        """The batch ``x`` (N, H, W, C), each image transformed by its own draw, on ``device``.

        Args: x: a float array (host, or on ``device``), never written to; seed, step: whole numbers >= 0
        that pick the draws (image n of step ``step`` always gets the same one, on any device); first: the
        number of ``x``'s first image in the whole batch, when ``x`` is one process's part of it.
        The result is one array reused by every call (made anew when the shape or dtype changes), so it stays
        valid until the next call; when augmentation is off, it is ``x`` itself.
        """
        device = get_device(device)
        check_int(NAME, "seed", seed, minimum=0)
        check_int(NAME, "step", step, minimum=0)
        if not self.enabled:
            return x
        x = device.to_device(x)
        if len(x.shape) != 4:
            raise ShapeError(f"{NAME}: needs a batch of images (N, H, W, C), got shape {tuple(x.shape)}.")
        out = self._output(device, tuple(x.shape), x.dtype)
        kernels = kernels_for(__name__, device)
        if self.resamples:
            kernels.affine(x, out, seed, step, self.max_shift, math.radians(self.max_rotation), self.max_scale, first,
                           self.flip)
        else:
            kernels.shift(x, out, seed, step, self.max_shift, first, self.flip)
        return out

    def check_fits(self, image_shape: tuple) -> None:
        """A ``SpecError`` when the shift would move an image of ``image_shape`` (H, W, C) by more than half its
        smaller side: most of each image would leave the frame, and training would see blank pictures."""
        most = min(image_shape[:2]) // 2
        if self.max_shift > most:
            raise SpecError(f"{NAME}: shift={self.max_shift} would move {image_shape[0]}x{image_shape[1]} images "
                            f"mostly out of the frame; use a shift of at most {most} (a few pixels, e.g. shift=2).")

    def _output(self, device: Device, shape: tuple, dtype):
        """The output array, kept across calls like ``Layer.buffer``: fresh pages cost more than the kernel."""
        out, key = self._out, (device.name, shape, np.dtype(dtype))
        if out is None or out[0] != key:
            self._out = out = (key, device.empty(shape, np.dtype(dtype)))
        return out[1]

    def transforms(self, seed: int, step: int, count: int) -> np.ndarray:
        """The draws of images 0 .. count - 1 in step ``step``: a (count, 5) float64 array of rows
        (dy, dx, angle in degrees, scale, mirrored 1 or 0). The image moves by (dy, dx) pixels (down, right),
        then is mirrored left to right where the last column is 1."""
        from . import cpu

        rows = cpu.draws(seed, step, count, self.max_shift, math.radians(self.max_rotation), self.max_scale,
                         self.flip)
        rows[:, 2] = np.degrees(rows[:, 2])
        return rows


def shift_offsets(seed: int, step: int, count: int, max_shift: int) -> np.ndarray:
    """The whole-pixel offsets (dy, dx) of images 0 .. count - 1 in step ``step``, as a (count, 2) int64
    array: image n's pixel (y, x) moves to (y + dy, x + dx). They do not depend on rotation or scaling."""
    return Augment(max_shift).transforms(seed, step, count)[:, :2].astype(np.int64)


def _number(key: str, value: str):
    """The value of one key=value pair: whole pixels for shift, a float for the rest."""
    try:
        return int(value) if key == "shift" else float(value)
    except ValueError:
        kind = "a whole number" if key == "shift" else "a number"
        raise SpecError(f"{NAME}: {key} must be {kind}, got {value!r}.") from None
