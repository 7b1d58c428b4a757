"""MONAI Label app serving the PrATo bundles as box-prompted segmentation models.

Start (in the environment made by ``bash tools/monailabel_env.sh``; nothing is downloaded)::

    .venv-monailabel/bin/monailabel start_server --app monailabel_app --studies /path/to/images \\
        --conf models all --conf zoo_source github --conf sam2 false --host 127.0.0.1 --port 8000

``--conf`` keys of this app:

- ``models``: ``all`` (default) or a comma-separated list of bundle names.
- ``bundles``: folder holding the bundles (default: ``bundles/`` of this repository). A bundle is served from
  ``<app>/model/<name>`` when that folder exists (MONAI Label's place for downloaded bundles, e.g. with
  ``python -m monai.bundle download``), else from ``<bundles>/<name>``; it needs ``models/model.pt``. Bundles
  without weights are skipped with a log line.
- ``bundle_overrides``: JSON object of config overrides applied to every bundle (e.g. ``{"dataset": "isic"}``).
- ``point_margin``: voxels added around ``foreground`` clicks (default 5). ``restrict_to_box``: ``true`` (default)
  sets the label to background outside the box(es).
- ``zoo_source``, ``sam2``: accepted for the usual MONAI Label command line; this app never downloads and offers
  no SAM2 model.

``POST /infer/<bundle name>`` with the image (``file`` upload or a datastore ``image`` id) and ``params`` JSON
holding the prompt: ``box`` (``[x1, y1, x2, y2]`` / ``[x1, y1, z1, x2, y2, z2]`` or a list of boxes), ``roi``
(3D Slicer's ROI: ``[i0, i1, j0, j1, k0, k1]``) or ``foreground`` click points, all in voxel coordinates of the
image as loaded (NIfTI: i, j, k = array axes = Slicer IJK; PNG/JPG: x = column, y = row); see
:mod:`prato_components.interactive`. A missing or invalid prompt is answered with HTTP 422 and the reason.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Any

import numpy as np
from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

import prato_components
from prato_components.interactive import BoxPromptSegmenter, boxes_from_request

logger = logging.getLogger(__name__)

REPO_BUNDLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bundles")


def _value_error(error: BaseException) -> ValueError | None:
    """The first ``ValueError`` in an exception chain (MONAI wraps transform errors in ``RuntimeError``)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, ValueError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _strtobool(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


class BoxPromptInferTask(InferTask):
    """A bundle as a MONAI Label segmentation model that takes a box prompt from the request params."""

    def __init__(self, bundle_dir: str, overrides: dict | None = None, point_margin: float = 5.0,
                 restrict_to_box: bool = True) -> None:
        self.segmenter = BoxPromptSegmenter(bundle_dir, overrides=overrides)
        meta = self.segmenter.meta
        description = f"{meta.get('task', meta.get('name'))}. Prompt: params 'box', 'roi' or 'foreground'."
        super().__init__(type=InferType.SEGMENTATION, labels=self.segmenter.labels, dimension=2,
                         description=description,
                         config={"point_margin": point_margin, "restrict_to_box": restrict_to_box})
        self.version = meta.get("version")

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["version"] = self.version
        info["prompt"] = "box [x1, y1, (z1,) x2, y2, (z2)] | roi (3D Slicer) | foreground points; image voxels"
        return info

    def is_valid(self) -> bool:
        return True

    def __call__(self, request: dict) -> tuple[str, dict]:
        params = {**self._config, **request}
        try:
            boxes = boxes_from_request(params, point_margin=float(params.get("point_margin", 5)))
            slice_index = params.get("slice")
            label, affine, used = self.segmenter(
                params["image"], boxes, slice_index=None if slice_index in (None, "", -1) else int(slice_index),
                restrict=_strtobool(params.get("restrict_to_box", True)),
            )
        except Exception as error:  # noqa: BLE001 - bad prompts become a 422 with the reason
            reason = _value_error(error)
            if reason is None:
                raise
            raise HTTPException(status_code=422, detail=f"{self.segmenter.name}: {reason}") from error
        path = self._write(label, affine, params["image"])
        return path, {"boxes": used, "label_names": self.labels, "model": self.segmenter.name}

    @staticmethod
    def _write(label: np.ndarray, affine: np.ndarray | None, image_path: str) -> str:
        if str(image_path).lower().endswith((".nii", ".nii.gz")) or label.ndim == 3:
            import nibabel as nib

            path = tempfile.NamedTemporaryFile(suffix=".nii.gz", delete=False).name
            nib.save(nib.Nifti1Image(label.astype(np.uint8), np.eye(4) if affine is None else affine), path)
            return path
        from PIL import Image

        path = tempfile.NamedTemporaryFile(suffix=".png", delete=False).name
        Image.fromarray(label.T.astype(np.uint8)).save(path)  # MONAI's PIL axis order (x, y) -> rows, columns
        return path


class PratoBundlesApp(MONAILabelApp):
    """Serves ``bundles/*`` (or ``--conf models a,b``) as box-prompted segmentation models."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.bundles_dir = conf.get("bundles", REPO_BUNDLES)
        chosen = conf.get("models", "all")
        available = sorted(
            name for name in os.listdir(self.bundles_dir)
            if os.path.isfile(os.path.join(self.bundles_dir, name, "configs", "inference.json"))
        ) if os.path.isdir(self.bundles_dir) else []
        self.models = available if chosen == "all" else [m.strip() for m in chosen.split(",") if m.strip()]
        unknown = [m for m in self.models
                   if m not in available and not os.path.isdir(os.path.join(app_dir, "model", m))]
        if unknown:
            raise ValueError(
                f"unknown bundle(s) {unknown} in --conf models; available in {self.bundles_dir}: {available}"
            )
        self.overrides = json.loads(conf.get("bundle_overrides", "{}"))
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="PrATo bundles",
                         description="Box-prompted, token-pruned ViT segmentation (MONAI bundles)", version=prato_components.__version__)

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        for name in self.models:
            local = os.path.join(self.app_dir, "model", name)
            bundle_dir = local if os.path.isdir(local) else os.path.join(self.bundles_dir, name)
            weights = os.path.join(bundle_dir, "models", "model.pt")
            if not os.path.isfile(weights):
                logger.warning("skip %s: no weights at %s (train the bundle or download it into %s)",
                               name, weights, local)
                continue
            infers[name] = BoxPromptInferTask(
                bundle_dir, overrides=self.overrides, point_margin=float(self.conf.get("point_margin", 5)),
                restrict_to_box=_strtobool(self.conf.get("restrict_to_box", "true")),
            )
            logger.info("serving %s from %s", name, bundle_dir)
        return infers
