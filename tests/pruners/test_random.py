"""Random token masking (prato_components/pruners/random.py)."""

import pytest
import torch
from conftest import stage_input

from prato_components.pruners import RandomPruner


def test_random_is_reproducible_in_eval_and_fresh_in_training():
    inputs = stage_input(torch.randn(2, 64, 32))
    pruner = RandomPruner(keep_ratio=0.5, seed=3).eval()
    first = pruner(inputs).keep_mask
    assert torch.equal(first, pruner(inputs).keep_mask)
    assert torch.equal(first, RandomPruner(keep_ratio=0.5, seed=3).eval()(inputs).keep_mask)
    assert not torch.equal(first, RandomPruner(keep_ratio=0.5, seed=4).eval()(inputs).keep_mask)
    assert not torch.equal(first, pruner(stage_input(torch.randn(2, 64, 32), stage=2)).keep_mask)
    assert not torch.equal(first[0], first[1])  # images get their own draws

    pruner.train()
    draws = [pruner(inputs).keep_mask for _ in range(3)]
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
    again = RandomPruner(keep_ratio=0.5, seed=3).train()
    assert all(torch.equal(draw, again(inputs).keep_mask) for draw in draws)  # seeded
    unseeded = RandomPruner(keep_ratio=0.5, seed=None).train()
    torch.manual_seed(7)
    one = unseeded(inputs).keep_mask
    torch.manual_seed(7)
    assert torch.equal(one, unseeded(inputs).keep_mask)  # the global generator's seed
    with pytest.raises(ValueError, match="seed must be"):
        RandomPruner(seed=-1)


def test_random_keeps_every_position_equally_often():
    inputs = stage_input(torch.zeros(4000, 16, 4), grid=(4, 4))
    selection = RandomPruner(keep_ratio=0.75, seed=0).eval()(inputs)
    assert selection.scores is None and selection.num_kept.eq(12).all()
    frequency = selection.keep_mask.float().mean(0)
    torch.testing.assert_close(frequency, torch.full((16,), 0.75), atol=0.03, rtol=0)
