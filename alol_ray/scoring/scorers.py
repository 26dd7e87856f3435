"""Built-in human-designed reward scorers: functions of (prompts, responses) -> float64 array [N].

Each scorer depends on its own row only (never on the rest of the batch), so a row's score is the same
whichever batch or actor computes it; that is what lets the scored table cache scores per row.

- ``length``:   a word-count window (``mode: window``, in [0, 1]) or an over/under-length penalty
                (``mode: penalty``, <= 0).
- ``distinct``: distinct-n of the response: unique n-grams / all n-grams (Li et al., 2016), in [0, 1].
- ``tfidf``:    TF-IDF diversity of the response's sentences: 1 - mean pairwise cosine similarity of
                their TF-IDF vectors (the sentences are the documents), in [0, 1]; catches replies that
                repeat themselves with small variations, which distinct-n only sees word by word.
- ``builtin_task``: the reward of the built-in task (``alol_ray.tasks.builtin.score``), the sum of its
                components or of the ``components`` named in params.

Params come from ``RewardComponentConfig.params``; an unknown param is a ConfigError.
"""

from __future__ import annotations

import inspect
import math
import re
from collections import Counter
from typing import Callable

import numpy as np

from alol_ray.errors import ConfigError

_WORD = re.compile(r"[A-Za-z0-9']+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters, digits, apostrophes)."""
    return _WORD.findall(text.lower())


def length_score(prompts: list[str], responses: list[str], *, min_words: int = 8, max_words: int = 64,
                 decay_words: int = 32, mode: str = "window") -> np.ndarray:
    """Response length in words against a window [min_words, max_words].

    window:  1 inside; n / min_words below; 1 - (n - max_words) / decay_words above (floored at 0).
    penalty: 0 inside; -(min_words - n) / min_words below; -(n - max_words) / decay_words above.
    """
    if mode not in ("window", "penalty"):
        raise ConfigError(f"length scorer: mode must be window or penalty, got {mode!r}")
    if not 0 <= min_words <= max_words or decay_words <= 0:
        raise ConfigError("length scorer: needs 0 <= min_words <= max_words and decay_words > 0")
    out = np.zeros(len(responses))
    for i, response in enumerate(responses):
        n = len(words(response))
        under = (min_words - n) / min_words if n < min_words else 0.0
        over = (n - max_words) / decay_words if n > max_words else 0.0
        out[i] = -(under + over) if mode == "penalty" else max(0.0, 1.0 - under - over)
    return out


def distinct_n(prompts: list[str], responses: list[str], *, n: int = 2) -> np.ndarray:
    """Distinct-n of each response: unique word n-grams / all word n-grams (0 for a reply shorter than n)."""
    if n < 1:
        raise ConfigError(f"distinct scorer: n must be >= 1, got {n}")
    out = np.zeros(len(responses))
    for i, response in enumerate(responses):
        toks = words(response)
        grams = [tuple(toks[j:j + n]) for j in range(len(toks) - n + 1)]
        out[i] = len(set(grams)) / len(grams) if grams else 0.0
    return out


def _tfidf_vectors(docs: list[list[str]]) -> list[dict[str, float]]:
    """L2-normalised TF-IDF vectors with smoothed idf: log((1 + N) / (1 + df)) + 1."""
    df = Counter(w for doc in docs for w in set(doc))
    n_docs = len(docs)
    vectors = []
    for doc in docs:
        tf = Counter(doc)
        vec = {w: c * (math.log((1 + n_docs) / (1 + df[w])) + 1.0) for w, c in tf.items()}
        norm = math.sqrt(sum(v * v for v in vec.values())) or 1.0
        vectors.append({w: v / norm for w, v in vec.items()})
    return vectors


def tfidf_diversity(prompts: list[str], responses: list[str], *, min_sentences: int = 2) -> np.ndarray:
    """1 - mean pairwise cosine similarity between the TF-IDF vectors of each response's sentences.

    A reply with fewer than ``min_sentences`` non-empty sentences scores 1 (nothing repeats).
    """
    out = np.ones(len(responses))
    for i, response in enumerate(responses):
        docs = [words(s) for s in _SENTENCE_END.split(response)]
        docs = [d for d in docs if d]
        if len(docs) < max(2, min_sentences):
            continue
        vecs = _tfidf_vectors(docs)
        sims = [sum(v * vecs[b].get(w, 0.0) for w, v in vecs[a].items())
                for a in range(len(vecs)) for b in range(a + 1, len(vecs))]
        out[i] = 1.0 - float(np.mean(sims))
    return out


def builtin_task(prompts: list[str], responses: list[str], *, components: list[str] | None = None) -> np.ndarray:
    """The built-in task's reward: the sum of its components (all, or those named)."""
    # lazy: alol_ray.tasks (pandas, pyarrow) (alol_ray.scoring.scorers imports without them)
    from alol_ray.tasks import builtin

    names = list(components) if components else list(builtin.COMPONENTS)
    unknown = set(names) - set(builtin.COMPONENTS)
    if unknown:
        raise ConfigError(f"builtin_task scorer: unknown components {sorted(unknown)}; "
                          f"choose from {list(builtin.COMPONENTS)}")
    scores = builtin.score(list(prompts), list(responses))
    return np.sum([scores[c] for c in names], axis=0).astype(np.float64)


BUILTIN_SCORERS: dict[str, Callable[..., np.ndarray]] = {
    "length": length_score,
    "distinct": distinct_n,
    "tfidf": tfidf_diversity,
    "builtin_task": builtin_task,
}


def check_params(kind: str, params: dict) -> None:
    """ConfigError naming the valid params when ``params`` has a key the scorer does not take."""
    fn = BUILTIN_SCORERS[kind]
    accepted = [p for p, v in inspect.signature(fn).parameters.items() if v.kind == v.KEYWORD_ONLY]
    unknown = set(params) - set(accepted)
    if unknown:
        raise ConfigError(f"{kind} scorer: unknown params {sorted(unknown)}; it takes {accepted}")
