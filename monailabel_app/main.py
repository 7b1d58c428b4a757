"""MONAI Label app serving the PrATo bundles as box-prompted segmentation models.

Start (in the environment made by ``bash tools/monailabel_env.sh``; nothing is downloaded)::

    .venv-monailabel/bin/monailabel start_server --app monailabel_app --studies /path/to/images \\
        --conf models all --conf zoo_source github --conf sam2 false --host 127.0.0.1 --port 8000

``--conf`` keys of this app:

- ``models``: ``all`` (default) or a comma-separated list of bundle names.
- ``bundles``: folder holding the bundles (default: ``bundles/`` of this repository). A bundle is served from
  ``<app>/model/<name>`` when that folder exists (MONAI Label's place for downloaded bundles, e.g. with
  ``python -m monai.bundle download``), else from ``<bundles>/<name>``; it needs ``models/model.pt``. Bundles
  without weights or that cannot be loaded are skipped (log line, ``/info/`` ``skipped_models``).
- ``bundle_overrides``: JSON object of config overrides applied to every bundle (e.g. ``{"dataset": "isic"}``).
- ``point_margin``: voxels added around ``foreground`` clicks (default 5). ``restrict_to_box``: ``true`` sets the
  label to background outside the box(es); ``auto`` (default) does so unless the bundle decodes ``guided`` (a wrong
  box then keeps the structure its coarse pass found).
- ``infer_concurrency``: inferences run at once in one server process (default 1; see Concurrency below).
- ``zoo_source``, ``sam2``: accepted for the usual MONAI Label command line; this app never downloads and offers
  no SAM2 model.

``POST /infer/<bundle name>`` with the image (``file`` upload or a datastore ``image`` id) and ``params`` JSON
holding the prompt: ``box`` (``[x1, y1, x2, y2]`` / ``[x1, y1, z1, x2, y2, z2]`` or a list of boxes), ``roi``
(3D Slicer's ROI: ``[i0, i1, j0, j1, k0, k1]``) and/or clicks, DeepEdit's ``foreground`` / ``background`` or
VISTA3D's ``points`` + ``point_labels`` (1 foreground, 0 background), all in voxel coordinates of the image as
loaded (NIfTI: i, j, k = array axes = Slicer IJK; PNG/JPG: x = column, y = row). The previous label, uploaded as
form field ``label`` (or a ``label`` file path in ``params``), reaches the network as its ``previous_mask``, and
``prompt_class`` (a class name or index) names the structure the clicks are about. Consecutive requests on one
image (same content) reuse the network's image-only work. See :mod:`prato_components.interactive`.

Failures the client sees (``{"detail": reason}``): a missing or invalid prompt or parameter (every parameter is
parsed strictly: ``box`` values, ``slice``, ``point_margin``, ``restrict_to_box``, clicks and their labels,
``params`` not JSON; a slice or a click outside the image is named as such), an image that cannot be read (corrupt,
truncated, another format under a ``.nii.gz`` name) -> 422; a file type other than NIfTI/PNG/JPG -> 415; an unknown
model or image id -> 404. The uploaded files are removed whether the request succeeds or fails. A bundle that cannot
be loaded (no weights, corrupt or mismatched weights, a bad config) is skipped at start with its reason in the log and
in ``/info/`` under ``skipped_models``; the others are served.

Concurrency: the app replaces MONAI Label's ``POST /infer/{model}`` route (an ``async`` function that runs the
inference on the event loop, so one request blocked every other one, ``/info/`` included) with one that runs in
FastAPI's thread pool and hands the inference to ``--conf infer_concurrency N`` (default 1) inference threads
(MONAI Label's ``MONAI_LABEL_INFER_CONCURRENCY`` pool when that is set): N inferences run at once per process, the
others wait in arrival order (up to ``MONAI_LABEL_INFER_TIMEOUT``, 600 s, then 503); ``/info/`` and the other routes
answer meanwhile. For more parallel inferences start the server with
``--workers N`` (N processes, each loading every served bundle; see the README for the measured memory).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import pathlib
import shutil
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Optional

import numpy as np
from fastapi import BackgroundTasks, Depends, File, Form, HTTPException, UploadFile
from fastapi.routing import APIRoute
from monailabel.config import settings
from monailabel.endpoints import infer as monailabel_infer
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.exception import MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType
from monailabel.interfaces.utils.app import app_instance

import prato_components
from prato_components.command_line import find_in_chain
from prato_components.engine import trained_settings
from prato_components.interactive import (
    IMAGE_SUFFIXES,
    BoxPromptSegmenter,
    margin_from_request,
    restrict_from_request,
)

logger = logging.getLogger(__name__)

REPO_BUNDLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bundles")


class BoxPromptInferTask(InferTask):
    """A bundle as a MONAI Label segmentation model that takes a box prompt from the request params."""

    def __init__(self, bundle_dir: str, overrides: dict | None = None, point_margin: float = 5.0,
                 restrict_to_box: bool | None = None, name: str | None = None) -> None:
        self.segmenter = BoxPromptSegmenter(bundle_dir, overrides=overrides)
        self.name = name or self.segmenter.name  # the served name (/infer/<name>), in messages and results
        meta = self.segmenter.meta
        description = (f"{meta.get('task', meta.get('name'))}. Prompt: params 'box' or 'roi' and/or clicks "
                       "('foreground' / 'background' or 'points' + 'point_labels', 'prompt_class': the clicked "
                       "structure); previous label: form field 'label'.")
        super().__init__(type=InferType.SEGMENTATION, labels=self.segmenter.labels,
                         dimension=self.segmenter.spatial_dims,
                         description=description,
                         config={"point_margin": point_margin, "restrict_to_box": restrict_to_box})
        self.version = meta.get("version")
        self._local = threading.local()

    def _segmenter(self) -> BoxPromptSegmenter:
        """This thread's segmenter: the network is shared, the transforms are copied per inference thread (MONAI's
        ``Invertd`` switches ``allow_missing_keys`` on the shared preprocessing while it inverts, so two threads on
        one pipeline fail with ``KeyError: Key `box_mask` of transform `Resized` was missing``)."""
        segmenter = getattr(self._local, "segmenter", None)
        if segmenter is None:
            base = self.segmenter
            segmenter = copy.copy(base)
            memo = {id(base.network): base.network}  # the network stays shared
            segmenter.preprocessing, segmenter.postprocessing, segmenter.inferer = copy.deepcopy(
                (base.preprocessing, base.postprocessing, base.inferer), memo)
            self._local.segmenter = segmenter
        return segmenter

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["version"] = self.version
        info["prompt"] = ("box [x1, y1, (z1,) x2, y2, (z2)] | roi (3D Slicer), and/or clicks foreground / background "
                          "or points + point_labels (1 fg, 0 bg), prompt_class (the clicked structure); image voxels; "
                          "form field label: previous label")
        return info

    def is_valid(self) -> bool:
        return True

    def __call__(self, request: dict) -> tuple[str, dict]:
        params = {**self._config, **request}
        try:
            label, affine, used = self._segmenter().segment_request(params)
        except HTTPException:
            raise
        except Exception as error:  # noqa: BLE001 - bad prompts become a 422 with the reason
            reason = find_in_chain(error, ValueError)  # MONAI wraps transform errors
            if reason is None:  # not the request's fault as far as we can tell: a 500, with the reason for the client
                logger.exception("%s: inference failed", self.name)
                raise HTTPException(
                    status_code=500, detail=f"{self.name}: inference failed: {type(error).__name__}: {error}"
                ) from error
            raise HTTPException(status_code=422, detail=f"{self.name}: {reason}") from error
        path = self._write(label, affine, params["image"])
        return path, {"boxes": used, "label_names": self.labels, "model": self.name}

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
        # --conf values, parsed as strictly as request parameters (a bad one stops the server at start)
        self.point_margin = margin_from_request(conf)
        self.restrict_to_box = restrict_from_request(conf)
        self.skipped: dict[str, str] = {}
        self.infer_concurrency = int(conf.get("infer_concurrency", 1))
        if self.infer_concurrency < 1:
            raise ValueError(f"--conf infer_concurrency must be an integer >= 1, got {self.infer_concurrency}")
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="PrATo bundles",
                         description="Box-prompted, token-pruned ViT segmentation (MONAI bundles)",
                         version=prato_components.__version__)
        if self._infers_threadpool is None:  # MONAI Label's own pool (MONAI_LABEL_INFER_CONCURRENCY) when set
            # inferences run on these threads only, in arrival order: a fixed few threads also keep the memory of
            # one process low (every thread that runs the network grows its own malloc arena)
            self._infers_threadpool = ThreadPoolExecutor(max_workers=self.infer_concurrency, thread_name_prefix="INFER")
        else:
            self.infer_concurrency = self._infers_threadpool._max_workers

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        for name in self.models:
            local = os.path.join(self.app_dir, "model", name)
            bundle_dir = local if os.path.isdir(local) else os.path.join(self.bundles_dir, name)
            weights = os.path.join(bundle_dir, "models", "model.pt")
            if not os.path.isfile(weights):
                self._skip(name, f"no weights at {weights} (train the bundle or download it into {local})")
                continue
            try:
                trained_settings(weights)  # a corrupt or truncated file is named here, not deep in the config
                infers[name] = BoxPromptInferTask(
                    bundle_dir, overrides=self.overrides, point_margin=self.point_margin,
                    restrict_to_box=self.restrict_to_box, name=name,
                )
            except Exception as error:  # noqa: BLE001 - one bad bundle must not take the others down
                logger.debug("loading %s failed", name, exc_info=True)
                self._skip(name, f"cannot load bundle {bundle_dir}: {type(error).__name__}: {error}")
                continue
            logger.info("serving %s from %s", name, bundle_dir)
        if not infers:
            logger.error("no bundle could be loaded; the server runs but serves no model (see skipped_models)")
        return infers

    def _skip(self, name: str, reason: str) -> None:
        self.skipped[name] = reason
        logger.error("skip %s: %s", name, reason)

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["skipped_models"] = dict(self.skipped)
        info["infer_concurrency"] = self.infer_concurrency
        return info

    def on_init_complete(self) -> None:
        super().on_init_complete()
        server = sys.modules.get("monailabel.app")
        if server is not None and hasattr(server, "app"):
            install_infer_route(server.app)

    def unknown_model(self, model: str) -> HTTPException | None:
        """A 404 naming the served and the skipped models when ``model`` is not served, else ``None``."""
        if model in self._infers:
            return None
        if model in self.skipped:
            return HTTPException(status_code=404, detail=f"model {model!r} is not served: {self.skipped[model]}")
        return HTTPException(status_code=404, detail=f"unknown model {model!r}; served: {sorted(self._infers)}")


# ---------------------------------------------------------------------------------------------- the /infer route
def _remove(*paths: str | None) -> None:
    for path in paths:
        if path:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass


def _file_name(upload: UploadFile, default_name: str) -> str:
    """The uploaded file's name without folders: MONAI Label's ``MONAILabelClient`` sends the client's local path as
    the multipart file name, which the server's messages must not echo."""
    return os.path.basename((upload.filename or "").replace("\\", "/")) or default_name


def _upload(upload: UploadFile, field: str, default_name: str) -> str:
    """Form field ``field`` (an image or a label file) saved to a temporary file of its type; 415 for another type."""
    filename = _file_name(upload, default_name)
    suffix = "".join(pathlib.Path(filename).suffixes[-2:]).lower()
    if not suffix.endswith(IMAGE_SUFFIXES):
        raise HTTPException(status_code=415, detail=f"uploaded {field} {filename!r}: unsupported file type "
                                                    "(send NIfTI .nii/.nii.gz or PNG/JPG)")
    handle, path = tempfile.mkstemp(suffix=suffix, prefix="prato_upload_")
    with os.fdopen(handle, "wb") as buffer:
        shutil.copyfileobj(upload.file, buffer)
    return path


def install_infer_route(fastapi_app: Any) -> None:
    """Put this app's ``POST /infer/{model}`` in front of MONAI Label's (idempotent).

    Same parameters and responses as MONAI Label's route (it calls MONAI Label's ``run_inference``), but: a plain
    ``def`` (FastAPI runs it in its thread pool, so the event loop keeps answering other requests), at most
    ``infer_concurrency`` inferences at once, the checks that answer 4xx before the model runs, the previous label
    (form field ``label``) passed on as ``params["label"]``, and the uploaded files removed on failure as well as on
    success.
    """
    path = f"{settings.MONAI_LABEL_API_STR}/infer/{{model}}"
    routes = fastapi_app.router.routes
    if any(getattr(r, "path", None) == path and getattr(r, "name", "") == "prato_infer" for r in routes):
        return

    def prato_infer(
        background_tasks: BackgroundTasks,
        model: str,
        image: str = "",
        session_id: str = "",
        params: str = Form("{}"),
        file: UploadFile = File(None),
        label: UploadFile = File(None),
        output: Optional[monailabel_infer.ResultType] = None,
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
    ):
        instance = app_instance()
        try:
            parsed = json.loads(params) if params else {}
        except json.JSONDecodeError as error:
            raise HTTPException(status_code=422, detail=f"form field 'params' is not valid JSON: {error}") from error
        if not isinstance(parsed, dict):
            raise HTTPException(status_code=422, detail=f"form field 'params' must be a JSON object, got {params!r}")
        unknown = instance.unknown_model(model) if hasattr(instance, "unknown_model") else None
        if unknown is not None:
            raise unknown
        if not file and not image and not session_id:
            raise HTTPException(status_code=422, detail="no image: upload it as form field 'file' or give a "
                                                        "datastore image id in the query ('?image=<id>')")
        if (image and not file and not session_id and not os.path.exists(image)
                and not instance.datastore().get_image_uri(image)):
            raise HTTPException(status_code=404, detail=f"unknown image id {image!r}: not in the datastore "
                                                        "(GET /datastore/?output=all lists the ids)")
        uploaded = _upload(file, "file", "upload.nii.gz") if file else None
        if uploaded:
            image = uploaded
            parsed["image_name"] = _file_name(file, "upload.nii.gz")
        try:
            previous = _upload(label, "label", "label.nii.gz") if label else None  # the previous label
        except BaseException:
            _remove(uploaded)
            raise
        if previous:
            parsed["label"] = previous
        try:
            response = monailabel_infer.run_inference(
                background_tasks, model, image, "" if uploaded else session_id, json.dumps(parsed), None, None, output,
            )
        except FutureTimeout as error:
            _remove(uploaded, previous)
            raise HTTPException(status_code=503, detail=(
                f"inference of {model!r} did not finish within {settings.MONAI_LABEL_INFER_TIMEOUT} s (waiting "
                "included; server busy): retry later, or start the server with more --workers")) from error
        except MONAILabelException as error:
            _remove(uploaded, previous)
            raise HTTPException(status_code=422, detail=f"{error.error.name}: {error.msg}") from error
        except BaseException:
            _remove(uploaded, previous)
            raise
        background_tasks.add_task(_remove, uploaded, previous)
        return response

    route = APIRoute(path, prato_infer, methods=["POST"], name="prato_infer",
                     summary="Run inference (PrATo bundles: thread pool, 4xx for bad requests)")
    routes.insert(0, route)
    logger.info("POST %s runs in the thread pool, %d inference(s) at once", path, app_instance().infer_concurrency)
