"""Mixed precision: every bundle network (backbone x pruner, tiny widths) under ``torch.autocast("cpu", bfloat16)``
(and a few under float16, the dtype of MONAI's CUDA autocast) matches float32, and the bundles' ``amp`` key reaches
MONAI's trainer and evaluators.

Tolerances. bfloat16 keeps 8 significant bits (relative rounding 2^-9 = 0.2 % per operation); through the tiny
networks' 10-30 matmuls / convolutions the logits' relative L2 error measures 0.2-1.8 % (UNETR with TRAM 8 %: its
attention-graph scores of a random-weight network are near-uniform, so a couple of near-tied tokens swap and
the pruned tokens' values differ), hence ``REL_LOGITS = 0.15``; the parameter gradients measure a cosine
similarity >= 0.993 with float32, hence ``MIN_GRAD_COSINE = 0.98``. A tolerance that a dtype bug (a pruner scoring
a bf16 sigmoid saturated at 1.0, boxes rounded to bf16) breaks is what these tests are for: before the pruners
scored in float32 TRAM crashed under autocast (``scatter`` of bf16 scores into a float32 grid).

Kept tokens: at each stage boundary the float32 and bf16 runs must keep the same tokens, except tokens whose float32
score lies within the scores' own bf16 perturbation of the top-k boundary (a near-tie the precision can flip: a
swap of tokens ``i, j`` needs ``s_j - s_i <= |e_i| + |e_j|``, ``e`` the score difference of the two runs).
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
from conftest import BUNDLES_DIR, stage_input, tiny_overrides
from monai.bundle import ConfigParser
from monai.engines import SupervisedTrainer

import prato_components.pruners as pruners_package
from prato_components.engine import PromptedInferer
from prato_components.pruners import PrATo, base
from prato_components.verification import _network, _network_overrides

REL_LOGITS = 0.15
MIN_GRAD_COSINE = 0.98
PRUNERS = ("baseline", "prato", "stp", "dynamicvit", "evovit", "dtop", "tram", "random")
CASES = [f"{b}_{p}" for b in ("unetr", "transunet", "swin_unetr", "segformer") for p in PRUNERS]
CASES += ["unetr3d_prato", "swin_unetr3d_prato"]
SCORING_MODULES = [getattr(pruners_package, name) for name in ("prato", "stp", "dynamicvit", "evovit", "dtop",
                                                                    "tram", "random")]


def _record_topk(monkeypatch) -> list:
    """Record ``(scores, valid, keep_mask)`` of every ``select_topk`` call of the pruners."""
    calls = []

    def recording(scores, keep_ratio, valid=None):
        selection = base.select_topk(scores, keep_ratio, valid)
        calls.append((scores.detach().float(), valid, selection.keep_mask))
        return selection

    for module in SCORING_MODULES:
        monkeypatch.setattr(module, "select_topk", recording)
    return calls


def _logits(network, image, boxes, dtype) -> torch.Tensor:
    """Eval-mode logits (float32) under autocast to ``dtype`` or in float32 (``None``)."""
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        return network.eval()(image, boxes=boxes).float()


def _gradient(network, image, boxes, dtype, train: bool) -> torch.Tensor:
    """The flat parameter gradient of ``mean(logits^2)`` in training (``train``) or eval mode."""
    network.train(train)
    torch.manual_seed(2)  # the same draws (random pruner, DynamicViT's Gumbel noise) in both runs
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        logits = network(image, boxes=boxes)
    logits.float().square().mean().backward()
    return torch.cat([p.grad.flatten() for p in network.parameters() if p.grad is not None])


def _check_selections(full: list, half: list) -> None:
    """Stage by stage the same kept tokens up to near-ties; stops at the first stage whose selections differ (the
    next stages then see different tokens)."""
    for (s32, valid, keep32), (s16, _, keep16) in zip(full, half):
        if keep32.shape != keep16.shape or torch.equal(keep32, keep16):
            if keep32.shape != keep16.shape:
                return
            continue
        margin = 2 * (s16 - s32).abs().amax(dim=1, keepdim=True) + 1e-6
        ranked = s32 if valid is None else s32.masked_fill(~valid, float("-inf"))
        k = int(keep32.sum(1).min())
        top = ranked.topk(min(k + 1, ranked.shape[1]), dim=1).values
        boundary = (top[:, k - 1:k] + top[:, -1:]) / 2
        swapped = keep32 != keep16
        assert ((s32 - boundary).abs() <= margin)[swapped].all(), "bf16 kept tokens that are not near-ties"
        return


FLOAT16_CASES = ("unetr_prato", "unetr_tram", "segformer_evovit", "swin_unetr_dtop", "transunet_dynamicvit")


@pytest.mark.parametrize("name, dtype", [pytest.param(n, torch.bfloat16, id=f"{n}-bf16") for n in CASES]
                         + [pytest.param(n, torch.float16, id=f"{n}-fp16") for n in FLOAT16_CASES])
def test_autocast_matches_float32(name, dtype, monkeypatch):
    """bf16 everywhere; float16 (MONAI's CUDA autocast dtype, here on the CPU) on the pruners that score from
    attention, relevance or auxiliary heads."""
    bundle_dir = os.path.join(BUNDLES_DIR, name)
    torch.manual_seed(0)
    network, in_channels, size = _network(bundle_dir, None, _network_overrides(bundle_dir))
    dims = 3 if "3d" in name else 2
    torch.manual_seed(1)
    image = torch.randn(2, in_channels, *[size] * dims)
    boxes = torch.tensor([[size / 4] * dims + [size * 3 / 4] * dims] * 2)[:, None]
    calls = _record_topk(monkeypatch)
    logits32 = _logits(network, image, boxes, None)
    full = list(calls)
    calls.clear()
    logits16 = _logits(network, image, boxes, dtype)
    rel = ((logits16 - logits32).norm() / logits32.norm()).item()
    assert rel < REL_LOGITS, f"relative logits error {rel:.4f}"
    if "baseline" not in name:
        assert full and len(full) == len(calls)
        _check_selections(full, calls)
    assert logits16.isfinite().all()
    # the tiny 3D Swin UNETR's bottleneck has 2^3 voxels: MONAI's instance norm on 8 values overflows in a bf16
    # backward in training mode (at the bundle's 96^3 window the gradients' cosine is 1.0000); checked in eval mode
    train = name != "swin_unetr3d_prato"
    grads32 = _gradient(copy.deepcopy(network), image, boxes, None, train)
    grads16 = _gradient(copy.deepcopy(network), image, boxes, dtype, train)
    cosine = torch.nn.functional.cosine_similarity(grads16, grads32, dim=0).item()
    assert cosine > MIN_GRAD_COSINE, f"gradient cosine {cosine:.4f}"


def test_pruner_scores_in_float32_and_returns_scores_in_token_dtype():
    """Under autocast a pruner sees float32 tokens and feature map (box coordinates and sigmoid scores keep full
    precision) and hands back differentiable scores in the tokens' dtype, keeping the float32 selection."""
    pruner = PrATo(dim=16, proj_dim=8, keep_ratio=0.5, protect_boxes=True)
    seen = []
    pruner.register_forward_pre_hook(lambda module, args: seen.append((args[0].tokens.dtype,
                                                                       args[0].feature_map().dtype)))
    tokens = torch.randn(2, 16, 16).bfloat16().requires_grad_()
    box = torch.tensor([[[3.3, 5.1, 37.7, 41.9]]]).expand(2, -1, -1)
    inputs = stage_input(tokens, boxes=box, grid=(4, 4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        selection = pruner(inputs)
    assert seen[-1] == (torch.float32, torch.float32)
    assert selection.scores.dtype == torch.bfloat16
    selection.scores.float().sum().backward()
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0
    reference = pruner(stage_input(tokens.detach().float(), boxes=box, grid=(4, 4)))
    assert seen[-1] == (torch.float32, torch.float32)
    assert torch.equal(selection.keep_mask, reference.keep_mask)


@pytest.mark.parametrize("config", ["train", "evaluate", "inference"])
def test_bundle_amp_key_reaches_trainer_and_evaluators(config, tmp_path, acdc_dir):
    """``amp`` (default: whether the device is CUDA) is passed to ``SupervisedTrainer`` and the validation, test and
    inference evaluators. MONAI 1.6.1 then runs ``torch.autocast("cuda")`` and a CUDA ``GradScaler``, which on a
    CPU-only machine disable themselves with a warning: a run with ``amp`` on a CPU computes in float32."""
    bundle_dir = os.path.join(BUNDLES_DIR, "unetr_prato")
    parser = ConfigParser()
    files = {"train": ["train"], "evaluate": ["train", "evaluate"], "inference": ["inference"]}[config]
    parser.read_config([os.path.join(bundle_dir, "configs", f"{f}.json") for f in files])
    assert parser.get("amp") == "$@device.type == 'cuda'"
    parser.update({**tiny_overrides("unetr_prato", config), "bundle_root": str(tmp_path),
                   "dataset_dir": acdc_dir, "amp": True})
    if config != "train":
        parser["handlers"] = []  # no checkpoint to load
    if config == "inference":
        parser["datalist"] = []
    engines = {"train": ["train#trainer", "validate#evaluator"], "evaluate": ["evaluator"],
               "inference": ["evaluator"]}[config]
    for key in engines:
        parser.ref_resolver.reset()
        assert parser.get_parsed_content(key, lazy=False).amp is True, key
    parser["amp"] = "$@device.type == 'cuda'"
    parser.ref_resolver.reset()
    assert parser.get_parsed_content(engines[0], lazy=False).amp is torch.cuda.is_available()


def test_monai_amp_on_cpu_computes_in_float32():
    """What a bundle run with ``amp`` does on a CPU-only machine (MONAI 1.6.1): the trainer's ``GradScaler`` and
    ``torch.autocast("cuda")`` disable themselves, so the step is a float32 step."""
    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only behaviour")
    network = torch.nn.Linear(4, 2)
    data = [{"image": torch.randn(2, 4), "label": torch.randn(2, 2)}]
    seen = []
    network.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    with pytest.warns(UserWarning, match="CUDA is not available"):
        trainer = SupervisedTrainer(torch.device("cpu"), 1, data, network, torch.optim.SGD(network.parameters(), 0.1),
                                    torch.nn.MSELoss(), amp=True)
        trainer.run()
    assert trainer.amp and seen == [torch.float32]


def test_prompted_inferer_gives_float32_logits_under_autocast():
    """The 2D inferer (images and volumes slice by slice) returns logits in the image's dtype under autocast, as
    MONAI's sliding window does for the 3D bundles, so the postprocessing (softmax, inversion, saving) sees float32."""
    bundle_dir = os.path.join(BUNDLES_DIR, "segformer_prato")
    network, in_channels, size = _network(bundle_dir, None, _network_overrides(bundle_dir))
    inferer = PromptedInferer(spatial_dims=2, slice_batch_size=2)
    box = torch.tensor([[[10.0, 12.0, 40.0, 50.0]]])
    for image in (torch.randn(1, in_channels, size, size), torch.randn(1, in_channels, size, size, 3)):
        with torch.no_grad():
            reference = inferer(image, network, boxes=box)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = inferer(image, network, boxes=box)
        assert logits.dtype == torch.float32 and logits.shape == reference.shape
        assert ((logits - reference).norm() / reference.norm()).item() < REL_LOGITS
