"""Box-prompted segmentation of one image with a bundle, for interactive tools (the MONAI Label app).

:func:`boxes_from_request` turns what a viewer sends into boxes; :class:`BoxPromptSegmenter` runs a bundle's
``inference.json`` pipeline (preprocessing, ``PromptedInferer``, inverse resize, argmax) on one image with them.

Request parameters (JSON, in **voxel coordinates of the image as loaded by MONAI**: axis ``i`` of the array; for
NIfTI that is (i, j, k) = 3D Slicer's IJK, for PNG/JPG (x, y) = (column, row)):

- ``box``: ``[x1, y1, x2, y2]`` or ``[x1, y1, z1, x2, y2, z2]`` (MONAI ``StandardMode``: min corner, max corner;
  voxel ``v`` covers ``[v, v+1)``), or a list of such boxes (one per structure).
- ``roi``: what 3D Slicer's MONAI Label module sends for a placed ROI: ``[i_min, i_max, j_min, j_max, k_min,
  k_max]`` (per-axis pairs); 4 values ``[x1, y1, x2, y2]`` as CVAT sends a rectangle.
- Clicks, voxel indices ``[[x, y(, z)], ...]`` (one value per image axis): DeepEdit's ``foreground`` and
  ``background`` (3D Slicer, OHIF), or VISTA3D's ``points`` with ``point_labels`` (1 foreground, 0 background).
  They go to the network (``points`` / ``point_labels``, docs/design.md §6.2), mapped through the preprocessing as
  the boxes are. Without a box, the box is the foreground clicks' bounding box grown by ``point_margin`` voxels
  (default 5) in-plane; along z it spans the clicked slices.
- ``label``: the previous label (a file on the image's grid, as MONAI Label passes the uploaded ``label``): its
  nonzero voxels become the network's ``previous_mask``; it needs clicks.
- ``prompt_class`` (VISTA3D's name): the structure the clicks are about, a class name of the bundle or its index
  ``1 ..``; it reaches the network as its ``prompt_class`` (the clicks go to that class's guidance maps). A bundle
  with one structure needs none; it needs clicks.
- ``slice``: with a 2D box on a volume, the slice it applies to (3D Slicer sends it for 2D models); without it a
  2D box applies to every slice.

- ``restrict_to_box``: true, false or ``auto`` (default): set the label to 0 outside the boxes; ``auto`` does so
  unless the bundle decodes ``guided`` (a wrong box must not erase what the network finds outside it).

Every parameter is parsed strictly (a ``true`` is not a coordinate, ``"maybe"`` is not false); a missing or malformed
parameter, a slice or a click outside the image raises ``InputError`` (a ``ValueError``) naming the parameter the
client sent (the app answers HTTP 422).

Consecutive requests on one image reuse the network's image-only work (:class:`ClickSessions`: a
:class:`~prato_components.networks.clicks.SessionNetwork` per image, keyed by the image file's content), and a 3D
window whose clicks and previous label did not change keeps its answer.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from prato_components.bundle import trained_bundle_config
from prato_components.engine.checkpoint import load_weights
from prato_components.errors import InputError
from prato_components.export import compiled_network
from prato_components.inputs import IMAGE_SUFFIXES, check_image_file
from prato_components.networks.clicks import ClickPromptMixin, SessionNetwork
from prato_components.prompts.boxes import clip_boxes, validate_boxes
from prato_components.prompts.points import BACKGROUND, FOREGROUND

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_SUFFIXES", "boxes_from_request", "slice_from_request", "margin_from_request",
    "flag_from_request", "restrict_from_request", "check_image_file", "boxes_for_image", "request_boxes_for_image",
    "clicks_from_request", "request_clicks_for_image", "prompt_class_from_request", "points_to_network",
    "restrict_to_boxes", "ClickSessions", "clicks_trained",
    "BoxPromptSegmenter",
]

PROMPT_PARAMS = ("box", "boxes", "roi", "foreground", "points")  # where a prompt is read from, in this order
DEEPEDIT_CLICKS = {"foreground": FOREGROUND, "background": BACKGROUND}  # MONAI Label's DeepEdit keys -> labels
FLAG_VALUES = {"true": True, "false": False, "1": True, "0": False}  # the lower-case text of a parameter
FLOAT32_MAX = float(np.finfo(np.float32).max)  # boxes become float32 tensors; larger values would turn into inf


def _loads(value: Any, name: str) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as err:
            raise InputError(f"parameter {name!r} is not valid JSON: {value!r}") from err
    return value


def _numbers(values: Any, name: str) -> list[float]:
    """JSON numbers (a ``true`` is not 1, a ``"5"`` is not 5)."""
    if not isinstance(values, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                                    for v in values):
        raise InputError(f"parameter {name!r}: box values must be numbers, got {values!r}")
    out = [float(v) for v in values]
    if not all(math.isfinite(v) for v in out):
        raise InputError(f"parameter {name!r}: box values must be finite, got {values!r}")
    if any(abs(v) > FLOAT32_MAX for v in out):
        raise InputError(
            f"parameter {name!r}: box values must lie within +-{FLOAT32_MAX:.3g} (float32; voxel coordinates), "
            f"got {values!r}"
        )
    return out


def margin_from_request(params: Mapping[str, Any], default: float = 5.0) -> float:
    """``point_margin`` (voxels added around ``foreground`` clicks): a finite number >= 0."""
    value = params.get("point_margin", default)
    if value is None or value == "":
        return float(default)
    try:
        if isinstance(value, bool):
            raise TypeError(value)
        margin = float(value)
    except (TypeError, ValueError) as err:
        raise InputError(f"parameter 'point_margin' must be a number of voxels >= 0, got {value!r}") from err
    if not math.isfinite(margin) or margin < 0 or margin > FLOAT32_MAX:
        raise InputError(f"parameter 'point_margin' must be a finite number of voxels >= 0, got {value!r}")
    return margin


def prompt_class_from_request(params: Mapping[str, Any], labels: Mapping[str, int]) -> int | None:
    """``prompt_class``: a class name of ``labels`` (name -> index) or its index, also as VISTA3D's ``[index]``
    (``None`` when absent)."""
    value = params.get("prompt_class")
    if value is None or value == "":
        return None
    if isinstance(value, str) and value in labels:
        return labels[value]
    number = value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            number = json.loads(value)
    if isinstance(number, list) and len(number) == 1:
        number = number[0]
    if isinstance(number, bool) or not isinstance(number, int) or number not in labels.values():
        raise InputError(f"parameter 'prompt_class' must be one of {list(labels)} or an index 1 .. {len(labels)}, "
                         f"got {value!r}")
    return number


def slice_from_request(params: Mapping[str, Any]) -> int | None:
    """``slice`` (the slice a 2D box on a volume applies to): an integer >= 0, or absent/``""``/-1 for none."""
    value = params.get("slice")
    if value is None or value == "" or value == -1 or value == "-1":
        return None
    message = f"parameter 'slice' must be an integer slice index >= 0, got {value!r}"
    if isinstance(value, bool):
        raise InputError(message)
    try:
        number = float(value)
    except (TypeError, ValueError) as err:
        raise InputError(message) from err
    if not math.isfinite(number) or number != int(number) or number < 0:
        raise InputError(message)
    return int(number)


def flag_from_request(params: Mapping[str, Any], name: str, default: bool | None) -> bool | None:
    """A true/false parameter: JSON ``true``/``false``, ``"true"``/``"false"`` (any case), ``1``/``0``; absent or
    ``""`` for ``default``. Anything else (``"maybe"``, ``2``) is an ``InputError`` naming the parameter."""
    value = params.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, (bool, int, str)) and str(value).strip().lower() in FLAG_VALUES:
        return FLAG_VALUES[str(value).strip().lower()]
    raise InputError(f"parameter {name!r} must be true or false, got {value!r}")


def restrict_from_request(params: Mapping[str, Any]) -> bool | None:
    """``restrict_to_box``: true / false (as :func:`flag_from_request`), or ``"auto"`` / absent for ``None``: the
    bundle decides (cut to the boxes unless it decodes ``guided``, :attr:`BoxPromptSegmenter.restricts_to_boxes`)."""
    value = params.get("restrict_to_box")
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    return flag_from_request(params, "restrict_to_box", None)


def _check_box(box: list[float], name: str) -> list[float]:
    if len(box) not in (4, 6):
        raise InputError(
            f"parameter {name!r}: a box has 4 values [x1, y1, x2, y2] or 6 [x1, y1, z1, x2, y2, z2], got {len(box)}: "
            f"{box}"
        )
    dims = len(box) // 2
    if any(box[dims + i] <= box[i] for i in range(dims)):
        raise InputError(
            f"parameter {name!r}: box {box} is empty (max <= min on an axis; order is min then max corner)"
        )
    return box


def _prompt_parameter(params: Mapping[str, Any]) -> str | None:
    """The parameter the prompt is read from: the first of ``box``/``boxes``, ``roi``, ``foreground``, ``points`` that
    is present and not empty."""
    for name in PROMPT_PARAMS:
        value = _loads(params.get(name), name)
        if value is not None and value != [] and (name not in ("foreground", "points") or value):
            return name
    return None


def boxes_from_request(params: Mapping[str, Any], point_margin: float | None = None) -> list[list[float]]:
    """Boxes ``[[x1, y1, (z1,) x2, y2, (z2)], ...]`` from MONAI Label ``/infer`` parameters (see the module doc).

    The first of ``box``/``boxes``, ``roi``, ``foreground`` that is present and not empty is used.
    """
    margin = margin_from_request(params if point_margin is None else {"point_margin": point_margin})
    name = _prompt_parameter(params)
    value = _loads(params.get(name), name) if name else None
    if name in ("box", "boxes"):
        if not isinstance(value, (list, tuple)):
            raise InputError(f"parameter {name!r} must be a box or a list of boxes, got {value!r}")
        rows = value if isinstance(value[0], (list, tuple)) else [value]
        return [_check_box(_numbers(row, name), name) for row in rows]
    if name == "roi":
        flat = _numbers(np.asarray(value, dtype=object).reshape(-1).tolist(), "roi")
        if len(flat) == 6:  # 3D Slicer: [i0, i1, j0, j1, k0, k1]; the IJK direction may flip an axis pair
            pairs = [sorted(flat[2 * a : 2 * a + 2]) for a in range(3)]
            return [_check_box([p[0] for p in pairs] + [p[1] for p in pairs], "roi")]
        if len(flat) == 4:  # CVAT: [x1, y1, x2, y2]
            return [_check_box(flat, "roi")]
        raise InputError(f"parameter 'roi' must have 6 values [i0, i1, j0, j1, k0, k1] (3D Slicer) or 4, got {value!r}")
    foreground = [row for _, _, row, label in clicks_from_request(params) if label == FOREGROUND]
    if name in ("foreground", "points") and foreground:  # clicks alone: a box around the foreground clicks
        pts = np.asarray(foreground)
        lo, hi = pts.min(0), pts.max(0) + 1.0
        lo[:2], hi[:2] = lo[:2] - margin, hi[:2] + margin
        return [_check_box(lo.tolist() + hi.tolist(), name)]
    raise InputError(
        "no box prompt in the request: send params 'box' ([x1, y1, x2, y2] or [x1, y1, z1, x2, y2, z2] in image "
        "voxel coordinates, min then max corner), 'roi' (3D Slicer ROI) or foreground clicks ('foreground', or "
        "'points' with 'point_labels' 1)"
    )


def _fmt_point(row: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in row) + ")"


def _click_rows(value: Any, name: str) -> list[list[float]]:
    """The points of click parameter ``name``: finite numbers, 2 or 3 per point, the same number in every point."""
    shape = f"parameter {name!r} must be points [[x, y], ...] or [[x, y, z], ...] (image voxels, one length)"
    if not isinstance(value, (list, tuple)) or not all(isinstance(p, (list, tuple)) for p in value):
        raise InputError(f"{shape}, got {value!r}")
    rows = []
    for number, point in enumerate(value, 1):
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in point):
            raise InputError(f"parameter {name!r} point {number} must be numbers [x, y(, z)] (image voxels), "
                             f"got {list(point)!r}")
        if not all(math.isfinite(v) for v in point):
            raise InputError(f"parameter {name!r} point {number} is {_fmt_point(point)}: not a finite number")
        rows.append([float(v) for v in point])
    if len({len(p) for p in rows}) > 1 or any(len(p) not in (2, 3) for p in rows):
        raise InputError(f"{shape}, got {value!r}")
    return rows


def clicks_from_request(params: Mapping[str, Any]) -> list[tuple[str, int, list[float], int]]:
    """The clicks of MONAI Label ``/infer`` parameters: DeepEdit's ``foreground`` / ``background`` or VISTA3D's
    ``points`` + ``point_labels`` (1 foreground, 0 background), as ``(parameter, number from 1, voxel indices,
    label)``; ``[]`` without clicks. Malformed clicks are an ``InputError`` naming the parameter."""
    deepedit = {name: _loads(params.get(name), name) for name in DEEPEDIT_CLICKS}
    points, labels = _loads(params.get("points"), "points"), _loads(params.get("point_labels"), "point_labels")
    vista = points not in (None, []) or labels not in (None, [])
    if vista and any(value not in (None, []) for value in deepedit.values()):
        raise InputError("send clicks either as 'foreground' / 'background' (DeepEdit) or as 'points' with "
                         "'point_labels' (VISTA3D), not both")
    if not vista:
        return [(name, number, row, label) for name, label in DEEPEDIT_CLICKS.items()
                if deepedit[name] not in (None, []) for number, row in enumerate(_click_rows(deepedit[name], name), 1)]
    if labels in (None, []):
        raise InputError("parameter 'points' was sent without 'point_labels' (one label per point: 1 foreground, "
                         "0 background)")
    if points in (None, []):
        raise InputError("parameter 'point_labels' was sent without 'points'")
    rows = _click_rows(points, "points")
    if not isinstance(labels, (list, tuple)) or len(labels) != len(rows):
        count = f"{len(labels)} label(s)" if isinstance(labels, (list, tuple)) else repr(labels)
        raise InputError(f"parameter 'point_labels' must hold one label per point: 'points' holds {len(rows)} "
                         f"point(s), 'point_labels' {count}")
    for number, label in enumerate(labels, 1):
        if isinstance(label, bool) or not isinstance(label, (int, float)) or label not in (FOREGROUND, BACKGROUND):
            raise InputError(f"parameter 'point_labels' label {number} is {label!r}; a label is 1 (foreground) or 0 "
                             "(background)")
    return [("points", number, row, int(label)) for number, (row, label) in enumerate(zip(rows, labels), 1)]


def request_clicks_for_image(params: Mapping[str, Any], spatial_shape: Sequence[int]
                             ) -> tuple[np.ndarray, np.ndarray] | None:
    """The clicks of a request (:func:`clicks_from_request`) checked against an image of ``spatial_shape``: voxel
    indices ``[N, D]`` and labels ``[N]``, or ``None`` without clicks. A point with another number of values than
    the image has axes, or outside the image, is an ``InputError`` naming the parameter and the point."""
    clicks = clicks_from_request(params)
    if not clicks:
        return None
    dims, size = len(spatial_shape), " x ".join(str(int(s)) for s in spatial_shape)
    for name, number, row, _ in clicks:
        if len(row) != dims:
            raise InputError(f"parameter {name!r} point {number} has {len(row)} values but the image has {dims} axes "
                             f"({size}): send {dims} voxel indices per point")
        if any(not 0 <= v < s for v, s in zip(row, spatial_shape)):
            raise InputError(f"parameter {name!r} point {number} is {_fmt_point(row)} but the image is {size} "
                             "(voxel indices from 0)")
    return np.asarray([c[2] for c in clicks], dtype=np.float64), np.asarray([c[3] for c in clicks], dtype=np.int64)


def request_boxes_for_image(params: Mapping[str, Any], spatial_shape: Sequence[int]) -> list[list[float]]:
    """The boxes of a request fitted to an image of ``spatial_shape`` (:func:`boxes_for_image`); a slice or a click
    outside the image, or a box that does not fit it, is an ``InputError`` naming the parameter the client sent."""
    request_clicks_for_image(params, spatial_shape)  # a click outside the image is named as such
    boxes = boxes_from_request(params)
    name = _prompt_parameter(params)
    slice_index = slice_from_request(params)
    if slice_index is not None and len(spatial_shape) == 3 and slice_index >= spatial_shape[2]:
        raise InputError(f"parameter 'slice' is {slice_index}, but the image has {spatial_shape[2]} slices "
                         f"(0 to {spatial_shape[2] - 1})")
    try:
        return boxes_for_image(boxes, spatial_shape, slice_index)
    except ValueError as err:
        raise InputError(f"parameter {name!r}: {err}") from None


def boxes_for_image(boxes: Sequence[Sequence[float]], spatial_shape: Sequence[int], slice_index: int | None = None
                    ) -> list[list[float]]:
    """Fit request boxes to an image: a 2D box on a volume spans ``slice_index`` (or every slice); then
    :func:`~prato_components.prompts.validate_boxes` (wrong dimensionality, outside the image) and
    :func:`~prato_components.prompts.clip_boxes`."""
    out = []
    for box in boxes:
        box = [float(v) for v in box]
        if len(box) == 4 and len(spatial_shape) == 3:
            z0, z1 = (0.0, float(spatial_shape[2])) if slice_index is None else (float(slice_index), slice_index + 1.0)
            box = [box[0], box[1], z0, box[2], box[3], z1]
        checked = validate_boxes(np.asarray(box, dtype=np.float64), spatial_shape, name=f"box {box}")
        out += clip_boxes(checked, spatial_shape).tolist()
    return out


def restrict_to_boxes(label: np.ndarray, boxes: Sequence[Sequence[float]]) -> np.ndarray:
    """``label`` (spatial array) set to 0 outside the union of ``boxes`` (voxel ``v`` inside if it overlaps)."""
    dims = label.ndim
    inside = np.zeros(label.shape, dtype=bool)
    for box in boxes:
        index = tuple(slice(int(math.floor(box[i])), int(math.ceil(box[dims + i]))) for i in range(dims))
        inside[index] = True
    return np.where(inside, label, 0).astype(label.dtype)


def points_to_network(points: np.ndarray, image: torch.Tensor) -> np.ndarray:
    """Click voxel indices ``[N, D]`` of the image as loaded -> continuous coordinates ``[N, D']`` of the network
    input ``image`` (a ``MetaTensor`` after the preprocessing; voxel ``v``'s centre is ``v + 0.5``, §3), through the
    affines MONAI's transforms keep: the loaded image's ``original_affine`` (identity for PNG/JPG) and the input's
    ``affine``, so resizing, spacing, orientation and cropping move the clicks as they move the image. A 2D picture
    that loads with one more axis gets index 0 there; the result is clipped to the input."""
    dims = image.ndim - 1
    current = np.asarray(image.affine, dtype=np.float64) if hasattr(image, "affine") else np.eye(dims + 1)
    rank = current.shape[0] - 1  # MONAI keeps 4 x 4 affines for 2D images too
    loaded = image.meta.get("original_affine") if hasattr(image, "meta") else None
    loaded = np.eye(rank + 1) if loaded is None else np.asarray(loaded, dtype=np.float64)
    rows = np.zeros((len(points), rank + 1))
    rows[:, : min(points.shape[1], rank)], rows[:, -1] = points[:, :rank], 1.0
    mapped = (np.linalg.solve(current, loaded @ rows.T)).T[:, :dims] + 0.5
    return np.clip(mapped, 0.0, np.asarray(image.shape[1:], dtype=np.float64))


def clicks_trained(network: torch.nn.Module) -> bool | None:
    """Whether ``network``'s click encoder has learnt anything (a weight not zero); ``None`` without an encoder."""
    encoder = getattr(network, "click_encoder", None)
    if encoder is None:
        return None
    return any(bool(parameter.detach().ne(0).any()) for parameter in encoder.parameters())


class ClickSessions:
    """The :class:`~prato_components.networks.clicks.ClickSession` s of the last ``max_images`` images one network
    segmented (least recently used dropped first), so consecutive requests on one image do the image-only work
    once. ``lock`` is held for a whole inference: the network keeps a session's cache and the clicks on itself
    during a call, so requests through one network's sessions run one at a time."""

    def __init__(self, network: torch.nn.Module, max_images: int = 4) -> None:
        self.network, self.max_images = network, max_images
        self.lock = threading.Lock()
        self._images: OrderedDict[str, OrderedDict] = OrderedDict()

    @property
    def enabled(self) -> bool:
        """Whether the network can reuse work (a backbone of this package, not a compiled one)."""
        return isinstance(self.network, ClickPromptMixin) and self.max_images > 0

    def __len__(self) -> int:
        return len(self._images)

    def network_for(self, image_key: str) -> SessionNetwork:
        """The network for an inference on the image ``image_key`` (call with :attr:`lock` held): a window whose
        clicks and previous label did not change keeps its last answer."""
        sessions = self._images.pop(image_key, None)
        self._images[image_key] = OrderedDict() if sessions is None else sessions
        while len(self._images) > self.max_images:
            self._images.popitem(last=False)
        return SessionNetwork(self.network, self._images[image_key], follow_previous_mask=True)


class BoxPromptSegmenter:
    """One bundle's ``inference.json`` pipeline for single images with box prompts.

    Args:
        bundle_dir: the bundle folder (``configs/inference.json``, ``configs/metadata.json``).
        checkpoint: weights (see :func:`~prato_components.engine.load_weights`); default
            ``<bundle_dir>/models/model.pt``. The network is built with the settings the checkpoint records.
        overrides: config keys to override (e.g. ``{"dataset": "isic"}`` or smaller sizes).
        device: torch device for the network.
        session_images: how many recent images keep their :class:`ClickSessions` (0: no reuse).
    """

    def __init__(self, bundle_dir: str, checkpoint: str | None = None, overrides: Mapping[str, Any] | None = None,
                 device: str = "cpu", session_images: int = 4) -> None:
        from monai.transforms import Compose, Lambdad, SaveImaged

        self.bundle_dir = bundle_dir
        self.checkpoint = checkpoint or os.path.join(bundle_dir, "models", "model.pt")
        if not os.path.isfile(self.checkpoint):
            raise FileNotFoundError(f"checkpoint {self.checkpoint} does not exist (train the bundle or place weights)")
        # the network is built with the settings the checkpoint records
        parser = trained_bundle_config(bundle_dir, self.checkpoint, {
            "device": f"$torch.device({device!r})", "num_workers": 0, **(overrides or {})})
        self.parser = parser
        self.meta = parser.get("_meta_")
        self.name = self.meta.get("name", os.path.basename(os.path.normpath(bundle_dir)))
        self.device = torch.device(device)
        self.network = parser.get_parsed_content("network")
        self.network.load_state_dict(load_weights(self.checkpoint, self.device)[0])
        self.network.eval()
        self.clicks_trained = clicks_trained(self.network)
        if self.clicks_trained is False:
            logger.warning("%s: %s was trained without clicks (its click encoder is zero), so clicks will not change "
                           "its answers; train with --click_training#probability 0.5 (docs/accuracy.md, \"Corrective "
                           "clicks\")", self.name, self.checkpoint)
        # the bundle key compile: one compiled network (its first call compiles), reused by every call and thread
        self.network = compiled_network(self.network, parser.get_parsed_content("compile", default=False))
        self.spec = parser.get_parsed_content("spec")
        self.preprocessing = parser.get_parsed_content("preprocessing")
        # the inferer the bundle's own inference runs (3D bundles: the prompt-aware sliding window)
        self.inferer = parser.get_parsed_content("evaluator#inferer")
        post = parser.get_parsed_content("postprocessing")
        # keep label indices (no 0/255 scaling) and return the array instead of writing a file
        self.postprocessing = Compose([t for t in post.transforms if not isinstance(t, (SaveImaged, Lambdad))])
        self.labels = {name: i + 1 for i, name in enumerate(self.spec["class_names"])}
        self.spatial_dims = int(parser.get("network_def", {}).get("spatial_dims", 2))  # 3: a volumetric bundle
        # consecutive requests on one image reuse the image-only work (shared by the app's per-thread copies)
        self.sessions = ClickSessions(self.network, max_images=session_images)

    def segment_request(self, params: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray | None, list[list[float]]]:
        """Segment ``params["image"]`` with the prompt of MONAI Label ``/infer`` parameters (boxes, clicks, the
        previous ``label``), each parsed strictly (``InputError`` naming the parameter); see :meth:`__call__` for
        what it returns."""
        restrict = restrict_from_request(params)
        shape = check_image_file(params["image"], name=params.get("image_name"))
        boxes = request_boxes_for_image(params, shape)
        clicks = request_clicks_for_image(params, shape)
        previous = params.get("label")
        if previous not in (None, "") and clicks is None:
            raise InputError("parameter 'label' (the previous label) needs clicks: send 'foreground' / 'background' "
                             "or 'points' with 'point_labels'")
        if previous not in (None, "") and (not isinstance(previous, str) or not os.path.isfile(previous)):
            raise InputError(f"parameter 'label' must be the previous label's file, got {previous!r}")
        prompt_class = prompt_class_from_request(params, self.labels)
        if prompt_class is not None and clicks is None:
            raise InputError("parameter 'prompt_class' (the structure the clicks are about) needs clicks: send "
                             "'foreground' / 'background' or 'points' with 'point_labels'")
        points, point_labels = (None, None) if clicks is None else clicks
        return self(params["image"], boxes, restrict=restrict, points=points, point_labels=point_labels,
                    previous_label=previous or None, point_margin=margin_from_request(params),
                    prompt_class=prompt_class)

    @staticmethod
    def image_shape(image_path: str) -> tuple[int, ...]:
        """Spatial shape of an image file as MONAI loads it (NIfTI header; PIL size for PNG/JPG)."""
        if image_path.lower().endswith((".nii", ".nii.gz")):
            import nibabel as nib

            return tuple(int(s) for s in nib.load(image_path).shape[:3])
        from PIL import Image

        with Image.open(image_path) as image:
            return tuple(image.size)  # MONAI's PIL reader: axis 0 = x (columns)

    @property
    def restricts_to_boxes(self) -> bool:
        """Whether the label is cut to the boxes unless told otherwise: not for a network that decodes
        ``"guided"``, whose answer outside the boxes is where its coarse pass found the structure (a wrong box must
        not erase it; docs/design.md §6.1)."""
        return getattr(self.network, "decode_region", "full") != "guided"

    def __call__(self, image_path: str, boxes: Sequence[Sequence[float]], slice_index: int | None = None,
                 restrict: bool | None = None, points: np.ndarray | None = None, point_labels: np.ndarray | None = None,
                 previous_label: str | None = None, point_margin: float = 5.0, prompt_class: int | None = None,
                 ) -> tuple[np.ndarray, np.ndarray | None, list[list[float]]]:
        """Segment ``image_path`` with ``boxes`` (image voxel coordinates) and clicks: ``points`` ``[N, D]`` (voxel
        indices of the image), ``point_labels`` ``[N]`` (1 foreground, 0 background), the previous label's file
        ``previous_label`` (its nonzero voxels) and the class of the clicked structure ``prompt_class``.
        ``restrict``: set the label to background outside the boxes and the foreground clicks grown by
        ``point_margin`` in-plane (``None``: :attr:`restricts_to_boxes`).

        Returns:
            the label array (class indices, the image's spatial shape), the image affine (or ``None``) and the
            boxes used (after fitting to the image).
        """
        from monai.data import MetaTensor

        shape = self.image_shape(image_path)
        boxes = boxes_for_image(boxes, shape, slice_index)
        data = self.preprocessing({"image": image_path, "box": copy.deepcopy(boxes)})
        image, box = data["image"], data["box"]
        prompts = {"boxes": torch.as_tensor(box, dtype=torch.float32)[None].to(self.device)}
        kept = list(boxes)
        if points is not None:
            points, point_labels = np.asarray(points, dtype=np.float64), np.asarray(point_labels)
            prompts["points"] = torch.as_tensor(points_to_network(points, image), dtype=torch.float32)[None]
            prompts["point_labels"] = torch.as_tensor(point_labels, dtype=torch.int64)[None]
            if previous_label is not None:
                prompts["previous_mask"] = self._previous_mask(previous_label, image, shape)[None]
            if prompt_class is not None:
                prompts["prompt_class"] = torch.tensor([int(prompt_class)])
            kept += boxes_from_request({"foreground": points[point_labels == FOREGROUND].tolist()}, point_margin
                                       ) if (point_labels == FOREGROUND).any() else []
        prompts = {k: v.to(self.device) for k, v in prompts.items()}
        with torch.no_grad(), self.sessions.lock:
            if self.sessions.enabled:  # keyed by the content: an upload of the same image gets a new path
                with open(image_path, "rb") as stream:
                    network = self.sessions.network_for(hashlib.file_digest(stream, "sha256").hexdigest())
            else:
                network = self.network
            pred = self.inferer(image[None].to(self.device), network, **prompts)
        pred = pred.as_tensor() if isinstance(pred, MetaTensor) else pred
        data["pred"] = pred[0].cpu()  # Invertd takes the inverse of the preprocessing from data["image"]
        data = self.postprocessing(data)
        label = np.asarray(torch.as_tensor(data["pred"]).cpu())[0].astype(np.uint8)
        if self.restricts_to_boxes if restrict is None else restrict:
            label = restrict_to_boxes(label, boxes_for_image(kept, shape, slice_index))
        affine = getattr(data["pred"], "affine", None)
        affine = None if affine is None else np.asarray(affine)
        return label, affine, boxes

    def _previous_mask(self, path: str, image: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """The previous label ``path`` (on the grid of the image as loaded) as the network input's ``previous_mask``
        ``[1, *spatial]``: loaded as the image is, resampled onto the input (nearest), nonzero -> 1."""
        from monai.transforms import ResampleToMatch

        label_shape = self.image_shape(path)
        if tuple(label_shape) != tuple(shape):
            raise InputError(f"parameter 'label': the previous label is {' x '.join(map(str, label_shape))} but the "
                             f"image is {' x '.join(map(str, shape))}")
        label = self.preprocessing.transforms[0]({"image": path})["image"][:1]  # the bundle's loader
        label = ResampleToMatch(mode="nearest")(label, img_dst=image)
        return (torch.as_tensor(label) > 0).float()
