"""Shared fixtures and helpers: tiny synthetic data sets in the real layouts, a helper to run bundles in-process, the
bundles on disk, and the tiny networks, images and stage inputs the unit tests under ``pruners/``, ``networks/`` and
``tokens/`` share.

The suite runs on every core through pytest-xdist (``-n auto`` in setup.cfg): each worker process gets an equal
share of the cores for torch's threads (``worker_threads``), and subprocesses it starts inherit that share through
``OMP_NUM_THREADS``.

Test modules import the plain helpers with ``from conftest import ...``: pytest puts this folder on ``sys.path``
(rootdir-relative ``prepend`` import mode, no ``__init__.py``), so the same import works from every subfolder.

What the tests need comes from the package (``prato_components.verification`` runs bundles, shrinks them and makes
tiny data sets) and from the bundles on disk, not from ``tools/``: a test module imports a tool only when that tool is
what it tests (``tests/test_requirements.py`` holds the map and fails on any other import). The one exception is
``test_monailabel.py``, which starts the MONAI Label server through ``tools/monailabel_load.py``'s launcher."""

from __future__ import annotations

import json
import math
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from prato_components.data import make_isic_like  # noqa: E402
from prato_components.networks import PrunedSwinUNETR, PrunedUNETR, SegFormer, TransUNet  # noqa: E402 - repository on path
from prato_components.pruners import MultiLayerTokenAssembly  # noqa: E402
from prato_components.tokens import TokenState  # noqa: E402
from prato_components.tokens.attention import ReducedAttention, WindowAttention, reduced_key_cells  # noqa: E402
from prato_components.verification import find_bundles, make_tiny_acdc, run_config, spatial_dims  # noqa: E402
from prato_components.verification import tiny_overrides as shrink  # noqa: E402


def worker_threads() -> int:
    """Torch threads for this pytest process: the cores it may use divided by the number of xdist workers (at least
    one), and no more than ``OMP_NUM_THREADS`` when that is set."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        threads = min(threads, int(os.environ["OMP_NUM_THREADS"]))
    return threads


THREADS = worker_threads()
torch.set_num_threads(THREADS)
os.environ["OMP_NUM_THREADS"] = str(THREADS)  # the subprocesses a test starts (bundle runs, torchrun, servers)

# tests that share something other than their tmp_path run on one worker, one after another (``--dist loadgroup``):
# fixture -> xdist group. The MONAI Label server tests share the server's venv (built on first use) and the app
# folder the server writes its logs into; the bundles they serve are trained once for them and the in-process tests.
XDIST_GROUPS = {
    "monailabel_python": "monailabel_server",
    "served_bundles": "monailabel_server",
    "served_3d": "monailabel_server",
    "trained": "checkpoint_settings",  # tests/test_checkpoint_settings.py's trained bundle
    "work": "bad_inputs",  # tests/test_bad_inputs.py's data and one-epoch bundle
    "unetr_export": "unetr_export",  # tests/test_verify_bundles.py's exported program
}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test in at most one xdist group; under xdist the ``slow`` tests are handed out first, so that the longest
    ones do not end the run on one worker while the others wait (the same order on every worker)."""
    for item in items:
        group = next((g for f, g in XDIST_GROUPS.items() if f in getattr(item, "fixturenames", ())), None)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
    if "PYTEST_XDIST_WORKER" in os.environ:
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)


BUNDLES_DIR = os.path.join(ROOT, "bundles")
SCHEMA = os.path.join(ROOT, "schemas", "meta_schema.json")
ALL_BUNDLES = find_bundles(BUNDLES_DIR)
BUNDLES_3D = [name for name in ALL_BUNDLES if spatial_dims(os.path.join(BUNDLES_DIR, name)) == 3]
BUNDLES = [name for name in ALL_BUNDLES if name not in BUNDLES_3D]  # the 2D bundles


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


BUNDLE_VERSION = read_json(os.path.join(BUNDLES_DIR, "unetr_prato", "configs", "metadata.json"))["version"]


@pytest.fixture(scope="session")
def acdc_dir(tmp_path_factory) -> str:
    return make_tiny_acdc(str(tmp_path_factory.mktemp("acdc")))


@pytest.fixture(scope="session")
def isic_dir(tmp_path_factory) -> str:
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
    return shrink(bundle, image_size=32, config=config)


def run_bundle(bundle: str, config: str, bundle_root: str, **overrides):
    """``python -m monai.bundle run`` in-process for ``bundles/<bundle>/configs/<config>.json``, tiny sizes."""
    return run_config(
        os.path.join(BUNDLES_DIR, bundle), config, bundle_root, **{**tiny_overrides(bundle, config), **overrides}
    )


# ---------------------------------------------------------------------------------------------- tiny UNETR and inputs
UNETR_TINY = dict(
    in_channels=1, out_channels=3, img_size=64, spatial_dims=2, hidden_size=32, mlp_dim=64, num_heads=2, feature_size=8
)
UNETR_GRID = (4, 4)  # the tiny UNETR's token grid: 64 / 16 per axis
UNETR_TOKENS = 16
UNETR_BOXES = torch.tensor([[16.0, 16.0, 48.0, 40.0], [0.0, 8.0, 30.0, 64.0]])  # one box per image of a batch of 2
COMMON_PRUNERS = ("random", "tram", "stp", "dynamicvit")  # the pruners the common-interface tests run on UNETR


def tiny_unetr(pruner=None, completion=None, **kwargs) -> PrunedUNETR:
    """A 64 x 64, 2D, width-32 PrunedUNETR (4 x 4 tokens), pruned at stages 1 and 2 unless told otherwise; seed 0."""
    torch.manual_seed(0)
    kwargs.setdefault("prune_stages", (1, 2))
    return PrunedUNETR(**{**UNETR_TINY, "pruner": pruner, "completion": completion, **kwargs})


def tiny_mta(**kwargs) -> MultiLayerTokenAssembly:
    """STP's multi-layer token assembly at the tiny UNETR's width."""
    return MultiLayerTokenAssembly(32, num_heads=2, **kwargs)


def image(batch: int = 2, size=(64, 64), seed: int = 1) -> torch.Tensor:
    """A seeded random single-channel image batch ``[batch, 1, *size]``."""
    return torch.randn(batch, 1, *size, generator=torch.Generator().manual_seed(seed))


def stage_input(tokens, *, boxes=None, attentions=(), grid=None, stage: int = 1, stride=(16.0, 16.0)):
    """A pruner's ``StageInput``: of ``tokens`` ``[B, N, C]`` on a fresh square grid (``grid`` if given), or of a
    ``TokenState`` as it stands."""
    if isinstance(tokens, TokenState):
        state = tokens
    else:
        side = math.isqrt(tokens.shape[1])
        state = TokenState(tokens, grid or (side, side))
    return state.stage_input(stage, stride, boxes, list(attentions))


def random_attention(batch: int, heads: int, num: int, seed: int = 0) -> torch.Tensor:
    """Seeded random attention probabilities ``[batch, heads, num, num]``."""
    logits = torch.randn(batch, heads, num, num, generator=torch.Generator().manual_seed(seed))
    return logits.softmax(dim=-1)


def record_selections(net: PrunedUNETR) -> list:
    """(StageInput, TokenSelection) of every pruner call."""
    calls = []
    for pruner in net.pruners.values():
        pruner.register_forward_hook(lambda module, args, out: calls.append((args[0], out)))
    return calls


def tokens_after_stage1(net: PrunedUNETR) -> list:
    """Shapes of the tokens block 4 (after the first stage) runs on."""
    shapes = []
    net.vit.blocks[4].attn.qkv.register_forward_hook(lambda module, args, out: shapes.append(tuple(args[0].shape)))
    return shapes


# ---------------------------------------------------------------------------------------------- hierarchical attention
def window_example(heads: int = 2, seed: int = 0):
    """Two images on a 2 x 3 grid (6 cells), windows of 3 slots: image 0 has a full window (cells 0, 1, 2) and one
    with a single live token (cell 3; a pruned and a padding slot), image 1 one window (cells 0, 2 live, a pruned
    slot). Returns the WindowAttention and its block-diagonal dense map ``[B, heads, 6, 6]`` over the grid."""
    cells = torch.tensor([[0, 1, 2], [3, 12, 12], [6, 12, 8]])  # 12 = B * N: no live token in the slot
    logits = torch.randn(3, heads, 3, 3, generator=torch.Generator().manual_seed(seed))
    logits[1, :, :, 1] = float("-inf")  # the pruned slot of window 1 is a masked key (the padding slot stays a key)
    logits[2, :, :, 1] = float("-inf")
    attention = WindowAttention(logits.softmax(-1), cells, (2, 3), batch_size=2)
    dense = torch.zeros(2, heads, 6, 6)
    for w in range(3):
        for i in range(3):
            for j in range(3):
                if cells[w, i] < 12 and cells[w, j] < 12:
                    b, ci, cj = int(cells[w, i]) // 6, int(cells[w, i]) % 6, int(cells[w, j]) % 6
                    dense[b, :, ci, cj] = attention.probs[w, :, i, j]
    return attention, dense


def reduced_example(valid: bool = True):
    """One 4 x 4 grid (two images), sr ratio 2: 4 keys; 5 live query rows (image 1: one padding row)."""
    keys = reduced_key_cells((4, 4), 2)
    probs = torch.rand(2, 2, 5, 4, generator=torch.Generator().manual_seed(3)).softmax(-1)
    cells = torch.tensor([[0, 3, 5, 10, 15], [1, 2, 8, 12, 16]])
    query_valid = torch.tensor([[True] * 5, [True] * 4 + [False]]) if valid else None
    attention = ReducedAttention(probs, cells if valid else cells.clamp(max=15), query_valid, keys, (4, 4))
    token_map = probs[..., keys] / 4.0  # each key spread evenly over its 4 tokens: [B, heads, 5, 16]
    return attention, token_map


SEGFORMER_TINY = dict(embed_dims=(8, 16, 24, 32), depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 4), decoder_dim=16)
SWIN_TINY = dict(
    in_channels=1, out_channels=3, feature_size=12, spatial_dims=2, depths=(2, 2, 2, 2), num_heads=(3, 3, 3, 3)
)
TRANSUNET_IMG = (96, 96)  # a 6x6 token grid at stride 16


def tiny_segformer(**kwargs) -> SegFormer:
    """A tiny SegFormer-B0 (stage grids 16, 8, 4, 2 at 64 x 64)."""
    config = dict(variant="b0", in_channels=1, out_channels=3, **SEGFORMER_TINY)
    config.update(kwargs)
    torch.manual_seed(0)
    return SegFormer(**config)


def tiny_swin_unetr(**kwargs) -> PrunedSwinUNETR:
    """A tiny 2D Swin UNETR in eval mode."""
    torch.manual_seed(0)
    return PrunedSwinUNETR(**{**SWIN_TINY, **kwargs}).eval()


def tiny_transunet(**kwargs) -> TransUNet:
    """A tiny TransUNet (8 ViT blocks: boundaries after blocks 2, 4, 6)."""
    config = dict(
        in_channels=1,
        out_channels=3,
        img_size=TRANSUNET_IMG,
        cnn_layers=(1, 1, 1),
        cnn_width=8,
        cnn_norm=("group", {"num_groups": 4}),
        hidden_size=32,
        mlp_dim=64,
        num_layers=8,
        num_heads=2,
        head_channels=16,
        decoder_channels=(16, 8, 8, 4),
    )
    config.update(kwargs)
    torch.manual_seed(0)
    return TransUNet(**config)
