"""A first convolution with batch normalisation and 2x2 max pooling after it, trained without its feature maps.

A first layer has few weights per filter (a (3,3,1) filter has 9) and the largest feature maps of the network:
at batch 128, 28 x 28 x 48 float32 maps are 19 MB, more than the caches hold, so each pass of batch
normalisation, pooling and their gradients over them runs at memory speed, and together they cost as much as
a convolution. Every one of those numbers follows from small sums over the input patches instead (K = the
weights per filter, P = the output positions of the batch, z = w . patch + b a filter's output):

- the mean of z is w . S / P + b, and the sum of its squared deviations w^T C w, where S is the sum of the
  patches and C = G - S S^T / P their centred K x K product (G = the sum of patch patch^T): so the batch's
  statistics need neither the outputs nor a pass over them;
- with them the normalisation is a scale and shift per filter, folded into the filters and the bias, and one
  kernel computes, pools and keeps each window's winner (as outside training);
- backward, the gradient reaches the normalised map only at the winners, so its sums (the shift's gradient,
  and T[k, f] = the sum of the gradient times the winner's patch value k) run over the pooled positions; the
  scale's gradient is inv_std * (w . T + b * sum - mean * sum), and the filters' gradient
  scale * (T - S sum / P - dscale / P * inv_std * C w), the formula of batch normalisation's backward pass
  summed over the patches.

The results agree with the layers run one by one to float32 rounding, not to the bit: the sums are taken in
another order (and the statistics in float64 from the patches, not from float32 outputs). Every sum runs over
fixed parts of the batch, added in order, so the bits do not depend on the number of threads.
"""

import numpy as np
from numba import njit, prange

# Images per part of the batch whose sums are kept apart and then added in order: fixed, so that the bits do
# not depend on how many threads share the parts.
IMAGES_PER_PART = 8


def parts(images: int) -> int:
    return max(1, -(-images // IMAGES_PER_PART))


@njit(parallel=True, cache=True)
def patch_moments(xp, KH, KW, SH, SW, OH, OW, gram, sums):
    """gram[p] = the sum of patch patch^T and sums[p] = the sum of the patches (float64) over the OH x OW
    output positions of part p's images, a patch being the KH x KW x C values (kh, kw, c in that order) that a
    filter at stride (SH, SW) reads from the padded input ``xp``."""
    N, C = xp.shape[0], xp.shape[3]
    K = KH * KW * C
    for part in prange(gram.shape[0]):
        # Sums kept per output column, so each product vectorises along a row without reordering a sum; arrays
        # of the kernel's own, which the compiler knows no other array shares.
        products, totals, row = np.zeros((K, K, OW)), np.zeros((K, OW)), np.empty((K, OW))
        for n in range(part * IMAGES_PER_PART, min(N, (part + 1) * IMAGES_PER_PART)):
            for oh in range(OH):
                for kh in range(KH):
                    for kw in range(KW):
                        for c in range(C):
                            k = (kh * KW + kw) * C + c
                            for ow in range(OW):
                                row[k, ow] = np.float64(xp[n, oh * SH + kh, ow * SW + kw, c])
                for j in range(K):
                    for ow in range(OW):
                        totals[j, ow] += row[j, ow]
                    for k in range(j, K):
                        for ow in range(OW):
                            products[j, k, ow] += row[j, ow] * row[k, ow]
        for j in range(K):
            total = 0.0
            for ow in range(OW):
                total += totals[j, ow]
            sums[part, j] = total
            for k in range(j, K):
                total = 0.0
                for ow in range(OW):
                    total += products[j, k, ow]
                gram[part, j, k] = total
                gram[part, k, j] = total


@njit(parallel=True, cache=True)
def pooled_patch_sums(xp, dy, argmax, KH, KW, SH, SW, OW, taps, grads):
    """For 2x2 max pooling with stride 2 after the convolution: taps[p, k, f] = the sum over part p's pooled
    positions of dy times patch value k at the position that won filter f's window (``argmax``, the flat
    oh * OW + ow), and grads[p, f] = the sum of dy, in dy's dtype, the positions added in order. The generated
    kernel (``kernels.conv.pooled_weight_grad``) makes the same sums with FMAs; this is its reference, and the
    kernel for float64."""
    N, PH, PW, F = dy.shape
    C = xp.shape[3]
    K = KH * KW * C
    for part in prange(taps.shape[0]):
        # Sums in arrays of the kernel's own, which the compiler knows no other array shares: they vectorise.
        total, won, grad = np.zeros((K, F), dy.dtype), np.empty(F, dy.dtype), np.zeros(F, dy.dtype)
        for n in range(part * IMAGES_PER_PART, min(N, (part + 1) * IMAGES_PER_PART)):
            for ph in range(PH):
                for pw in range(PW):
                    for f in range(F):
                        grad[f] += dy[n, ph, pw, f]
                    # The window's four positions in turn: a filter's gradient goes to the one that won it.
                    for q in range(4):
                        oh, ow = 2 * ph + q // 2, 2 * pw + q % 2
                        here = oh * OW + ow
                        for f in range(F):
                            won[f] = dy[n, ph, pw, f] if argmax[n, ph, pw, f] == here else 0
                        for kh in range(KH):
                            for kw in range(KW):
                                for c in range(C):
                                    value = xp[n, oh * SH + kh, ow * SW + kw, c]
                                    k = (kh * KW + kw) * C + c
                                    for f in range(F):
                                        total[k, f] += value * won[f]
        taps[part] = total
        grads[part] = grad
