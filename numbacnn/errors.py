"""The errors a user can cause, each ending in one sentence that says what to do.

The CLI prints ``str(error)`` of any ``NumbacnnError`` without a traceback; everything else is a bug.
"""


class NumbacnnError(Exception):
    """Base class of every error the user can cause and fix."""


class SpecError(NumbacnnError, ValueError):
    """A layer-spec text, a layer name or a hyperparameter is wrong."""


class ShapeError(NumbacnnError, ValueError):
    """A layer cannot take the shape that reaches it."""


class DataError(NumbacnnError):
    """A data set is missing, corrupt or cannot be downloaded."""


class PluginError(NumbacnnError):
    """A layer plug-in failed to load or is not a layer."""


class DeviceError(NumbacnnError):
    """The requested device is not usable on this machine."""


class CheckpointError(NumbacnnError):
    """A checkpoint file is missing, corrupt or needs a layer that is not installed."""


class ExportError(NumbacnnError):
    """A model cannot be exported (a layer without an export, or the onnx package missing)."""


class OutputError(NumbacnnError):
    """An output path cannot be written, or another run is writing it."""


class TrainingDiverged(NumbacnnError):
    """The loss or a weight stopped being a finite number while training."""
