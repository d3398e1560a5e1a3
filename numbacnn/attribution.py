"""Where a trained network looks: saliency maps and Grad-CAM, through the layers' own backward passes.

Both take the gradient of one class's score (its logit, before the softmax) with respect to something inside
the network, for the network as it evaluates (dropout off, batch normalisation with its running statistics):
each layer runs its ``forward_for_gradients`` and then its own ``backward``, so a plug-in layer takes part
exactly as a built-in one does.

- Saliency (Simonyan et al., 2013): the gradient with respect to the input pixels. A pixel whose change would
  move the score most is bright.
- Grad-CAM (Selvaraju et al., 2017): at a convolution's output A (h, w, K), each feature map k gets the weight
  alpha_k = mean over positions of d score / d A[:, :, k], and the map is ReLU(sum_k alpha_k A[:, :, k]): the
  places whose features speak for the class. It is coarse (h x w) and is stretched over the image to be shown.

The model's gradients are overwritten (its weights, state and random generators are not).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .block import Block, forward_for_gradients
from .errors import NumbacnnError
from .model import Sequential, numbered_layers

BATCH = 64  # images per pass: the maps of each image do not depend on the others


@dataclass
class GradCam:
    """Grad-CAM of a batch at one layer: ``maps`` (N, h, w) >= 0 at the layer's resolution, ``heat`` (N, H, W)
    the maps stretched over the input images, ``weights`` (N, K) each feature map's alpha, ``classes`` (N,)
    the class each was taken for, ``layer`` the layer's index as ``numbacnn summary`` shows it."""

    maps: np.ndarray
    heat: np.ndarray
    weights: np.ndarray
    classes: np.ndarray
    layer: str


def class_scores(model: Sequential, images: np.ndarray) -> np.ndarray:
    """The logits (N, classes) of prepared ``images``, as evaluation computes them."""
    x = model.device.to_device(np.ascontiguousarray(images, dtype=model.dtype))
    return model.device.to_host(model.forward(x)).astype(np.float64)


def chosen_classes(model: Sequential, images: np.ndarray, classes) -> np.ndarray:
    """``classes`` as one class per image: None takes each image's predicted class, one number is used for
    every image. ``NumbacnnError`` for a class the network does not have."""
    count = model.output_shape[0]
    if classes is None:
        return np.concatenate([class_scores(model, images[i:i + BATCH]).argmax(axis=1)
                               for i in range(0, len(images), BATCH)]).astype(np.int64)
    chosen = np.broadcast_to(np.asarray(classes, dtype=np.int64), (len(images),)).copy()
    bad = chosen[(chosen < 0) | (chosen >= count)]
    if bad.size:
        raise NumbacnnError(f"Class {int(bad[0])} is not one of the network's {count} classes; use 0 to {count - 1}.")
    return chosen


def saliency(model: Sequential, images: np.ndarray, classes=None) -> tuple[np.ndarray, np.ndarray]:
    """(gradients (N, H, W, C) of each image's class score with respect to its pixels, classes (N,)).
    ``classes``: None (each image's predicted class), one class for all, or one per image. The heat map
    usually drawn is ``saliency_heat(gradients)``."""
    images = np.asarray(images)
    classes = chosen_classes(model, images, classes)
    first = model.layers[0]
    needed, first.needs_input_grad = first.needs_input_grad, True  # the model skips it while training
    try:
        parts = []
        for start in range(0, len(images), BATCH):
            stop = start + BATCH
            _, dx = _gradient_pass(model, images[start:stop], classes[start:stop], None)
            parts.append(model.device.to_host(dx).astype(np.float64))
    finally:
        first.needs_input_grad = needed
    return np.concatenate(parts), classes


def saliency_heat(gradients: np.ndarray) -> np.ndarray:
    """The saliency heat map (N, H, W): the largest absolute gradient over each pixel's channels."""
    return np.abs(gradients).max(axis=-1)


def gradcam_layers(model: Sequential) -> list[tuple[str, object]]:
    """(index, layer) of the top-level layers Grad-CAM can look at: the convolutions, that is each layer whose
    output is feature maps and that holds a filter bank (a 4-D parameter: conv2d, a plug-in's convolution, a
    residual block of them)."""
    found = []
    for index, depth, layer in numbered_layers(model.layers):
        if depth == 0 and len(layer.out_shape) == 3 and _has_filters(layer):
            found.append((index, layer))
    return found


def _has_filters(layer) -> bool:
    if any(len(p.shape) == 4 for p in layer.params.values()):
        return True
    return isinstance(layer, Block) and any(_has_filters(child) for _, child in layer.named_children())


def gradcam_layer(model: Sequential, layer: str | int | None = None) -> tuple[str, object]:
    """(index, layer) for Grad-CAM: the one numbered ``layer`` (as ``numbacnn summary`` numbers them), or the
    last convolution; ``NumbacnnError`` naming the choices when it is not a convolution."""
    choices = gradcam_layers(model)
    if not choices:
        raise NumbacnnError(f"This network has no convolution, so Grad-CAM has no feature maps to weigh "
                            f"({model.spec}).")
    if layer is None:
        return choices[-1]
    numbers = ", ".join(index for index, _ in choices)
    for index, found in choices:
        if index == str(layer):
            return index, found
    where = {index: (depth, repr(found)) for index, depth, found in numbered_layers(model.layers)}.get(str(layer))
    if where is None:
        said = f"There is no layer {layer}"
    elif where[0] > 0:
        said = f"Layer {layer} ({where[1]}) is inside a block, whose own output Grad-CAM looks at instead"
    else:
        said = f"Layer {layer} ({where[1]}) is not a convolution"
    raise NumbacnnError(f"{said}; Grad-CAM looks at a convolution's feature maps: choose --layer {numbers} "
                        f"(`numbacnn summary` numbers the layers).")


def gradcam(model: Sequential, images: np.ndarray, classes=None, layer: str | int | None = None) -> GradCam:
    """Grad-CAM of prepared ``images`` at convolution ``layer`` (default: the last one; numbered as
    ``numbacnn summary`` numbers them) for ``classes`` (None: each image's predicted class)."""
    images = np.asarray(images)
    classes = chosen_classes(model, images, classes)
    index, target = gradcam_layer(model, layer)
    maps, weights = [], []
    for start in range(0, len(images), BATCH):
        stop = start + BATCH
        (activation, gradient), _ = _gradient_pass(model, images[start:stop], classes[start:stop], target)
        alpha = gradient.mean(axis=(1, 2))  # (n, K): each feature map's pooled gradient
        maps.append(np.maximum(np.einsum("nhwk,nk->nhw", activation, alpha), 0.0))
        weights.append(alpha)
    maps = np.concatenate(maps)
    heat = stretch(maps, images.shape[1:3])
    return GradCam(maps, heat, np.concatenate(weights), classes, index)


def _gradient_pass(model: Sequential, images: np.ndarray, classes: np.ndarray, stop_at):
    """One evaluation-time pass forward, then backward from the one-hot rows of ``classes`` (the gradient of
    each image's class score). With ``stop_at`` (a top-level layer) the backward pass stops at that layer's
    output: returns ((its output, the gradient there), None) in float64 on the host; without it, the whole
    way down: (None, the input gradient)."""
    device = model.device
    x = device.to_device(np.ascontiguousarray(images, dtype=model.dtype))
    # The layers one by one as written, not in the model's run order, whose steps may fuse two layers into
    # one (a convolution and its pooling): the layer Grad-CAM looks at must hand over its own output.
    order = model.layers
    outputs = []
    for step in order:
        x = forward_for_gradients(step, x)
        outputs.append(x)
    dy = np.zeros((len(images), model.output_shape[0]), model.dtype)
    dy[np.arange(len(images)), classes] = 1
    dy = device.to_device(dy)
    for position in range(len(order) - 1, -1, -1):
        step = order[position]
        if step is stop_at:
            return (device.to_host(outputs[position]).astype(np.float64), device.to_host(dy).astype(np.float64)), None
        dy = step.backward(dy)
    return None, dy


def stretch(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Maps (N, h, w) stretched to (N, H, W) by bilinear interpolation, the map's cells and the image's pixels
    both taken at their centres (as an image viewer scales a picture)."""
    n, h, w = maps.shape
    rows = _positions(h, size[0])
    columns = _positions(w, size[1])
    r0, c0 = np.floor(rows).astype(int), np.floor(columns).astype(int)
    r1, c1 = np.minimum(r0 + 1, h - 1), np.minimum(c0 + 1, w - 1)
    fr, fc = (rows - r0)[None, :, None], (columns - c0)[None, None, :]
    top = maps[:, r0][:, :, c0] * (1 - fc) + maps[:, r0][:, :, c1] * fc
    bottom = maps[:, r1][:, :, c0] * (1 - fc) + maps[:, r1][:, :, c1] * fc
    return top * (1 - fr) + bottom * fr


def _positions(cells: int, pixels: int) -> np.ndarray:
    """Where each of ``pixels`` centres falls on a grid of ``cells``, in cell units, clipped to its centres."""
    return np.clip((np.arange(pixels) + 0.5) * cells / pixels - 0.5, 0, cells - 1)
