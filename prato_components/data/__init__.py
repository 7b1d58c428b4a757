"""Data set layouts (ACDC, ISIC, MSD/decathlon, BTCV), splits, data transforms and synthetic generators."""

from prato_components.data.readers import (
    ACDC_LABELS,
    DATASETS,
    ISIC_LAYOUTS,
    SPLITS,
    acdc_datalist,
    acdc_slice_datalist,
    btcv_datalist,
    decathlon_datalist,
    isic_datalist,
    parse_acdc_info,
    slice_datalist,
)
from prato_components.data.splits import load_or_create_split, split_datalist
from prato_components.data.synthetic import (
    ACDC_GROUPS,
    ORGANS_3D,
    make_acdc_like,
    make_acdc_like_splits,
    make_btcv_like,
    make_decathlon_like,
    make_isic_like,
)
from prato_components.data.transforms import (
    BinarizeMaskd,
    CheckLabelValuesd,
    ExtractSlice,
    ExtractSliced,
    SafeLoadImaged,
    describe_source,
)

__all__ = [
    "ACDC_GROUPS",
    "ACDC_LABELS",
    "DATASETS",
    "ISIC_LAYOUTS",
    "ORGANS_3D",
    "SPLITS",
    "BinarizeMaskd",
    "CheckLabelValuesd",
    "ExtractSlice",
    "ExtractSliced",
    "SafeLoadImaged",
    "acdc_datalist",
    "acdc_slice_datalist",
    "btcv_datalist",
    "decathlon_datalist",
    "describe_source",
    "isic_datalist",
    "load_or_create_split",
    "make_acdc_like",
    "make_acdc_like_splits",
    "make_btcv_like",
    "make_decathlon_like",
    "make_isic_like",
    "parse_acdc_info",
    "slice_datalist",
    "split_datalist",
]
