"""Export a trained network to other runtimes: ONNX (``pip install "numbacnn[onnx]"``).

    >>> from numbacnn.export import save_onnx
    >>> save_onnx(model, "model.onnx")   # input "images" (N, 28, 28, 1), output "probabilities"

Every layer exports through its own ``to_onnx(builder, x)`` method, the built-in ones as plug-ins do (see
``OnnxBuilder`` and docs/plugins.md); this package only builds the graph around them.
"""

from .builder import INPUT_NAME, OUTPUT_NAME, OnnxBuilder, save_onnx, to_onnx

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "OnnxBuilder", "save_onnx", "to_onnx"]
