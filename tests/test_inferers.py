"""The prompt-aware sliding-window inferer (prato_components/engine/inferers.py): skipped windows, per-window boxes,
and equality with MONAI's sliding_window_inference when every window is computed."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference

from prato_components.engine import PromptedSlidingWindowInferer
from prato_components.networks import PrunedUNETR
from prato_components.networks.region import background_logits
from prato_components.prompts import box_is_padding, clip_boxes, padding_boxes

PAD3 = padding_boxes(1, 3)[0]


class Recorder(torch.nn.Module):
    """A 3-class network that ignores its prompt but records every window's boxes and first voxel value."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(1, 3, 3, padding=1)
        self.calls: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def forward(self, x: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        self.calls.append((x[:, 0, 0, 0, 0].clone(), None if boxes is None else boxes.clone()))
        return self.conv(x)


def coordinates_volume(shape=(40, 40, 40)) -> torch.Tensor:
    """A volume whose voxel value encodes its position, so a window's first voxel names the window."""
    grids = torch.meshgrid(*(torch.arange(s, dtype=torch.float32) for s in shape), indexing="ij")
    return (grids[0] * 10000 + grids[1] * 100 + grids[2])[None, None]


def window_start(value: float) -> tuple[int, int, int]:
    v = int(round(value))
    return v // 10000, (v // 100) % 100, v % 100


def test_windows_that_miss_the_boxes_are_skipped_and_say_background():
    net, image = Recorder(), coordinates_volume()
    inferer = PromptedSlidingWindowInferer(roi_size=16, sw_batch_size=4, overlap=0.25, margin=0)
    box = torch.tensor([[[2.0, 2.0, 2.0, 10.0, 10.0, 10.0]]])
    with torch.no_grad():
        out = inferer(image, net, boxes=box)
    # window starts 0, 12, 24 per axis: 27 windows; only the one at the origin overlaps the box
    report = inferer.last_report
    assert (report.windows, report.total, report.num_computed, report.skipped) == (27, 27, 1, 26)
    assert sum(len(x) for x, _ in net.calls) == 1
    torch.testing.assert_close(out[..., :16, :16, :16], net.conv(image[..., :16, :16, :16]))
    background = background_logits(1, 3, (40, 40, 40), out)
    covered = torch.zeros(40, 40, 40, dtype=torch.bool)
    covered[:16, :16, :16] = True
    assert torch.equal(out[..., ~covered], background[..., ~covered])
    assert (out.argmax(1)[0][~covered] == 0).all()
    # a margin of 4 voxels reaches the windows starting at 12 (start < 10 + 4) on each axis: 2 x 2 x 2
    inferer.margin = 4
    inferer(image, net, boxes=box)
    assert inferer.last_report.computed == (8,)


def test_each_window_gets_its_boxes_shifted_and_clipped():
    net, image = Recorder(), coordinates_volume()
    boxes = torch.tensor([[[2.0, 2.0, 2.0, 14.0, 14.0, 14.0], [30.0, 30.0, 30.0, 38.0, 38.0, 38.0]]])
    inferer = PromptedSlidingWindowInferer(roi_size=(16, 16, 16), sw_batch_size=3, overlap=0.25, margin=0)
    with torch.no_grad():
        inferer(image, net, boxes=boxes)
    # the first box reaches the windows starting at 0 and 12 per axis (8), the second only the one at 24, 24, 24
    assert inferer.last_report.computed == (9,)
    seen = {}
    for firsts, window_boxes in net.calls:
        assert window_boxes.shape[1:] == (2, 6)
        for first, rows in zip(firsts.tolist(), window_boxes):
            seen[window_start(first)] = rows
    assert len(seen) == 9
    for start, rows in seen.items():
        shift = torch.tensor([*start, *start], dtype=torch.float32)
        expected = clip_boxes(boxes[0] - shift, (16, 16, 16), empty_to_padding=True)
        torch.testing.assert_close(rows, expected)
        missed = [(lo >= 16).any() or (hi <= 0).any() for lo, hi in zip(boxes[0, :, :3] - shift[:3],
                                                                          boxes[0, :, 3:] - shift[3:])]
        assert box_is_padding(rows).tolist() == missed
    torch.testing.assert_close(seen[(12, 0, 12)][0], torch.tensor([0.0, 2.0, 0.0, 2.0, 14.0, 2.0]))
    torch.testing.assert_close(seen[(24, 24, 24)], torch.stack([PAD3, torch.tensor([6.0, 6, 6, 14, 14, 14])]))


def test_without_a_box_every_window_is_computed():
    net, image = Recorder(), coordinates_volume((40, 40, 28))
    inferer = PromptedSlidingWindowInferer(roi_size=16, sw_batch_size=8, margin=0)
    with torch.no_grad():
        inferer(image, net)
        # starts 0, 12, 24 on the first two axes, 0, 12 on the last
        assert inferer.last_report.computed == (18,) and all(b is None for _, b in net.calls)
        net.calls.clear()
        both = torch.cat([image, image + 1e6])  # the second image's values name it
        boxes = torch.stack([torch.tensor([[1.0, 1, 1, 3, 3, 3]]), PAD3[None]])  # the second image: padding only
        inferer(both, net, boxes=boxes)
    assert inferer.last_report.computed == (1, 18) and inferer.last_report.skipped == 17
    rows = [(first >= 1e6, b) for firsts, boxes_ in net.calls for first, b in zip(firsts.tolist(), boxes_)]
    assert sum(second for second, _ in rows) == 18
    assert all(bool(box_is_padding(b).all()) for second, b in rows if second)
    torch.testing.assert_close([b for second, b in rows if not second][0], torch.tensor([[1.0, 1, 1, 3, 3, 3]]))


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
@pytest.mark.parametrize("shape", [(40, 36, 28), (20, 36, 12)])  # the second is smaller than the window: padded
def test_a_box_over_the_whole_volume_equals_monai_sliding_window(mode, shape):
    net = Recorder()
    image = torch.randn(2, 1, *shape, generator=torch.Generator().manual_seed(0))
    whole = torch.tensor([[0.0, 0.0, 0.0, *shape]]).expand(2, 1, 6)
    inferer = PromptedSlidingWindowInferer(roi_size=(24, 24, 16), sw_batch_size=3, overlap=0.5, mode=mode, margin=0)
    with torch.no_grad():
        ours = inferer(image, net, boxes=whole)
        theirs = sliding_window_inference(image, (24, 24, 16), 3, net, overlap=0.5, mode=mode)
    assert inferer.last_report.skipped == 0
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_pruned_unetr_3d_with_a_whole_volume_box_equals_monai_sliding_window():
    torch.manual_seed(0)
    net = PrunedUNETR(in_channels=1, out_channels=3, img_size=32, spatial_dims=3, hidden_size=32, mlp_dim=64,
                      num_heads=2, feature_size=8, pruner="prato", decode_region="box").eval()
    image = MetaTensor(torch.randn(1, 1, 48, 40, 32, generator=torch.Generator().manual_seed(1)))
    inferer = PromptedSlidingWindowInferer(roi_size=32, sw_batch_size=2, overlap=0.25, margin=0)
    window_box = torch.tensor([[[0.0, 0.0, 0.0, 32.0, 32.0, 32.0]]])
    with torch.no_grad():
        ours = inferer(image, net, boxes=torch.tensor([[0.0, 0.0, 0.0, 48.0, 40.0, 32.0]]))
        theirs = sliding_window_inference(image, 32, 2, lambda x: net(x, boxes=window_box.expand(len(x), 1, 6)))
    assert isinstance(ours, MetaTensor) and inferer.last_report.computed == (4,)
    torch.testing.assert_close(ours.as_tensor(), theirs.as_tensor(), atol=1e-5, rtol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="sw_batch_size"):
        PromptedSlidingWindowInferer(16, sw_batch_size=0)
    with pytest.raises(ValueError, match="margin"):
        PromptedSlidingWindowInferer(16, margin=-1)
    with pytest.raises(ValueError, match=r"boxes must be \[B=1, M, 6\]"):
        PromptedSlidingWindowInferer(16)(torch.zeros(1, 1, 16, 16, 16), Recorder(), boxes=torch.zeros(1, 1, 4))


def test_token_reports_of_every_window_reach_the_sparsity_handler():
    from types import SimpleNamespace

    from prato_components.engine import TokenSparsityHandler

    torch.manual_seed(0)
    net = PrunedUNETR(in_channels=1, out_channels=3, img_size=32, spatial_dims=3, hidden_size=32, mlp_dim=64,
                      num_heads=2, feature_size=8, pruner="prato").eval()
    inferer = PromptedSlidingWindowInferer(roi_size=32, sw_batch_size=1, overlap=0.0, margin=0)
    handler = TokenSparsityHandler(net, inferer=inferer)
    engine = SimpleNamespace(state=SimpleNamespace(metrics={}))
    handler._reset(engine)
    with torch.no_grad():  # 3 x 1 x 1 windows; the box reaches the first two
        inferer(torch.randn(1, 1, 96, 32, 32), net, boxes=torch.tensor([[[4.0, 4.0, 4.0, 40.0, 30.0, 30.0]]]))
    handler._collect(engine)
    handler._publish(engine)
    assert len(inferer.network_reports) == 2
    metrics = engine.state.metrics
    assert (metrics["windows_computed"], metrics["windows_total"]) == (2.0, 3.0)
    assert metrics["windows_computed_fraction"] == pytest.approx(2 / 3)
    assert metrics["kept_fraction/stage1"] == pytest.approx(0.75)  # 8 tokens per window, keep 6


class GuidedRecorder(Recorder):
    """A guided network whose coarse pass finds foreground where the volume's coordinates say so (``x >= 24``),
    counting the windows it scans."""

    decode_region = "guided"

    def __init__(self) -> None:
        super().__init__()
        self.scans = 0

    def finds_foreground(self, x: torch.Tensor) -> torch.Tensor:
        self.scans += x.shape[0]
        return torch.tensor([window_start(float(v))[0] >= 24 for v in x[:, 0, 0, 0, 0]])


def test_a_guided_network_computes_the_untouched_windows_its_coarse_pass_finds_foreground_in():
    net, image = GuidedRecorder(), coordinates_volume()
    inferer = PromptedSlidingWindowInferer(roi_size=16, sw_batch_size=4, overlap=0.25, margin=0)
    box = torch.tensor([[[2.0, 2.0, 2.0, 10.0, 10.0, 10.0]]])  # a box at the origin; the "structure" at x >= 24
    with torch.no_grad():
        out = inferer(image, net, boxes=box)
    report = inferer.last_report
    assert report.scanned == (26,) and net.scans == 26  # every window the box does not touch, once
    assert report.computed == (1 + 9,)  # the box's window and the nine windows starting at x = 24
    starts = {window_start(float(v)) for x, _ in net.calls for v in x}
    assert {s for s in starts if s[0] == 24} == {(24, y, z) for y in (0, 12, 24) for z in (0, 12, 24)}
    # labelled by the window at (24, 0, 0) where no other computed window overlaps it, not background
    torch.testing.assert_close(out[..., 24:, :12, :12], net.conv(image[..., 24:, :16, :16])[..., :12, :12], rtol=1e-4,
                               atol=1e-3)  # voxel values up to 4e5: float32 blending
    for _, boxes in net.calls[1:]:
        assert box_is_padding(boxes).all()  # the structure's windows run without a prompt
