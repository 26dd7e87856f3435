"""Can a MiniLM judge tell which of two HH replies is better? (issue #19's judge attempts)

The HH comparison rests on the evaluation reward model ranking two replies to the same prompt. This bench
tries the ways 2 CPU cores allow and prints, for each, the pairwise accuracy on the held-out pairs (rank 0,
the human-preferred reply, over rank 1) and on sampled_dev, with Pearson against the reward labels, beside two
references: reply length, and the data's own reward labels (the reward model the labels came from).

1. Frozen all-MiniLM-L6-v2, mean-pooled features of three renderings: the reply alone; the last human turn and
   the reply; both concatenated. On each, an MLP head trained with one of three losses:
   - ``bt``: Bradley-Terry on the human ranking (rank 0 over rank 1);
   - ``soft``: Bradley-Terry towards the labels' own preference, sigmoid(r0 - r1) (distillation);
   - ``softreg``: ``soft`` plus regression on the standardized labels (weight 0.5).
2. With ``--finetune EPOCHS``: the whole encoder fine-tuned with ``softreg`` on the last-turn rendering
   (lr 3e-5, 16 pairs a step), evaluated after each epoch (about 13 min an epoch on 2 idle cores).

The split is configs/rm_hh.yaml's (the same 10% held-out prompts as the comparison's test split).

    python bench/judge_hh.py [--data-dir ../shared/data/hh] [--storage runs] [--finetune 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
FILES = ["harmless_base", "helpful_base", "sampled_dev"]
PARTS = ("train", "holdout", "val")


def last_turn(prompt: str, marker: str = "### Human:") -> str:
    return prompt.rsplit(marker, 1)[-1]


def rank_pairs(frame) -> dict[str, np.ndarray]:
    """Per part: [P, 2] row positions (rank 0, rank 1) of every prompt that has both."""
    out = {}
    for part in PARTS:
        rows = frame[frame["part"] == part]
        pairs = []
        for positions in rows.groupby("prompt_id").indices.values():
            index = rows.index[positions]
            ranks = list(frame.loc[index, "rank"])
            if 0 in ranks and 1 in ranks:
                pairs.append((index[ranks.index(0)], index[ranks.index(1)]))
        out[part] = np.asarray(pairs, dtype=np.int64)
    return out


def scores_report(scores: np.ndarray, frame, pairs: dict[str, np.ndarray]) -> dict[str, float]:
    held = (frame["part"] == "holdout").to_numpy()
    out = {p: float(np.mean(scores[pairs[p][:, 0]] > scores[pairs[p][:, 1]])) for p in ("holdout", "val")}
    out["pearson"] = float(np.corrcoef(scores[held], frame["reward"].to_numpy()[held])[0, 1])
    return out


class Encoder:
    """The packaged all-MiniLM-L6-v2 with mean pooling."""

    def __init__(self):
        # lazy: torch, transformers (heavy; only once the data is loaded)
        import torch
        from transformers import AutoModel, AutoTokenizer

        from alol_ray.rm.backbone import minilm_path

        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(minilm_path())
        self.model = AutoModel.from_pretrained(minilm_path())

    def pooled(self, texts: list[str], max_length: int, side: str):
        self.tok.truncation_side = side
        batch = self.tok(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return (hidden * mask).sum(1) / mask.sum(1)

    def features(self, texts: list[str], max_length: int, side: str, batch: int = 64) -> np.ndarray:
        self.model.eval()
        order = np.argsort([len(t) for t in texts])  # similar lengths together: less padding
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        with self.torch.no_grad():
            for i in range(0, len(texts), batch):
                idx = order[i:i + batch]
                out[idx] = self.pooled([texts[j] for j in idx], max_length, side).numpy()
        return out


def pair_loss(torch, loss: str, s_a, s_b, r_a, r_b, z_a, z_b):
    """The three losses on one batch of pairs (scores s, raw labels r, standardized labels z)."""
    F = torch.nn.functional
    if loss == "bt":
        return -F.logsigmoid(s_a - s_b).mean()
    soft = F.binary_cross_entropy_with_logits(s_a - s_b, torch.sigmoid(r_a - r_b))
    if loss == "soft":
        return soft
    return soft + 0.5 * (((s_a - z_a) ** 2).mean() + ((s_b - z_b) ** 2).mean()) / 2


def train_head(features: np.ndarray, frame, pairs, loss: str, epochs: int = 30, seed: int = 0) -> np.ndarray:
    """An MLP head on frozen features; returns the scores of every row after ``epochs``."""
    import torch

    torch.manual_seed(seed)
    train = (frame["part"] == "train").to_numpy()
    x = torch.tensor(np.array(features))
    x = (x - x[train].mean(0)) / (x[train].std(0) + 1e-6)
    r = torch.tensor(frame["reward"].to_numpy(np.float32))
    z = (r - r[train].mean()) / r[train].std()
    head = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 256), torch.nn.GELU(), torch.nn.Dropout(0.2),
                               torch.nn.Linear(256, 1))
    opt = torch.optim.AdamW(head.parameters(), 1e-3, weight_decay=1e-2)
    a_all, b_all = (torch.tensor(c) for c in pairs["train"].T)
    for epoch in range(epochs):
        head.train()
        perm = torch.randperm(len(a_all), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        for i in range(0, len(perm), 64):
            a, b = a_all[perm[i:i + 64]], b_all[perm[i:i + 64]]
            value = pair_loss(torch, loss, head(x[a]).squeeze(-1), head(x[b]).squeeze(-1), r[a], r[b], z[a], z[b])
            opt.zero_grad()
            value.backward()
            opt.step()
    head.eval()
    with torch.no_grad():
        return head(x).squeeze(-1).numpy()


def finetune(encoder: Encoder, texts: list[str], frame, pairs, epochs: int, max_length: int = 128):
    """The whole encoder and a linear head, ``softreg``; yields (epoch, scores of every row) after each epoch."""
    if epochs < 1:
        return
    torch = encoder.torch
    torch.manual_seed(0)
    head = torch.nn.Linear(encoder.model.config.hidden_size, 1)
    train = (frame["part"] == "train").to_numpy()
    r = torch.tensor(frame["reward"].to_numpy(np.float32))
    z = (r - r[train].mean()) / r[train].std()
    opt = torch.optim.AdamW([{"params": encoder.model.parameters(), "lr": 3e-5},
                             {"params": head.parameters(), "lr": 1e-3}], weight_decay=0.01)
    per_step, train_pairs = 16, pairs["train"]
    steps = len(train_pairs) // per_step
    total = steps * epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.0, 1 - s / total))
    params = list(encoder.model.parameters()) + list(head.parameters())
    for epoch in range(epochs):
        encoder.model.train()
        perm = np.random.default_rng(epoch).permutation(len(train_pairs))
        started = time.time()
        for i in range(steps):
            chosen = train_pairs[perm[i * per_step:(i + 1) * per_step]]
            rows = np.concatenate([chosen[:, 0], chosen[:, 1]])
            s = head(encoder.pooled([texts[j] for j in rows], max_length, "left")).squeeze(-1)
            a, b = torch.tensor(chosen[:, 0]), torch.tensor(chosen[:, 1])
            value = pair_loss(torch, "softreg", s[:per_step], s[per_step:], r[a], r[b], z[a], z[b])
            opt.zero_grad()
            value.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            if (i + 1) % 50 == 0:
                print(f"  fine-tune epoch {epoch + 1}: step {i + 1}/{steps}, {time.time() - started:.0f}s", flush=True)
        feats = encoder.features(texts, max_length, "left")
        with torch.no_grad():
            yield epoch + 1, head(torch.tensor(feats)).squeeze(-1).numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("ALOL_HH_DATA", str(REPO.parent / "shared" / "data" / "hh")))
    parser.add_argument("--storage", default=str(REPO / "runs"))
    parser.add_argument("--finetune", type=int, default=0, metavar="EPOCHS", help="also fine-tune the whole encoder")
    parser.add_argument("--limit", type=int, help="read only the first N records of each HH file (a quick run)")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.data_dir):
        print(f"error: HH data folder not found: {args.data_dir} (set --data-dir or ALOL_HH_DATA)", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import pandas as pd
    import torch

    from alol_ray.config import load_config
    from alol_ray.pipeline import Pipeline
    from alol_ray.rm.train import split_holdout

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    sources = [f"data.sources.{i}.path={os.path.join(args.data_dir, name + '.json')}" for i, name in enumerate(FILES)]
    if args.limit:
        sources += [f"data.sources.{i}.limit={args.limit}" for i in range(len(FILES))]
    cfg = load_config(str(REPO / "configs" / "rm_hh.yaml"), [f"storage={args.storage}"] + sources)
    train, slices = split_holdout(pd.read_parquet(Pipeline(cfg).rows()), cfg.rm)
    frame = pd.concat([train.assign(part="train"), slices["holdout"].assign(part="holdout"),
                       slices["val"].assign(part="val")], ignore_index=True)
    pairs = rank_pairs(frame)
    print(f"pairs: {', '.join(f'{p} {len(v)}' for p, v in pairs.items())}")

    rows = [("reply length", "-", scores_report(frame["response"].str.len().to_numpy(float), frame, pairs)),
            ("the data's reward labels", "-", scores_report(frame["reward"].to_numpy(float), frame, pairs))]
    encoder = Encoder()
    started = time.time()
    reply = encoder.features(frame["response"].tolist(), 96, "right")
    turn_texts = [last_turn(p) + " " + r for p, r in zip(frame["prompt"], frame["response"])]
    turn = encoder.features(turn_texts, 128, "left")
    print(f"frozen features of {len(frame)} rows, two renderings: {time.time() - started:.0f}s")
    for name, feats in (("reply", reply), ("last turn + reply", turn), ("both", np.concatenate([reply, turn], 1))):
        for loss in ("bt", "soft", "softreg"):
            rows.append((f"frozen, {name}", loss, scores_report(train_head(feats, frame, pairs, loss), frame, pairs)))
            print(f"  {rows[-1][0]:<28} {loss:<8} {rows[-1][2]}", flush=True)
    for epoch, scores in finetune(encoder, turn_texts, frame, pairs, args.finetune):
        rows.append((f"fine-tuned, epoch {epoch}", "softreg", scores_report(scores, frame, pairs)))
        print(f"  {rows[-1][0]:<28} softreg  {rows[-1][2]}", flush=True)

    print(f"\n{'judge':<30} {'loss':<8} {'holdout acc':>11} {'val acc':>8} {'pearson':>8}")
    for name, loss, r in rows:
        print(f"{name:<30} {loss:<8} {r['holdout']:>11.3f} {r['val']:>8.3f} {r['pearson']:>8.3f}")
    print(f"(holdout {len(pairs['holdout'])} pairs: one standard error is about "
          f"{np.sqrt(0.25 / len(pairs['holdout'])):.3f}; goal >= 0.60)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
