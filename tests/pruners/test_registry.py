"""Pruners by name: the registry, the common budget, argument and configuration errors."""

import pytest
import torch
from conftest import COMMON_PRUNERS as NAMES
from conftest import UNETR_GRID as GRID
from conftest import UNETR_TOKENS as N
from conftest import image, random_attention, stage_input, tiny_unetr

from prato_components.pruners import (
    PRUNERS,
    STP,
    TRAM,
    DToP,
    DynamicViT,
    EvoViT,
    PrATo,
    RandomPruner,
    create_pruner,
    keep_count,
)
from prato_components.tokens import TokenState


def test_registered_by_name_with_the_common_budget():
    assert set(NAMES) <= set(PRUNERS)
    for name in NAMES:
        kwargs = {} if name in ("random", "tram") else {"dim": 32}
        pruner = create_pruner(name, keep_ratio=0.5, **kwargs)
        assert pruner.keep_ratio == 0.5
        with pytest.raises(ValueError, match="keep_ratio must be in"):
            create_pruner(name, keep_ratio=1.5, **kwargs)
    assert TRAM.needs_attention and not any(cls.needs_attention for cls in (RandomPruner, STP, DynamicViT))
    assert DynamicViT.train_executor == "attention_mask"
    assert all(cls.train_executor is None for cls in (RandomPruner, TRAM, STP))


@pytest.mark.parametrize("name", ["evovit", "dtop"])
def test_registered_and_kept_counts_match_budget(name):
    assert name in PRUNERS
    net = tiny_unetr(name, pruner_kwargs={"keep_ratio": 0.75}).eval()
    with torch.no_grad():
        net(image(3))
    first, second = keep_count(N, 0.75), keep_count(keep_count(N, 0.75), 0.75)
    assert [r.tokens_in.tolist() for r in net.token_report] == [[N] * 3, [first] * 3]
    assert [r.tokens_kept.tolist() for r in net.token_report] == [[first] * 3, [second] * 3]
    # twelve ViT blocks: four whole, three after stage 1, five after stage 2 (Evo-ViT's representative not counted)
    assert net.kept_fraction() == pytest.approx((4 * N + 3 * first + 5 * second) / (12 * N))


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="smoothing"):
        EvoViT(smoothing=0.0)
    with pytest.raises(ValueError, match="keep_ratio"):
        EvoViT(keep_ratio=0.0)
    with pytest.raises(ValueError, match="budget"):
        DToP(32, 3, budget="percentile")
    with pytest.raises(ValueError, match="confidence"):
        DToP(32, 3, confidence=0.0)
    with pytest.raises(ValueError, match="num_classes"):
        DToP(32, 1)
    with pytest.raises(ValueError, match="attention maps"):
        EvoViT()(stage_input(TokenState(torch.randn(1, N, 8), GRID)))
    state = TokenState(torch.randn(1, N, 8), GRID)
    with pytest.raises(ValueError, match="attention map over 5 tokens"):
        EvoViT()(stage_input(state, attentions=[random_attention(1, 2, 5)]))
    with pytest.raises(ValueError, match="executor mode 'gather'"):
        tiny_unetr(DToP(32, 3, confidence=0.5, budget="threshold")).eval()(image(1))


def test_bad_configuration_errors():
    with pytest.raises(ValueError, match="unknown pruner name 'prune_me'"):
        create_pruner("prune_me")
    with pytest.raises(ValueError, match="prune_stages must be a subset"):
        tiny_unetr(pruner="prato", prune_stages=(0, 4))
    with pytest.raises(ValueError, match="threshold must be"):
        PrATo(dim=8, threshold="median")
    with pytest.raises(ValueError, match="scoring must be"):
        PrATo(dim=8, scoring="crop")
