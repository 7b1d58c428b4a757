"""The pruning set-up every backbone shares (docs/design.md §5): one way to build the pruners (``stage_pruners``), one
choice of the executor mode (``PrunedNetworkMixin.executor_mode``) and one place that keeps the reports and side
terms of a forward pass (``PrunedNetworkMixin._take_reports``)."""

import functools

import pytest
import torch
from conftest import UNETR_BOXES, tiny_unetr
from conftest import tiny_segformer as segformer
from conftest import tiny_swin_unetr as swin
from conftest import tiny_transunet as transunet

from prato_components.networks.vit_pruning import build_completion, own_random_stream, stage_pruners, vit_layers
from prato_components.pruners import DToP, MultiLayerTokenAssembly, RandomPruner
from prato_components.tokens import TokenState

BACKBONES = {  # (build(**pruning), image, boxes)
    "unetr": (lambda **kw: tiny_unetr(**kw), (2, 1, 64, 64), UNETR_BOXES),
    "transunet": (transunet, (2, 1, 96, 96), None),
    "segformer": (segformer, (2, 1, 64, 64), None),
    "swin_unetr": (swin, (2, 1, 64, 64), None),
}
# what each backbone runs for the mode asked: eval with executor "gather", and training with DynamicViT, whose
# train_executor is "attention_mask" (SegFormer cannot mask keys; Swin's live-token list is the padded mode)
EXPECTED = {
    "unetr": ("gather", "attention_mask"),
    "transunet": ("gather", "attention_mask"),
    "segformer": ("gather", "mask"),
    "swin_unetr": ("padded", "attention_mask"),
}


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_every_backbone_runs_the_mode_the_mixin_chooses(monkeypatch, backbone):
    build, shape, boxes = BACKBONES[backbone]
    modes = []
    apply = TokenState.apply

    def spy_apply(self, selection, stage, inputs):
        modes.append(self.mode)
        return apply(self, selection, stage, inputs)

    monkeypatch.setattr(TokenState, "apply", spy_apply)
    net = build(pruner="dynamicvit", pruner_kwargs={"keep_ratio": 0.5}, prune_stages=(1, 2))
    evaluating, training = EXPECTED[backbone]
    x = torch.randn(*shape)
    net.eval()
    assert net.executor_mode() == evaluating
    with torch.no_grad():
        net(x, boxes)
    assert modes == [evaluating] * 2
    modes.clear()
    net.train()
    assert net.executor_mode() == training
    net(x, boxes)
    assert modes == [training] * 2


def _stage_widths(backbone: str, net) -> dict[int, int]:
    """The token width at each stage boundary of a tiny backbone."""
    if backbone == "swin_unetr":
        return {s: net.swinViT.embed_dim * 2**s for s in (1, 2, 3)}
    if backbone == "segformer":
        return {s: net.embed_dims[s] for s in (1, 2, 3)}
    return {s: net.hidden_size for s in (1, 2, 3)}


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_every_backbone_builds_a_named_pruner_at_each_stage_width_with_its_classes(backbone):
    """A registered name is built per stage at that stage's width, with the network's output channels filled in
    (DToP's auxiliary head): the same rule on every backbone, TransUNet and SegFormer included."""
    build, shape, boxes = BACKBONES[backbone]
    net = build(pruner="dtop", prune_stages=(1, 2))
    widths = _stage_widths(backbone, net)
    out_channels = 3
    assert net.prune_stages == (1, 2)
    for stage in (1, 2):
        pruner = net.pruners[str(stage)]
        assert isinstance(pruner, DToP)
        assert (pruner.head.in_features, pruner.head.out_features) == (widths[stage], out_channels)
    net.eval()
    with torch.no_grad():
        assert net(torch.randn(*shape), boxes).shape[1] == out_channels


def test_stages_of_one_width_start_from_the_same_weights_in_their_own_modules():
    net = tiny_unetr(pruner="prato", prune_stages=(1, 2, 3))
    first, *others = (net.pruners[str(s)] for s in (1, 2, 3))
    for other in others:
        assert other is not first
        for (name, a), (_, b) in zip(first.state_dict().items(), other.state_dict().items()):
            assert torch.equal(a, b), name
            assert a.data_ptr() != b.data_ptr()
    # distinct widths (Swin UNETR) get distinct pruners built at their own width
    net = swin(pruner="prato", prune_stages=(1, 2))
    assert net.pruners["1"].f1.in_features * 2 == net.pruners["2"].f1.in_features


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_pruners_do_not_move_the_random_stream(backbone):
    """At one seed a pruned network and its unpruned backbone start from the same backbone weights and leave the
    global random stream at the same place (same data order afterwards: a paired comparison); the pruners' own
    weights follow the seed."""
    build = BACKBONES[backbone][0]
    plain = build(pruner=None)
    after_plain = torch.rand(4)
    pruned = build(pruner="dtop", prune_stages=(1, 2))
    after_pruned = torch.rand(4)
    assert torch.equal(after_plain, after_pruned)
    backbone_weights = plain.state_dict()
    for name, value in pruned.state_dict().items():
        if not name.startswith("pruners."):
            assert torch.equal(value, backbone_weights[name]), name
    again = build(pruner="dtop", prune_stages=(1, 2))
    assert all(torch.equal(a, b) for a, b in zip(pruned.pruners.parameters(), again.pruners.parameters()))
    torch.manual_seed(1)  # another global state: other pruner weights
    other = stage_pruners("UNETR", "dtop", None, (1, 2), _stage_widths(backbone, pruned), 3)
    assert not torch.equal(other[1].head.weight, pruned.pruners["1"].head.weight)
    state = torch.random.get_rng_state()
    with own_random_stream():
        torch.rand(8)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_stage_pruners_takes_instances_mappings_and_refuses_the_rest():
    widths = {1: 8, 2: 8, 3: 16}
    instance = RandomPruner(0.5)
    copies = stage_pruners("Net", instance, None, (2, 1), widths)
    assert sorted(copies) == [1, 2] and all(p is not instance and isinstance(p, RandomPruner) for p in copies.values())
    chosen = {1: RandomPruner(0.5), "3": RandomPruner(0.25)}
    assert stage_pruners("Net", chosen, None, (1, 3), widths) == {1: chosen[1], 3: chosen["3"]}
    assert stage_pruners("Net", None, None, (1, 2), widths) == {}
    with pytest.raises(ValueError, match=r"no pruner for stage\(s\) \[3\]"):
        stage_pruners("Net", {1: RandomPruner(0.5)}, None, (1, 3), widths)
    with pytest.raises(ValueError, match=r"Net prune_stages must be a subset of \(1, 2, 3\)"):
        stage_pruners("Net", "random", None, (4,), widths)
    with pytest.raises(TypeError, match="pruner must be a TokenPruner, a registered name, a factory, a mapping or "):
        stage_pruners("Net", 0.5, None, (1,), widths)


def test_build_completion_takes_a_module_or_builds_a_factory_at_the_width_on_its_own_stream():
    module = MultiLayerTokenAssembly(dim=16)
    assert build_completion(module, 16) is module and build_completion(None, 16) is None
    state = torch.random.get_rng_state()
    built = build_completion(functools.partial(MultiLayerTokenAssembly, depth=1), 24)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global stream did not move
    assert isinstance(built, MultiLayerTokenAssembly) and built.dim == 24
    assert build_completion(functools.partial(MultiLayerTokenAssembly, dim=8), 24).dim == 8  # a bound width stays
    net = transunet(pruner="random", completion=functools.partial(MultiLayerTokenAssembly, taps=(4,)))
    assert isinstance(net.completion, MultiLayerTokenAssembly) and net.completion.dim == net.hidden_size
    with pytest.raises(TypeError, match="completion must be a module, a factory or None, got int"):
        build_completion(3, 16)


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_every_backbone_keeps_the_reports_and_side_terms_of_its_forward_pass(backbone):
    """One forward pass in training with DynamicViT: one stage report per pruned stage, one block report per encoder
    block, and the side loss is the sum of what the pruners returned (it carries gradient to their weights)."""
    build, shape, boxes = BACKBONES[backbone]
    net = build(pruner="dynamicvit", pruner_kwargs={"keep_ratio": 0.5}, prune_stages=(1, 2)).train()
    returned = []
    apply = TokenState.apply

    def spy_apply(self, selection, stage, inputs):
        returned.append(selection.aux_loss)
        return apply(self, selection, stage, inputs)

    blocks = []
    record_block = TokenState.record_block

    def spy_record_block(self):
        blocks.append(self.grid_tokens)
        return record_block(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TokenState, "apply", spy_apply)
        patch.setattr(TokenState, "record_block", spy_record_block)
        net(torch.randn(*shape), boxes)
    assert [r.stage for r in net.token_report] == [1, 2]
    assert len(net.block_report) == len(blocks) > 2
    assert len(returned) == 2 and all(loss is not None for loss in returned)
    torch.testing.assert_close(net.aux_loss, torch.stack(returned).sum())
    net.aux_loss.backward()
    for stage in ("1", "2"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.pruners[stage].parameters()), stage


def test_vit_layers_end_at_the_stage_boundaries():
    blocks = list(range(12))
    assert [list(layer) for layer in vit_layers(blocks, {2: 6, 1: 3, 3: 9})] == [
        [0, 1, 2, 3],
        [4, 5, 6],
        [7, 8, 9],
        [10, 11],
    ]
    assert [list(layer) for layer in vit_layers(list(range(4)), {1: 1, 2: 2, 3: 3})] == [[0, 1], [2], [3], []]


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_every_backbone_prunes_and_evolves_placeholders_in_the_one_stage_loop(backbone):
    """Evo-ViT at stages 1 and 2: every backbone prunes through ``TokenState.prune`` at each pruned boundary, in
    order, with the attention maps of the blocks since the last one, and moves the pruned tokens through
    ``TokenState.evolve_placeholders`` in the blocks after the first."""
    build, shape, boxes = BACKBONES[backbone]
    net = build(pruner="evovit", prune_stages=(1, 2)).eval()
    pruned, evolved = [], []
    prune, evolve = TokenState.prune, TokenState.evolve_placeholders

    def spy_prune(self, pruner, stage, stride, boxes, attentions=None):
        pruned.append((stage, len(attentions or [])))
        return prune(self, pruner, stage, stride, boxes, attentions)

    def spy_evolve(self, placeholders, before, after):
        evolved.append(int(placeholders.sum()))
        return evolve(self, placeholders, before, after)

    with pytest.MonkeyPatch.context() as patch, torch.no_grad():
        patch.setattr(TokenState, "prune", spy_prune)
        patch.setattr(TokenState, "evolve_placeholders", spy_evolve)
        net(torch.randn(*shape), boxes)
    assert [stage for stage, _ in pruned] == [1, 2] and all(count > 0 for _, count in pruned)
    assert evolved and all(count > 0 for count in evolved)
