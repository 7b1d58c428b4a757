"""One choice of the executor mode for every backbone (docs/design.md §5): ``PrunedNetworkMixin.executor_mode``."""

import pytest
import torch

from conftest import UNETR_BOXES, tiny_segformer as segformer, tiny_swin_unetr as swin, tiny_transunet as transunet, tiny_unetr
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
