"""DynamicViT (prato_components/pruners/dynamicvit.py) and distillation from an unpruned teacher."""

import pytest
import torch
from conftest import UNETR_TINY as TINY
from conftest import image, record_selections, stage_input, tiny_unetr, tokens_after_stage1
from monai.losses import DiceCELoss
from monai.networks.nets import UNETR

from prato_components.engine import DistillationLoss, PrunedSegLoss
from prato_components.networks import PrunedUNETR
from prato_components.pruners import DynamicViT


def test_dynamicvit_masks_attention_in_training_and_gathers_in_eval():
    net = tiny_unetr("dynamicvit", pruner_kwargs={"keep_ratio": 0.5})
    shapes = tokens_after_stage1(net)
    calls = record_selections(net)
    net.train()(image())
    assert shapes == [(2, 16, 32)]  # all tokens stay in training
    _, selection = calls[0]
    assert selection.keep_index is None and selection.keep_mask.dtype == torch.bool
    assert ((selection.scores > 0) & (selection.scores < 1)).all()
    first, second = net.token_report
    assert torch.equal(second.tokens_in, first.tokens_kept)  # a dropped token stays dropped
    assert net.aux_loss is not None and net.aux_loss.requires_grad
    net.eval()
    with torch.no_grad():
        net(image())
    assert shapes[1] == (2, 8, 32)  # gathered at inference
    assert net.aux_loss is None
    assert [r.tokens_kept.tolist() for r in net.token_report] == [[8.0, 8.0], [4.0, 4.0]]


def test_dynamicvit_ratio_loss_targets_the_cumulative_ratio():
    torch.manual_seed(0)
    pruner = DynamicViT(dim=32, keep_ratio=0.75, ratio_weight=2.0).train()
    inputs = stage_input(torch.randn(2, 64, 32))
    first = pruner(inputs)
    kept = first.keep_mask.float().sum(1) / 64
    torch.testing.assert_close(first.aux_loss, 2.0 * ((kept - 0.75) ** 2).mean())
    second = pruner(inputs)  # the same forward pass's second pruned stage (shared memory): target 0.75 ** 2
    kept = second.keep_mask.float().sum(1) / 64
    torch.testing.assert_close(second.aux_loss, 2.0 * ((kept - 0.5625) ** 2).mean())
    assert inputs.memory["dynamicvit.stage_number"] == 2
    # the decision follows the Gumbel sample: keep where the noisy keep probability wins
    assert torch.equal(first.keep_mask, first.scores > 0.5)
    pruner.eval()
    with torch.no_grad():
        plain = pruner(inputs)
        probabilities = pruner.keep_log_probs(inputs)[..., 0].exp()
    assert torch.equal(plain.keep_index, probabilities.topk(48, dim=1).indices.sort(1).values)


def test_dynamicvit_gradients_reach_the_predictor():
    net = tiny_unetr("dynamicvit").train()
    torch.manual_seed(0)
    net(image()).square().mean().backward()  # through the float attention policy only
    grads = [p.grad for p in net.pruners["1"].predictor.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    net.zero_grad()
    net(image())
    net.aux_loss.backward()  # through the ratio loss only
    for stage in ("1", "2"):
        assert net.pruners[stage].predictor.head[-1].weight.grad.abs().sum() > 0


def test_distillation_from_an_unpruned_teacher(tmp_path):
    torch.manual_seed(0)
    plain = UNETR(**TINY)
    torch.save({"network": plain.state_dict()}, tmp_path / "teacher.pt")
    student = tiny_unetr("dynamicvit").train()
    teacher = PrunedUNETR(pruner=None, **TINY)
    seg = PrunedSegLoss(DiceCELoss(to_onehot_y=True, softmax=True), student)
    loss = DistillationLoss(
        seg, student, teacher, teacher_checkpoint=str(tmp_path / "teacher.pt"), weight=0.5, temperature=2.0
    )
    torch.testing.assert_close(teacher.vit.blocks[0].attn.qkv.weight, plain.vit.blocks[0].attn.qkv.weight)
    x, label = image(), torch.randint(0, 3, (2, 1, 64, 64))
    pred = student(x, boxes=None)
    value = loss(pred, label)
    with torch.no_grad():
        target = plain.eval()(x)
    expected_kl = (
        torch.nn.functional.kl_div(
            (pred / 2).log_softmax(1), (target / 2).log_softmax(1), reduction="none", log_target=True
        )
        .sum(1)
        .mean()
        * 4
    )
    torch.testing.assert_close(value, seg(pred, label) + 0.5 * expected_kl)
    value.backward()
    assert all(p.grad is None for p in teacher.parameters()) and not teacher.training
    assert student.pruners["1"].predictor.head[-1].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="call the student network before the loss"):
        loss(pred, label)  # the recorded input is used once
    mse = DistillationLoss(torch.nn.MSELoss(), student, teacher, kind="mse")
    pred = student(x)
    torch.testing.assert_close(mse(pred, target), 2 * torch.nn.functional.mse_loss(pred, target))
    with pytest.raises(ValueError, match="kind must be"):
        DistillationLoss(seg, student, teacher, kind="l1")
