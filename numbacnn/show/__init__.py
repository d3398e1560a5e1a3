"""Pictures of a trained network, as PNG files made without a display (matplotlib, imported when used).

Each ``*_figure`` function returns a matplotlib ``Figure``; ``save_png`` writes it and ``panels`` lists its
panels. ``numbacnn show ...`` on the command line makes the same pictures from a checkpoint.
"""

from .attribution import gradcam_figure, saliency_figure
from .canvas import mosaic, panels, save_png
from .network import feature_maps, features_figure, filters_figure
from .rates import lr_find_figure
from .results import confusion_figure, errors_figure, history_figure, most_confident_mistakes

__all__ = [
    "confusion_figure", "errors_figure", "feature_maps", "features_figure", "filters_figure", "gradcam_figure",
    "history_figure", "lr_find_figure", "mosaic", "most_confident_mistakes", "panels", "saliency_figure", "save_png",
]
