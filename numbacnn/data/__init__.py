"""Data sets and single images: IDX files, MNIST/Fashion-MNIST loading and downloading, PNG/PGM reading."""

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
from numbacnn.data.idx import read_idx, write_idx
from numbacnn.data.image import read_image

__all__ = [
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
