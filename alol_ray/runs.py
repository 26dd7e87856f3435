"""The run directory: where each stage reads and writes (docs/architecture.md, "The run directory").

    runs/<name>/config.yaml                          resolved config (absolute paths)
    runs/<name>/.lock                                who holds the run (alol_ray.runlock)
    runs/<name>/data/                                canonical rows: rows.parquet, summary.json
    runs/<name>/base/                                the tiny starting policy (HF folder), model.init=tiny only
    runs/<name>/train/reference-s<seed>/best/        pi_ref (HF folder); checkpoints, metrics beside it
    runs/<name>/scored/                              scored table: table.parquet, scoring.json
    runs/<name>/value/                               value table (scored + value, advantage), value head, reports
    runs/<name>/train/<method>-s<seed>/              best/ (HF folder), checkpoints/, metrics.jsonl, val.jsonl
    runs/<name>/eval/<method>-s<seed>/               examples.parquet, summary.json
    runs/<name>/eval/sampled/<method>-s<seed>/       the same with sampled decoding (eval.sample_top_p)
    runs/<name>/prompts/<file>-<sha>/                `alol eval --prompts FILE`: <method>-s<seed>/ evals, report
    runs/<name>/rm/model/                            a reward model trained by `alol rm train`
    runs/<name>/cache/                               scores/ (per row and scorer), rm-features/, reference replies
    runs/<name>/report.md, report/                   the comparison report, plots, methods.csv, config.yaml

Every stage folder holds a ``stage.json`` written last (alol_ray.stage); a stage builds in a hidden
``.<folder>.staging-<fingerprint>`` beside its folder and replaces it in one step when done.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


# The evaluation's decodings: generation.* as configured (greedy by default), and eval.sample_top_p's sampling.
GREEDY = "greedy"
SAMPLED = "sampled"


@dataclass(frozen=True)
class RunPaths:
    root: str

    @classmethod
    def from_config(cls, cfg) -> "RunPaths":
        return cls(os.path.join(cfg.storage, cfg.name))

    @property
    def config(self) -> str:
        return os.path.join(self.root, "config.yaml")

    @property
    def data(self) -> str:
        return os.path.join(self.root, "data")

    @property
    def rows(self) -> str:
        return os.path.join(self.root, "data", "rows.parquet")

    @property
    def base_policy(self) -> str:
        """The tiny starting policy built from config (model.init=tiny)."""
        return os.path.join(self.root, "base")

    def reference(self, seed: int = 0) -> str:
        """pi_ref as the reference stage exports it (an HF folder)."""
        return os.path.join(self.train("reference", seed), "best")

    @property
    def scored(self) -> str:
        return os.path.join(self.root, "scored")

    @property
    def value(self) -> str:
        return os.path.join(self.root, "value")

    def train(self, method: str, seed: int) -> str:
        return os.path.join(self.root, "train", f"{method}-s{seed}")

    def eval(self, method: str, seed: int, decoding: str = GREEDY) -> str:
        """<run>/eval/<method>-s<seed>; other decodings than greedy in <run>/eval/<decoding>/<method>-s<seed>."""
        sub = () if decoding == GREEDY else (decoding,)
        return os.path.join(self.root, "eval", *sub, f"{method}-s{seed}")

    def prompts(self, name: str) -> str:
        """`alol eval --prompts FILE`'s output for one prompt file (``name``: its stem and content hash)."""
        return os.path.join(self.root, "prompts", name)

    @property
    def reward_model(self) -> str:
        return os.path.join(self.root, "rm", "model")

    @property
    def cache(self) -> str:
        return os.path.join(self.root, "cache")

    @property
    def score_cache(self) -> str:
        return os.path.join(self.cache, "scores")

    @property
    def rm_features(self) -> str:
        return os.path.join(self.cache, "rm-features")

    def reference_replies(self, decoding: str = GREEDY) -> str:
        """The reference policy's cached eval replies, one file per decoding."""
        suffix = "" if decoding == GREEDY else f"_{decoding}"
        return os.path.join(self.cache, f"reference_replies{suffix}.parquet")

    @property
    def report(self) -> str:
        return os.path.join(self.root, "report.md")

    @property
    def report_dir(self) -> str:
        return os.path.join(self.root, "report")
