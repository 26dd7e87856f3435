"""Reward and reference scoring: the scorers, the cached scored table, `alol score` on the HH data.

Ray passes are expensive on 2 cores (each actor imports torch), so the cache tests share one sequence
of runs (module fixture `cache_runs`) and assert on what each run did.
"""

from __future__ import annotations

import glob
import json
import math
import os
import time

import numpy as np
import pandas as pd
import pytest
import torch

from alol_ray import columns as C
from alol_ray.config import ChatTemplateConfig, RewardComponentConfig, RunConfig, TurnsConfig, load_config
from alol_ray.errors import ConfigError
from alol_ray.scoring import scorers
from alol_ray.scoring.reward import RewardScorer, raw_column

MAX_PROMPT, MAX_RESPONSE = 16, 12  # small, so both truncations (prompt left, response right + EOS) happen


# ----------------------------------------------------------------------------------------------- models


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory, tiny_policy_dir):
    """Tiny random-init HF sequence classifiers built from config, with the tiny policy's tokenizer:
    a single-logit GPT-2 and a two-label BERT (labels 'bad', 'good')."""
    from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2ForSequenceClassification

    from alol_ray.models import load_tokenizer

    tok = load_tokenizer(tiny_policy_dir)
    out = tmp_path_factory.mktemp("classifiers")
    torch.manual_seed(0)
    gpt = GPT2ForSequenceClassification(GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=32, n_layer=2, n_head=2,
                                                   num_labels=1, pad_token_id=tok.pad_token_id,
                                                   bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    bert = BertForSequenceClassification(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=64,
                                                    max_position_embeddings=256, pad_token_id=tok.pad_token_id,
                                                    num_labels=2, id2label={0: "bad", 1: "good"},
                                                    label2id={"bad": 0, "good": 1}))
    paths = {}
    for name, model in (("logit", gpt), ("labels", bert)):
        paths[name] = str(out / name)
        model.eval().save_pretrained(paths[name])
        tok.save_pretrained(paths[name])
    return paths


def _manual_logits(path, texts, max_length):
    """The classifier's logits computed here row by row, without the scorer's batching/padding."""
    from transformers import AutoModelForSequenceClassification

    from alol_ray.models import load_tokenizer

    tok = load_tokenizer(path)
    tok.truncation_side = "left"
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        return np.stack([model(**tok(t, truncation=True, max_length=max_length, return_tensors="pt")).logits[0].numpy()
                         for t in texts])


# ----------------------------------------------------------------------------------------------- scorers


def test_builtin_scorers_by_hand():
    """length window [2, 4] words, decay 2: 1 word -> 1/2; 3 -> 1; 5 -> 1 - 1/2; 7 -> 0 (floored).
    penalty: 1 word -> -(2-1)/2; 5 -> -(5-4)/2. distinct-2 of 'a b a b' = {ab, ba} / 3 bigrams = 2/3.
    tfidf: two identical sentences -> cosine 1 -> diversity 0; one sentence -> 1; disjoint sentences -> 1."""
    responses = ["one", "one two three", "a b c d e", "a b c d e f g"]
    np.testing.assert_allclose(scorers.length_score([""] * 4, responses, min_words=2, max_words=4, decay_words=2),
                               [0.5, 1.0, 0.5, 0.0])
    np.testing.assert_allclose(scorers.length_score([""] * 4, responses, min_words=2, max_words=4, decay_words=2,
                                                    mode="penalty"), [-0.5, 0.0, -0.5, -1.5])
    np.testing.assert_allclose(scorers.distinct_n(["", "", ""], ["a b a b", "x", "p q r"], n=2), [2 / 3, 0.0, 1.0])
    div = scorers.tfidf_diversity([""] * 4, ["Ski early. Ski early.", "Just one sentence here.",
                                              "Cats purr. Dogs bark.", "Ski early. Ski late."])
    assert div[0] == pytest.approx(0.0, abs=1e-12)
    assert div[1] == 1.0 and div[2] == pytest.approx(1.0, abs=1e-12)
    assert 0.0 < div[3] < 1.0  # shares "ski" only


def test_builtin_task_scorer_matches_task(builtin_rows):
    from alol_ray.tasks import builtin

    rows = builtin_rows.head(50)
    got = scorers.builtin_task(rows[C.PROMPT].tolist(), rows[C.RESPONSE].tolist())
    np.testing.assert_allclose(got, rows[C.REWARD].to_numpy(), atol=1e-12)
    only = scorers.builtin_task(rows[C.PROMPT].tolist(), rows[C.RESPONSE].tolist(), components=["politeness"])
    np.testing.assert_allclose(only, rows[C.reward_column("politeness")].to_numpy())
    with pytest.raises(ConfigError, match="unknown components"):
        scorers.builtin_task(["x"], ["y"], components=["nope"])
    assert set(builtin.COMPONENTS) == {"relevance", "politeness", "length"}


def word_count(prompts, responses, scale=1.0):
    """A python-callable reward used by the tests (`tests.test_scoring:word_count`)."""
    return [scale * len(r.split()) for r in responses]


def slow_word_count(prompts, responses):
    """A reward that takes 0.4 s a batch (`tests.test_scoring:slow_word_count`): work queues up."""
    time.sleep(0.4)
    return [float(len(r.split())) for r in responses]


def test_a_reward_pool_with_min_below_max_grows_under_load(ray_local):
    """min_actors=1, max_actors=2 over a slow reward: the pool starts at one actor and Ray Data adds the
    second while batches queue up. The actor count is what Ray's GCS reports for the pool's actors."""
    import threading

    from alol_ray.actor_pool import pool_pass
    from alol_ray.config import ActorPoolConfig

    counts, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            actors = ray_local._private.state.actors().values()
            counts.append(sum(a["State"] == "ALIVE" and a["ActorClassName"].startswith("MapWorker(MapBatches(RewardScorer")
                              for a in actors))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    frame = pd.DataFrame({C.PROMPT: [f"question {i}" for i in range(160)], C.RESPONSE: ["a b c"] * 160})
    comps = [RewardComponentConfig(name="slow", kind="python", function="tests.test_scoring:slow_word_count")]
    got = []
    try:
        n = pool_pass(frame, RewardScorer, {"components": comps},
                      ActorPoolConfig(min_actors=1, max_actors=2, batch_size=4, num_cpus=0.5),
                      on_output=got.append, desc="autoscale", batches_per_block=1)
    finally:
        stop.set()
        watcher.join()
    assert n == 160 and sorted(pd.concat(got)[C.reward_column("slow")].unique()) == [3.0]
    started = [c for c in counts if c]
    assert started and started[0] == 1, f"the pool did not start at min_actors: {counts}"
    assert max(counts) == 2, f"the pool never grew to max_actors: {counts}"


def test_reward_scorer_in_process(classifiers, builtin_rows):
    """Weighted sum of transformed components; each component kept; raw kept where transformed;
    single-logit and P(label) classifiers equal the models' own outputs (unbatched)."""
    rows = builtin_rows.head(12)
    prompts, responses = rows[C.PROMPT].tolist(), rows[C.RESPONSE].tolist()
    comps = [
        RewardComponentConfig(name="rm", kind="hf_classifier", model=classifiers["logit"], max_length=40,
                              transform="sigmoid", weight=2.0),
        RewardComponentConfig(name="good", kind="hf_classifier", model=classifiers["labels"], label="good",
                              max_length=40),
        RewardComponentConfig(name="words", kind="python", function="tests.test_scoring:word_count",
                              params={"scale": 0.5}, transform="standardise", weight=-1.0),
    ]
    comps[2].params.update(mean=3.0, std=2.0)
    out = RewardScorer(comps, num_threads=1)(rows)
    texts = [f"{p} {r}" for p, r in zip(prompts, responses)]
    logit = _manual_logits(classifiers["logit"], texts, 40)[:, 0]
    probs = torch.softmax(torch.tensor(_manual_logits(classifiers["labels"], texts, 40)), -1)[:, 1].numpy()
    words = np.array([0.5 * len(r.split()) for r in responses])
    np.testing.assert_allclose(out[raw_column("rm")], logit, atol=1e-5)
    np.testing.assert_allclose(out[C.reward_column("rm")], 1 / (1 + np.exp(-logit)), atol=1e-5)
    np.testing.assert_allclose(out[C.reward_column("good")], probs, atol=1e-5)
    assert raw_column("good") not in out  # untransformed: no separate raw column
    np.testing.assert_allclose(out[C.reward_column("words")], (words - 3.0) / 2.0)
    expected = 2.0 / (1 + np.exp(-logit)) + probs - (words - 3.0) / 2.0
    np.testing.assert_allclose(out[C.REWARD], expected, atol=1e-5)
    assert len(out) == len(rows) and (out[C.PROMPT] == rows[C.PROMPT]).all()


def test_hf_input_renderings(classifiers, tmp_path):
    """template 'chat' renders the prompt's turns with the tokenizer's chat template; 'pair' is a text pair;
    truncation_side right keeps the start of a long input."""
    import shutil

    from transformers import AutoTokenizer

    from alol_ray.scoring.reward import HFClassifier

    folder = tmp_path / "chat_rm"
    shutil.copytree(classifiers["logit"], folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
    tok.save_pretrained(folder)
    prompt = "### Human: Hi there ### Assistant: Hello! ### Human: Tips for baking? ### Assistant:"
    chat = HFClassifier(RewardComponentConfig(name="c", kind="hf_classifier", model=str(folder), template="chat"))
    assert chat._chat_text(prompt, "Measure the flour.") == (
        "<user>Hi there\n<assistant>Hello!\n<user>Tips for baking?\n<assistant>Measure the flour.\n")
    got = chat([prompt], ["Measure the flour."])
    want = _manual_logits(str(folder), [chat._chat_text(prompt, "Measure the flour.")], 512)[:, 0]
    np.testing.assert_allclose(got, want, atol=1e-5)

    # template turns: the reward model's own turn format (OpenAssistant's by default), the prompt's turns
    # found by the data's markers, its system line dropped, the reply as the last assistant turn.
    system_prompt = "Be kind. " + prompt
    turns = HFClassifier(RewardComponentConfig(
        name="t", kind="hf_classifier", model=str(folder), template="turns",
        turns=TurnsConfig(markers=ChatTemplateConfig(system="Be kind."))))
    eos = turns.tokenizer.eos_token
    assert turns._turns_text(system_prompt, "Measure the flour.") == (
        f"<|prompter|>Hi there{eos}<|assistant|>Hello!{eos}<|prompter|>Tips for baking?{eos}"
        f"<|assistant|>Measure the flour.{eos}")
    want = _manual_logits(str(folder), [turns._turns_text(system_prompt, "Measure the flour.")], 512)[:, 0]
    np.testing.assert_allclose(turns([system_prompt], ["Measure the flour."]), want, atol=1e-5)
    with pytest.raises(ConfigError, match=r"turns.human must use \{text\}"):
        TurnsConfig(human="<|prompter|>")

    pair = HFClassifier(RewardComponentConfig(name="p", kind="hf_classifier", model=classifiers["logit"],
                                              template="pair", truncation_side="right", max_length=6))
    long_prompt = "one two three four five six seven eight nine ten"
    enc = pair.tokenizer(long_prompt, "reply", truncation=True, max_length=6)
    assert len(enc["input_ids"]) == 6
    ids = pair.tokenizer(long_prompt, add_special_tokens=False)["input_ids"]
    assert enc["input_ids"][:3] == ids[:3]  # right truncation keeps the start
    np.testing.assert_allclose(
        pair([long_prompt], ["reply"]),
        pair.model(input_ids=torch.tensor([enc["input_ids"]])).logits[0, :1].detach().numpy(), atol=1e-5)
    with pytest.raises(ConfigError, match="no chat template"):
        HFClassifier(RewardComponentConfig(name="x", kind="hf_classifier", model=classifiers["logit"], template="chat"))


def test_the_data_rewards_are_checked_against_the_reward_components(builtin_rows, tmp_path, alol_log):
    """Rows that carry a reward: a sample is scored by reward.components too and the two are correlated in
    scoring.json. The built-in task's own scorer agrees exactly; a distinct-1 reward does not, and is warned about."""
    from alol_ray.scoring.table import score_rows

    rows = builtin_rows[builtin_rows[C.SPLIT] == "train"].head(300).reset_index(drop=True)
    cfg = load_config(None, [f"storage={tmp_path}", "scoring.agreement_rows=200"])
    report = score_rows(rows, cfg, str(tmp_path / "a"), cache_dir=str(tmp_path / "cache"))
    agreed = json.loads((tmp_path / "a" / "scoring.json").read_text())["agreement"]
    assert agreed["rows"] == 200 and agreed["pearson"] == pytest.approx(1.0) and report.reward_scored == 0
    assert not any("WARNING" in line for line in alol_log)
    cfg = load_config(None, [f"storage={tmp_path}", "scoring.agreement_rows=200",
                             "reward.components=[{name: d1, kind: distinct, params: {n: 1}}]"])
    score_rows(rows, cfg, str(tmp_path / "b"), cache_dir=str(tmp_path / "cache"))
    agreed = json.loads((tmp_path / "b" / "scoring.json").read_text())["agreement"]
    assert agreed["pearson"] < 0.5 and any("WARNING" in line and "template, turns" in line for line in alol_log)


def test_reward_scorer_rejects_bad_components(classifiers):
    with pytest.raises(ConfigError, match="set `label`"):
        RewardScorer([RewardComponentConfig(name="x", kind="hf_classifier", model=classifiers["labels"])])
    with pytest.raises(ConfigError, match="not one of"):
        RewardScorer([RewardComponentConfig(name="x", kind="hf_classifier", model=classifiers["labels"],
                                            label="great")])
    with pytest.raises(ConfigError, match="package.module:function"):
        RewardScorer([RewardComponentConfig(name="x", kind="python", function="no_colon")])
    with pytest.raises(ConfigError, match="unique"):
        RewardScorer([RewardComponentConfig(name="a", kind="length"), RewardComponentConfig(name="a", kind="distinct")])
    with pytest.raises(ConfigError, match="takes"):
        RewardScorer([RewardComponentConfig(name="a", kind="length", params={"max_word": 3})])
    with pytest.raises(ConfigError, match="standardise needs"):
        RewardScorer([RewardComponentConfig(name="a", kind="length", transform="standardise")]).rewards(["p"], ["r"])
    with pytest.raises(ConfigError, match="train_transform"):
        load_config(None, ["reward.train_transform=tanh"])


def test_reference_scorer_hidden_states(tiny_policy_dir):
    from alol_ray.scoring.reference import ReferenceScorer

    ref = ReferenceScorer(tiny_policy_dir, max_prompt_tokens=MAX_PROMPT, max_response_tokens=MAX_RESPONSE)
    prompts = ["### Human: Any tips for gardening on a small budget? ### Assistant:", "### Human: Hi ### Assistant:"]
    hidden, mask = ref.prompt_hidden_states(prompts)
    lengths = [min(len(ref.tokenizer(p, add_special_tokens=False)["input_ids"]), MAX_PROMPT) for p in prompts]
    assert hidden.shape == (2, max(lengths), ref.model.config.n_embd) and hidden.dtype == torch.float32
    assert mask.sum(1).tolist() == lengths
    # The second prompt alone gives the same states at its real positions (right padding does not leak).
    alone, _ = ref.prompt_hidden_states(prompts[1:])
    torch.testing.assert_close(hidden[1, : lengths[1]], alone[0], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------- the cached table


def _cfg(classifiers, storage, **pool):
    cfg = RunConfig(name="t", storage=str(storage))
    cfg.reward.components = [
        RewardComponentConfig(name="rm", kind="hf_classifier", model=classifiers["logit"], max_length=48,
                              transform="sigmoid"),
        RewardComponentConfig(name="words", kind="python", function="tests.test_scoring:word_count", weight=0.1),
        RewardComponentConfig(name="len", kind="length", weight=0.5, params={"min_words": 4, "max_words": 20}),
    ]
    cfg.model.max_prompt_tokens, cfg.model.max_response_tokens = MAX_PROMPT, MAX_RESPONSE
    for p in (cfg.scoring.reward_pool, cfg.scoring.reference_pool):
        p.min_actors, p.max_actors, p.batch_size = 1, 1, 8
    cfg.scoring.batches_per_block = 1
    # These runs count exactly which rows get scored; the agreement sample (carried rewards also scored by
    # the components) has its own test above.
    cfg.scoring.agreement_rows = 0
    return cfg


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def cache_runs(ray_local, classifiers, tiny_policy_dir, builtin_rows, tmp_path_factory):
    """One sequence of runs over the same cache:
    1. rows A (half without a reward: only those are scored) -> table;
    2. rows A again -> no work;
    3. rows A + B, interrupted after the first reference part -> reward pass did B only;
    4. rows A + B -> resumes: no reward work, reference only for the rows the interruption left."""
    from alol_ray.scoring.table import score_rows

    rows = builtin_rows[builtin_rows[C.SPLIT] == "train"].head(72).reset_index(drop=True)
    rows.loc[rows.index % 2 == 0, C.REWARD] = np.nan  # these lack a reward; the others keep theirs
    rows_a = rows.head(48)
    storage = tmp_path_factory.mktemp("runs")
    cfg = _cfg(classifiers, storage)
    scored, cache = os.path.join(storage, "scored"), os.path.join(storage, "cache")
    runs = {"rows_a": rows_a, "rows": rows, "cfg": cfg, "dir": scored, "cache": cache}
    t = time.time()
    runs[1] = score_rows(rows_a, cfg, scored, cache_dir=cache, ref_path=tiny_policy_dir)
    runs["t1"] = time.time() - t
    runs["table1"] = pd.read_parquet(runs[1].table)
    t = time.time()
    runs[2] = score_rows(rows_a, cfg, scored, cache_dir=cache, ref_path=tiny_policy_dir)
    runs["t2"] = time.time() - t
    runs["table2"] = pd.read_parquet(runs[2].table)
    parts = []

    def stop_after_first_reference_part(pass_name, done):
        if pass_name == "reference":
            parts.append(done)
            raise Interrupt

    with pytest.raises(Interrupt):
        score_rows(rows, cfg, scored, cache_dir=cache, ref_path=tiny_policy_dir, on_part=stop_after_first_reference_part)
    runs["interrupted_ref_rows"] = parts[0]
    runs[4] = score_rows(rows, cfg, scored, cache_dir=cache, ref_path=tiny_policy_dir)
    runs["table4"] = pd.read_parquet(runs[4].table)
    return runs


def test_table_scores_only_rows_without_reward(cache_runs, classifiers):
    table, rows = cache_runs["table1"], cache_runs["rows_a"]
    assert len(table) == len(rows) and (table[C.RESPONSE].to_numpy() == rows[C.RESPONSE].to_numpy()).all()
    missing = rows[C.REWARD].isna().to_numpy()
    kept = ~missing
    # Carried rewards are kept as they are (train_transform raw); scorer columns are NaN there.
    np.testing.assert_array_equal(table.loc[kept, C.REWARD].to_numpy(), rows.loc[kept, C.REWARD].to_numpy())
    assert table.loc[kept, C.reward_column("rm")].isna().all()
    assert raw_column("data") not in table
    # Scored rows: the weighted sum of the components, each recomputed here.
    sub = rows[missing]
    texts = [f"{p} {r}" for p, r in zip(sub[C.PROMPT], sub[C.RESPONSE])]
    logit = _manual_logits(classifiers["logit"], texts, 48)[:, 0]
    words = np.array([len(r.split()) for r in sub[C.RESPONSE]], dtype=float)
    length = scorers.length_score([], sub[C.RESPONSE].tolist(), min_words=4, max_words=20)
    got = table[missing]
    np.testing.assert_allclose(got[raw_column("rm")], logit, atol=1e-5)
    np.testing.assert_allclose(got[C.reward_column("words")], words)
    np.testing.assert_allclose(got[C.REWARD], 1 / (1 + np.exp(-logit)) + 0.1 * words + 0.5 * length, atol=1e-5)
    # reward_raw: the same weighted sum of the components' raw scores (the logit, not its sigmoid); the
    # carried rewards where nothing was scored.
    np.testing.assert_allclose(got[C.REWARD_RAW], logit + 0.1 * words + 0.5 * length, atol=1e-5)
    np.testing.assert_array_equal(table.loc[kept, C.REWARD_RAW].to_numpy(), rows.loc[kept, C.REWARD].to_numpy())
    # Every row has reference log-probs: one per response token (EOS included), summing to ref_logp.
    for token_logps, total in zip(table[C.REF_TOKEN_LOGPS], table[C.REF_LOGP]):
        assert 2 <= len(token_logps) <= MAX_RESPONSE and np.all(np.asarray(token_logps) < 0)
        assert math.isclose(float(np.sum(np.asarray(token_logps, dtype=np.float64))), total, abs_tol=1e-9)
    assert cache_runs[1].reward_scored == int(missing.sum()) and cache_runs[1].reference_scored == len(rows)


def test_rerun_does_no_work(cache_runs):
    assert cache_runs[2].reward_scored == 0 and cache_runs[2].reference_scored == 0
    assert cache_runs["t2"] < 5.0, f"a fully cached re-run took {cache_runs['t2']:.1f}s"
    pd.testing.assert_frame_equal(cache_runs["table1"], cache_runs["table2"])


def test_appended_rows_and_interrupted_run_resume(cache_runs, tiny_policy_dir):
    from alol_ray.scoring.table import ScoreCache

    rows, table = cache_runs["rows"], cache_runs["table4"]
    new_missing = int(rows.tail(24)[C.REWARD].isna().sum())
    # Run 3 scored rewards for the appended rows only; run 4 had no reward work left.
    assert cache_runs[4].reward_scored == 0
    cache = ScoreCache(cache_runs["cache"])
    for key in cache_runs[4].reward_keys.values():
        assert len(cache.read(key)) == int(rows[C.REWARD].isna().sum())  # A's + B's, each once
    # Run 4 resumed the reference pass: only what the interrupted run had not cached.
    assert 0 < cache_runs["interrupted_ref_rows"] < 24
    assert cache_runs[4].reference_scored == 24 - cache_runs["interrupted_ref_rows"]
    ref = cache.read(cache_runs[4].reference_key)
    assert ref[C.ROW_KEY].is_unique and set(ref[C.ROW_KEY]) == set(table[C.ROW_KEY])
    # Old rows' values are unchanged by the append.
    old = table.head(len(cache_runs["rows_a"]))
    pd.testing.assert_frame_equal(old.reset_index(drop=True), cache_runs["table1"].reset_index(drop=True),
                                  check_like=True)
    assert new_missing > 0 and table[C.REWARD].notna().all()


def test_importance_ratio_is_one_at_step_zero(cache_runs, tiny_policy_dir):
    """The training path (encode_pair + collate + response_token_logps) on the policy == pi_ref gives
    exp(sum logps - ref_logp) = 1 within 1e-4 for every row, in a batch composed unlike the scorer's."""
    from alol_ray.models import load_policy
    from alol_ray.tokenization import collate, encode_pair, response_token_logps

    table = cache_runs["table4"].sample(frac=1.0, random_state=1).head(24)  # a shuffled batch of 24
    model, tok = load_policy(tiny_policy_dir)
    model.eval()
    pairs = [encode_pair(tok, p, r, MAX_PROMPT, MAX_RESPONSE) for p, r in zip(table[C.PROMPT], table[C.RESPONSE])]
    assert any(len(p) == MAX_PROMPT for p, _ in pairs) and any(len(r) == MAX_RESPONSE for _, r in pairs)
    batch = collate(pairs, tok.pad_token_id)
    with torch.no_grad():
        logps = response_token_logps(model, batch)
    ratio = torch.exp(logps.sum(-1).double() - torch.tensor(table[C.REF_LOGP].to_numpy()))
    assert torch.all((ratio - 1).abs() < 1e-4), ratio
    for i, ref_tokens in enumerate(table[C.REF_TOKEN_LOGPS]):
        n = int(batch.response_lengths[i])
        assert len(ref_tokens) == n
        np.testing.assert_allclose(logps[i, :n].numpy(), ref_tokens, atol=2e-5)


# ----------------------------------------------------------------------------------------------- alol score


def test_alol_score_on_hh(ray_local, hh_dir, classifiers, tiny_policy_dir, tmp_path, capsys):
    """`alol score` on HH (hh_pro) with a local classifier: reward + reference columns; a second run
    finishes in seconds doing no work. In-process (`alol_ray.cli.main`) so it joins the test's Ray."""
    from alol_ray.cli import main

    yaml = tmp_path / "hh.yaml"
    yaml.write_text(f"""
name: hh
storage: {tmp_path / 'runs'}
data:
  sources:
    - {{path: {hh_dir / 'helpful_base.json'}, format: hh_pro, limit: 24}}
    - {{path: {hh_dir / 'harmless_base.json'}, format: hh_pro, limit: 24}}
model: {{max_prompt_tokens: 64, max_response_tokens: 32}}
reference: {{path: {tiny_policy_dir}}}
reward:
  rescore: true
  train_transform: sigmoid
  components:
    - {{name: rm, kind: hf_classifier, model: {classifiers['logit']}, max_length: 128, transform: sigmoid}}
scoring:
  batches_per_block: 2
  reward_pool: {{min_actors: 1, max_actors: 1, batch_size: 16}}
  reference_pool: {{min_actors: 1, max_actors: 1, batch_size: 16}}
""")
    assert main(["score", "--config", str(yaml)]) == 0
    table_path = tmp_path / "runs" / "hh" / "scored" / "table.parquet"
    table = pd.read_parquet(table_path)
    rows = pd.read_parquet(tmp_path / "runs" / "hh" / "data" / "rows.parquet")
    assert len(table) == len(rows) > 48
    np.testing.assert_allclose(table[C.REWARD], 1 / (1 + np.exp(-table[raw_column("rm")])))
    np.testing.assert_allclose(table[raw_column("data")], rows[C.REWARD])  # HH's own logits, kept
    np.testing.assert_allclose(table[C.REWARD_RAW], table[raw_column("rm")])  # the total on the RM's own scale
    assert table[C.REF_LOGP].notna().all() and table[C.REF_LOGP].lt(0).all()
    parts = sorted(glob.glob(str(tmp_path / "runs" / "hh" / "cache" / "scores" / "*" / "part-*")))
    out = capsys.readouterr().out
    assert "scored table" in out

    start = time.time()
    assert main(["score", "--config", str(yaml)]) == 0
    assert time.time() - start < 5.0
    assert "[scored] up to date" in capsys.readouterr().out
    assert sorted(glob.glob(str(tmp_path / "runs" / "hh" / "cache" / "scores" / "*" / "part-*"))) == parts
    # A changed weight re-assembles the table from the cache without scoring anything.
    assert main(["score", "--config", str(yaml), "reward.components.0.weight=2.0"]) == 0
    assert "to score" not in capsys.readouterr().out
    np.testing.assert_allclose(pd.read_parquet(table_path)[C.REWARD], 2 * table[C.REWARD])


def test_alol_score_without_reference_needs_no_pi_ref(tmp_path, alol_cli):
    """`alol score --no-reference` as a command: rewards only, no pi_ref needed; rows that carry a reward
    (the built-in task's) keep it, so no scorer runs and Ray is not even started."""
    import subprocess

    base = [*alol_cli, "score", f"storage={tmp_path}", "data.builtin_train_prompts=8", "data.builtin_eval_prompts=2",
            "reward.rescore=false"]
    done = subprocess.run(base + ["--no-reference"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    table = pd.read_parquet(tmp_path / "builtin" / "scored" / "table.parquet")
    assert C.REF_LOGP not in table and table[C.REWARD].notna().all()  # builtin rows carry rewards: kept, no Ray
