"""Click prompts: ``network(image, boxes, points, point_labels, previous_mask, prompt_class)`` on every backbone, the
checks of the clicks, how the clicks act (guidance, pruning, decoding window) and the work a ``ClickSession`` reuses
between clicks."""

import pytest
import torch
from conftest import image

from prato_components.engine import PromptedInferer, PromptedSlidingWindowInferer
from prato_components.engine.inferers import points_for_slices, points_in_window
from prato_components.networks import ClickSession, PrunedSwinUNETR, PrunedUNETR, SegFormer, SessionNetwork, TransUNet
from prato_components.networks.clicks import click_maps
from prato_components.prompts import validate_points, validate_prompt_class

SIZE = (64, 64)
BOX = torch.tensor([[[4.0, 6.0, 28.0, 30.0]], [[30.0, 20.0, 60.0, 50.0]]])
# image 0: a foreground click inside the box and one outside it; image 1: foreground, background and a padding row
POINTS = torch.tensor([[[10.0, 12.0], [50.0, 52.0], [0.0, 0.0]], [[40.0, 30.0], [55.0, 45.0], [0.0, 0.0]]])
LABELS = torch.tensor([[1, 1, -1], [1, 0, -1]])


def _unetr(spatial_dims: int = 2, **kwargs):
    torch.manual_seed(0)
    return PrunedUNETR(in_channels=1, out_channels=3, img_size=(64,) * spatial_dims, spatial_dims=spatial_dims,
                       hidden_size=32, mlp_dim=64, num_heads=2, feature_size=8, norm_name="batch", **kwargs)


def _swin(spatial_dims: int = 2, **kwargs):
    torch.manual_seed(0)
    return PrunedSwinUNETR(in_channels=1, out_channels=3, spatial_dims=spatial_dims, feature_size=12,
                           depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), norm_name="batch", **kwargs)


def _transunet(**kwargs):
    torch.manual_seed(0)
    return TransUNet(in_channels=1, out_channels=3, img_size=SIZE, cnn_layers=(1, 1, 1), cnn_width=8,
                     cnn_norm=("group", {"num_groups": 4}), hidden_size=32, mlp_dim=64, num_layers=4, num_heads=2,
                     head_channels=16, decoder_channels=(16, 8, 8, 4), **kwargs)


def _segformer(**kwargs):
    torch.manual_seed(0)
    return SegFormer(in_channels=1, out_channels=3, embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1),
                     num_heads=(1, 1, 1, 1), decoder_dim=16, **kwargs)


BACKBONES = {"unetr": _unetr, "swin_unetr": _swin, "transunet": _transunet, "segformer": _segformer}
PRATO = {"pruner": "prato", "pruner_kwargs": {"protect_boxes": True}}
# the modules a session runs once per image (the work before stage boundary 1; a ViT block by its MLP, the blocks
# run through the executor), and one that runs on every click
REUSED = {
    "unetr": (lambda n: [n.vit.patch_embedding, *(b.mlp for b in n.vit.blocks[:4])], lambda n: n.vit.blocks[4].mlp),
    "transunet": (lambda n: [n.cnn, n.patch_embedding, n.blocks[0].mlp, n.blocks[1].mlp], lambda n: n.blocks[2].mlp),
    "swin_unetr": (lambda n: [n.swinViT.patch_embed, n.swinViT.layers1[0]], lambda n: n.encoder10),
    "segformer": (lambda n: [n.stages[0].patch_embed, n.stages[0].blocks[0].mlp, n.stages[1].patch_embed],
                  lambda n: n.stages[1].blocks[0].mlp),
}

# the image-only decoder paths a session reuses while the decoding window stays the same
ON_WINDOW = {"unetr": ("encoder1", "encoder2"), "swin_unetr": ("encoder1", "encoder2", "encoder3")}


def _with_click_weights(net):
    """``net`` with hand-set (non-zero) click encoder weights, as a trained one would have."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in net.click_encoder.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return net


def _image(spatial_dims: int = 2):
    return image(2, (64,) * spatial_dims)


# ------------------------------------------------------------------ checks of the clicks
@pytest.mark.parametrize(
    "points, labels, message",
    [
        (None, [[1]], "point_labels were given without points"),
        ([[[1.0, 2.0]]], None, "points were given without point_labels"),
        ([[1.0, 2.0]], [[1]], r"points must have shape \[B, N, 2\]"),
        ([[[1.0, 2.0, 3.0]]], [[1]], r"points must have shape \[B, N, 2\]"),
        ([[[1.0, 2.0]]], [1], r"point_labels must have shape \[B, N\]"),
        ([[[1.0, 2.0]]] * 3, [[1]] * 3, r"points are given for 3 image\(s\) but the batch holds 2"),
        ([[[1.0, 2.0]], [[1.0, 2.0]]], [[1, 0], [1, 0]], r"points hold 1 click\(s\) per image but point_labels 2"),
        ([[[1.0, 2.0]], [[float("nan"), 2.0]]], [[1], [0]], r"points \[1, 0\] \(nan, 2\) contains NaN or inf"),
        ([[[1.0, float("inf")]], [[1.0, 2.0]]], [[1], [0]], r"points \[0, 0\] \(1, inf\) contains NaN or inf"),
        ([[[1.0, 2.0]], [[1.0, 64.5]]], [[1], [1]], r"points \[1, 0\] \(1, 64.5\) lies outside the image"),
        ([[[-0.5, 2.0]], [[1.0, 2.0]]], [[0], [1]], r"points \[0, 0\] \(-0.5, 2\) lies outside the image"),
        ([[[1.0, 2.0]], [[1.0, 2.0]]], [[1], [2]], r"point_labels \[1, 0\] is 2; a label is 1 \(foreground\)"),
        ([[[1.0, 2.0]], [[1.0, 2.0]]], [[1.0], [0.5]], "point_labels must be integers"),
    ],
)
def test_bad_clicks_raise_a_message_naming_the_problem(points, labels, message):
    with pytest.raises(ValueError, match=message):
        validate_points(points, labels, SIZE, batch=2)


@pytest.mark.parametrize(
    "prompt_class, message",
    [
        ([1, 2, 1], r"prompt_class must have shape \[B\] or \[B, 1\] with B = 2 \(one class per image\), got "
                    r"shape \(3,\)"),
        ([[1, 2]], r"prompt_class must have shape \[B\] or \[B, 1\] with B = 2"),
        ([1, 0], r"prompt_class \[1\] is 0; a class is in 1 .. 2 \(the network has 3 output channels, 0 is the "),
        ([3, 1], r"prompt_class \[0\] is 3; a class is in 1 .. 2"),
        ([1.0, 1.5], "prompt_class must hold integers"),
    ],
)
def test_a_bad_prompt_class_raises_a_message_naming_the_problem(prompt_class, message):
    with pytest.raises(ValueError, match=message):
        validate_prompt_class(prompt_class, 2, 3)


def test_a_prompt_class_is_one_class_per_image():
    assert validate_prompt_class(None, 2, 3) is None
    assert validate_prompt_class([[2], [1]], 2, 3).tolist() == [2, 1]  # VISTA3D's [B, 1]
    assert validate_prompt_class(2, 3, 3).tolist() == [2, 2, 2]  # one number for the batch
    assert validate_prompt_class(torch.tensor([1.0, 2.0]), 2, 3).dtype == torch.int64


def test_padding_rows_are_accepted_whatever_their_coordinates():
    points = torch.tensor([[[1.0, 2.0], [float("nan"), -5.0], [500.0, 1e9]]])
    checked, labels = validate_points(points, torch.tensor([[1, -1, -1]]), SIZE, batch=1)
    assert torch.equal(checked, torch.tensor([[[1.0, 2.0], [0.0, 0.0], [0.0, 0.0]]]))
    assert labels.dtype == torch.int64 and labels.tolist() == [[1, -1, -1]]


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_the_network_checks_its_clicks(name):
    net = BACKBONES[name](click_prompts=True).eval()
    with pytest.raises(ValueError, match=r"lies outside the image"):
        net(_image(), BOX, points=torch.tensor([[[70.0, 1.0]]] * 2), point_labels=torch.tensor([[1]] * 2))
    with pytest.raises(ValueError, match="previous_mask was given without clicks"):
        net(_image(), BOX, previous_mask=torch.zeros(2, 1, *SIZE))
    with pytest.raises(ValueError, match=r"previous_mask must have shape \[2, 1, 64, 64\]"):
        net(_image(), BOX, points=POINTS, point_labels=LABELS, previous_mask=torch.zeros(1, 1, *SIZE))
    with pytest.raises(ValueError, match="prompt_class was given without clicks"):
        net(_image(), BOX, prompt_class=torch.tensor([1, 1]))
    with pytest.raises(ValueError, match=r"prompt_class \[1\] is 3; a class is in 1 .. 2"):
        net(_image(), BOX, points=POINTS, point_labels=LABELS, prompt_class=torch.tensor([1, 3]))


def test_a_network_built_without_clicks_refuses_them():
    with pytest.raises(ValueError, match="this network takes no clicks: build it with click_prompts=True"):
        _unetr()(_image(), BOX, points=POINTS, point_labels=LABELS)


# ------------------------------------------------------------------ the call convention on every backbone
CASES = [(name, 2) for name in sorted(BACKBONES)] + [("unetr", 3), ("swin_unetr", 3)]


def _call_inputs(spatial_dims: int):
    """Boxes and clicks for 2D, or the same moved into a 3D volume (the third axis in the middle)."""
    if spatial_dims == 2:
        return BOX, POINTS, LABELS
    boxes = torch.cat([BOX[..., :2], torch.full_like(BOX[..., :1], 20.0), BOX[..., 2:],
                       torch.full_like(BOX[..., :1], 44.0)], -1)
    return boxes, torch.cat([POINTS, torch.full_like(POINTS[..., :1], 32.0)], -1), LABELS


@pytest.mark.parametrize("name, dims", CASES)
def test_without_clicks_the_network_is_bit_identical_to_one_built_without_the_click_encoder(name, dims):
    for settings in ({}, PRATO):
        kwargs = {"spatial_dims": dims} if dims == 3 else {}
        plain, clicked = BACKBONES[name](**settings, **kwargs).eval(), BACKBONES[name](
            click_prompts=True, **settings, **kwargs).eval()
        shared = plain.state_dict()
        assert all(torch.equal(value, clicked.state_dict()[key]) for key, value in shared.items())
        boxes, _, _ = _call_inputs(dims)
        with torch.no_grad():
            assert torch.equal(plain(_image(dims), boxes), clicked(_image(dims), boxes))
            assert torch.equal(plain(_image(dims)), clicked(_image(dims), points=None, point_labels=None))


@pytest.mark.parametrize("name, dims", CASES)
def test_clicks_give_logits_of_the_image_shape_and_padding_rows_change_nothing(name, dims):
    kwargs = {"spatial_dims": dims} if dims == 3 else {}
    net = _with_click_weights(BACKBONES[name](click_prompts=True, **PRATO, **kwargs)).eval()
    boxes, points, labels = _call_inputs(dims)
    keep = labels != -1
    with torch.no_grad():
        out = net(_image(dims), boxes, points=points, point_labels=labels)
        junk = points.clone()
        junk[~keep] = torch.tensor([float("nan")] + [-100.0] * (dims - 1))  # padding rows: anything goes
        assert torch.equal(out, net(_image(dims), boxes, points=junk, point_labels=labels))
        real = points[:, :2], labels[:, :2]  # the same clicks without the padding column
        assert torch.equal(out, net(_image(dims), boxes, points=real[0], point_labels=real[1]))
    assert out.shape == (2, 3, *(64,) * dims)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_a_fresh_click_encoder_changes_nothing_and_a_trained_one_moves_the_logits(name):
    net = BACKBONES[name](click_prompts=True).eval()  # unpruned, full decoding: clicks act through guidance only
    background = torch.tensor([[[20.0, 20.0]]] * 2), torch.tensor([[0]] * 2)
    with torch.no_grad():
        before = net(_image(), BOX)
        assert torch.equal(before, net(_image(), BOX, points=background[0], point_labels=background[1]))
        _with_click_weights(net)
        after = net(_image(), BOX, points=background[0], point_labels=background[1])
        masked = net(_image(), BOX, points=background[0], point_labels=background[1],
                     previous_mask=torch.ones(2, 1, *SIZE))
    assert float((after - before).abs().max()) > 1e-3
    assert float((masked - after).abs().max()) > 1e-3  # the previous mask is guidance too


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_gradients_reach_the_click_encoder_from_zero(name):
    net = BACKBONES[name](click_prompts=True, **PRATO).train()
    out = net(_image(), BOX, points=POINTS, point_labels=LABELS, previous_mask=torch.rand(2, *SIZE))
    out.square().mean().backward()
    for part in ("tokens", "guide"):
        grad = getattr(net.click_encoder, part).weight.grad
        assert grad is not None and float(grad.abs().sum()) > 0, part


def test_click_maps_peak_at_the_click_by_label():
    maps = click_maps(torch.tensor([[[10.5, 20.5], [3.0, 3.0]]]), torch.tensor([[1, -1]]), SIZE,
                      torch.ones(1, *SIZE))
    assert maps.shape == (1, 3, *SIZE)
    assert float(maps[0, 0, 10, 20]) == pytest.approx(1.0) and float(maps[0, 0].sum()) > 1
    assert float(maps[0, 0, 3, 3]) < 1e-6 and float(maps[0, 1].abs().max()) == 0.0  # padding and no background
    assert bool((maps[0, 2] == 1).all())


def test_click_maps_put_the_clicks_in_the_channels_of_their_class():
    points, labels = torch.tensor([[[10.5, 20.5], [30.5, 30.5]]] * 2), torch.tensor([[1, 0]] * 2)
    free = click_maps(points, labels, SIZE, num_classes=3)
    # free foreground, free background, previous mask, foreground of class 1, 2, background of class 1, 2
    assert free.shape == (2, 7, *SIZE)
    assert float(free[0, 0, 10, 20]) == pytest.approx(1.0) and float(free[0, 1, 30, 30]) == pytest.approx(1.0)
    assert float(free[:, 3:].abs().max()) == 0.0
    given = click_maps(points, labels, SIZE, num_classes=3, prompt_class=torch.tensor([2, 1]))
    assert float(given[:, :2].abs().max()) == 0.0 and torch.equal(given[:, 2], free[:, 2])
    for b, (fg, bg) in enumerate([(4, 6), (3, 5)]):  # image 0: class 2; image 1: class 1
        assert torch.equal(given[b, fg], free[b, 0]) and torch.equal(given[b, bg], free[b, 1])
        others = [c for c in range(3, 7) if c not in (fg, bg)]
        assert float(given[b, others].abs().max()) == 0.0
    assert torch.equal(click_maps(points, labels, SIZE), free[:, :3])  # without classes: the three channels


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_the_prompt_class_steers_the_foreground_clicks(name):
    net = _with_click_weights(BACKBONES[name](click_prompts=True)).eval()
    assert net.click_encoder.tokens.in_channels == 7  # three outputs: two classes, foreground and background each
    with torch.no_grad():
        free = net(_image(), BOX, points=POINTS, point_labels=LABELS)
        one = net(_image(), BOX, points=POINTS, point_labels=LABELS, prompt_class=torch.tensor([1, 1]))
        two = net(_image(), BOX, points=POINTS, point_labels=LABELS, prompt_class=torch.tensor([[2], [2]]))
        mixed = net(_image(), BOX, points=POINTS, point_labels=LABELS, prompt_class=torch.tensor([1, 2]))
    assert float((one - free).abs().max()) > 1e-3 and float((two - one).abs().max()) > 1e-3
    torch.testing.assert_close(mixed[:1], one[:1]) and torch.testing.assert_close(mixed[1:], two[1:])


def test_a_single_class_network_reads_its_clicks_as_that_class():
    torch.manual_seed(0)
    net = _with_click_weights(PrunedUNETR(in_channels=1, out_channels=2, img_size=SIZE, spatial_dims=2,
                                          hidden_size=32, mlp_dim=64, num_heads=2, feature_size=8, norm_name="batch",
                                          click_prompts=True)).eval()
    with torch.no_grad():
        free = net(_image(), BOX, points=POINTS, point_labels=LABELS)
        given = net(_image(), BOX, points=POINTS, point_labels=LABELS, prompt_class=torch.tensor([1, 1]))
    assert torch.equal(free, given)


def test_click_weights_saved_before_the_class_channels_load_with_those_at_zero():
    net = _with_click_weights(_unetr(click_prompts=True)).eval()
    state = net.state_dict()
    old = {k: (v[:, :3].clone() if k.startswith("click_encoder.") else v) for k, v in state.items()}
    loaded = _unetr(click_prompts=True).eval()
    loaded.load_state_dict(old)  # strict, as MONAI's CheckpointLoader loads
    for part in ("tokens", "guide"):
        weight = getattr(loaded.click_encoder, part).weight.detach()
        assert float(weight[:, 3:].abs().max()) == 0.0
        assert torch.equal(weight[:, :3], old[f"click_encoder.{part}.weight"])
    classes = torch.tensor([1, 2])
    with torch.no_grad():  # clicks without a class fill only the first three channels: the same answer
        assert torch.equal(loaded(_image(), BOX, points=POINTS, point_labels=LABELS),
                           net(_image(), BOX, points=POINTS, point_labels=LABELS))
        with_class = loaded(_image(), BOX, points=POINTS, point_labels=LABELS, prompt_class=classes)
    assert float((with_class - net(_image(), BOX, points=POINTS, point_labels=LABELS, prompt_class=classes)
                  ).abs().max()) > 1e-3  # the class channels were not trained


# ------------------------------------------------------------------ pruning and the decoding window
def test_a_foreground_click_keeps_its_token_in_prato():
    net = _unetr(pruner="prato", pruner_kwargs={"protect_boxes": True, "keep_ratio": 0.375},
                 click_prompts=True).eval()
    kept = []
    net.pruners["1"].register_forward_hook(lambda module, args, selection: kept.append(selection.keep_mask))
    box = torch.tensor([[[0.0, 0.0, 32.0, 32.0]]] * 2)  # 4 of the 16 tokens; 6 are kept
    click = torch.tensor([[[56.0, 56.0]]] * 2), torch.tensor([[1]] * 2)  # token (3, 3) = 15, far outside the box
    with torch.no_grad():
        net(_image(), box)
        net(_image(), box, points=click[0], point_labels=click[1])
        net(_image(), box, points=click[0], point_labels=torch.tensor([[0]] * 2))  # a background click
    without, with_click, background = kept
    assert not bool(without[:, 15].any())  # the box's 4 tokens first, then the 2 most relevant others
    assert bool(with_click[:, 15].all())
    assert torch.equal(background, without)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_a_foreground_click_outside_the_box_widens_the_decoding_window(name):
    net = BACKBONES[name](click_prompts=True, decode_region="box", decode_margin=0).eval()
    box = torch.tensor([[[0.0, 0.0, 20.0, 20.0]]] * 2)
    with torch.no_grad():
        net(_image(), box)
        plain = net.last_decode_window
        net(_image(), box, points=torch.tensor([[[10.0, 10.0], [50.0, 40.0]]] * 2),
            point_labels=torch.tensor([[1, 0]] * 2))  # clicks inside the box, background outside: no change
        same = net.last_decode_window
        out = net(_image(), box, points=torch.tensor([[[50.0, 40.0]]] * 2), point_labels=torch.tensor([[1]] * 2))
        wide = net.last_decode_window
    assert plain is not None and plain.size == (32, 32) and same == plain
    assert wide is None or all(s + n > c for s, n, c in zip(wide.starts[0], wide.size, (50, 40)))
    assert out.shape == (2, 3, *SIZE)


# ------------------------------------------------------------------ old checkpoints
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_a_checkpoint_without_click_weights_loads_and_they_stay_zero(name):
    old = BACKBONES[name](**PRATO).eval()
    torch.manual_seed(5)
    with torch.no_grad():
        for parameter in old.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    net = BACKBONES[name](click_prompts=True, **PRATO).eval()
    net.load_state_dict(old.state_dict())  # strict, as MONAI's CheckpointLoader loads
    assert all(float(p.detach().abs().max()) == 0 for p in net.click_encoder.parameters())
    with torch.no_grad():
        assert torch.equal(net(_image(), BOX), old(_image(), BOX))
    incomplete = {k: v for k, v in old.state_dict().items() if not k.startswith("pruners.")}
    with pytest.raises(RuntimeError, match="Missing key"):  # only the click encoder's keys may be missing
        net.load_state_dict(incomplete)


# ------------------------------------------------------------------ reuse between clicks
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_a_click_session_runs_the_image_only_work_once_for_three_clicks(name):
    settings = {**PRATO, "decode_region": "guided", "coarse_head": True} if name != "segformer" else PRATO
    net = _with_click_weights(BACKBONES[name](click_prompts=True, **settings)).eval()
    once, every = REUSED[name]
    calls = {}
    for index, module in enumerate([*once(net), every(net), *(getattr(net, m) for m in ON_WINDOW.get(name, ()))]):
        module.register_forward_hook(lambda *_, index=index: calls.__setitem__(index, calls.get(index, 0) + 1))
    clicks = [(POINTS[:, :1], LABELS[:, :1]), (POINTS[:, :2], LABELS[:, :2]), (POINTS, LABELS)]
    masks = [torch.rand(2, *SIZE, generator=torch.Generator().manual_seed(i)) for i in range(len(clicks))]
    session = ClickSession(net, _image(), BOX)
    answers, reports, windows = [], [], set()
    for (points, labels), mask in zip(clicks, masks):
        answers.append(session.segment(points, labels, previous_mask=mask))
        reports.append([r.tokens.tolist() for r in net.block_report])
        windows.add(net.last_decode_window)
    reused = len(once(net))
    assert [calls[i] for i in range(reused)] == [1] * reused
    assert calls[reused] == 3
    assert [calls[i] for i in range(reused + 1, len(calls))] == [len(windows)] * len(ON_WINDOW.get(name, ()))
    with torch.no_grad():  # the same answers and reports as calling the network
        for (points, labels), mask, answer, report in zip(clicks, masks, answers, reports):
            assert torch.equal(answer, net(_image(), BOX, points=points, point_labels=labels, previous_mask=mask))
            assert [r.tokens.tolist() for r in net.block_report] == report


# ------------------------------------------------------------------ the inferers
def test_clicks_of_a_volume_go_to_the_slices_that_hold_them():
    points = torch.tensor([[[10.0, 12.0, 2.5], [3.0, 4.0, 0.0], [1.0, 1.0, 4.0]]])
    inplane, labels = points_for_slices(points, torch.tensor([[1, 0, 1]]), 4)
    assert inplane.shape == (4, 3, 2) and torch.equal(inplane[2, 0], torch.tensor([10.0, 12.0]))
    assert labels.tolist() == [[-1, 0, -1], [-1, -1, -1], [1, -1, -1], [-1, -1, 1]]  # z = 4: the last slice


def test_clicks_in_a_window_are_moved_and_the_others_are_padding():
    points, labels = points_in_window(torch.tensor([[40.0, 50.0], [5.0, 5.0]]), torch.tensor([1, 0]),
                                      torch.tensor([32.0, 32.0]), (32, 32))
    assert points.tolist() == [[8.0, 18.0], [0.0, 0.0]] and labels.tolist() == [1, -1]


def test_the_prompted_inferers_pass_the_clicks_on():
    net = _with_click_weights(_unetr(click_prompts=True, **PRATO)).eval()
    clicks = {"points": POINTS, "point_labels": LABELS, "prompt_class": torch.tensor([2, 1])}
    with torch.no_grad():
        direct = net(_image(), BOX, **clicks)
        assert float((direct - net(_image(), BOX, points=POINTS, point_labels=LABELS)).abs().max()) > 1e-3
        assert torch.equal(PromptedInferer()(_image(), net, boxes=BOX, **clicks), direct)
        window = PromptedSlidingWindowInferer(SIZE, sw_batch_size=2, margin=0)  # one window per image
        torch.testing.assert_close(window(_image(), net, boxes=BOX, **clicks), direct)
        volume = _image().unsqueeze(-1).expand(2, 1, *SIZE, 2)  # two equal slices; the clicks are on slice 1
        points = torch.cat([POINTS, torch.full_like(POINTS[..., :1], 1.5)], -1)
        boxes = torch.cat([BOX[..., :2], torch.zeros_like(BOX[..., :1]), BOX[..., 2:],
                           torch.full_like(BOX[..., :1], 2.0)], -1)
        slices = PromptedInferer()(volume, net, boxes=boxes, **{**clicks, "points": points})
        plain = net(_image(), BOX)
    assert float((direct - plain).abs().max()) > 1e-3
    torch.testing.assert_close(slices[..., 1], direct)  # four slices in one batch: equal up to rounding
    torch.testing.assert_close(slices[..., 0], plain)


@pytest.mark.parametrize("name", ["unetr", "swin_unetr"])
def test_the_coarse_scan_after_a_call_with_clicks_runs_without_them(name):
    net = _with_click_weights(BACKBONES[name](click_prompts=True, coarse_head=True, decode_region="guided")).eval()
    one = _image()[:1]
    with torch.no_grad():
        before = net._coarse_map(one)
        net(_image(), BOX, points=POINTS, point_labels=LABELS)
        assert torch.equal(net._coarse_map(one), before)  # a batch of one: the last call's clicks are gone


def test_a_session_recomputes_the_image_only_decoder_paths_when_the_window_moves():
    net = _with_click_weights(_unetr(click_prompts=True, decode_region="box", decode_margin=0, **PRATO)).eval()
    calls = []
    net.encoder1.register_forward_hook(lambda *_: calls.append(1))
    box = torch.tensor([[[0.0, 0.0, 20.0, 20.0]]] * 2)
    inside, outside = torch.tensor([[[10.0, 10.0]]] * 2), torch.tensor([[[10.0, 10.0], [50.0, 40.0]]] * 2)
    session = ClickSession(net, _image(), box)
    steps = [(inside, torch.tensor([[0]] * 2)), (inside, torch.tensor([[1]] * 2)),
             (outside, torch.tensor([[1, 1]] * 2))]  # the third widens the window
    answers = [session.segment(points, labels) for points, labels in steps]
    assert len(calls) == 2
    with torch.no_grad():
        for (points, labels), answer in zip(steps, answers):
            assert torch.equal(answer, net(_image(), box, points=points, point_labels=labels))


def test_segformer_takes_clicks_on_an_image_size_off_its_strides():
    net = _with_click_weights(_segformer(click_prompts=True, **PRATO)).eval()
    x = image(1, (40, 52))
    with torch.no_grad():
        plain = net(x, torch.tensor([[[2.0, 4.0, 30.0, 40.0]]]))
        clicked = net(x, torch.tensor([[[2.0, 4.0, 30.0, 40.0]]]), points=torch.tensor([[[39.0, 51.5]]]),
                      point_labels=torch.tensor([[1]]))
    assert clicked.shape == plain.shape == (1, 3, 40, 52) and float((clicked - plain).abs().max()) > 1e-3


def test_windows_a_click_does_not_touch_keep_their_answer():
    """Through the sliding window a session network calls only the windows whose clicks changed; every window's
    answer is what the network gives it with its clicks (the untouched ones: what they gave before)."""
    torch.manual_seed(0)
    net = _with_click_weights(PrunedUNETR(in_channels=1, out_channels=3, img_size=(32, 32), spatial_dims=2,
                                          hidden_size=32,
                                          mlp_dim=64, num_heads=2, feature_size=8, norm_name="batch",
                                          click_prompts=True, **PRATO)).eval()
    inferer = PromptedSlidingWindowInferer((32, 32), sw_batch_size=1, overlap=0.0, margin=0)  # 4 windows
    box = torch.tensor([[[2.0, 2.0, 62.0, 62.0]]])
    image = _image()[:1]
    session = SessionNetwork(net)
    with torch.no_grad():
        first = inferer(image, session, boxes=box)
        assert (session.calls, session.kept) == (4, 0)
        steps = [torch.tensor([[[10.0, 12.0]]]), torch.tensor([[[10.0, 12.0], [40.0, 50.0]]]),
                 torch.tensor([[[10.0, 12.0], [40.0, 50.0]]])]  # the third: a background click on the same spot
        labels = [torch.tensor([[1]]), torch.tensor([[1, 1]]), torch.tensor([[1, 0]])]
        answers = [inferer(image, session, boxes=box, points=p, point_labels=lab) for p, lab in zip(steps, labels)]
        # window (0, 0) holds click 1; window (1, 1) holds click 2
        assert (session.calls, session.kept) == (4 + 1 + 1 + 1, 3 + 3 + 3)
        direct = [inferer(image, net, boxes=box, points=p, point_labels=lab) for p, lab in zip(steps, labels)]
        assert torch.equal(answers[0][..., 32:, :], first[..., 32:, :])  # untouched windows: their answer
        assert not torch.equal(answers[0][..., :32, :32], first[..., :32, :32])
        for answer, expected in zip(answers, direct):
            assert torch.equal(answer, expected)  # a window with only padding clicks answers as without clicks


def test_a_session_network_follows_a_changed_previous_mask_only_when_asked():
    net = _with_click_weights(_unetr(click_prompts=True, **PRATO)).eval()
    points, labels = POINTS[:1, :1], LABELS[:1, :1]
    masks = [torch.zeros(1, 1, *SIZE), torch.ones(1, 1, *SIZE)]
    with torch.no_grad():
        for follow, calls in ((False, 1), (True, 2)):
            session = SessionNetwork(net, follow_previous_mask=follow)
            answers = [session(_image()[:1], BOX[:1], points, labels, previous_mask=mask) for mask in masks]
            assert session.calls == calls and torch.equal(answers[0], answers[1]) == (calls == 1)
    with pytest.raises(TypeError, match="SessionNetwork needs a network of prato_components, got Linear"):
        SessionNetwork(torch.nn.Linear(1, 1))


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_a_training_forward_records_where_its_clicks_are_and_others_do_not(name):
    net = BACKBONES[name](click_prompts=True, **PRATO).train()
    net(_image(), BOX, points=POINTS, point_labels=LABELS)
    focus = net.click_focus
    assert focus.shape == (2, *SIZE)
    # 1 at each real click (its voxel holds the click's centre), nothing from the padding rows, Gaussian fall-off
    for b, (points, labels) in enumerate(zip(POINTS, LABELS)):
        for point, label in zip(points, labels):
            if label >= 0:
                assert float(focus[b][tuple(point.long())]) == pytest.approx(1.0, abs=0.06)
    assert float(focus[0, 0, 0]) < 1e-4 and 0 < float(focus[1, 40, 33]) < 1  # [0, 0]: a padding row's coordinates
    net(_image(), BOX)  # a forward without clicks forgets them
    assert net.click_focus is None
    net.eval()(_image(), BOX, points=POINTS, point_labels=LABELS)  # nor does inference keep them
    assert net.click_focus is None
