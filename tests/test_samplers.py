"""Samplers: what each draws, in which proportions, and that draws are seeded, resumable and sharded."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest

from alol_ray.losses import SAMPLE_WEIGHT
from alol_ray.train.samplers import Sampler, make_sampler, positive_fraction, resolve_sampler, scaled_steps

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


def test_unknown_sampler_and_missing_columns_are_named_exactly():
    with pytest.raises(ValueError, match=re.escape(
            "unknown sampler 'priority'; expected auto or one of ['good_priority', 'good_random', 'uniform']") + "$"):
        resolve_sampler("priority", "advantage")
    with pytest.raises(ValueError, match="^sampler 'good_priority' needs the reward column of the scored table$"):
        make_sampler("auto", "reward", batch_size=2, seed=0, advantage=ADVANTAGE)
    with pytest.raises(ValueError, match="^sampler 'good_priority' needs the advantage column of the scored table$"):
        make_sampler("good_priority", "advantage", batch_size=2, seed=0, reward=REWARD)


def test_positive_fraction_and_step_rounding_edges():
    """Empty -> 0.0; [1, -1, 0, 2] -> 2/4 (0 is not positive). steps * fraction is rounded half to even:
    10 * 0.25 = 2.5 -> 2, 10 * 0.35 = 3.5 -> 4, 10 * 0.04 = 0.4 -> 0 -> at least 1."""
    assert positive_fraction(np.array([])) == 0.0
    assert positive_fraction([1, -1, 0, 2]) == 0.5
    assert scaled_steps(10, 0.25) == 2
    assert scaled_steps(10, 0.35) == 4
    assert scaled_steps(10, 0.04) == 1
    assert scaled_steps(7, 1.0) == 7


def test_sampler_validation_messages_and_sizes():
    """batch_size 1 is the smallest allowed; weights must be finite and >= 0 with at least one > 0."""
    sampler = Sampler("s", [0.0, 2.0, 0.0, 1.0], batch_size=1, seed=0, replacement=False)
    assert (sampler.n_units, sampler.support_size) == (4, 2)
    assert sampler.global_batch(0).shape == (1,)
    with pytest.raises(ValueError, match="^sampler batch_size must be >= 1$"):
        Sampler("s", [1.0], batch_size=0, seed=0, replacement=True)
    for bad in ([1.0, float("nan")], [1.0, float("inf")], [1.0, -0.5]):
        with pytest.raises(ValueError, match=r"^sampler 's': weights must be finite and >= 0$"):
            Sampler("s", bad, batch_size=1, seed=0, replacement=True)
    with pytest.raises(ValueError, match=r"^sampler 's': no unit has a positive weight \(nothing to train on\)$"):
        Sampler("s", [0.0, 0.0], batch_size=1, seed=0, replacement=True)


def test_draws_are_numpys_generator_on_the_documented_streams():
    """With replacement, step s draws Generator([seed, 0, s]).choice(n, batch, p = A+ / sum A+); without, the
    support is permuted by Generator([seed, 1, epoch]).permutation and read in order across steps: batch 3
    over the 5 positive units reads positions 0-2, 3-4 + the next epoch's 0, ..."""
    priority = make_sampler("good_priority", "advantage", batch_size=6, seed=4, advantage=ADVANTAGE)
    p = np.clip(ADVANTAGE, 0, None) / 4.0
    for step in (0, 1, 7):
        expected = np.random.default_rng([4, 0, step]).choice(8, size=6, replace=True, p=p)
        np.testing.assert_array_equal(priority.global_batch(step), expected)

    shuffled = make_sampler("good_random", "advantage", batch_size=3, seed=9, advantage=ADVANTAGE)
    support = np.array([0, 3, 4, 6, 7])
    epochs = [support[np.random.default_rng([9, 1, e]).permutation(5)] for e in range(3)]
    flat = np.concatenate(epochs)
    for step in range(5):  # positions 0..14 = epochs 0, 1, 2
        np.testing.assert_array_equal(shuffled.global_batch(step), flat[3 * step:3 * step + 3])
    np.testing.assert_array_equal(shuffled.global_batch(1), [epochs[0][3], epochs[0][4], epochs[1][0]])


def test_huge_weights_do_not_overflow():
    """Weights 1e308 (their sum overflows float64) draw like [1, 1, 1, 0] / 3."""
    sampler = make_sampler("good_priority", "advantage", batch_size=50, seed=2,
                           advantage=np.array([1e308, 1e308, 1e308, 0.0]))
    expected = np.random.default_rng([2, 0, 3]).choice(4, size=50, replace=True, p=[1 / 3, 1 / 3, 1 / 3, 0.0])
    np.testing.assert_array_equal(sampler.global_batch(3), expected)


def test_shards_are_contiguous_slices_and_errors_name_the_sizes():
    """batch 6 over 3 workers: rank r takes global positions [2r, 2r + 2)."""
    sampler = make_sampler("uniform", "none", batch_size=6, seed=0, n_units=10)
    whole = sampler.global_batch(2)
    for rank in range(3):
        np.testing.assert_array_equal(sampler.shard(2, rank, 3), whole[2 * rank:2 * rank + 2])
    with pytest.raises(ValueError, match="^batch_size 6 is not divisible by 4 workers$"):
        sampler.shard(0, 0, 4)


def test_state_dict_and_digest_exactly():
    """The identity a checkpoint stores; digest = first 16 hex digits of sha256 over the float64 weights."""
    sampler = make_sampler("good_priority", "advantage", batch_size=4, seed=3, advantage=ADVANTAGE)
    digest = hashlib.sha256(np.clip(ADVANTAGE, 0, None).astype(np.float64).tobytes()).hexdigest()[:16]
    assert sampler.state_dict() == {"name": "good_priority", "seed": 3, "batch_size": 4, "replacement": True,
                                    "n_units": 8, "digest": digest}
    other = make_sampler("good_priority", "advantage", batch_size=2, seed=3, advantage=ADVANTAGE)
    with pytest.raises(ValueError, match=re.escape(
            "checkpoint sampler state differs in ['batch_size'] (checkpoint [4], now [2]): "
            "the table or config changed since the checkpoint") + "$"):
        other.check_state(sampler.state_dict())


def test_make_sampler_weights_per_kind():
    """good_priority on rewards clips negatives to 0: R = [-1, 2, 0, 1] -> p = [0, 2, 0, 1] / 3.
    good_random keeps A > 0 only (A = 0 is out). uniform counts its units from whichever column is given."""
    reward = np.array([-1.0, 2.0, 0.0, 1.0])
    sampler = make_sampler("good_priority", "reward", batch_size=5, seed=1, reward=reward)
    np.testing.assert_array_equal(sampler.weights, [0.0, 2.0, 0.0, 1.0])
    expected = np.random.default_rng([1, 0, 0]).choice(4, size=5, replace=True, p=[0.0, 2 / 3, 0.0, 1 / 3])
    np.testing.assert_array_equal(sampler.global_batch(0), expected)
    shuffled = make_sampler("good_random", "advantage", batch_size=2, seed=0, advantage=np.array([0.0, 0.5, -1.0, 2.0]))
    np.testing.assert_array_equal(shuffled.weights, [0.0, 1.0, 0.0, 1.0])
    assert shuffled.replacement is False and shuffled.name == "good_random"
    assert make_sampler("uniform", "none", batch_size=2, seed=0, reward=reward).n_units == 4
    assert make_sampler("uniform", "none", batch_size=2, seed=0, advantage=ADVANTAGE).n_units == 8
    uniform = make_sampler("uniform", "none", batch_size=2, seed=0, advantage=ADVANTAGE, n_units=3)
    np.testing.assert_array_equal(uniform.weights, [1.0, 1.0, 1.0])
    assert uniform.replacement is False


def test_auto_sampler_for_an_unweighted_loss_is_uniform_and_names_itself():
    """make_sampler resolves auto with the method's sample weight: "none" -> uniform, over every unit and
    without replacement; its name is the concrete one."""
    sampler = make_sampler("auto", "none", batch_size=2, seed=0, advantage=ADVANTAGE)
    assert sampler.name == "uniform" and sampler.replacement is False and sampler.support_size == 8
    assert make_sampler("uniform", "none", batch_size=2, seed=0, n_units=3).name == "uniform"


def test_integer_weights_are_float64_and_draws_are_int64():
    """Weights given as ints are stored (and digested) as float64, so the checkpoint digest does not depend on
    how they were typed; indices drawn with and without replacement are int64."""
    ints = Sampler("s", [0, 2, 0, 1], batch_size=3, seed=0, replacement=False)
    floats = Sampler("s", np.array([0.0, 2.0, 0.0, 1.0]), batch_size=3, seed=0, replacement=False)
    assert ints.weights.dtype == np.float64 and ints.digest() == floats.digest()
    assert ints.global_batch(0).dtype == np.int64
    assert Sampler("s", [1, 1], batch_size=3, seed=0, replacement=True).global_batch(0).dtype == np.int64


def test_which_samplers_draw_by_the_advantage():
    """The value stage must run before a method whose sampler draws by advantage, whatever its loss reads: nll
    with good_priority trains on A-LoL's rows (tests/test_alol_loss.py)."""
    from alol_ray.train.samplers import needs_advantage

    assert needs_advantage("good_priority", "none") and needs_advantage("good_priority", "advantage")
    assert not needs_advantage("good_priority", "reward")  # wbc / r_gold / r_lol draw by reward
    assert needs_advantage("good_random", "none") and needs_advantage("good_random", "reward")
    assert not needs_advantage("uniform", "advantage") and not needs_advantage("auto", "none")
    assert needs_advantage("auto", "advantage") and not needs_advantage("auto", "reward")
    with pytest.raises(ValueError, match="unknown sampler"):
        needs_advantage("nope", "none")
