"""Pruning-aware losses and token-report summaries (prato_components/engine/losses.py, handlers.py)."""

import pytest
import torch
from conftest import UNETR_BOXES as BOXES
from conftest import UNETR_TINY as TINY
from conftest import tiny_unetr
from monai.losses import DiceCELoss

from prato_components.engine import PrunedSegLoss, label_on_grid, presence_on_grid, summarise_token_reports
from prato_components.networks import PrunedUNETR


def test_loss_and_sparsity_summary_use_the_network_report():
    net = tiny_unetr(pruner="prato").train()
    from monai.losses import DiceCELoss

    loss = PrunedSegLoss(DiceCELoss(to_onehot_y=True, softmax=True), net)
    x, label = torch.randn(2, 1, 64, 64), torch.randint(0, 3, (2, 1, 64, 64))
    value = loss(net(x, BOXES), label)
    assert value.ndim == 0 and torch.isfinite(value)
    base = DiceCELoss(to_onehot_y=True, softmax=True)
    pred = net(x, BOXES)
    assert value.item() == pytest.approx(base(pred, label).item(), abs=1e-5)  # PrATo has no side terms

    class WithSideTerms(torch.nn.Module):
        aux_loss = torch.tensor(2.0)
        aux_logits = [torch.zeros(2, 3, 4, 4)]

    side = PrunedSegLoss(base, WithSideTerms(), aux_weight=0.5, logits_weight=0.4)
    grid_label = label_on_grid(label, (4, 4), 3)
    expected = base(pred, label) + 1.0 + 0.4 * base(torch.zeros(2, 3, 4, 4), grid_label)
    torch.testing.assert_close(side(pred, label), expected)
    majority = label_on_grid(torch.tensor([[[[0, 2], [2, 1]]]]), (1, 1), 3)
    assert majority.tolist() == [[[[2]]]]
    summary = summarise_token_reports([net.token_report] * 2, [net.block_report] * 2)
    assert summary["kept_fraction/stage1"] == pytest.approx(0.75)
    assert summary["kept_fraction/stage2"] == pytest.approx(9 / 12)
    assert summary["kept_fraction"] == pytest.approx((4 * 16 + 3 * 12 + 5 * 9) / (12 * 16))
    assert summary["token_sparsity"] == pytest.approx(47 / 192)


def test_the_coarse_target_says_where_any_structure_is():
    """A cell holding any foreground is foreground for the coarse head (a small structure too), its foreground
    classes in proportion; the loss is the cross-entropy against that (binary for a single channel)."""
    label = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    label[0, 0, 0, 0], label[0, 0, 0, 1], label[0, 0, 3, 3] = 2, 1, 1  # one voxel of 4 (a quarter cell) each
    target = presence_on_grid(label, (2, 2), 3)
    assert target[0, :, 0, 0].tolist() == [0.0, 0.5, 0.5]  # the majority label says background here
    assert target[0, :, 1, 1].tolist() == [0.0, 1.0, 0.0] and target[0, :, 0, 1].tolist() == [1.0, 0.0, 0.0]
    assert label_on_grid(label, (2, 2), 3)[0, 0, 1, 1].item() == 0

    class WithCoarse(torch.nn.Module):
        coarse_logits = torch.randn(1, 3, 2, 2)

    loss = PrunedSegLoss(DiceCELoss(to_onehot_y=True, softmax=True), WithCoarse())
    pred = torch.zeros(1, 3, 4, 4)
    base = DiceCELoss(to_onehot_y=True, softmax=True)(pred, label)
    expected = base + torch.nn.functional.cross_entropy(WithCoarse.coarse_logits, target)
    torch.testing.assert_close(loss(pred, label), expected)


def test_the_click_focused_term_weights_the_cross_entropy_by_where_the_clicks_are():
    label = torch.tensor([[[[0, 1], [2, 1]]]])
    pred = torch.randn(1, 3, 2, 2, requires_grad=True)

    class WithClicks(torch.nn.Module):
        click_focus = torch.tensor([[[1.0, 0.5], [0.0, 0.0]]])

    base = DiceCELoss(to_onehot_y=True, softmax=True)
    loss = PrunedSegLoss(base, WithClicks(), click_weight=2.0)
    ce = torch.nn.functional.cross_entropy(pred, label[:, 0], reduction="none")[0]
    expected = base(pred, label) + 2.0 * (1.0 * ce[0, 0] + 0.5 * ce[0, 1]) / 1.5
    value = loss(pred, label)
    torch.testing.assert_close(value, expected)
    value.backward()
    assert float(pred.grad[0, :, 1, 0].abs().sum()) > 0  # the Dice term still reaches every voxel
    # off by default, and a batch whose images have no click (all weights 0) adds nothing
    torch.testing.assert_close(PrunedSegLoss(base, WithClicks())(pred, label), base(pred, label))
    WithClicks.click_focus = torch.zeros(1, 2, 2)
    torch.testing.assert_close(loss(pred, label), base(pred, label))
    with pytest.raises(ValueError, match=r"click_weight \(the bundles' click_training#focus\) must be a number >= 0"):
        PrunedSegLoss(base, WithClicks(), click_weight=-1.0)


def test_token_sparsity_means_the_same_for_every_backbone():
    """One definition: 1 - tokens the encoder's transformer blocks ran on / tokens they run on unpruned, per image.
    The bundles' default budget (keep 0.75 at stages 1 and 2) at 224 x 224, real grids, tiny widths."""
    from prato_components.networks import SegFormer

    x, box = torch.randn(1, 1, 224, 224), torch.tensor([[[40.0, 60.0, 180.0, 150.0]]])
    unetr = dict(TINY, img_size=224)

    def sparsity(net) -> float:
        with torch.no_grad():
            net.eval()(x, box)
        summary = summarise_token_reports([net.token_report], [net.block_report])
        assert summary["token_sparsity"] == pytest.approx(1 - net.kept_fraction())
        return summary["token_sparsity"]

    # UNETR: 14 x 14 = 196 tokens; blocks 0-3 run whole, 4-6 on 147 (stage 1), 7-11 on 110 (stage 2)
    torch.manual_seed(0)
    net = PrunedUNETR(**unetr, pruner="prato", pruner_kwargs={"keep_ratio": 0.75})
    assert sparsity(net) == pytest.approx(1 - (4 * 196 + 3 * 147 + 5 * 110) / (12 * 196))  # 0.2453
    # (the last pruned stage keeps 110 / 196 = 0.561 of the grid: the old, last-stage reading said 0.439)
    assert summarise_token_reports([net.token_report], [net.block_report])["kept_fraction/stage2"] == 110 / 147

    # SegFormer-B0 (depths 2, 2, 2, 2): grids 56^2, 28^2, 14^2, 7^2; stages 2 and 3 run on 588 and 147 tokens
    tiny_mit = dict(embed_dims=(8, 16, 32, 64), num_heads=(1, 1, 2, 2), decoder_dim=16)
    torch.manual_seed(0)
    net = SegFormer("b0", in_channels=1, pruner="prato", pruner_kwargs={"keep_ratio": 0.75}, **tiny_mit)
    full = 2 * (3136 + 784 + 196 + 49)
    assert sparsity(net) == pytest.approx(1 - (2 * 3136 + 2 * 588 + 2 * 147 + 2 * 49) / full)  # 0.0588

    # unpruned networks and keep_ratio 1.0 remove nothing
    for unpruned in (
        PrunedUNETR(**unetr),
        PrunedUNETR(**unetr, pruner="prato", pruner_kwargs={"keep_ratio": 1.0}),
        SegFormer("b0", in_channels=1, **tiny_mit),
        SegFormer("b0", in_channels=1, pruner="prato", pruner_kwargs={"keep_ratio": 1.0}, **tiny_mit),
    ):
        assert sparsity(unpruned) == 0.0 and unpruned.kept_fraction() == 1.0


def test_token_sparsity_summary_averages_per_image():
    from prato_components.tokens import BlockReport

    stages = [[], []]
    blocks = [
        [BlockReport(torch.tensor([4.0, 2.0]), 4), BlockReport(torch.tensor([4.0, 2.0]), 4)],  # images: 1, 0.5
        [BlockReport(torch.tensor([8.0]), 8), BlockReport(torch.tensor([0.0]), 8)],  # a larger image: 0.5
    ]
    summary = summarise_token_reports(stages, blocks)
    assert summary["kept_fraction"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert summary["token_sparsity"] == pytest.approx(1 / 3)
    assert summarise_token_reports([], []) == {"kept_fraction": 1.0, "token_sparsity": 0.0}
