"""Guided decoding (``decode_region="guided"``): the box window, widened to where the coarse head finds foreground
outside it, and a coarse head that leaves the rest of the network as it trains without one."""

import pytest
import torch
import torch.nn as nn
from conftest import image
from monai.losses import DiceCELoss
from test_region import BACKBONES, NET_SIZE, ONE_BOX, _unetr

from prato_components.engine import PrunedSegLoss
from prato_components.networks.region import BACKGROUND_LOGIT_GAP, coarse_boxes, decode_window

# the last module of each backbone's decoder: one call per decoder run, on the decoded region
LAST_MODULE = {"unetr": "out", "swin_unetr": "out", "transunet": "segmentation_head", "segformer": "head"}


class FixedCoarse(nn.Module):
    """A coarse head that finds foreground (class 1) exactly in ``cells`` of a ``grid`` (a stand-in for a network
    that sees the structure there)."""

    def __init__(self, grid, cells, out_channels: int = 3):
        super().__init__()
        self.grid, self.cells, self.out_channels = tuple(grid), cells, out_channels

    def forward(self, features):
        logits = torch.zeros(features.shape[0], self.out_channels, *self.grid)
        logits[:, 1:] = -BACKGROUND_LOGIT_GAP
        for index, cells in self.cells.items():
            logits[(index, 1, *cells)] = BACKGROUND_LOGIT_GAP
        return logits


def _decoder_regions(net, name):
    """Record the spatial size of every call of the backbone's last decoder module."""
    calls = []
    getattr(net, LAST_MODULE[name]).register_forward_hook(lambda m, i, o: calls.append(tuple(o.shape)))
    return calls


def test_coarse_boxes_bound_the_foreground_outside_the_window_only():
    window = decode_window(torch.tensor([[[8.0, 8.0, 20.0, 20.0]], [[8.0, 8.0, 20.0, 20.0]]]), (64, 64), 16, 0)
    assert window.starts == ((0, 0), (0, 0)) and window.size == (32, 32)
    coarse = torch.zeros(2, 3, 4, 4)  # a 16-voxel grid; background (probability 0.99) unless a cell says otherwise
    coarse[:, 0] = 5.0
    coarse[0, 2, 3, 2] = coarse[0, 1, 2, 3] = 5.0  # image 0: two cells outside the window (foreground 0.5)
    coarse[0, 1, 0, 3] = 3.5  # foreground 0.19 < 0.2: not found
    coarse[1, 1, 1, 1] = 6.0  # image 1: one cell, inside the window
    boxes = coarse_boxes(coarse, window, threshold=0.2)
    assert boxes.tolist() == [[[32.0, 32.0, 64.0, 64.0]], [[64.0, 64.0, 0.0, 0.0]]]  # image 1: a padding row
    assert coarse_boxes(coarse, window, threshold=0.6)[0].tolist() == [[64.0, 64.0, 0.0, 0.0]]  # 0.5 < 0.6


def test_guided_decoding_needs_the_coarse_head():
    with pytest.raises(ValueError, match="decode_region 'guided' needs the coarse head"):
        _unetr(decode_region="guided")


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_the_coarse_pass_adds_no_work_where_it_finds_nothing(name):
    build, margin, _ = BACKBONES[name]
    box_net = build(decode_region="box", decode_margin=margin).eval()
    guided = build(decode_region="guided", decode_margin=margin, coarse_head=True).eval()
    guided.load_state_dict(box_net.state_dict(), strict=False)
    x = image(2, NET_SIZE)
    with torch.no_grad():
        guided(x, ONE_BOX)
        grid = guided.coarse_logits.shape[2:]
        cell = 64 * grid[0] // NET_SIZE[0]  # the cell at pixel (64, 64), inside image 0's box
        guided.coarse_head = FixedCoarse(grid, {0: (slice(cell, cell + 1), slice(cell, cell + 1))})
        calls = _decoder_regions(guided, name)
        out, expected = guided(x, ONE_BOX), box_net(x, ONE_BOX)
    assert guided.last_decode_window == box_net.last_decode_window
    assert len(calls) == 1 and calls[0][0] == 2 and calls[0][2:] != tuple(NET_SIZE)  # one batched call, on windows
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_a_wrong_box_still_labels_what_the_coarse_pass_finds(name):
    build, margin, tolerance = BACKBONES[name]
    full_net = build().eval()
    guided = build(decode_region="guided", decode_margin=margin, coarse_head=True).eval()
    guided.load_state_dict(full_net.state_dict(), strict=False)
    wrong = torch.tensor([[[8.0, 8.0, 40.0, 40.0]]])  # the box in a corner; the structure lies at the far side
    x = image(1, NET_SIZE)
    with torch.no_grad():
        guided(x, wrong)
        grid = guided.coarse_logits.shape[2:]
        far = tuple(slice(g - 2, g - 1) for g in grid)  # a coarse cell near the far corner
        guided.coarse_head = FixedCoarse(grid, {0: far})
        calls = _decoder_regions(guided, name)
        # the coarse pass of UNETR and TransUNet runs before the first pruned stage: its box reaches the pruners too
        stride = NET_SIZE[0] // grid[0]
        found = torch.tensor([[[(g - 2) * stride for g in grid] + [(g - 1) * stride for g in grid]]])
        prompt = torch.cat([wrong, found], 1) if name in ("unetr", "transunet") else wrong
        out, full = guided(x, wrong), full_net(x, prompt)
        decoder_calls = list(calls)
        guided.decode_region = "box"
        boxed = guided(x, wrong)
    stride = NET_SIZE[0] // grid[0]
    structure = (0, slice(None), *(slice((g - 2) * stride, (g - 1) * stride) for g in grid))
    assert len(decoder_calls) == 1  # one decoder run over the box and the structure (here up to the whole image)
    assert float((out[structure] - full[structure]).abs().max()) < tolerance  # decoded as the full network does
    assert float(boxed[structure][1:].max()) == -BACKGROUND_LOGIT_GAP  # the box alone says background there
    assert guided.last_decode_window is not None


class ScaledCoarse(nn.Module):
    """A coarse head whose class-1 logit in ``cells`` is ``logit`` (background 0): foreground probability
    ``sigmoid(logit)`` there (a stand-in for a coarse pass of a given confidence)."""

    def __init__(self, grid, cells, logit: float, out_channels: int = 3):
        super().__init__()
        self.grid, self.cells, self.logit, self.out_channels = tuple(grid), cells, logit, out_channels

    def forward(self, features):
        logits = torch.zeros(features.shape[0], self.out_channels, *self.grid)
        logits[:, 1:] = -BACKGROUND_LOGIT_GAP
        logits[(0, 1, *self.cells)] = self.logit
        return logits


def test_coarse_threshold_decides_where_guided_decoding_looks():
    build, margin, _ = BACKBONES["unetr"]
    net = build(decode_region="guided", decode_margin=margin, coarse_head=True).eval()
    assert net.coarse_threshold == 0.4  # the default
    wrong = torch.tensor([[[8.0, 8.0, 40.0, 40.0]]])
    x = image(1, NET_SIZE)
    with torch.no_grad():
        net(x, wrong)
        grid = net.coarse_logits.shape[2:]
        net.coarse_head = ScaledCoarse(grid, tuple(slice(g - 2, g - 1) for g in grid), logit=-0.4)  # p = 0.40
        net(x, wrong)
        widened = net.last_decode_window
        net.coarse_threshold = 0.45  # the same cell is no longer foreground: the box window alone
        net(x, wrong)
        boxed = net.last_decode_window
    assert boxed is not None and boxed.size == (80, 80)  # 8..40 plus the 32-voxel margin, snapped to 16
    assert widened is None or widened.size > boxed.size  # up to the far cell: here the whole image


@pytest.mark.parametrize("value", [0.0, 1.0, -0.1, 1.5])
def test_coarse_threshold_must_be_a_probability(value):
    build, margin, _ = BACKBONES["unetr"]
    with pytest.raises(ValueError, match="coarse_threshold must be a probability strictly between 0 and 1"):
        build(decode_region="guided", decode_margin=margin, coarse_head=True, coarse_threshold=value)


def _train(net, steps: int = 3):
    loss = PrunedSegLoss(DiceCELoss(to_onehot_y=True, softmax=True), net)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(2, 1, *NET_SIZE, generator=generator)
        label = torch.zeros(2, 1, *NET_SIZE)
        label[:, :, 60:90, 64:100] = 1
        label[:, :, 70:80, 70:90] = 2
        optimizer.zero_grad()
        loss(net(x, ONE_BOX), label).backward()
        optimizer.step()
    return net


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_the_coarse_head_leaves_the_rest_of_the_training_unchanged(name):
    build, margin, _ = BACKBONES[name]
    box_net = _train(build(decode_region="box", decode_margin=margin).train())
    guided = build(decode_region="guided", decode_margin=margin, coarse_head=True)
    initial_head = {k: v.clone() for k, v in guided.coarse_head.state_dict().items()}
    _train(guided.train())
    trained, shared = guided.state_dict(), box_net.state_dict()
    assert set(trained) - set(shared) == {"coarse_head.conv.weight", "coarse_head.conv.bias"}
    for key, value in shared.items():
        assert torch.equal(trained[key], value), key
    assert not torch.equal(guided.coarse_head.state_dict()["conv.weight"], initial_head["conv.weight"])
