"""The built-in layers. Each sits in its own package (the Layer in ``__init__``, kernels in ``cpu.py`` and
``cuda.py``) and reaches the model builder only through the ``numbacnn.layers`` entry points, exactly as a
plug-in does."""
