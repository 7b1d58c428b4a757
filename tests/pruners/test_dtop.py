"""DToP: early exit of confident tokens with per-class protection (prato_components/pruners/dtop.py)."""

import copy

import torch
from conftest import UNETR_GRID as GRID
from conftest import UNETR_TOKENS as N
from conftest import image, stage_input, tiny_unetr
from monai.losses import DiceCELoss

from prato_components.engine import PrunedSegLoss
from prato_components.pruners import DToP, protected_tokens
from prato_components.tokens import StageInput, TokenState


def test_protected_tokens_per_class():
    confidence = torch.tensor([[0.9, 0.8, 0.95, 0.6, 0.99, 0.7]])
    label = torch.tensor([[0, 0, 0, 1, 1, 2]])
    assert protected_tokens(confidence, label, 3, 1).tolist() == [[False, False, True, False, True, True]]
    assert protected_tokens(confidence, label, 3, 2).tolist() == [[True, False, True, True, True, True]]
    assert not protected_tokens(confidence, label, 3, 0).any()
    valid = torch.tensor([[True, True, False, True, True, True]])
    assert protected_tokens(confidence, label, 3, 1, valid).tolist() == [[True, False, False, False, True, True]]


def _head_confidence(pruner: DToP, tokens: torch.Tensor):
    with torch.no_grad():
        return pruner.head(pruner.norm(tokens)).softmax(-1).max(-1)


def test_dtop_topk_keeps_protected_then_least_confident():
    torch.manual_seed(0)
    pruner = DToP(8, 3, keep_ratio=0.5, keep_per_class=1)
    pruner.head.weight.data.mul_(20)  # spread the confidences
    inputs = stage_input(TokenState(torch.randn(4, N, 8), GRID))
    selection = pruner(inputs)
    confidence, label = _head_confidence(pruner, inputs.tokens)
    protected = protected_tokens(confidence, label, 3, 1)
    assert selection.keep_index.shape == (4, 8) and selection.scores is None
    assert (protected <= selection.keep_mask).all()
    for b in range(4):  # every kept unprotected token is less confident than every exited token
        free = selection.keep_mask[b] & ~protected[b]
        if free.any() and (~selection.keep_mask[b]).any():
            assert confidence[b][free].max() <= confidence[b][~selection.keep_mask[b]].min()


def test_dtop_threshold_exits_confident_unprotected_tokens():
    torch.manual_seed(0)
    pruner = DToP(8, 3, confidence=0.8, keep_per_class=2, budget="threshold")
    pruner.head.weight.data.mul_(20)
    inputs = stage_input(TokenState(torch.randn(4, N, 8), GRID))
    selection = pruner(inputs)
    confidence, label = _head_confidence(pruner, inputs.tokens)
    expected = (confidence <= 0.8) | protected_tokens(confidence, label, 3, 2)
    assert selection.keep_index is None
    assert torch.equal(selection.keep_mask, expected)
    assert len(set(selection.num_kept.tolist())) > 1  # data dependent


def test_dtop_aux_logits_are_a_canvas_over_the_grid():
    net = tiny_unetr("dtop", pruner_kwargs={"keep_per_class": 1}).eval()
    assert net.pruners["1"].num_classes == 3  # filled in from out_channels
    x = image(2)
    with torch.no_grad():
        taps, _, state = net._encode(x, None)
        stage1, stage2 = state.aux_logits
        head1, head2 = net.pruners["1"], net.pruners["2"]
        assert stage1.shape == stage2.shape == (2, 3, *GRID)
        torch.testing.assert_close(stage1.flatten(2).transpose(1, 2), head1.head(head1.norm(taps[1])))
        alive1 = state.kept_grids[0][1]
        expected2 = torch.where(alive1[..., None], head2.head(head2.norm(taps[2])), stage1.flatten(2).transpose(1, 2))
        torch.testing.assert_close(stage2.flatten(2).transpose(1, 2), expected2)


def test_dtop_heads_learn_only_through_aux_logits():
    net = tiny_unetr("dtop").train()
    x, label = image(2), torch.randint(0, 3, (2, 1, 64, 64), generator=torch.Generator().manual_seed(0))
    DiceCELoss(to_onehot_y=True, softmax=True)(net(x), label).backward()
    assert all(p.grad is None for p in net.pruners.parameters())  # the exit decision carries no gradient
    net.zero_grad(set_to_none=True)
    loss = PrunedSegLoss(DiceCELoss(to_onehot_y=True, softmax=True), net)
    loss(net(x), label).backward()
    for stage in ("1", "2"):
        assert net.pruners[stage].head.weight.grad.abs().sum() > 0
        assert net.pruners[stage].norm.weight.grad.abs().sum() > 0


def test_dtop_train_and_eval_prune_alike_and_eval_is_deterministic():
    net = tiny_unetr("dtop")
    x = image(2)
    with torch.no_grad():
        net.train()
        trained, trained_kept = net(x), [r.tokens_kept for r in net.token_report]
        assert len(net.aux_logits) == 2
        net.eval()
        first, second = net(x), net(x)
    assert torch.equal(first, second)
    torch.testing.assert_close(trained, first)  # DToP prunes in training too (the public code does)
    assert all(torch.equal(a, r.tokens_kept) for a, r in zip(trained_kept, net.token_report))


def test_dtop_exited_tokens_feed_the_decoder_with_their_exit_features():
    net = tiny_unetr("dtop").eval()
    x = image(2)
    with torch.no_grad():
        taps, final, state = net._encode(x, None)
        exited = ~state.kept_grids[0][1]
        torch.testing.assert_close(final[exited], net.vit.norm(taps[1])[exited])
        zero = copy.deepcopy(net)
        zero.fill = "zero"
        assert not torch.allclose(net(x), zero(x))


def test_dtop_threshold_padded_handles_different_counts_per_image():
    kwargs = {"budget": "threshold", "keep_per_class": 0, "confidence": 1.0}
    net = tiny_unetr("dtop", executor="padded", pruner_kwargs=kwargs)
    net.eval()
    for pruner in net.pruners.values():
        pruner.head.weight.data.mul_(10)
    x = image(2, seed=3)
    with torch.no_grad():
        net(x)
    confidence = net.aux_logits[0].softmax(1).amax(1).flatten(1)  # stage-1 confidences, independent of the threshold
    candidates = confidence.flatten().sort().values
    threshold = next(
        float(t)
        for t in (candidates[:-1] + candidates[1:]) / 2
        if len(set((confidence <= t).sum(1).tolist())) > 1 and bool(((confidence <= t).sum(1) >= 1).all())
    )
    for pruner in net.pruners.values():
        pruner.confidence = threshold
    reference = copy.deepcopy(net)
    reference.executor = "attention_mask"
    with torch.no_grad():
        out = net(x)
        kept = net.token_report[0].tokens_kept
        assert kept.tolist() == (confidence <= threshold).sum(1).float().tolist()
        assert kept[0] != kept[1]
        torch.testing.assert_close(out, reference(x), atol=1e-5, rtol=1e-4)


def test_dtop_canvas_moves_to_a_coarser_grid_by_averaging():
    """On a hierarchical encoder (Swin UNETR) stage 2 runs on a grid half as fine: a position not live there holds
    the mean of the stage-1 logits of the four cells it covers, not the logits of an unrelated finer cell."""
    pruner = DToP(dim=4, num_classes=3)
    memory: dict = {}
    fine = torch.randn(1, 16, 3, generator=torch.Generator().manual_seed(0))  # stage 1: a 4 x 4 grid, all live
    first = stage_input(torch.zeros(1, 16, 4), grid=(4, 4))
    first.memory = memory
    pruner.canvas(fine, first)
    coarse = torch.randn(1, 1, 3)  # stage 2: a 2 x 2 grid, only cell 0 live
    second = StageInput(tokens=torch.zeros(1, 1, 4), token_index=torch.tensor([[0]]), valid=None, grid_shape=(2, 2),
                        stride=(32.0, 32.0), boxes=None, stage=2, feature_map=lambda: None, memory=memory)
    canvas = pruner.canvas(coarse, second)  # [1, 3, 2, 2]
    blocks = fine[0].reshape(2, 2, 2, 2, 3).permute(0, 2, 1, 3, 4).reshape(2, 2, 4, 3).mean(2)  # [2, 2, classes]
    torch.testing.assert_close(canvas[0, :, 0, 0], coarse[0, 0])
    for row, col in ((0, 1), (1, 0), (1, 1)):
        torch.testing.assert_close(canvas[0, :, row, col], blocks[row, col])
