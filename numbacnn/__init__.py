"""numbacnn: small convolutional networks with Numba kernels.

    >>> import numbacnn
    >>> model = numbacnn.Sequential("conv2d(32,3) relu maxpool2d(2) flatten dense(10)").build(seed=0)
    >>> numbacnn.save(model, "model.npz")

Layers come from the entry-point group ``numbacnn.layers`` (see ``numbacnn.registry``); ``numbacnn.testing``
is the conformance kit for layer plug-ins. ``numbacnn.run.train(numbacnn.RunConfig(...))`` runs what
``numbacnn train`` runs.
"""

import os
import sys


def _interrupted_while_starting(kind, value, traceback, _python=sys.excepthook):
    """Ctrl-C while the ``numbacnn`` command is still loading ends as it does during a command: one word,
    no traceback (the command's own handler is not in place yet)."""
    if issubclass(kind, KeyboardInterrupt):
        sys.stderr.write("Interrupted.\n")
    else:
        _python(kind, value, traceback)


if os.path.basename(sys.argv[0] if sys.argv else "") == "numbacnn":  # the console script, nothing else
    sys.excepthook = _interrupted_while_starting

from importlib.metadata import PackageNotFoundError, version  # noqa: E402

# How numba's OpenMP threads wait between parallel loops. Left to spin for as long as they like, they take the
# cores from the BLAS product that runs next (that cost a third of a training step on two cores); sent to
# sleep at once (PASSIVE alone), every loop of a step pays for waking them (lenet5's epoch took 2.2 s instead
# of 1.45 s, `numbacnn train -m fast` 4.5 s instead of 3.1 s). So: a short spin, then sleep. Set before numba
# starts its threads; a value the user set wins.
OPENMP_SETTINGS = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "20000"}
USER_OPENMP_SETTINGS = {name: os.environ.get(name) for name in OPENMP_SETTINGS}  # None: not set by the user
for _name, _value in OPENMP_SETTINGS.items():
    os.environ.setdefault(_name, _value)

try:
    __version__ = version("numbacnn")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

from .cache import use_kernel_cache  # noqa: E402

# Compiled kernels go to the user's cache folder, never into the installed package (see numbacnn.cache).
use_kernel_cache(__version__)

from .block import Block
from .checkpoint import load, load_resume, save, save_resume
from .errors import (
    CheckpointError,
    DataError,
    DeviceError,
    ExportError,
    NumbacnnError,
    OutputError,
    PluginError,
    ShapeError,
    SpecError,
    TrainingDiverged,
)
from .layer import Layer
from .model import Sequential
from .optim import SGD, Adam
from .presets import PRESETS
from .registry import registry
from .run import Reporter, RunConfig, RunResult
from .train import RunState, TrainingInterrupted, evaluate, fit, prepare_images

# A layer from code, as its spec text makes it: what a block's __init__ calls to make its inner layers.
make_layer = registry.make

__all__ = [
    "SGD", "Adam", "Block", "CheckpointError", "DataError", "DeviceError", "ExportError", "Layer", "NumbacnnError",
    "OutputError", "PRESETS", "PluginError", "Reporter", "RunConfig", "RunResult", "RunState", "Sequential",
    "ShapeError", "SpecError", "TrainingDiverged", "TrainingInterrupted", "evaluate", "fit", "load", "load_resume", "make_layer", "prepare_images", "registry", "save",
    "save_resume",
]
