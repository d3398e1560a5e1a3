"""Data sets and single pictures: data sets as objects that carry their shape, colour and classes (built-in IDX
sets, CIFAR-10, a folder of pictures), their loading and downloading, and pictures read with Pillow."""

from numbacnn.data.datasets import (
    CACHE_DIR_ENV,
    DATA_DIR_ENV,
    DATASETS,
    MIRRORS_ENV,
    DatasetInfo,
    IdxFile,
    class_names,
    dataset_info,
    dataset_names,
    fetch,
    load_dataset,
    resolve_cache_dir,
    resolve_data_dir,
)
from numbacnn.data.dataset import (
    BUILTIN,
    DataSet,
    DataSpec,
    builtin_names,
    builtin_spec,
    export_pictures,
    open_dataset,
    reopen,
)
from numbacnn.data.idx import read_idx, write_idx
from numbacnn.data.image import COLORS, DIGITS, Preparation, read_image

__all__ = [
    "BUILTIN",
    "COLORS",
    "DIGITS",
    "DataSet",
    "DataSpec",
    "Preparation",
    "builtin_names",
    "builtin_spec",
    "export_pictures",
    "open_dataset",
    "reopen",
    "CACHE_DIR_ENV",
    "DATA_DIR_ENV",
    "DATASETS",
    "MIRRORS_ENV",
    "DatasetInfo",
    "IdxFile",
    "class_names",
    "dataset_info",
    "dataset_names",
    "fetch",
    "load_dataset",
    "read_idx",
    "read_image",
    "resolve_cache_dir",
    "resolve_data_dir",
    "write_idx",
]
