"""numbacnn-contrib: more layers for numbacnn, found through the ``numbacnn.layers`` entry points.

    leaky_relu(alpha=0.01)          x where x > 0, alpha * x elsewhere
    elu(alpha=1.0)                  x where x > 0, alpha * (exp(x) - 1) elsewhere
    global_avgpool2d                the mean of each channel: (H, W, C) -> (C,)
    depthwise_conv2d(kernel_size=3, stride=1, padding='valid', depth_multiplier=1, bias=True)
                                    one filter (or depth_multiplier filters) per input channel
    dense_block(layers...)          a block: its input with its layers' output appended along the channels

Each layer sits in its own sub-package (the Layer in ``__init__``, kernels in ``cpu.py`` and ``cuda.py``).
This module imports none of them, so one layer that fails to import leaves the others usable.
"""

__version__ = "0.2.0"
