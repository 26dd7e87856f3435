"""Stop-string post-processing (pure; no model). A toy character-level "tokenizer" makes the id/text
arithmetic checkable by hand: token i decodes to VOCAB[i]."""

from __future__ import annotations

import pytest

from alol_ray.generation.postprocess import (
    FINISH_EOS,
    FINISH_LENGTH,
    FINISH_STOP,
    cut_at_stop,
    find_stop,
    finish_output,
    ids_before,
    postprocess,
)

HUMAN = "### Human:"
# id -> piece; 0 is EOS (decodes to nothing, like a skipped special token), 1 is PAD.
VOCAB = ["", "", "Sure", ",", " happy", " to", " help", ".", " ###", " Human", ":", " more", "\n", "###", "!"]
EOS, PAD = 0, 1


def decode(ids: list[int]) -> str:
    return "".join(VOCAB[i] for i in ids)


def test_cut_at_the_next_turn_marker_and_strip():
    assert postprocess(" Sure, happy to help. ### Human: and you?", [HUMAN]) == "Sure, happy to help."
    assert postprocess("  no marker here \n", [HUMAN]) == "no marker here"
    assert postprocess("### Human: at once", [HUMAN]) == ""


def test_earliest_of_several_stops_wins_not_the_first_listed():
    text = "a b STOP2 c STOP1 d"
    assert find_stop(text, ["STOP1", "STOP2"]) == text.index("STOP2")
    assert cut_at_stop(text, ["STOP1", "STOP2"]) == "a b "


def test_no_stops_and_partial_markers_leave_text_alone():
    assert postprocess(" x ", []) == "x"
    # A marker cut off by max_new_tokens is not a stop string: the text is kept as generated.
    assert postprocess("reply ### Hum", [HUMAN]) == "reply ### Hum"
    # Empty stop strings are ignored rather than cutting everything.
    assert find_stop("abc", ["", "c"]) == 2


def test_ids_before_keeps_the_longest_prefix_within_n_chars():
    ids = [2, 3, 4, 5]  # "Sure" "," " happy" " to": lengths 4, 5, 11, 14
    assert ids_before(decode, ids, 11) == [2, 3, 4]
    assert ids_before(decode, ids, 10) == [2, 3]
    assert ids_before(decode, ids, 0) == []
    assert ids_before(decode, ids, 100) == ids


def test_finish_at_stop_drops_the_marker_tokens_and_has_no_eos():
    # "Sure, happy to help. ### Human: more" -> stop at char 20 (the space before ###).
    ids = [2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    out = finish_output(ids, decode=decode, eos_id=EOS, stops=[HUMAN], pad_id=PAD)
    assert out.text == "Sure, happy to help."
    # " ###" starts at char 20 = len("Sure, happy to help."), so the first 6 tokens remain.
    assert out.token_ids == [2, 3, 4, 5, 6, 7]
    assert out.num_tokens == 6 and out.finish_reason == FINISH_STOP


def test_finish_at_eos_keeps_eos_and_drops_what_follows():
    ids = [2, 14, EOS, PAD, PAD]
    out = finish_output(ids, decode=decode, eos_id=EOS, stops=[HUMAN], pad_id=PAD)
    assert (out.text, out.token_ids, out.num_tokens, out.finish_reason) == ("Sure!", [2, 14, EOS], 3, FINISH_EOS)


def test_stop_before_eos_wins_and_eos_is_dropped():
    ids = [2, 8, 9, 10, EOS]  # "Sure ### Human:" then EOS
    out = finish_output(ids, decode=decode, eos_id=EOS, stops=[HUMAN])
    assert (out.text, out.token_ids, out.finish_reason) == ("Sure", [2], FINISH_STOP)


def test_length_finish_strips_trailing_padding_only():
    out = finish_output([2, 6, PAD, PAD], decode=decode, eos_id=EOS, stops=[HUMAN], pad_id=PAD)
    assert (out.text, out.token_ids, out.finish_reason) == ("Sure help", [2, 6], FINISH_LENGTH)


def test_eos_hint_appends_the_eos_an_engine_left_out():
    out = finish_output([2, 14], decode=decode, eos_id=EOS, stops=[HUMAN], eos_hint=True)
    assert out.token_ids == [2, 14, EOS] and out.finish_reason == FINISH_EOS and out.text == "Sure!"


def test_marker_inside_one_token_still_cuts():
    # "Sure\n###" then " Human:": the stop starts inside the joined text at the token "###".
    ids = [2, 12, 13, 9, 10, 11]
    out = finish_output(ids, decode=decode, eos_id=EOS, stops=[HUMAN])
    assert out.text == "Sure" and out.token_ids == [2, 12] and out.finish_reason == FINISH_STOP


@pytest.mark.parametrize("stops", [[HUMAN], [HUMAN, "\n"]])
def test_text_matches_decoded_ids_up_to_whitespace(stops):
    ids = [2, 3, 4, 12, 13, 9, 10]
    out = finish_output(ids, decode=decode, eos_id=EOS, stops=stops)
    assert decode(out.token_ids).strip() == out.text == "Sure, happy"
