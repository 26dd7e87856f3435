"""The built-in task: deterministic data, disjoint splits, a hand-checkable reward, noisy ranks."""

import time

import numpy as np
import pandas as pd
import pytest

from alol_ray import columns as C
from alol_ray.tasks import builtin as B

PROMPT = "### Human: Any tips for gardening on a small budget? ### Assistant:"


@pytest.fixture(scope="module")
def rows():
    return B.build_rows(seed=0)


@pytest.fixture(scope="module")
def rows_seed1():
    return B.build_rows(seed=1)


def _component(prompt, response, name):
    return float(B.score([prompt], [response])[name][0])


def test_deterministic_for_a_seed_and_different_across_seeds(rows, rows_seed1):
    pd.testing.assert_frame_equal(rows, B.build_rows(seed=0))
    assert not rows[C.PROMPT].equals(rows_seed1[C.PROMPT])


def test_sizes_splits_and_columns(rows):
    expected = list(C.CANONICAL) + [C.reward_column(c) for c in B.COMPONENTS] + [C.REWARD]
    assert sorted(rows.columns) == sorted(expected)
    per_prompt = rows.groupby(C.PROMPT_ID)
    assert per_prompt[C.PROMPT].nunique().eq(1).all() and per_prompt[C.SPLIT].nunique().eq(1).all()
    prompts = rows.drop_duplicates(C.PROMPT_ID)
    assert prompts[C.PROMPT].is_unique  # one id per prompt text
    assert prompts[C.SPLIT].value_counts().to_dict() == {"train": 2400, "val": 200, "test": 200}
    texts = {s: set(prompts.loc[prompts[C.SPLIT] == s, C.PROMPT]) for s in C.SPLITS}
    assert not (texts["train"] & texts["val"]) and not (texts["train"] & texts["test"])
    assert not (texts["val"] & texts["test"])
    assert prompts[C.PROMPT_ID].str.fullmatch(r"builtin-(train|val|test)-\d{6}").all()
    sizes = per_prompt.size()
    assert sizes.min() == 2 and sizes.max() == 4
    # ranks of a prompt are 0..n-1
    assert (per_prompt[C.RANK].apply(sorted) == sizes.apply(lambda n: list(range(n)))).all()


def test_small_sizes():
    small = B.build_rows(seed=3, n_train=10, n_val=3, n_test=2)
    assert small.drop_duplicates(C.PROMPT_ID)[C.SPLIT].value_counts().to_dict() == {"train": 10, "val": 3, "test": 2}


def test_prompt_shape(rows):
    prompts = rows[C.PROMPT].unique()
    assert all(p.startswith(B.NEXT_TURN_MARKER) and p.endswith(B.RESPONSE_MARKER) for p in prompts)
    # every prompt carries exactly one topic and one constraint key word
    for p in prompts:
        words = set(B._words(p))
        assert len(words & set(B.TOPICS)) == 1 and len(words & set(B.CONSTRAINTS)) == 1, p


def test_vocabulary_is_consistent():
    """Tips must not mention key words (else an off-topic reply could be relevant); every constraint
    sentence mentions its own key word; every opener is courteous."""
    for tips in B.TOPICS.values():
        for tip in tips:
            assert not set(B._words(tip)) & B.KEYWORDS, tip
    for word, (phrase, sentences) in B.CONSTRAINTS.items():
        assert word in B._words(phrase)
        assert all(word in B._words(s) for s in sentences)
    assert all(B.score([PROMPT], [o])["politeness"][0] == 1.0 for o in B.OPENERS)


def test_good_reply_scores_three():
    # 20 words, both key words, "happy to help" -> 1 + 1 + 1
    reply = ("Sure, happy to help! For gardening, pull the weeds every week. "
             "Keep the budget low and reuse what you have.")
    scores = B.score([PROMPT], [reply])
    assert {k: float(v[0]) for k, v in scores.items()} == {"relevance": 1.0, "politeness": 1.0, "length": 1.0}
    assert B.total_reward(scores)[0] == 3.0


def test_relevance_counts_the_prompt_key_words():
    assert _component(PROMPT, "GARDENING is nice.", "relevance") == 0.5  # case-insensitive, topic only
    assert _component(PROMPT, "Mind the budget.", "relevance") == 0.5  # constraint only
    assert _component(PROMPT, "Cooking on a budget for gardening.", "relevance") == 1.0
    assert _component(PROMPT, "Cooking with kids.", "relevance") == 0.0  # other key words do not count
    assert _component(PROMPT, "Gardeningbudget", "relevance") == 0.0  # whole words only
    assert _component("### Human: Hello there. ### Assistant:", "Hello there.", "relevance") == 0.0  # no key words


def test_politeness():
    assert _component(PROMPT, "Ok.", "politeness") == 0.5  # neither courteous nor rude
    assert _component(PROMPT, "Thanks for asking.", "politeness") == 1.0
    assert _component(PROMPT, "Thank you, good luck.", "politeness") == 1.0
    assert _component(PROMPT, "Ugh, gardening is a dumb thing to ask about.", "politeness") == 0.0
    assert _component(PROMPT, "Happy to help, you lazy idiot.", "politeness") == 0.0  # rude beats courteous
    assert _component(PROMPT, "Please shut up.", "politeness") == 0.0  # two-word rude phrase
    assert _component(PROMPT, "I shut the gate.", "politeness") == 0.5  # ... only as a phrase
    assert _component(PROMPT, "Thanksgiving is near.", "politeness") == 0.5  # whole words only


def test_length_window_and_decay():
    def length(n_words):
        return _component(PROMPT, " ".join(["word"] * n_words), "length")

    assert length(0) == 0.0
    assert length(1) == pytest.approx(1 / 12)
    assert length(9) == pytest.approx(0.75)
    assert length(12) == 1.0 and length(30) == 1.0
    assert length(35) == pytest.approx(0.75)  # 1 - 5/20
    assert length(45) == pytest.approx(0.25)  # 1 - 15/20
    assert length(50) == 0.0 and length(80) == 0.0


def test_hand_computed_bad_replies():
    # "Ugh, gardening is a dumb thing to ask about." 9 words: relevance 0.5, rude 0, length 9/12
    rude = B.score([PROMPT], ["Ugh, gardening is a dumb thing to ask about."])
    assert B.total_reward(rude)[0] == pytest.approx(0.5 + 0.0 + 0.75)
    # 15 x "Gardening is good." = 45 words: relevance 0.5, politeness 0.5, length 0.25
    ramble = B.score([PROMPT], [" ".join(["Gardening is good."] * 15)])
    assert B.total_reward(ramble)[0] == pytest.approx(1.25)
    # "Ok." 1 word: 0 + 0.5 + 1/12
    assert B.total_reward(B.score([PROMPT], ["Ok."]))[0] == pytest.approx(0.5 + 1 / 12)
    # the evasive reply "I do not know." 4 words: 0 + 0.5 + 4/12
    assert B.total_reward(B.score([PROMPT], ["I do not know."]))[0] == pytest.approx(0.5 + 4 / 12)


def test_key_words_and_sensitive_requests():
    assert B.key_words(PROMPT) == {"gardening", "budget"}
    knee = "### Human: How should I practice yoga after a knee injury? ### Assistant:"
    assert B.key_words(knee) == {"yoga", "injury"} and B.is_sensitive(knee) and not B.is_sensitive(PROMPT)
    # only the last human turn counts
    two_turns = "### Human: Cooking with kids? ### Assistant: Sure. " + PROMPT
    assert B.key_words(two_turns) == {"gardening", "budget"}


def test_row_rewards_are_the_scorer_sum(rows):
    comps = B.score(list(rows[C.PROMPT]), list(rows[C.RESPONSE]))
    for name in B.COMPONENTS:
        np.testing.assert_array_equal(rows[C.reward_column(name)].to_numpy(), comps[name])
    np.testing.assert_allclose(rows[C.REWARD], sum(comps[c] for c in B.COMPONENTS))
    assert rows[C.REWARD].between(0, B.MAX_REWARD).all()


def test_score_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        B.score([PROMPT], [])


def test_score_is_fast(rows):
    prompts, responses = list(rows[C.PROMPT][:5000]) * 2, list(rows[C.RESPONSE][:5000]) * 2
    start = time.process_time()  # CPU time: robust to other processes sharing the cores
    B.score(prompts, responses)
    assert time.process_time() - start < 1.0  # 10k rows; ~0.1 s on one core


@pytest.mark.parametrize("seed", [0, 1])
def test_rank_noise_and_low_reward_share_are_in_band(seed, rows, rows_seed1):
    data = rows if seed == 0 else rows_seed1
    best = data.groupby(C.PROMPT_ID)[C.REWARD].transform("max")
    rank0 = data[C.RANK] == 0
    is_best = (data[C.REWARD] >= best - 1e-9)[rank0]
    low = (data[C.REWARD] < B.LOW_REWARD)[rank0]
    # noisy like human labels: rank 0 is a best reply only ~65% of the time ...
    assert 0.57 <= is_best.mean() <= 0.70
    # ... and about a third of the preferred replies are clearly bad
    assert 0.27 <= low.mean() <= 0.40
    # the good ones (what A-LoL should keep) are the majority and reach the maximum
    assert (data.loc[rank0, C.REWARD] == B.MAX_REWARD).mean() >= 0.5
    # the noise is not uniform: on sensitive requests (a third) most preferred replies are bad,
    # mostly the evasive "I do not know."; elsewhere few are
    sensitive = data[C.PROMPT].map(B.is_sensitive)[rank0]
    assert 0.28 <= sensitive.mean() <= 0.38
    assert low[sensitive].mean() >= 0.55 and low[~sensitive].mean() <= 0.25
    evasive = data.loc[rank0 & data[C.PROMPT].map(B.is_sensitive), C.RESPONSE].isin(B.EVASIVE)
    assert 0.5 <= evasive.mean() <= 0.7
    # ... yet about a third of the sensitive prompts keep a good preferred reply to learn from
    assert (data.loc[rank0, C.REWARD][sensitive] == B.MAX_REWARD).mean() >= 0.25
