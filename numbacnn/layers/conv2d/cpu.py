"""Conv2D on the CPU, channels last, in the ways chosen by the filter size, the data type and the gradient.

- Generated kernels (``kernels.conv``; ``kernels.winograd`` for 3x3 stride-1 convolutions with whole vectors of
  channels and filters) for float32 layers with enough work to earn their compile: register-blocked, and fused
  with the pooling, ReLU, batch normalisation or residual addition after them where the model allows. The
  kernels below are their reference and run everything else.
- Direct kernels, parallel over the batch, for small filters (the first layer's (3,3,1) has 9 weights): a
  matrix product with an inner dimension of 9 runs at a few percent of BLAS speed.
- im2col + BLAS matrix products for larger filters, where the product is big enough for BLAS to shine.
- For the backward pass, when most output gradients are zero (ReLU and max pooling after the convolution
  leave about one in ten), a kernel that visits only the non-zero ones.

In the direct kernels the innermost loop runs over a contiguous channel axis so LLVM vectorises it;
``contract`` lets it fuse multiply and add into FMA without reordering sums, so results repeat bit for bit.
"""

import os
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ...kernels import conv as generated
from ...kernels import winograd
from ..avgpool2d.cpu import avgpool2d_forward
from ..batchnorm2d.cpu import finish_statistics
from ..maxpool2d.cpu import maxpool2d_forward
from ..relu.cpu import relu_forward

from ...cpu_kernels import FMA, matmul, matmul_t, scratch, transpose_last
from . import patch_moments

# NUMBACNN_KERNELS=generic runs every convolution through the generic kernels below (the reference the
# generated ones are tested against, and the way to compare the two); =generated takes the generated kernels
# for convolutions of any size (tests do, on small shapes).
KERNELS_ENV = "NUMBACNN_KERNELS"
# Below this many multiply-adds per image (output positions x filters x weights per filter) a convolution keeps
# the generic kernels: a generated kernel costs seconds to compile once per shape, which so little work never
# earns back (tiny, the smallest named network's convolution, does 48,672).
GENERATED_MIN_WORK = 2**15
# Filters with at least this many weights (KH * KW * C) go through im2col + BLAS.
GEMM_MIN_WEIGHTS = 32
# A first layer with fewer filters than this runs the one-channel forward kernel. Measured with
# bench/first_layer.py: 1.35-2.6x faster for 6, 8 and 16 filters, but 0.8x for 32, whose filter loop the
# direct kernel already runs as two whole vectors.
ONE_CHANNEL_MAX_FILTERS = 32
# Such a layer's weight gradient runs the one-channel kernel unless its filter count is a multiple of this:
# measured at 3.6x for 6 filters and 2.2x for 12, but 0.95x for 8 and 0.86x for 16, which fill whole vectors
# in the direct kernel's filter loop.
ONE_CHANNEL_GRAD_VECTOR = 8
# A first layer whose filters have at most this many weights, with batch normalisation and max pooling after
# it, trains from its input patches' moments (``patch_moments``): their K x K products cost K * K / 2 per
# position, less than one pass over the feature maps up to a (3,3,3) filter's 27.
PATCH_MOMENTS_MAX_WEIGHTS = 27


def conv2d_forward(x, w, b, stride_h, stride_w, pad_top, pad_left, out, workspace=None):
    """out[n, oh, ow, f] = b[f] + sum over kh, kw, c of x[n, ih, iw, c] * w[kh, kw, c, f].

    ``workspace``: a dict the layer keeps from a training forward pass to its backward pass; the input patches
    made here (im2col) are kept in it, so that the backward pass need not make them again.
    """
    KH, KW, C, F = w.shape
    g = generated_geometry(x, w, stride_h, stride_w, pad_top, pad_left, out.shape)
    if g is not None:
        return _forward_generated(x, w, b, g, pad_top, pad_left, out, workspace)
    if KH * KW * C < GEMM_MIN_WEIGHTS:
        if C == 1 and F < ONE_CHANNEL_MAX_FILTERS and stride_h == stride_w == 1:
            return conv2d_forward_one_channel(x, w, b, pad_top, pad_left, out)
        return conv2d_forward_direct(x, w, b, stride_h, stride_w, pad_top, pad_left, out)
    col = _im2col(x, w.shape, stride_h, stride_w, pad_top, pad_left, out.shape, workspace)
    rows = out.reshape((-1, F))
    matmul(col, w.reshape((-1, F)), out=rows)
    rows += b


def conv2d_backward(x, dy, w, stride_h, stride_w, pad_top, pad_left, dw, db, dx=None, workspace=None):
    """Fills dw, db (summed over the batch) and, unless it is None, dx = the gradient of the input;
    ``workspace``: what the forward pass on ``x`` kept there (see ``conv2d_forward``)."""
    KH, KW, C, F = w.shape
    g = generated_geometry(x, w, stride_h, stride_w, pad_top, pad_left, dy.shape)
    if g is not None:
        return _backward_generated(x, dy, w, g, pad_top, pad_left, dw, db, dx, workspace)
    rows = dy.reshape((-1, F))
    geometry = (stride_h, stride_w, pad_top, pad_left)
    if C >= SPARSE_MIN_CHANNELS and np.count_nonzero(rows) < SPARSE_MAX_DENSITY * rows.size:
        _backward_sparse(x, dy, w, geometry, dw, db, dx)
    elif KH * KW * C < GEMM_MIN_WEIGHTS:
        _backward_direct(x, dy, w, geometry, dw, db, dx)
    else:
        np.sum(rows, axis=0, out=db)
        _backward_blas(x, dy, w, geometry, dw, dx, workspace)


# -- the generated, register-blocked kernels (numbacnn.kernels.conv) -------------------------------------------

def generated_geometry(x, w, stride_h, stride_w, pad_top, pad_left, out_shape):
    """The geometry of the generated kernels for this convolution, or None where the generic kernels run it:
    float32 only (the gradient checks run float64 through the generic kernels), and not when
    ``NUMBACNN_KERNELS=generic`` asks for the generic kernels everywhere. Its filter count is a whole number of
    vectors: a layer with fewer or other filters (lenet5's 6) runs with zero filters added (``padded_channels``)."""
    if not generated_kernels_enabled() or x.dtype != np.float32 or w.dtype != np.float32:
        return None
    KH, KW, C, F = w.shape
    OH, OW = out_shape[1], out_shape[2]
    if not worth_generating(OH * OW * F * KH * KW * C):
        return None
    F = padded_channels(F)
    # The padded input: every position a window reads, and nothing past the last one.
    HP, WP = (OH - 1) * stride_h + KH, (OW - 1) * stride_w + KW
    if HP < pad_top + 1 or WP < pad_left + 1:
        return None
    return generated.Geometry(HP, WP, C, KH, KW, F, stride_h, stride_w, OH, OW)


def padded_channels(channels: int) -> int:
    """``channels`` rounded up to whole vectors of the generated kernels."""
    if generated.takes(channels):
        return channels
    return -(-channels // 8) * 8


def _with_channels(a, channels: int, name: str):
    """``a`` (channels last) with zero channels added up to ``channels``, in scratch memory; ``a`` itself when
    it has that many."""
    if a.shape[-1] == channels:
        return a
    out = scratch(name, (*a.shape[:-1], channels), a.dtype)
    out[..., :a.shape[-1]] = a
    out[..., a.shape[-1]:] = 0
    return out


def generated_kernels_enabled() -> bool:
    return os.environ.get(KERNELS_ENV, "").strip().lower() != "generic"


def worth_generating(work_per_image: int) -> bool:
    """Whether a convolution of ``work_per_image`` multiply-adds per image takes the generated kernels."""
    forced = os.environ.get(KERNELS_ENV, "").strip().lower() == "generated"
    return forced or work_per_image >= GENERATED_MIN_WORK


def fuses_max_pool(conv, pool) -> bool:
    """Whether ``conv`` and the max pooling ``pool`` after it run as one generated kernel: 2x2 windows with
    stride 2 after a float32 convolution that the generated kernels run."""
    if pool.window != (2, 2) or pool.strides != (2, 2):
        return False
    oh, ow, filters = conv.out_shape
    return generated.takes(filters) and oh >= 2 and ow >= 2 and _runs_generated(conv)


def fuses_avg_pool(conv, pool) -> bool:
    """Whether, outside training, ``conv`` (and the ReLU after it) and the average pooling ``pool`` after that run
    as one generated kernel: 2x2 windows with stride 2 after a float32 convolution that the generated kernels
    run (any filter count: zero filters fill whole vectors, their outputs not stored)."""
    if pool.window != (2, 2) or pool.strides != (2, 2):
        return False
    oh, ow, _ = conv.out_shape
    return oh >= 2 and ow >= 2 and _runs_generated(conv)


def fuses_relu(conv, relu) -> bool:
    """Whether ``conv`` applies the ReLU after it in its own kernel: a float32 convolution that the generated
    kernels run."""
    return _runs_generated(conv)


def fuses_batchnorm(conv, batchnorm) -> bool:
    """Whether ``conv`` takes the batch normalisation after it into its filters outside training: a float32
    convolution that the generated kernels run."""
    return _runs_generated(conv)


def fuses_residual_add(conv, block) -> bool:
    """Whether ``conv``, the last step of the residual ``block``'s branch, adds the skip (and a ReLU after the
    block) in its own kernel outside training: a float32 convolution that the generated kernels run."""
    return _runs_generated(conv)


def _runs_generated(conv) -> bool:
    """Whether the model's convolution ``conv`` runs the generated kernels (as ``generated_geometry`` decides
    for its arrays)."""
    oh, ow, filters = conv.out_shape
    kh, kw = conv._kernel
    return (conv.dtype == np.float32 and generated_kernels_enabled()
            and worth_generating(oh * ow * filters * kh * kw * conv.in_shape[2]))


def conv2d_forward_relu(x, w, b, stride_h, stride_w, pad_top, pad_left, out, workspace=None):
    """out = max(conv2d_forward(...), 0), the ReLU applied as the convolution stores its values."""
    g = generated_geometry(x, w, stride_h, stride_w, pad_top, pad_left, out.shape)
    if g is None:  # the input is not what the model was built for: the two kernels one after the other
        conv2d_forward(x, w, b, stride_h, stride_w, pad_top, pad_left, out, workspace)
        return relu_forward(out.reshape(-1), out.reshape(-1))
    _forward_generated(x, w, b, g, pad_top, pad_left, out, workspace, relu=True)


def conv2d_forward_add_relu(x, w, b, stride_h, stride_w, pad_top, pad_left, addend, out, relu=True):
    """out = conv2d_forward(...) + ``addend`` (shaped as ``out``), max(., 0) with ``relu``: a residual block's
    last convolution adding the skip (and doing the ReLU after the block) as it stores its values, the same
    numbers as the three kernels one after the other."""
    g = generated_geometry(x, w, stride_h, stride_w, pad_top, pad_left, out.shape)
    if g is not None:
        return _forward_generated(x, w, b, g, pad_top, pad_left, out, None, relu=relu, addend=addend)
    conv2d_forward(x, w, b, stride_h, stride_w, pad_top, pad_left, out)
    np.add(out, addend, out=out)
    if relu:
        relu_forward(out.reshape(-1), out.reshape(-1))


def conv2d_forward_max_pooled(x, w, b, stride_h, stride_w, pad_top, pad_left, conv_shape, out, argmax,
                              workspace=None):
    """out = 2x2 max pooling with stride 2 of ``conv2d_forward``'s result (whose shape, without the batch
    axis, is ``conv_shape``), and in ``argmax`` the flat position oh * OW + ow that won each window, as
    ``maxpool2d_forward`` gives them; the convolution's own output is never written."""
    g = generated_geometry(x, w, stride_h, stride_w, pad_top, pad_left, (x.shape[0], *conv_shape))
    if g is None:  # the input is not what the model was built for: the two kernels one after the other
        conv_out = scratch("conv_before_pooling", (x.shape[0], *conv_shape), x.dtype)
        conv2d_forward(x, w, b, stride_h, stride_w, pad_top, pad_left, conv_out, workspace)
        return maxpool2d_forward(conv_out, 2, 2, 2, 2, out, argmax)
    xp = _padded_input(x, g, pad_top, pad_left, workspace)
    generated.forward_max_pooled(xp, w, b, g, out, argmax)


@njit(cache=True)
def fold_batchnorm(filters, bias, mean, inv_std, weight, shift, out_filters, out_bias):
    """The filters and bias of a convolution with the batch normalisation by ``mean`` and ``inv_std`` (scale
    ``weight``, shift ``shift``) after it folded in: each filter times its channel's scale, weight * inv_std,
    and each bias (bias - mean) * scale + shift. One call, where NumPy took several of a few microseconds each."""
    F = bias.shape[0]
    flat = filters.reshape((-1, F))
    out = out_filters.reshape((-1, F))
    scale = inv_std * weight
    for f in range(F):
        out_bias[f] = (bias[f] - mean[f]) * scale[f] + shift[f]
    for k in range(flat.shape[0]):
        for f in range(F):
            out[k, f] = flat[k, f] * scale[f]


def normalises_by_patches(conv, pool) -> bool:
    """Whether, while training, ``conv`` with batch normalisation and the max pooling ``pool`` after it runs from
    its input patches' moments (``patch_moments``): a convolution that needs no input gradient (a first layer),
    whose filters have at most ``PATCH_MOMENTS_MAX_WEIGHTS`` weights and whose kernel does the pooling."""
    kh, kw = conv._kernel
    return (not conv.needs_input_grad and kh * kw * conv.in_shape[2] <= PATCH_MOMENTS_MAX_WEIGHTS
            and fuses_max_pool(conv, pool))


def batch_statistics_by_patches(x, w, b, stride_h, stride_w, pad_top, pad_left, conv_shape, momentum, eps,
                                running_mean, running_var, mean, inv_std, workspace):
    """What ``batch_statistics`` (batchnorm2d) makes of this convolution's output (``conv_shape`` without the
    batch axis), from its input patches alone: the output is never computed. ``workspace`` keeps the patches'
    sums for ``batchnorm_max_pooled_backward_by_patches``."""
    KH, KW, C, F = w.shape
    (OH, OW), rows = conv_shape[:2], x.shape[0] * conv_shape[0] * conv_shape[1]
    xp = _bordered(x, (OH - 1) * stride_h + KH, (OW - 1) * stride_w + KW, pad_top, pad_left, workspace)
    K, count = KH * KW * C, patch_moments.parts(x.shape[0])
    gram, sums = scratch("patch_gram", (count, K, K), np.float64), scratch("patch_sums", (count, K), np.float64)
    patch_moments.patch_moments(xp, KH, KW, stride_h, stride_w, OH, OW, gram, sums)
    total = workspace["patch_sum"] = sums.sum(axis=0)
    centred = workspace["patch_products"] = gram.sum(axis=0) - np.outer(total, total) / rows
    filters = w.reshape((K, F)).astype(np.float64)
    moments = np.empty((1, 2, F))  # as one chunk of batch_statistics: (mean, sum of squared deviations)
    moments[0, 0] = total @ filters / rows + b
    moments[0, 1] = np.maximum(np.einsum("kf,kf->f", filters, centred @ filters), 0.0)
    finish_statistics(moments, rows, rows, float(momentum), float(eps), running_mean, running_var, mean, inv_std)


def batchnorm_max_pooled_backward_by_patches(dy, argmax, w, b, stride_h, stride_w, conv_shape, gamma, mean, inv_std,
                                             dw, db, dgamma, dbeta, workspace):
    """The gradients of the convolution (``dw``, ``db``) and of the batch normalisation after it (``dgamma``,
    ``dbeta``) given ``dy``, that of the 2x2 max pooling with stride 2 after them, and its winners ``argmax``,
    from the sums ``batch_statistics_by_patches`` kept in ``workspace`` (see ``patch_moments``)."""
    KH, KW, C, F = w.shape
    (OH, OW), rows = conv_shape[:2], dy.shape[0] * conv_shape[0] * conv_shape[1]
    xp, count = workspace["patches_of"], patch_moments.parts(dy.shape[0])
    taps, grads = scratch("patch_taps", (count, KH * KW * C, F), dy.dtype), scratch("patch_grads", (count, F), dy.dtype)
    if dy.dtype == np.float32 and generated_kernels_enabled() and generated.takes(F) and dy.flags.c_contiguous:
        g = generated.Geometry(xp.shape[1], xp.shape[2], C, KH, KW, F, stride_h, stride_w, OH, OW)
        generated.pooled_weight_grad(xp, dy, argmax, g, patch_moments.IMAGES_PER_PART, taps, grads)
    else:
        patch_moments.pooled_patch_sums(xp, dy, argmax, KH, KW, stride_h, stride_w, OW, taps, grads)
    taps, dshift = taps.sum(axis=0, dtype=np.float64), grads.sum(axis=0, dtype=np.float64)
    filters = w.reshape(taps.shape).astype(np.float64)
    mean, inv_std = mean.astype(np.float64), inv_std.astype(np.float64)
    dscale = inv_std * (np.einsum("kf,kf->f", filters, taps) + (b - mean) * dshift)
    through_statistics = np.outer(workspace["patch_sum"], dshift / rows) + (
        dscale * inv_std / rows) * (workspace["patch_products"] @ filters)
    dw[...] = ((gamma * inv_std) * (taps - through_statistics)).reshape(dw.shape)
    db[...] = 0  # a bias before batch normalisation moves the mean with it: it changes nothing after
    dgamma[...], dbeta[...] = dscale, dshift


def _bordered(x, height, width, top, left, workspace):
    """``x`` with ``top`` zero rows and ``left`` zero columns before it, cut or filled with zeros to
    ``height`` x ``width`` (every value a filter reads), kept in ``workspace["patches_of"]`` for the backward
    pass."""
    shape = (x.shape[0], height, width, x.shape[3])
    out = workspace.get("patches_of")
    if out is None or out.shape != shape or out.dtype != x.dtype:
        out = workspace["patches_of"] = np.empty(shape, x.dtype)
    generated.pad_into(x, top, left, out)
    return out


def conv2d_forward_avg_pooled(x, w, b, stride_h, stride_w, pad_top, pad_left, conv_shape, out, relu=False,
                              full=None, workspace=None):
    """out = 2x2 average pooling with stride 2 of ``conv2d_forward``'s result (max(., 0) with ``relu``; its shape,
    without the batch axis, ``conv_shape``), the same numbers as the kernels one after the other; the
    convolution's own output is written only into ``full`` where given (a training step's, with the layer's
    ``workspace``; ``conv_shape`` of even height and width)."""
    g = generated_geometry(x, w, stride_h, stride_w, pad_top, pad_left, (x.shape[0], *conv_shape))
    if g is None:  # the input is not what the model was built for: the kernels one after the other
        conv_out = scratch("conv_before_pooling", (x.shape[0], *conv_shape), x.dtype) if full is None else full
        (conv2d_forward_relu if relu else conv2d_forward)(x, w, b, stride_h, stride_w, pad_top, pad_left, conv_out,
                                                          workspace)
        return avgpool2d_forward(conv_out, 2, 2, 2, 2, out)
    xp = _padded_input(x, g, pad_top, pad_left, workspace)
    generated.forward_avg_pooled(xp, _with_channels(w, g.F, "conv_w_wide"), _with_channels(b, g.F, "conv_b_wide"), g,
                                 out, relu, full)


def _padded_input(x, g, pad_top, pad_left, workspace, backward=False):
    """``x`` bordered with zeros (or cut) to the generated kernels' (HP, WP): kept in ``workspace`` for the
    backward pass when training (which takes it from there: ``backward``), else in shared scratch memory."""
    N, H, W, C = x.shape
    if pad_top == 0 and pad_left == 0 and H == g.HP and W == g.WP:
        return x
    shape = (N, g.HP, g.WP, C)
    if workspace is None:
        xp = scratch("conv_padded", shape, x.dtype)
    else:
        # Only the backward pass may trust it: the next forward pass gets new values in the same array.
        if backward and workspace.get("padded_of") is x:
            return workspace["padded"]
        xp = workspace.get("padded")
        if xp is None or xp.shape != shape:
            xp = workspace["padded"] = np.empty(shape, x.dtype)
        workspace["padded_of"] = x
    generated.pad_into(x, pad_top, pad_left, xp)
    return xp


def _forward_generated(x, w, b, g, pad_top, pad_left, out, workspace, relu=False, addend=None):
    rows = (pad_top, pad_top + x.shape[1])  # the input's own rows: the taps on its zero border are skipped
    if x.flags.c_contiguous:
        # The kernel reads the input as it is; while training, where the weight gradient cannot, the padded copy
        # it reads is made here all the same, every step: the backward pass knows its copy by the input array's
        # identity, and training reuses the same input arrays from step to step (left to the backward pass, it
        # was last step's).
        if workspace is not None and not generated.weight_grad_reads_unpadded(g):
            _padded_input(x, g, pad_top, pad_left, workspace)
        if winograd.takes(g.KH, g.KW, g.SH, g.SW, g.C, out.shape[-1]) and out.shape[-1] == g.F:
            return winograd.forward(x, w, b, pad_top, pad_left, out, relu, addend)
        xp, border = x, (pad_top, pad_left)
    else:
        xp, border = _padded_input(x, g, pad_top, pad_left, workspace), None
    # Where filters are added to fill whole vectors (zero weights), their outputs are computed, not stored.
    generated.forward(xp, _with_channels(w, g.F, "conv_w_wide"), _with_channels(b, g.F, "conv_b_wide"), g, out,
                      relu=relu, rows=rows, addend=addend, border=border)


def _backward_generated(x, dy, w, g, pad_top, pad_left, dw, db, dx, workspace):
    weight_grad_generated(x, dy, g, pad_top, pad_left, dw, db, workspace)
    if dx is None:
        return
    wide = _with_channels(w, g.F, "conv_w_wide")
    if g.SH > 1 or g.SW > 1:
        return _input_grad_by_phases(dy, wide, g, pad_top, pad_left, dx)
    gx = _input_grad_geometry(g, dx.shape, pad_top, pad_left)
    if gx is None:
        return conv2d_backward_input_direct(dy, transpose_last(w), 1, 1, pad_top, pad_left, dx)
    _input_grad(dy, wide, g, gx, g.KH - 1 - pad_top, g.KW - 1 - pad_left, dx, "conv_w_turned")


def weight_grad_generated(x, dy, g, pad_top, pad_left, dw, db, workspace=None):
    """dw and db of a convolution of geometry ``g`` (``generated_geometry``) by the kernel that suits it: by
    Winograd (3x3, stride 1, whole vectors), else the direct kernel reading x as it is where its blocks allow,
    else reading x bordered by zeros."""
    # Filters added to fill whole vectors have zero output gradients: the kernels leave their sums out.
    if (x.flags.c_contiguous and dy.flags.c_contiguous and x.shape[-1] == g.C and dy.shape[-1] == g.F
            and winograd.takes(g.KH, g.KW, g.SH, g.SW, g.C, g.F)):
        winograd.weight_grad(x, dy, pad_top, pad_left, dw, db)
    elif x.flags.c_contiguous and generated.weight_grad_reads_unpadded(g):
        generated.weight_grad(x, dy, g, dw, db, border=(pad_top, pad_left))
    else:
        generated.weight_grad(_padded_input(x, g, pad_top, pad_left, workspace, backward=True), dy, g, dw, db)


def _input_grad(dy, w, g, gx, top, left, dx, name, grid=None):
    """dx = the stride-1 convolution of dy, bordered by ``top`` and ``left`` zero rows and columns (or cut
    where negative) to gx's (HP, WP), with the filters ``w`` turned around: a stride-1 convolution's input
    gradient, or one phase of a strided one's (``_input_grad_by_phases``). ``w`` has ``g.F`` filters (dy's,
    with zero ones added to fill whole vectors); ``dx`` has w's channels (``gx.F`` of them are computed: zero
    ones added, not stored). ``name``: the scratch array for the filters turned around. ``grid``: dx is larger,
    and the results go to that grid's places in it (``kernels.conv.Grid``)."""
    w_turned = scratch(name, (gx.KH, gx.KW, g.F, gx.F), w.dtype)
    w_turned[..., w.shape[2]:] = 0
    generated.flipped(w, w_turned[..., :w.shape[2]])
    no_bias = scratch("conv_no_bias", (gx.F,), dx.dtype)
    no_bias[:] = 0
    rows = (top, top + dy.shape[1])  # only dy's own rows hold anything: the taps on the others are skipped
    if (grid is None and dy.shape[-1] == g.F and dy.flags.c_contiguous and dx.shape[-1] == gx.F
            and winograd.takes(gx.KH, gx.KW, 1, 1, g.F, gx.F)):
        return winograd.forward(dy, w_turned, no_bias, top, left, dx)
    if dy.shape[-1] == g.F and dy.flags.c_contiguous:  # the kernel reads dy as it is, skipping its border
        return generated.forward(dy, w_turned, no_bias, gx, dx, rows=rows, border=(top, left), grid=grid)
    dyp = scratch("conv_dy_padded", (dy.shape[0], gx.HP, gx.WP, g.F), dy.dtype)  # zero filters' channels added
    generated.pad_into(dy, top, left, dyp)
    generated.forward(dyp, w_turned, no_bias, gx, dx, rows=rows, grid=grid)


class _Phase(NamedTuple):
    """The input rows (or columns) of one phase of a strided convolution's input gradient: those at
    ``first``, ``first`` + stride, ... (``count`` of them), which only the taps ``tap``, ``tap`` + stride, ...
    (``taps`` of them) reach, from output rows ``q0``, ``q0`` + 1, ... ."""

    tap: int
    taps: int
    first: int
    count: int
    q0: int


def _phase(tap: int, stride: int, kernel: int, pad: int, size: int) -> _Phase:
    """Input position i = q * stride + tap - pad is reached by output q and taps tap, tap + stride, ...: the
    outputs q that land inside the input make the phase's rows."""
    q0 = -((tap - pad) // stride)  # the first q with i >= 0
    q1 = (size - 1 + pad - tap) // stride + 1  # one past the last q with i < size
    return _Phase(tap, len(range(tap, kernel, stride)), q0 * stride + tap - pad, max(0, q1 - q0), q0)


def _input_grad_by_phases(dy, w, g, pad_top, pad_left, dx):
    """dx of a strided convolution, one phase at a time: the input rows i with (i + pad_top) % SH == r take
    only the taps r, r + SH, ... of each filter, so a phase (of rows and of columns) is a stride-1 convolution
    of dy with that part of the filters, turned around. No tap meets the zeros that dy spread out to the
    input's grid would hold between its rows and columns (three in four of them at stride 2). A phase that
    no tap reaches (a 1x1 filter's odd rows) is zero. Each phase's kernel writes its rows and columns of dx
    in place (a contiguous dx; else through a copy)."""
    N, H, W, C = dx.shape
    phases = [(_phase(rh, g.SH, g.KH, pad_top, H), _phase(rw, g.SW, g.KW, pad_left, W))
              for rh in range(g.SH) for rw in range(g.SW)]
    phases = [(rows, cols) for rows, cols in phases if rows.count and cols.count]
    if any(rows.taps == 0 or cols.taps == 0 for rows, cols in phases):
        dx[...] = 0  # once, contiguous: cheaper than the strided phases one by one
    for rows, cols in phases:
        if rows.taps == 0 or cols.taps == 0:
            continue
        gx = generated.Geometry(rows.count + rows.taps - 1, cols.count + cols.taps - 1, g.F, rows.taps,
                                cols.taps, padded_channels(C), 1, 1, rows.count, cols.count)
        args = (dy, w[rows.tap::g.SH, cols.tap::g.SW], g, gx, rows.taps - 1 - rows.q0, cols.taps - 1 - cols.q0)
        name = f"conv_w_turned_phase_{rows.tap}_{cols.tap}"
        if dx.flags.c_contiguous:
            _input_grad(*args, dx, name, generated.Grid(H, W, rows.first, cols.first, g.SH, g.SW))
            continue
        part = scratch(f"conv_dx_phase_{rows.tap}_{cols.tap}", (N, rows.count, cols.count, C), dx.dtype)
        _input_grad(*args, part, name)
        dx[:, rows.first::g.SH, cols.first::g.SW] = part


def _input_grad_geometry(g, dx_shape, pad_top, pad_left):
    """The generated forward kernel's geometry for a stride-1 convolution's input gradient (its output channels
    rounded up to whole vectors), or None where it does not apply (a border wider than a filter)."""
    N, H, W, C = dx_shape
    if pad_top > g.KH - 1 or pad_left > g.KW - 1:
        return None
    if g.OH - pad_top > H or g.OW - pad_left > W:
        return None  # the bordered gradient would not fit the input's grid
    return generated.Geometry(H + g.KH - 1, W + g.KW - 1, g.F, g.KH, g.KW, padded_channels(C), 1, 1, H, W)


def _backward_sparse(x, dy, w, geometry, dw, db, dx):
    KH, KW, C, F = w.shape
    partial, partial_b = _partials((KH, KW, F, C), F, dw.dtype)
    target = scratch("no_dx", (1, 1, 1, 1), dw.dtype) if dx is None else dx
    backward_sparse(x, dy, transpose_last(w), *geometry, partial, partial_b, target, dx is not None)
    dw[:] = partial.sum(axis=0).transpose(0, 1, 3, 2)
    db[:] = partial_b.sum(axis=0)


def _backward_direct(x, dy, w, geometry, dw, db, dx):
    KH, KW, C, F = w.shape
    partial, partial_b = _partials((KH, KW, C, F), F, dw.dtype)
    stride_h, stride_w, pad_top, pad_left = geometry
    if C == 1 and F % ONE_CHANNEL_GRAD_VECTOR and stride_h == stride_w == 1:
        conv2d_backward_params_one_channel(x, dy, pad_top, pad_left, partial, partial_b)
    else:
        conv2d_backward_params_direct(x, dy, *geometry, partial, partial_b)
    dw[:] = partial.sum(axis=0)
    db[:] = partial_b.sum(axis=0)
    if dx is not None:
        conv2d_backward_input_direct(dy, transpose_last(w), *geometry, dx)


def _partials(weight_shape, filters: int, dtype):
    """Scratch for the per-chunk sums of the weight and bias gradients (see ``backward_sparse``)."""
    return (scratch("dw_partial", (SPARSE_CHUNKS, *weight_shape), dtype),
            scratch("db_partial", (SPARSE_CHUNKS, filters), dtype))


def _backward_blas(x, dy, w, geometry, dw, dx, workspace):
    KH, KW, C, F = w.shape
    rows = dy.reshape((-1, F))
    kept = workspace is not None and workspace.get("patches_of") is x
    col = workspace["patches"] if kept else _im2col(x, w.shape, *geometry, dy.shape)
    # dw's inner dimension is every output position of the batch: a product BLAS runs well.
    matmul_t(col, rows, out=dw.reshape((-1, F)))
    if dx is None:
        return
    dcol = scratch("dcol", col.shape, dx.dtype)
    matmul(rows, w.reshape((-1, F)).T, out=dcol)
    col2im(dcol, KH, KW, *geometry, dy.shape[1], dy.shape[2], dx)


# Below this fraction of non-zero output gradients, the sparse kernel beats im2col + BLAS. Behind ReLU and
# 2x2 max pooling at most a quarter of them are non-zero (one per window); in practice about a tenth.
# Its inner loops run over the input channels: with fewer than this many, loop overhead eats the gain.
SPARSE_MAX_DENSITY = 0.3
SPARSE_MIN_CHANNELS = 8
SPARSE_CHUNKS = 16


@njit(parallel=True, cache=True, fastmath=FMA)
def backward_sparse(x, dy, w_t, stride_h, stride_w, pad_top, pad_left, partial, partial_b, dx, need_dx):
    """dw (as partial sums, (KH, KW, F, C) each), db (partial sums too) and dx from the non-zero output
    gradients only.

    Each non-zero g = dy[n, oh, ow, f] adds g * x[n, ih, iw, :] to dw[kh, kw, :, f] and g * w[kh, kw, :, f]
    to dx[n, ih, iw, :] for every tap (kh, kw): runs over the contiguous channel axis. The batch is cut into
    a fixed number of chunks, each summing into its own slice of ``partial``; the caller adds the slices in
    order, so the result repeats bit for bit.
    """
    N, H, W, C = x.shape
    KH, KW, F, _ = w_t.shape
    OH, OW = dy.shape[1], dy.shape[2]
    chunks = partial.shape[0]
    per_chunk = (N + chunks - 1) // chunks
    for t in prange(chunks):
        acc, acc_b = partial[t], partial_b[t]
        acc[:] = 0
        acc_b[:] = 0
        for n in range(t * per_chunk, min(N, (t + 1) * per_chunk)):
            if need_dx:
                dx[n] = 0
            for oh in range(OH):
                for ow in range(OW):
                    for f in range(F):
                        g = dy[n, oh, ow, f]
                        if g == 0:
                            continue
                        acc_b[f] += g
                        for kh in range(KH):
                            ih = oh * stride_h + kh - pad_top
                            if ih < 0 or ih >= H:
                                continue
                            for kw in range(KW):
                                iw = ow * stride_w + kw - pad_left
                                if iw < 0 or iw >= W:
                                    continue
                                # Indexed in place, not through views: a view made per tap costs more
                                # than its loop (measured 1.1-1.3x on the whole kernel).
                                for c in range(C):
                                    acc[kh, kw, f, c] += g * x[n, ih, iw, c]
                                if need_dx:
                                    for c in range(C):
                                        dx[n, ih, iw, c] += g * w_t[kh, kw, f, c]


def _im2col(x, w_shape, stride_h, stride_w, pad_top, pad_left, out_shape, workspace=None):
    """The input patches as rows (one per output position): in ``workspace`` (for the backward pass on
    ``x``) when given, else in memory shared by every layer and kept for the next call."""
    KH, KW, C, _ = w_shape
    N, OH, OW = out_shape[0], out_shape[1], out_shape[2]
    shape = (N * OH * OW, KH * KW * C)
    if workspace is None:
        col = scratch("col", shape, x.dtype)
    else:
        col = workspace.get("patches")
        if col is None or col.shape != shape or col.dtype != x.dtype:
            col = workspace["patches"] = np.empty(shape, x.dtype)
        workspace["patches_of"] = x
    im2col(x, KH, KW, stride_h, stride_w, pad_top, pad_left, OH, OW, col)
    return col


@njit(parallel=True, cache=True)
def im2col(x, KH, KW, stride_h, stride_w, pad_top, pad_left, OH, OW, col):
    """col[(n, oh, ow), (kh, kw, c)] = x[n, ih, iw, c], zero where the filter hangs over the edge."""
    N, H, W, C = x.shape
    for n in prange(N):
        for oh in range(OH):
            for ow in range(OW):
                row = col[(n * OH + oh) * OW + ow]
                k = 0
                for kh in range(KH):
                    ih = oh * stride_h + kh - pad_top
                    for kw in range(KW):
                        iw = ow * stride_w + kw - pad_left
                        if 0 <= ih < H and 0 <= iw < W:
                            row[k:k + C] = x[n, ih, iw]
                        else:
                            row[k:k + C] = 0
                        k += C


@njit(parallel=True, cache=True)
def col2im(dcol, KH, KW, stride_h, stride_w, pad_top, pad_left, OH, OW, dx):
    """The adjoint of im2col: each patch row's values added back to the input positions they came from."""
    N, H, W, C = dx.shape
    for n in prange(N):
        dx[n] = 0
        for oh in range(OH):
            for ow in range(OW):
                row = dcol[(n * OH + oh) * OW + ow]
                k = 0
                for kh in range(KH):
                    ih = oh * stride_h + kh - pad_top
                    for kw in range(KW):
                        iw = ow * stride_w + kw - pad_left
                        if 0 <= ih < H and 0 <= iw < W:
                            for c in range(C):
                                dx[n, ih, iw, c] += row[k + c]
                        k += C


@njit(parallel=True, cache=True, fastmath=FMA)
def conv2d_forward_direct(x, w, b, stride_h, stride_w, pad_top, pad_left, out):
    N, H, W, C = x.shape
    KH, KW, _, F = w.shape
    OH, OW = out.shape[1], out.shape[2]
    for n in prange(N):
        # One output row at a time in a private accumulator: it stays in cache while every filter tap
        # adds into it, and the loop over (position, filter) vectorises over the contiguous filter axis.
        acc = np.empty((OW, F), dtype=out.dtype)
        for oh in range(OH):
            for ow in range(OW):
                acc[ow] = b
            for kh in range(KH):
                ih = oh * stride_h + kh - pad_top
                if ih < 0 or ih >= H:
                    continue
                for kw in range(KW):
                    first, last = _inside(kw - pad_left, stride_w, W, OW)
                    for c in range(C):
                        wk = w[kh, kw, c]
                        for ow in range(first, last):
                            v = x[n, ih, ow * stride_w + kw - pad_left, c]
                            for f in range(F):
                                acc[ow, f] += v * wk[f]
            out[n, oh] = acc


@njit(parallel=True, cache=True, fastmath=FMA)
def conv2d_forward_one_channel(x, w, b, pad_top, pad_left, out):
    """The direct forward pass for a first layer (one input channel, stride 1): the same sums in the same
    order as ``conv2d_forward_direct``, so the same results to the bit, but with the output positions as the
    inner loop. An image row is contiguous when there is one channel, and a row has more positions (24 to 28)
    than such a layer has filters (6 to 16), so the vectorised loop runs longer and wastes fewer lanes."""
    N = x.shape[0]
    KH, KW, _, F = w.shape
    OH, OW = out.shape[1], out.shape[2]
    taps = np.empty((KH, KW, F), dtype=w.dtype)  # contiguous per tap, read once per row and filter
    taps[:] = w[:, :, 0, :]
    for n in prange(N):
        acc = np.empty((F, OW), dtype=out.dtype)
        row = np.zeros(OW + KW - 1, dtype=x.dtype)  # an input row with its padding on both sides
        for oh in range(OH):
            for f in range(F):
                acc[f] = b[f]
            for kh in range(KH):
                if not _padded_row(x, n, oh + kh - pad_top, pad_left, row):
                    continue
                for kw in range(KW):
                    for f in range(F):
                        weight, sums = taps[kh, kw, f], acc[f]
                        for ow in range(OW):
                            sums[ow] += weight * row[ow + kw]
            out[n, oh] = acc.T


@njit(cache=True, inline="always")
def _padded_row(x, n, ih, pad_left, row):
    """Copies row ``ih`` of one-channel image ``n`` into ``row`` after ``pad_left`` zeros (the padding is left
    zero by the caller); False, and nothing copied, when ``ih`` is padding itself."""
    if ih < 0 or ih >= x.shape[1]:
        return False
    for i in range(x.shape[2]):
        row[i + pad_left] = x[n, ih, i, 0]
    return True


@njit(parallel=True, cache=True, fastmath=FMA)
def conv2d_backward_params_direct(x, dy, stride_h, stride_w, pad_top, pad_left, partial, partial_b):
    """dw and db as partial sums over fixed chunks of the batch (added in order by the caller, so repeatable);
    for small filters, where an im2col matrix would be all overhead."""
    N, H, W, C = x.shape
    _, KH, KW, _, F = partial.shape
    OH, OW = dy.shape[1], dy.shape[2]
    chunks = partial.shape[0]
    per_chunk = (N + chunks - 1) // chunks
    for t in prange(chunks):
        acc, acc_b = partial[t], partial_b[t]
        acc[:] = 0
        acc_b[:] = 0
        for n in range(t * per_chunk, min(N, (t + 1) * per_chunk)):
            for oh in range(OH):
                for ow in range(OW):
                    for f in range(F):
                        acc_b[f] += dy[n, oh, ow, f]
                for kh in range(KH):
                    ih = oh * stride_h + kh - pad_top
                    if ih < 0 or ih >= H:
                        continue
                    for kw in range(KW):
                        first, last = _inside(kw - pad_left, stride_w, W, OW)
                        for c in range(C):
                            for ow in range(first, last):
                                v = x[n, ih, ow * stride_w + kw - pad_left, c]
                                for f in range(F):  # indexed in place: a view per position costs more
                                    acc[kh, kw, c, f] += v * dy[n, oh, ow, f]


@njit(parallel=True, cache=True, fastmath=FMA)
def conv2d_backward_params_one_channel(x, dy, pad_top, pad_left, partial, partial_b):
    """``conv2d_backward_params_direct`` for a first layer with few filters (one input channel, stride 1).

    With few filters the direct kernel's inner loop (over them) is too short to fill a vector. Here it runs
    over the output positions of a row instead: each chunk keeps one running sum per (tap, filter, position)
    and adds a padded input row times a row of gradients (transposed once per row, so both are contiguous);
    the positions are summed only at the end of the chunk. A fixed order, so results repeat bit for bit.
    """
    N = x.shape[0]
    _, KH, KW, _, F = partial.shape
    OH, OW = dy.shape[1], dy.shape[2]
    chunks = partial.shape[0]
    per_chunk = (N + chunks - 1) // chunks
    for t in prange(chunks):
        sums = np.zeros((KH, KW, F, OW), dtype=partial.dtype)
        sums_b = np.zeros((F, OW), dtype=partial.dtype)
        grads = np.empty((F, OW), dtype=partial.dtype)
        row = np.zeros(OW + KW - 1, dtype=partial.dtype)  # an input row with its padding on both sides
        for n in range(t * per_chunk, min(N, (t + 1) * per_chunk)):
            for oh in range(OH):
                for ow in range(OW):
                    for f in range(F):
                        grads[f, ow] = dy[n, oh, ow, f]
                for f in range(F):
                    for ow in range(OW):
                        sums_b[f, ow] += grads[f, ow]
                for kh in range(KH):
                    if not _padded_row(x, n, oh + kh - pad_top, pad_left, row):
                        continue
                    for kw in range(KW):
                        for f in range(F):
                            target, g = sums[kh, kw, f], grads[f]
                            for ow in range(OW):
                                target[ow] += row[ow + kw] * g[ow]
        for kh in range(KH):
            for kw in range(KW):
                for f in range(F):
                    partial[t, kh, kw, 0, f] = sums[kh, kw, f].sum()
        for f in range(F):
            partial_b[t, f] = sums_b[f].sum()


@njit(cache=True, inline="always")
def _inside(offset, stride, size, count):
    """The output positions o in [first, last) whose input o * stride + offset lies inside [0, size)."""
    first = 0 if offset >= 0 else (-offset + stride - 1) // stride
    last = min(count, (size - 1 - offset) // stride + 1) if size - 1 - offset >= 0 else 0
    return first, max(first, last)


@njit(parallel=True, cache=True, fastmath=FMA)
def conv2d_backward_input_direct(dy, w_t, stride_h, stride_w, pad_top, pad_left, dx):
    N, H, W, C = dx.shape
    KH, KW, F, _ = w_t.shape
    OH, OW = dy.shape[1], dy.shape[2]
    for n in prange(N):
        dx[n] = 0.0
        for oh in range(OH):
            for ow in range(OW):
                for kh in range(KH):
                    ih = oh * stride_h + kh - pad_top
                    if ih < 0 or ih >= H:
                        continue
                    for kw in range(KW):
                        iw = ow * stride_w + kw - pad_left
                        if iw < 0 or iw >= W:
                            continue
                        acc = dx[n, ih, iw]
                        for f in range(F):
                            g = dy[n, oh, ow, f]
                            wk = w_t[kh, kw, f]
                            for c in range(C):
                                acc[c] += g * wk[c]
