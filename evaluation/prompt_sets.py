"""Prompt sets for evaluation (``alol eval --prompts``): how many of a set's prompts the run already used.

A prompt set judges policies on prompts they have not seen. Its prompts may still be among the run's training
prompts (the policies learned their replies) or val prompts (they chose the checkpoints and fit the value head):
``split_overlap`` counts them, by text, from the run's canonical rows, so the command can say so before any work.
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

import pandas as pd

from alol_ray import columns as C

USED_SPLITS = ("train", "val")  # the splits a run learns from or selects on; test prompts are meant for evaluation


def prompt_key(text: str) -> str:
    """Two prompts are the same when their whitespace-separated words are (spacing and line breaks aside)."""
    return " ".join(text.split())


def split_overlap(rows_path: str, prompts: Iterable[str], splits: Sequence[str] = USED_SPLITS) -> dict[str, int]:
    """{split: how many of ``prompts`` occur among the rows of that split} for each split with at least one,
    compared by ``prompt_key``; {} when the run's rows (``rows_path``, <run>/data/rows.parquet) were never built."""
    if not os.path.exists(rows_path):
        return {}
    rows = pd.read_parquet(rows_path, columns=[C.PROMPT, C.SPLIT])
    asked = [prompt_key(p) for p in prompts]
    found = {}
    for split in splits:
        used = {prompt_key(p) for p in rows.loc[rows[C.SPLIT] == split, C.PROMPT].unique()}
        count = sum(key in used for key in asked)
        if count:
            found[split] = count
    return found


def overlap_note(name: str, total: int, overlap: dict[str, int]) -> str:
    """One sentence for the warning and the report: how many of the ``total`` prompts of ``name`` are whose."""
    (split, count), *rest = overlap.items()
    said = [f"{count} of the {total} prompts of {name} are among the run's {split} prompts"]
    said += [f"{n} among its {s} prompts" for s, n in rest]
    return (f"{' and '.join(said)}: not held out (the policies trained on the replies of train prompts; val prompts "
            "chose checkpoints and fit the value head)")
