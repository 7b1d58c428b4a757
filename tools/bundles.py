"""Generate and check the bundles: every ``bundles/<backbone>_<pruner>`` from one specification (``tools/bundlegen``).

The bundles are self-contained folders (MONAI bundle layout) committed to the repository; the generator is the
single place that defines them, so the folders never drift apart::

    python tools/bundles.py generate            # (re)write bundles/*/configs, docs, LICENSE
    python tools/bundles.py check               # fail if a committed bundle differs from the specification
    python tools/bundles.py list

Edit a bundle by editing the generator (``bundlegen/spec.py``: ``BACKBONES``, ``PRUNER_CONFIGS``; the config templates
in ``bundlegen/configs.py``) and regenerating. The 3D bundles (``BACKBONES_3D``, ``PRUNERS_BY_BACKBONE_3D``,
``BUNDLES_3D``) are built from the same templates with the changes of ``bundlegen/configs_3d.py`` (docs/design.md §12).
"""

from __future__ import annotations

import os
import sys

import fire

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools.bundlegen.cli import Bundles, bundle_files, reading_order_problems  # noqa: E402
from tools.bundlegen.order import forward_references  # noqa: E402
from tools.bundlegen.spec import (  # noqa: E402
    ALL_BUNDLES,
    BACKBONES,
    BACKBONES_3D,
    BUNDLES,
    BUNDLES_3D,
    PRUNERS_BY_BACKBONE,
    PRUNING_KEYS,
)

__all__ = ["ALL_BUNDLES", "BACKBONES", "BACKBONES_3D", "BUNDLES", "BUNDLES_3D", "PRUNERS_BY_BACKBONE", "PRUNING_KEYS",
           "Bundles", "bundle_files", "forward_references", "reading_order_problems"]

if __name__ == "__main__":
    fire.Fire(Bundles)
