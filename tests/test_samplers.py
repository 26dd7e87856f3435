"""Samplers: what each draws, in which proportions, and that draws are seeded, resumable and sharded."""

from __future__ import annotations

import numpy as np
import pytest

from alol_ray.losses import SAMPLE_WEIGHT
from alol_ray.train.samplers import make_sampler, positive_fraction, resolve_sampler, scaled_steps

ADVANTAGE = np.array([0.5, -0.2, 0.0, 1.5, 0.25, -1.0, 0.75, 1.0])  # positive: units 0, 3, 4, 6, 7
REWARD = np.array([0.1, 0.9, 0.0, 0.4, 0.2, 0.3, 0.6, 0.5])


def test_auto_follows_the_loss_sample_weight():
    """A-LoL family and wbc/r_gold/r_lol -> good_priority; nll -> uniform; explicit names pass through."""
    for loss, weight in SAMPLE_WEIGHT.items():
        expected = "uniform" if weight == "none" else "good_priority"
        assert resolve_sampler("auto", weight) == expected, loss
    assert resolve_sampler("good_random", "advantage") == "good_random"
    with pytest.raises(ValueError, match="unknown sampler"):
        resolve_sampler("priority", "advantage")


def test_good_priority_draws_in_proportion_to_positive_advantage():
    """p = A+ / sum(A+) = [0.5, 0, 0, 1.5, 0.25, 0, 0.75, 1.0] / 4.0; non-positive units never drawn."""
    sampler = make_sampler("good_priority", "advantage", batch_size=500, seed=3, advantage=ADVANTAGE)
    draws = np.concatenate([sampler.global_batch(s) for s in range(200)])  # 100k draws
    freq = np.bincount(draws, minlength=8) / draws.size
    expected = np.array([0.5, 0, 0, 1.5, 0.25, 0, 0.75, 1.0]) / 4.0
    assert freq[[1, 2, 5]].sum() == 0.0
    # binomial std of a frequency at 100k draws is <= 0.0016; 0.006 is ~4 sigma
    np.testing.assert_allclose(freq, expected, atol=0.006)


def test_good_priority_uses_reward_for_reward_weighted_losses():
    """wbc / r_gold / r_lol: p = max(R, 0) / sum = REWARD / 3.0; the advantage is ignored."""
    sampler = make_sampler("auto", SAMPLE_WEIGHT["wbc"], batch_size=500, seed=0, advantage=ADVANTAGE, reward=REWARD)
    assert sampler.name == "good_priority"
    draws = np.concatenate([sampler.global_batch(s) for s in range(200)])
    freq = np.bincount(draws, minlength=8) / draws.size
    assert freq[2] == 0.0  # reward 0
    np.testing.assert_allclose(freq, REWARD / REWARD.sum(), atol=0.006)


def test_good_random_is_an_epoch_shuffle_of_the_positive_units():
    """5 positive units, batch 5: every step is one permutation of {0, 3, 4, 6, 7}; epochs differ."""
    sampler = make_sampler("good_random", "advantage", batch_size=5, seed=1, advantage=ADVANTAGE)
    epochs = [sampler.global_batch(s) for s in range(6)]
    for batch in epochs:
        assert sorted(batch.tolist()) == [0, 3, 4, 6, 7]
    assert len({tuple(b) for b in epochs}) > 1


def test_uniform_covers_every_unit_once_per_epoch_across_step_boundaries():
    """8 units, batch 3: positions 0..23 = 3 epochs; each run of 8 positions is a permutation."""
    sampler = make_sampler("uniform", "none", batch_size=3, seed=2, n_units=8)
    flat = np.concatenate([sampler.global_batch(s) for s in range(8)])
    for epoch in range(3):
        assert sorted(flat[epoch * 8:(epoch + 1) * 8].tolist()) == list(range(8))


@pytest.mark.parametrize("name", ["good_priority", "good_random", "uniform"])
def test_draws_are_seeded_and_do_not_depend_on_history(name):
    """Resuming at step 5 draws what an uninterrupted run draws at step 5 (state = the step)."""
    a = make_sampler(name, "advantage", batch_size=4, seed=7, advantage=ADVANTAGE, n_units=8)
    straight = [a.global_batch(s).tolist() for s in range(10)]
    b = make_sampler(name, "advantage", batch_size=4, seed=7, advantage=ADVANTAGE, n_units=8)
    resumed = [b.global_batch(s).tolist() for s in range(5, 10)]
    assert straight[5:] == resumed
    c = make_sampler(name, "advantage", batch_size=4, seed=8, advantage=ADVANTAGE, n_units=8)
    assert [c.global_batch(s).tolist() for s in range(10)] != straight


@pytest.mark.parametrize("name", ["good_priority", "good_random", "uniform"])
def test_worker_shards_concatenate_to_the_global_batch(name):
    """2 workers x 4 and 4 workers x 2 see exactly the units of 1 worker x 8, in order."""
    sampler = make_sampler(name, "advantage", batch_size=8, seed=0, advantage=ADVANTAGE, n_units=8)
    for step in range(4):
        whole = sampler.shard(step, 0, 1)
        for world in (2, 4):
            parts = np.concatenate([sampler.shard(step, r, world) for r in range(world)])
            np.testing.assert_array_equal(parts, whole)
    with pytest.raises(ValueError, match="not divisible"):
        sampler.shard(0, 0, 3)


def test_state_check_refuses_a_different_table_or_seed():
    sampler = make_sampler("good_priority", "advantage", batch_size=4, seed=0, advantage=ADVANTAGE)
    state = sampler.state_dict()
    sampler.check_state(state)  # same identity: fine
    changed = make_sampler("good_priority", "advantage", batch_size=4, seed=0, advantage=ADVANTAGE * 2)
    with pytest.raises(ValueError, match="digest"):
        changed.check_state(state)
    other_seed = make_sampler("good_priority", "advantage", batch_size=4, seed=1, advantage=ADVANTAGE)
    with pytest.raises(ValueError, match="seed"):
        other_seed.check_state(state)


def test_no_positive_unit_is_an_error():
    with pytest.raises(ValueError, match="no unit has a positive weight"):
        make_sampler("good_priority", "advantage", batch_size=2, seed=0, advantage=np.array([-1.0, 0.0]))
    with pytest.raises(ValueError, match="needs the advantage column"):
        make_sampler("good_random", "advantage", batch_size=2, seed=0, n_units=2)


def test_step_scaling_by_positive_fraction():
    """5 of 8 advantages are > 0: 300 steps -> round(300 * 0.625) = 188 (0 stays >= 1)."""
    assert positive_fraction(ADVANTAGE) == 0.625
    assert scaled_steps(300, positive_fraction(ADVANTAGE)) == 188
    assert scaled_steps(300, 0.0) == 1
