"""Batched reward-model inference on a Ray Data actor pool: encoder features (frozen-encoder training)
or rewards (evaluating a saved folder). Features are cached on disk, keyed by what determines them.

With a frozen encoder every epoch would recompute the same encoder outputs; computing them once turns
head training into seconds (all-MiniLM-L6-v2 embeds ~30-40 pairs/s on 2 CPU cores).
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Optional

import numpy as np
import pandas as pd

from alol_ray import columns as C
from alol_ray.actor_pool import pool_pass
from alol_ray.atomic import atomic_write
from alol_ray.config import ActorPoolConfig
from alol_ray.hashing import fingerprint
from alol_ray.rm.backbone import encode, encoder_features, has_cacheable_head, load_reward_model

log = logging.getLogger("alol")

_INDEX = "_index"
_VALUE = "_value"


class RewardModelRunner:
    """Ray Data callable class: a batch of (prompt, response) rows -> features [B, H] or rewards [B].

    One instance per actor loads the model once. output: "features" (input of the head, needs a
    BERT-family classifier) or "reward" (the classifier's single logit).
    """

    def __init__(self, backbone: str, pooling: str, template: str, max_length: int, truncation_side: str,
                 output: str = "features", revision: Optional[str] = None, trust_remote_code: bool = False,
                 use_gpu: bool = False):
        # lazy: torch (alol_ray.rm.embed imports without it)
        import torch

        self.model, self.tok, _ = load_reward_model(backbone, pooling, revision=revision,
                                                    trust_remote_code=trust_remote_code)
        if output == "features" and not has_cacheable_head(self.model):
            raise ValueError(f"{backbone}: encoder features need a BERT-family classifier")
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        self.template, self.max_length, self.truncation_side = template, max_length, truncation_side
        self.output = output

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        # lazy: torch (alol_ray.rm.embed imports without it)
        import torch

        enc = encode(self.tok, self.template, list(batch[C.PROMPT]), list(batch[C.RESPONSE]), self.max_length,
                     self.truncation_side).to(self.device)
        with torch.inference_mode():
            if self.output == "features":
                values = encoder_features(self.model, enc)
            else:
                values = self.model(**enc).logits.squeeze(-1)
        return pd.DataFrame({_INDEX: batch[_INDEX].to_numpy(), _VALUE: list(values.float().cpu().numpy())})


def run_pass(frame: pd.DataFrame, pool: ActorPoolConfig, runner_kwargs: dict) -> np.ndarray:
    """RewardModelRunner over every row of `frame` on an autoscaled actor pool (``actor_pool.pool_pass``),
    put back in `frame`'s order: features [N, H] or rewards [N]."""
    table = pd.DataFrame({_INDEX: np.arange(len(frame)), C.PROMPT: frame[C.PROMPT].to_numpy(),
                          C.RESPONSE: frame[C.RESPONSE].to_numpy()})
    parts: list[pd.DataFrame] = []
    pool_pass(table, RewardModelRunner, runner_kwargs, pool, on_output=parts.append, desc="rm")
    out = pd.concat(parts, ignore_index=True).drop_duplicates(_INDEX)
    if len(out) != len(frame):
        raise RuntimeError(f"reward-model pass returned {len(out)} of {len(frame)} rows")
    values = np.stack(out[_VALUE].to_numpy()) if len(out) else np.zeros(0)
    result = np.empty_like(values)
    result[out[_INDEX].to_numpy()] = values
    return result


def texts_digest(frame: pd.DataFrame) -> str:
    """Content hash of the (prompt, response) texts, in order."""
    h = hashlib.sha256()
    for p, r in zip(frame[C.PROMPT], frame[C.RESPONSE]):
        h.update(p.encode("utf-8"))
        h.update(b"\x00")
        h.update(r.encode("utf-8"))
        h.update(b"\x01")
    return h.hexdigest()[:20]


def cached_features(frame: pd.DataFrame, cache_dir: str, model_key: str, pool: ActorPoolConfig,
                    runner_kwargs: dict) -> np.ndarray:
    """Encoder features of `frame`'s rows, from `<cache_dir>/<key>.npy` when the same pass ran before."""
    key = fingerprint("rm-features-v1", model_key, texts_digest(frame))
    path = os.path.join(cache_dir, f"{key}.npy")
    if os.path.exists(path):
        features = np.load(path, allow_pickle=False)
        if features.shape[0] == len(frame):
            log.info(f"[rm] encoder features: {len(frame):,} rows from cache {path}")
            return features
    log.info(f"[rm] encoder features: embedding {len(frame):,} rows (cached afterwards) ...")
    features = run_pass(frame, pool, {**runner_kwargs, "output": "features"})
    def save(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # a file object: np.save would append ".npy" to a temp name
            np.save(fh, features.astype(np.float32), allow_pickle=False)

    atomic_write(path, save)
    return features
