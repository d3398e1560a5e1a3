"""The kit's tolerances and sizes: how close is close enough, and how much is checked."""

from __future__ import annotations

# Central differences: the step (relative to the value), the tolerances against backward(), and how far the
# two one-sided differences may disagree before a point counts as a kink (ReLU at 0, a max-pooling tie).
GRADIENT_STEP = 1e-6
GRADIENT_RTOL = 1e-5
GRADIENT_ATOL = 1e-7
KINK_TOLERANCE = 1e-3
NUDGE_ATTEMPTS = 5
NUDGE_SIZE = 1e-3
# Entries of one array checked by finite differences; larger arrays are checked at a random subset.
MAX_GRADIENT_ENTRIES = 512

FLOAT32_RTOL = 1e-4  # float32 against float64: 800 float32 ulps of room
FLOAT32_ATOL = 1e-4  # times the size of the values compared
DEVICE_RTOL = 1e-4  # cuda against cpu, both float32: the sums may run in another order
DEVICE_ATOL = 1e-5
DEVICE_MAX_EXAMPLES = 5  # the CUDA simulator is slow
DEVICE_GRADIENT_ENTRIES = 12  # per array, where a random layer's gradients are checked on the device

# A float64 layer against a float64 reference of the same formula: only the order of the sums may differ.
REFERENCE_RTOL = 1e-6
REFERENCE_ATOL = 1e-8  # times the size of the values compared
# An example alone against the same example in a larger batch, float64: a matrix product may block differently.
BATCH_RTOL = 1e-9
BATCH_ATOL = 1e-9  # times the size of the values compared
# Training steps run before state is compared (saved, against a reference, between devices): enough for a
# running statistic to move away from its initial value and for an update rule to show itself.
STATE_STEPS = 3
# A parameter whose gradient is zero in at least this many examples, and in every one, is never trained.
ZERO_GRADIENT_EXAMPLES = 5
