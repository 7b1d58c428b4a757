"""Old import path of the data set readers and the saved split, kept for users: they live in
:mod:`prato_components.data.readers` and :mod:`prato_components.data.splits`."""

from prato_components.data.readers import (
    ACDC_LABELS,
    DATASETS,
    ISIC_LAYOUTS,
    SPLITS,
    acdc_datalist,
    acdc_slice_datalist,
    decathlon_datalist,
    isic_datalist,
    parse_acdc_info,
    slice_datalist,
)
from prato_components.data.splits import load_or_create_split, split_datalist

__all__ = [
    "ACDC_LABELS",
    "DATASETS",
    "ISIC_LAYOUTS",
    "SPLITS",
    "acdc_datalist",
    "acdc_slice_datalist",
    "decathlon_datalist",
    "isic_datalist",
    "load_or_create_split",
    "parse_acdc_info",
    "slice_datalist",
    "split_datalist",
]
