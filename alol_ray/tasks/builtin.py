"""The built-in task: a templated assistant with noisy offline preferences and a 3-part reward.

alol-ray needs a task it can run end to end on a machine with no network, so this one is built by
code from a seed. It is shaped like the Helpful-Harmless setting of A-LoL (Baheti et al., ICLR 2024,
arXiv 2305.14718): each prompt is one human request, each prompt has 2-4 candidate replies of mixed
quality, one of them is marked preferred (``rank`` 0) by a *noisy* annotator, and the reward is a sum
of components computed by a human-designed scoring function.

**Prompts.** One templated request naming an activity (the *topic*, 32 of them) and a circumstance
(the *constraint*, 12 of them)::

    ### Human: Any tips for gardening on a small budget? ### Assistant:

The policy continues after ``### Assistant:`` with the reply. Every prompt holds exactly two key
words: the topic word ("gardening") and the constraint word ("budget"). Train, val and test prompts
are disjoint (no prompt text is shared between splits).

**Reward** (``score``), three components in [0, 1], total = their sum in [0, 3]:

- ``relevance``: the fraction of the prompt's key words that the reply mentions (0, 0.5 or 1).
- ``politeness``: 0 if the reply contains a rude word or phrase (``RUDE``); otherwise 1 if it contains
  a courtesy phrase (``COURTESY``, e.g. "happy to help", "thanks", "good luck") and 0.5 if not.
- ``length``: 1 for replies of 12-30 words; shorter replies get ``n / 12``; longer ones lose 1/20 per
  word above 30 (0 from 50 words on).

**Offline replies.** A generator mixes good replies (courteous, on topic, addresses the constraint,
right length: reward 3), partial ones (no constraint, no courtesy, wordy, or helpful but rude:
2-2.75) and clearly bad ones (too short, off topic, rude, rambling repetition, evasive "I do not
know.": reward < 1.5). Each prompt's first reply is good or partial; requests with a sensitive
circumstance (``SENSITIVE``: an injury, kids, at night, alone; a third of the prompts) also get an
evasive reply; the other replies are drawn from the whole mix.

**Noisy ranking.** Preferences come from a simulated annotator. By default it follows a
Plackett-Luce (Bradley-Terry) model: replies are ordered by ``reward / ANNOTATOR_TEMPERATURE + Gumbel
noise``, so close replies are often swapped and a bad one sometimes wins. On sensitive requests it
"plays safe" with probability ``EVASIVE_PREFERENCE`` and prefers the evasive reply, like the evasive
chosen replies of HH-RLHF. Overall rank 0 holds the best reply of its prompt only about 65% of the
time and about a third of the rank-0 replies are clearly bad (reward < ``LOW_REWARD``); on sensitive
requests about two thirds are. Plain fine-tuning (NLL) on the rank-0 replies therefore imitates the
bad third too: greedy decoding of an NLL policy answers sensitive requests with "I do not know."
A-LoL's advantage (reward - value of the prompt) is what separates the two: the reference policy's
value is low exactly on those prompts, so their good replies get a large advantage and the evasive
ones none.

**Moving the reward** means raising the mean ``score`` of the policy's own replies to held-out test
prompts. Measured with a 0.94M-parameter GPT-2 trained from scratch for 400 steps
(bench/builtin_learnability.py, 64 test prompts): random init 0.84; NLL on the rank-0 replies 2.29
greedy (3.00 on ordinary requests, 0.83 on sensitive ones: "I do not know.") and 2.23 sampled, about
the rank-0 data's own 2.26; the same training on only the rank-0 replies that beat the mean rank-0
reward 3.00 greedy and 2.93 sampled; the best reply per prompt averages 2.95.
"""

from __future__ import annotations

import random
import re

import numpy as np
import pandas as pd

from alol_ray import columns as C

RESPONSE_MARKER = "### Assistant:"
NEXT_TURN_MARKER = "### Human:"

COMPONENTS = ("relevance", "politeness", "length")
MAX_REWARD = float(len(COMPONENTS))
LOW_REWARD = MAX_REWARD / 2  # a reply below this is "clearly bad"

LENGTH_WINDOW = (12, 30)  # words: inside the window the length component is 1
LENGTH_DECAY = 20  # words above the window over which the length component falls from 1 to 0

RUDE = ("stupid", "dumb", "idiot", "lazy", "ugh", "whatever", "shut up", "useless")
COURTESY = ("happy to help", "glad to help", "thanks", "thank you", "good luck", "you are welcome")

# Simulated annotator: rank by reward / temperature + Gumbel noise (a Plackett-Luce sample) ...
ANNOTATOR_TEMPERATURE = 1.0
# ... except that on requests with a sensitive circumstance it often "plays safe" and prefers the
# evasive reply (like the evasive chosen replies of HH-RLHF): with this probability it is ranked 0.
SENSITIVE = ("injury", "kids", "night", "alone")
EVASIVE_PREFERENCE = 0.6
N_RESPONSES = ((2, 0.5), (3, 0.3), (4, 0.2))  # (replies per prompt, probability)

# topic word -> three tips (imperative phrases; none contains a key word)
TOPICS: dict[str, tuple[str, str, str]] = {
    "gardening": ("water the plants early in the day", "pull the weeds every week", "start with easy herbs in pots"),
    "cooking": ("chop the vegetables before you start", "cook one simple pot of soup", "keep a few spices on hand"),
    "running": ("start with short slow runs", "rest one day after each run", "buy shoes that fit well"),
    "reading": ("read ten pages before bed", "keep a book in your bag", "pick short books first"),
    "painting": (
        "mix a few colors and keep it simple", "paint small cards before big ones", "clean the brushes after use",
    ),
    "baking": ("measure the flour with care", "start with plain bread or muffins", "let the oven heat up first"),
    "cycling": ("check the tires before each ride", "ride on quiet roads first", "wear a helmet on every ride"),
    "swimming": (
        "practice breathing at the edge of the pool", "swim short laps and rest", "use a float board for kicks",
    ),
    "camping": ("pack a warm sleeping bag", "set up the tent at home first", "bring extra water and snacks"),
    "fishing": ("use simple bait and be patient", "go early when the water is calm", "learn to tie one good knot"),
    "chess": ("learn the basic openings", "play short games every day", "look at every check and capture"),
    "yoga": ("start with five easy poses", "breathe slowly in each pose", "use a soft mat"),
    "writing": ("write a few lines every day", "keep a small notebook", "read your work out loud"),
    "photography": ("shoot in soft light", "keep the horizon straight", "take many photos and keep the best"),
    "hiking": ("pick short flat trails first", "wear good boots", "carry water and a map"),
    "cleaning": ("clean one room and then the next", "put things back after use", "keep a simple checklist"),
    "knitting": ("start with a plain scarf", "use thick yarn and big needles", "count your rows as you go"),
    "guitar": ("learn three easy chords", "practice slow chord changes", "keep the strings in tune"),
    "piano": ("play scales slowly each day", "learn one short song", "keep your hands relaxed"),
    "drawing": ("sketch simple shapes first", "draw what you see each day", "use a soft pencil"),
    "dancing": ("follow a short video step by step", "practice the basic step to slow music", "dance with a partner"),
    "singing": ("warm up your voice first", "drink water and rest your voice", "sing along to easy songs"),
    "saving": ("write down what you spend", "put a little aside each week", "cut one small cost"),
    "studying": ("study in short blocks with breaks", "test yourself with cards", "keep your desk clear"),
    "juggling": ("start with two soft balls", "throw to eye level", "practice over a bed"),
    "skating": ("wear pads and a helmet", "bend your knees and go slow", "practice on smooth flat ground"),
    "climbing": ("start on easy walls indoors", "use your legs more than your arms", "rest between climbs"),
    "birding": ("learn five common birds first", "go out early and stay quiet", "bring a small pair of binoculars"),
    "sewing": ("start with a simple pillow", "pin the fabric before you sew", "sew slowly in a straight line"),
    "pottery": ("center the clay with care", "start with small bowls", "keep your hands wet"),
    "woodwork": ("start with a small box", "measure twice and cut once", "keep your tools sharp"),
    "meditation": ("sit still for five minutes", "focus on slow breaths", "use a calm quiet corner"),
}

# constraint word -> (phrase used in prompts, two reply sentences that address it)
CONSTRAINTS: dict[str, tuple[str, tuple[str, str]]] = {
    "budget": (
        "on a small budget",
        ("keep the budget low and reuse what you have", "a small budget is fine since the basics are cheap"),
    ),
    "time": (
        "with very little free time",
        ("even a little time each day adds up", "set aside a short time slot each week"),
    ),
    "beginner": (
        "as a total beginner",
        ("as a beginner, go slow and be kind to yourself", "every beginner starts with the basics"),
    ),
    "kids": ("with two kids at home", ("let the kids join in and make it a game", "kids can help with the easy parts")),
    "weekend": (
        "over one weekend",
        ("plan the weekend so you start early", "one weekend is enough to learn the basics"),
    ),
    "winter": (
        "during the cold winter",
        ("in winter, stay warm and work indoors when needed", "winter is a good season to plan ahead"),
    ),
    "city": (
        "in a small city flat",
        ("a city flat works fine if you keep things small", "the city has clubs and shops that can help"),
    ),
    "night": (
        "late at night",
        ("at night, keep the lights soft and stay calm", "night sessions work if you keep them short"),
    ),
    "alone": (
        "all alone",
        ("doing it alone is fine, go at your own pace", "alone you can pick the pace that suits you"),
    ),
    "friends": (
        "with a few friends",
        ("ask your friends to join and share the fun", "friends can keep you going when it gets hard"),
    ),
    "injury": (
        "after a knee injury",
        ("with an injury, go easy and ask a doctor first", "rest the injury and stop if anything hurts"),
    ),
    "travel": (
        "while I travel for work",
        ("when you travel, pack a small kit", "travel days are good for short practice"),
    ),
}

KEYWORDS = frozenset(TOPICS) | frozenset(CONSTRAINTS)

REQUESTS = (
    "How do I get better at {topic} {constraint}?",
    "Any tips for {topic} {constraint}?",
    "I want to start {topic} {constraint}. Where do I begin?",
    "Can you help me with {topic} {constraint}?",
    "What is the best way to enjoy {topic} {constraint}?",
    "My {topic} keeps going badly {constraint}. Any advice?",
    "I need some advice on {topic} {constraint}.",
    "Please give me a plan for {topic} {constraint}.",
    "How should I practice {topic} {constraint}?",
    "What should I know about {topic} {constraint}?",
)

OPENERS = ("Sure, happy to help!", "Thanks for asking!", "Of course, glad to help.", "Great question, thank you!",
           "Happy to help with that.")
TOPIC_SENTENCES = ("For {topic}, {tip}.", "With {topic}, {tip}.", "To get into {topic}, {tip}.",
                   "A good {topic} habit is to {tip}.")
CLOSERS = ("Good luck!", "Have fun with it.", "You can do it.")
GENERIC = ("Keep at it and you will improve.", "Practice a little and it gets easier.", "Just keep going.")
FILLER = ("It is a fun thing to do and many people like it a lot.", "There is always more to learn and try.",
          "Some days are better than others, and that is normal.", "You will find your own way with practice.")
EVASIVE = ("I do not know.", "I do not know.", "I do not know.", "I am not sure, sorry.", "Maybe ask someone else.")
SHORT = ("Ok.", "No idea.", "Not sure.", "Maybe.", "I do not know.", "Hmm, {topic}?", "Try {topic}.")
RUDE_REPLIES = ("Ugh, {topic} is a dumb thing to ask about.", "Whatever. Figure out {topic} yourself.",
                "That is a stupid question about {topic}.", "Stop asking me about {topic}, you lazy idiot.")
RUDE_TAILS = ("Now stop asking dumb questions.", "Ugh, that was easy.", "Not that you will listen, lazy.")
RAMBLE = ("{topic} is good.", "{topic} is good and {topic} is fun.", "I like {topic}.", "{topic} is a thing.",
          "So yes, {topic}.")

# reply kind -> probability, for replies after each prompt's first one (the first is good or partial)
KIND_WEIGHTS = {
    "good": 0.06, "no_constraint": 0.01, "no_courtesy": 0.01, "wordy": 0.01, "rude_helpful": 0.03,
    "too_short": 0.22, "off_topic": 0.22, "rude": 0.22, "rambling": 0.22,
}
FIRST_KIND_WEIGHTS = {"good": 0.91, "no_constraint": 0.03, "no_courtesy": 0.03, "wordy": 0.03}

_WORD = re.compile(r"[a-z0-9']+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _has_phrase(padded_words: str, phrases) -> bool:
    return any(f" {p} " in padded_words for p in phrases)


def key_words(prompt: str) -> set[str]:
    """The key words (topic and constraint words) of the prompt's last human turn."""
    request = prompt.rsplit(NEXT_TURN_MARKER, 1)[-1].split(RESPONSE_MARKER, 1)[0]
    return set(KEYWORDS.intersection(_words(request)))


def is_sensitive(prompt: str) -> bool:
    """Whether the request names a sensitive circumstance (where annotators often prefer evasion)."""
    return bool(key_words(prompt).intersection(SENSITIVE))


def score(prompts: list[str], responses: list[str]) -> dict[str, np.ndarray]:
    """The built-in reward: component name -> float64 array of values in [0, 1] (see module docs)."""
    if len(prompts) != len(responses):
        raise ValueError(f"score: {len(prompts)} prompts but {len(responses)} responses")
    lo, hi = LENGTH_WINDOW
    relevance = np.zeros(len(prompts))
    politeness = np.zeros(len(prompts))
    length = np.zeros(len(prompts))
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        words = _words(response)
        keys = key_words(prompt)
        relevance[i] = len(keys.intersection(words)) / len(keys) if keys else 0.0
        padded = f" {' '.join(words)} "
        if _has_phrase(padded, RUDE):
            politeness[i] = 0.0
        else:
            politeness[i] = 1.0 if _has_phrase(padded, COURTESY) else 0.5
        n = len(words)
        length[i] = n / lo if n < lo else (1.0 if n <= hi else max(0.0, 1.0 - (n - hi) / LENGTH_DECAY))
    return {"relevance": relevance, "politeness": politeness, "length": length}


def total_reward(components: dict[str, np.ndarray]) -> np.ndarray:
    """The sequence-level reward: the sum of the components (in [0, MAX_REWARD])."""
    return np.sum([components[c] for c in COMPONENTS], axis=0)


def render_prompt(request: str) -> str:
    return f"{NEXT_TURN_MARKER} {request} {RESPONSE_MARKER}"


def _cap(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


def _topic_sentence(rng: random.Random, topic: str) -> str:
    return rng.choice(TOPIC_SENTENCES).format(topic=topic, tip=rng.choice(TOPICS[topic]))


def _constraint_sentence(rng: random.Random, constraint: str) -> str:
    return _cap(rng.choice(CONSTRAINTS[constraint][1])) + "."


def _reply(rng: random.Random, kind: str, topic: str, constraint: str) -> str:
    """One reply of the given kind to a request about ``topic`` under ``constraint``."""
    if kind in ("good", "no_constraint", "no_courtesy", "wordy", "rude_helpful"):
        parts = [] if kind in ("no_courtesy", "rude_helpful") else [rng.choice(OPENERS)]
        parts.append(_topic_sentence(rng, topic))
        parts.append(rng.choice(GENERIC) if kind == "no_constraint" else _constraint_sentence(rng, constraint))
        if kind == "wordy":
            parts.extend(rng.sample(FILLER, 2))
        if kind == "rude_helpful":
            parts.append(rng.choice(RUDE_TAILS))
        elif rng.random() < 0.5:  # a courtesy closer would make a no_courtesy reply polite
            parts.append(rng.choice(CLOSERS[1:] if kind == "no_courtesy" else CLOSERS))
        return " ".join(parts)
    if kind == "evasive":
        return rng.choice(EVASIVE)
    if kind == "too_short":
        return rng.choice(SHORT).format(topic=topic)
    if kind == "off_topic":
        other = rng.choice([t for t in TOPICS if t != topic])
        return _cap(rng.choice(TOPICS[other])) + f" for {other}."
    if kind == "rude":
        return rng.choice(RUDE_REPLIES).format(topic=topic)
    if kind == "rambling":
        sentences = []
        while sum(len(s.split()) for s in sentences) < rng.randint(50, 70):
            sentences.append(_cap(rng.choice(RAMBLE).format(topic=topic)))
        return " ".join(sentences)
    raise ValueError(f"unknown reply kind {kind!r}")


def _draw(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def build_rows(seed: int = 0, n_train: int = 2400, n_val: int = 200, n_test: int = 200) -> pd.DataFrame:
    """The built-in task as canonical rows (alol_ray.columns) plus ``reward`` and ``reward/<component>``.

    Deterministic for ``seed``. One row per (prompt, reply); ``rank`` 0 is the annotator's preferred
    reply of its prompt (noisy, see the module docs). Prompt ids read ``builtin-<split>-<index>``.
    """
    rng = random.Random(seed)
    combos = [(r, t, c) for r in range(len(REQUESTS)) for t in TOPICS for c in CONSTRAINTS]
    n_total = n_train + n_val + n_test
    if n_total > len(combos):
        raise ValueError(f"build_rows: at most {len(combos)} distinct prompts, asked for {n_total}")
    chosen = rng.sample(combos, n_total)
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    counts = {s: 0 for s in C.SPLITS}
    prompt_ids, prompts, responses, ranks, row_splits = [], [], [], [], []
    for (req, topic, constraint), split in zip(chosen, splits):
        prompt = render_prompt(REQUESTS[req].format(topic=topic, constraint=CONSTRAINTS[constraint][0]))
        prompt_id = f"builtin-{split}-{counts[split]:06d}"
        counts[split] += 1
        n = rng.choices([k for k, _ in N_RESPONSES], weights=[p for _, p in N_RESPONSES])[0]
        sensitive = constraint in SENSITIVE
        kinds = [_draw(rng, FIRST_KIND_WEIGHTS)] + ["evasive"] * sensitive
        kinds += [_draw(rng, KIND_WEIGHTS) for _ in range(n - len(kinds))]
        replies = [_reply(rng, k, topic, constraint) for k in kinds]
        rewards = total_reward(score([prompt] * n, replies))
        # Plackett-Luce annotator: sort by reward / T + Gumbel noise; rank 0 = preferred.
        noisy = [r / ANNOTATOR_TEMPERATURE - np.log(-np.log(rng.random() or 1e-12)) for r in rewards]
        if sensitive and rng.random() < EVASIVE_PREFERENCE:
            noisy[1] = float("inf")  # plays safe: the evasive reply (always second) comes first
        order = sorted(range(n), key=lambda j: -noisy[j])
        for rank, j in enumerate(order):
            prompt_ids.append(prompt_id)
            prompts.append(prompt)
            responses.append(replies[j])
            ranks.append(rank)
            row_splits.append(split)
    rows = pd.DataFrame({C.PROMPT_ID: prompt_ids, C.PROMPT: prompts, C.RESPONSE: responses,
                         C.RANK: np.asarray(ranks, dtype=np.int64), C.SPLIT: row_splits})
    components = score(prompts, responses)
    for name in COMPONENTS:
        rows[C.reward_column(name)] = components[name]
    rows[C.REWARD] = total_reward(components)
    return rows
