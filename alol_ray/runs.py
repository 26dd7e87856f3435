"""The run directory: where each stage reads and writes (see ARCHITECTURE.md, "Run directory").

    runs/<name>/config.yaml                  resolved config
    runs/<name>/data/rows.parquet            canonical rows
    runs/<name>/scored/                      scored table (parquet) + cache manifest
    runs/<name>/ref/                         pi_ref (HF folder)
    runs/<name>/value/                       value head (safetensors) + fit report
    runs/<name>/train/<method>-s<seed>/      checkpoints + metrics + best/ (HF folder)
    runs/<name>/eval/<method>-s<seed>.parquet
    runs/<name>/report.md, report/*.png
"""

from __future__ import annotations

import os
from dataclasses import dataclass


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
    def scored(self) -> str:
        return os.path.join(self.root, "scored")

    @property
    def ref(self) -> str:
        return os.path.join(self.root, "ref")

    @property
    def base_policy(self) -> str:
        """The initial policy (tiny model built from config, or a copy-free pointer to a pretrained one)."""
        return os.path.join(self.root, "base")

    @property
    def value(self) -> str:
        return os.path.join(self.root, "value")

    def train(self, method: str, seed: int) -> str:
        return os.path.join(self.root, "train", f"{method}-s{seed}")

    def eval(self, method: str, seed: int) -> str:
        return os.path.join(self.root, "eval", f"{method}-s{seed}.parquet")

    @property
    def report(self) -> str:
        return os.path.join(self.root, "report.md")

    @property
    def report_dir(self) -> str:
        return os.path.join(self.root, "report")
