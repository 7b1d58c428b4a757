"""The saved training/validation/test split of a data set.

:func:`load_or_create_split` builds a datalist with the readers of :mod:`prato_components.data.readers`, splits it
(80/10/10 by default, ACDC grouped by patient) and saves the datalist JSON once, and reads that file on later runs.
:func:`split_datalist` is the split itself.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from monai.config import PathLike

from prato_components.atomic import atomic_open
from prato_components.data.readers import (
    DATASETS,
    SPLITS,
    _missing_files,
    acdc_datalist,
    btcv_datalist,
    decathlon_datalist,
    isic_datalist,
    slice_datalist,
)

__all__ = ["load_or_create_split", "split_datalist"]


def _split_counts(n: int, fractions: np.ndarray) -> list[int]:
    """Group counts per split: largest remainder, then at least one per positive fraction when possible."""
    raw = fractions * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    positive = fractions > 0
    if n >= positive.sum():
        for i in np.flatnonzero(positive & (counts == 0)):
            counts[np.argmax(counts)] -= 1
            counts[i] += 1
    return counts.tolist()


def split_datalist(
    items: Sequence[dict[str, Any]],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    group_key: str | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Split items into training/validation/test, keeping groups (e.g. patients) together.

    Groups are shuffled by ``numpy.random.default_rng(seed)`` and cut by ``fractions`` (normalised); each
    split with a positive fraction gets at least one group when there are enough groups. Items keep
    their input order inside each split.

    Args:
        items: the datalist.
        fractions: (training, validation, test) fractions.
        seed: shuffle seed.
        group_key: item key that must not straddle splits (ACDC: ``"patient"``); None splits items.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}``.
    """
    frac = np.asarray(fractions, dtype=np.float64)
    if frac.shape != (3,) or (frac < 0).any() or frac.sum() <= 0:
        raise ValueError(f"fractions must be three non-negative numbers with a positive sum, got {fractions}.")
    frac = frac / frac.sum()
    if group_key is None:
        keys = list(range(len(items)))
    else:
        missing = [i for i, item in enumerate(items) if group_key not in item]
        if missing:
            raise ValueError(f"item {missing[0]} has no group key {group_key!r}: {items[missing[0]]}.")
        keys = [item[group_key] for item in items]
    groups = sorted(set(keys), key=lambda k: (type(k).__name__, k))
    order = np.random.default_rng(seed).permutation(len(groups))
    bounds = np.cumsum([0] + _split_counts(len(groups), frac))
    where = {groups[g]: s for s in range(3) for g in order[bounds[s] : bounds[s + 1]]}
    return {name: [item for item, k in zip(items, keys) if where[k] == s] for s, name in enumerate(SPLITS)}


def _build_items(
    dataset: str, dataset_dir: PathLike, slice_level: bool, skip_empty_slices: bool
) -> tuple[list[dict], str | None]:
    """Items of a data set as shipped, and the key to group them by when splitting."""
    if dataset == "acdc":
        items = acdc_datalist(dataset_dir, "training")
        return (slice_datalist(items, skip_empty=skip_empty_slices) if slice_level else items), "patient"
    if dataset == "isic":
        return isic_datalist(dataset_dir, "training"), None
    return decathlon_datalist(dataset_dir, "training"), None


def _btcv_splits(dataset_dir: PathLike, fractions: Sequence[float], seed: int) -> dict[str, list[dict]]:
    """BTCV keeps the ``"validation"`` list of its datalist as the validation split and splits its ``"training"``
    list into training and test by ``fractions[0] : fractions[2]``; without a validation list, the ``"training"``
    list is split by ``fractions`` like the other data sets."""
    training = btcv_datalist(dataset_dir, "training")
    try:
        validation = btcv_datalist(dataset_dir, "validation")
    except ValueError:  # no datalist file, or no validation list in it
        validation = []
    if not validation:
        return split_datalist(training, fractions, seed)
    parts = split_datalist(training, (fractions[0], 0.0, fractions[2]), seed)
    return {"training": parts["training"], "validation": validation, "test": parts["test"]}


def _relative(items: list[dict], base: str) -> list[dict]:
    """Copies of items with ``image``/``label`` paths relative to ``base`` (portable JSON)."""
    return [{k: os.path.relpath(v, base) if k in ("image", "label") else v for k, v in item.items()} for item in items]


def _absolute(items: list[dict], base: str) -> list[dict]:
    """Copies of items with ``image``/``label`` paths joined to ``base`` (absolute ones are kept)."""
    return [
        {
            k: os.path.normpath(os.path.join(base, v)) if k in ("image", "label") and isinstance(v, str) else v
            for k, v in item.items()
        }
        for item in items
    ]


def _write_json_atomic(obj: dict, path: str) -> None:
    """Write JSON atomically (readers never see half a file)."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=1)


def _read_split(datalist_path: PathLike, dataset: str, dataset_dir: PathLike, seed: int) -> dict[str, list[dict]]:
    """Read a saved split datalist, resolve its paths against ``dataset_dir`` and check they exist."""
    try:
        with open(datalist_path) as f:
            saved = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"could not parse the datalist {datalist_path}: {err}") from err
    if not isinstance(saved, dict) or not isinstance(saved.get("training"), list):
        raise ValueError(f"the datalist {datalist_path} has no 'training' list.")  # noqa: TRY004 - a bad file
    if saved.get("dataset", dataset) != dataset:
        raise ValueError(f"the datalist {datalist_path} was made for {saved['dataset']!r}, not {dataset!r}.")
    if saved.get("seed", seed) != seed:
        warnings.warn(
            f"reusing {datalist_path}, made with seed {saved['seed']} (asked: {seed}); delete it to re-split."
        )
    out = {name: _absolute(saved.get(name, []), os.path.abspath(dataset_dir)) for name in SPLITS}
    missing = _missing_files([item for name in SPLITS for item in out[name]])
    if missing:
        raise FileNotFoundError(
            f"the datalist {datalist_path} lists {len(missing)} missing files, e.g. {missing[0]}; "
            f"is dataset_dir={dataset_dir} right? Delete {datalist_path} to rebuild it."
        )
    return out


def load_or_create_split(
    dataset: str,
    dataset_dir: PathLike,
    datalist_path: PathLike | None,
    seed: int = 0,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    slice_level: bool = True,
    skip_empty_slices: bool = False,
) -> dict[str, list[dict[str, Any]]]:
    """Read the saved split datalist, or build it from the layout, split it, and save it.

    The JSON holds ``"training"``, ``"validation"``, ``"test"`` lists (paths relative to ``dataset_dir``,
    so ``monai.data.load_decathlon_datalist(path, data_list_key=..., base_dir=dataset_dir)`` reads it too)
    and ``"dataset"``, ``"seed"``, ``"fractions"``, ``"group_key"`` entries. It is written atomically
    (temporary file + ``os.replace``), so concurrent ranks building the same split are safe. A file
    that exists is reused as is (its files must exist); delete it to re-split.

    Item keys: ACDC ``{"image", "label", "patient", "frame", "phase", "slice", "num_slices"}`` (slice
    level, for the 2D models; without ``"slice"``/``"num_slices"`` when ``slice_level=False``), split by
    patient; ISIC and decathlon ``{"image", "label"}`` (decathlon: its ``"training"`` list); BTCV ``{"image",
    "label"}``, its datalist's ``"validation"`` list as the validation split (:func:`_btcv_splits`).

    Args:
        dataset: ``"acdc"``, ``"isic"``, ``"decathlon"`` or ``"btcv"``.
        dataset_dir: the data set root, as shipped.
        datalist_path: where the split JSON is kept; None builds without saving.
        seed: split seed.
        fractions: (training, validation, test) fractions.
        slice_level: ACDC only: one item per short-axis slice.
        skip_empty_slices: ACDC only: drop slices without foreground (reads the labels once).

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}`` with absolute paths.
    """
    name = str(dataset).lower()
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; valid names: {', '.join(DATASETS)}.")
    if datalist_path is not None and os.path.isfile(datalist_path):
        return _read_split(datalist_path, name, dataset_dir, seed)
    if name == "btcv":
        splits, group_key = _btcv_splits(dataset_dir, fractions, seed), None
    else:
        items, group_key = _build_items(name, dataset_dir, slice_level, skip_empty_slices)
        splits = split_datalist(items, fractions, seed, group_key)
    if datalist_path is not None:
        saved = {"dataset": name, "seed": seed, "fractions": list(map(float, fractions)), "group_key": group_key}
        saved.update({k: _relative(v, dataset_dir) for k, v in splits.items()})
        _write_json_atomic(saved, datalist_path)
    return splits
