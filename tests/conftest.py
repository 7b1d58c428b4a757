"""Shared fixtures: tiny synthetic data sets in the real layouts, and a helper to run bundles in-process."""

from __future__ import annotations

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def acdc_dir(tmp_path_factory) -> str:
    from tools.verify_bundles import make_tiny_acdc

    return make_tiny_acdc(str(tmp_path_factory.mktemp("acdc")))


@pytest.fixture(scope="session")
def isic_dir(tmp_path_factory) -> str:
    from prato_components.data import make_isic_like

    root = str(tmp_path_factory.mktemp("isic"))
    make_isic_like(root, num_images=6, size=(40, 48), seed=0)
    return root


def error_text(error: BaseException) -> str:
    """The messages of an exception and everything it was raised from (MONAI wraps transform errors)."""
    parts, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        parts.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or error.__context__
    return "\n".join(parts)


def tiny_overrides(bundle: str, config: str = "train") -> dict:
    """Overrides that shrink a bundle's network and data handling for CPU tests (32 x 32 images)."""
    from tools.verify_bundles import tiny_overrides as shrink

    return shrink(bundle, image_size=32, config=config)


def run_bundle(bundle: str, config: str, bundle_root: str, **overrides):
    """``python -m monai.bundle run`` in-process for ``bundles/<bundle>/configs/<config>.json``, tiny sizes."""
    from tools.verify_bundles import run_config

    return run_config(os.path.join(ROOT, "bundles", bundle), config, bundle_root, **{**tiny_overrides(bundle, config), **overrides})


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)
