"""The comparison report: one table and a few plots over methods x seeds, all from files on disk.

Inputs are what the stages already write: the eval job's per-example parquet (one per method and seed),
each training run's ``metrics.jsonl`` / ``val.jsonl`` / ``summary.json``, and the scored table's
``advantage`` column. Intervals are 95% hierarchical bootstrap intervals: resample seeds, then prompts
within each resampled seed, so both sources of variation widen them.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import yaml

from alol_ray import columns as C
from alol_ray.atomic import write_text
from alol_ray.config import non_defaults, portable, portable_path, to_yaml
from evaluation.metrics import distinct_n

REFERENCE = "reference"


@dataclass
class RunEntry:
    """One evaluated policy: a (method, seed) training run, or the reference policy (seed None)."""

    method: str
    seed: Optional[int]
    eval_path: str  # per-example parquet of the eval job
    train_dir: Optional[str] = None  # metrics.jsonl, val.jsonl, summary.json
    train_seconds: Optional[float] = None
    extra: dict = field(default_factory=dict)


def hierarchical_ci(groups: Sequence[np.ndarray], n_samples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean over groups (seeds) of the per-group mean, and its 95% two-level bootstrap interval."""
    groups = [np.asarray(g, dtype=np.float64) for g in groups if len(g)]
    if not groups:
        return float("nan"), float("nan"), float("nan")
    point = float(np.mean([g.mean() for g in groups]))
    rng = np.random.default_rng(seed)
    stats = np.empty(n_samples)
    for i in range(n_samples):
        picked = rng.integers(0, len(groups), size=len(groups))
        stats[i] = np.mean([groups[k][rng.integers(0, len(groups[k]), size=len(groups[k]))].mean() for k in picked])
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return point, float(lo), float(hi)


def _read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _distinct(texts: list[str], n: int) -> float:
    return distinct_n(texts, n)


def method_rows(entries: list[RunEntry], n_bootstrap: int = 2000) -> pd.DataFrame:
    """One row per method: means with 95% intervals over seeds and prompts, diversity, length, cost."""
    by_method: dict[str, list[RunEntry]] = {}
    for e in entries:
        by_method.setdefault(e.method, []).append(e)
    rows = []
    for method, runs in by_method.items():
        frames = [pd.read_parquet(r.eval_path) for r in runs]
        reward_cols = [C.REWARD] + sorted(c for c in frames[0].columns if c.startswith(C.REWARD_PREFIX))
        row: dict = {"method": method, "seeds": len(runs), "prompts": int(np.mean([len(f) for f in frames]))}
        for col in reward_cols:
            mean, lo, hi = hierarchical_ci([f[col].to_numpy() for f in frames], n_bootstrap)
            row[col] = mean
            row[f"{col}/ci"] = (lo, hi)
        if all("win" in f for f in frames):
            mean, lo, hi = hierarchical_ci([f["win"].to_numpy() for f in frames], n_bootstrap)
            row["win_rate"], row["win_rate/ci"] = mean, (lo, hi)
        for n in (1, 2, 3):
            row[f"distinct/{n}"] = float(np.mean([_distinct(f[C.RESPONSE].tolist(), n) for f in frames]))
        row["length/words"] = float(np.mean([f[C.RESPONSE].str.split().str.len().mean() for f in frames]))
        if all("response_tokens" in f for f in frames):
            row["length/tokens"] = float(np.mean([f["response_tokens"].mean() for f in frames]))
        fracs, seconds, tok_rates = [], [], []
        for r in runs:
            if not r.train_dir:
                continue
            summary_path = os.path.join(r.train_dir, "summary.json")
            if os.path.exists(summary_path):
                with open(summary_path, encoding="utf-8") as fh:
                    summary = json.load(fh)
                if summary.get("positive_fraction") is not None:
                    fracs.append(summary["positive_fraction"])
            if r.train_seconds:
                seconds.append(r.train_seconds)
                tokens = sum(m.get("train/tokens", 0.0) for m in _read_jsonl(os.path.join(r.train_dir, "metrics.jsonl")))
                if tokens:
                    tok_rates.append(tokens / r.train_seconds)
        row["data_used"] = float(np.mean(fracs)) if fracs else (1.0 if method != REFERENCE else float("nan"))
        row["train_seconds"] = float(np.mean(seconds)) if seconds else float("nan")
        row["tokens_per_s"] = float(np.mean(tok_rates)) if tok_rates else float("nan")
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.sort_values(C.REWARD, ascending=False).reset_index(drop=True)


def format_table(table: pd.DataFrame) -> str:
    """A plain-text table for the terminal (and the report)."""
    head = ["method", "seeds", "reward [95% CI]", "win vs ref", "distinct-1/2/3", "words", "data used", "train s", "tok/s"]
    lines = []
    for _, r in table.iterrows():
        ci = r.get(f"{C.REWARD}/ci")
        win = r.get("win_rate")
        lines.append([
            r["method"], str(int(r["seeds"])),
            f"{r[C.REWARD]:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]",
            "-" if win is None or pd.isna(win) else f"{win:.3f}",
            f"{r['distinct/1']:.3f}/{r['distinct/2']:.3f}/{r['distinct/3']:.3f}",
            f"{r['length/words']:.1f}",
            "-" if pd.isna(r["data_used"]) else f"{r['data_used']:.0%}",
            "-" if pd.isna(r["train_seconds"]) else f"{r['train_seconds']:.0f}",
            "-" if pd.isna(r["tokens_per_s"]) else f"{r['tokens_per_s']:.0f}",
        ])
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    return "\n".join(out)


def _markdown_table(table: pd.DataFrame) -> str:
    comps = sorted(c for c in table.columns if c.startswith(C.REWARD_PREFIX) and not c.endswith("/ci"))
    head = ["method", "seeds", "reward (95% CI)"] + comps + ["win vs ref (95% CI)", "distinct-1", "distinct-2",
                                                              "distinct-3", "words", "data used", "train s", "tokens/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def with_ci(r, col):
        if col not in r or pd.isna(r[col]):
            return "-"
        lo, hi = r[f"{col}/ci"]
        return f"{r[col]:.3f} ({lo:.3f}-{hi:.3f})"

    for _, r in table.iterrows():
        cells = [r["method"], str(int(r["seeds"])), with_ci(r, C.REWARD)] + [with_ci(r, c) for c in comps]
        cells += [with_ci(r, "win_rate"), f"{r['distinct/1']:.3f}", f"{r['distinct/2']:.3f}", f"{r['distinct/3']:.3f}",
                  f"{r['length/words']:.1f}", "-" if pd.isna(r["data_used"]) else f"{r['data_used']:.0%}",
                  "-" if pd.isna(r["train_seconds"]) else f"{r['train_seconds']:.0f}",
                  "-" if pd.isna(r["tokens_per_s"]) else f"{r['tokens_per_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_val_curves(entries: list[RunEntry], path: str) -> Optional[str]:
    """Val reward against training steps, one line per method (mean over seeds)."""
    # lazy: matplotlib (evaluation.report imports without it)
    import matplotlib

    matplotlib.use("Agg")
    # lazy: matplotlib, and pyplot only once the Agg backend is chosen
    import matplotlib.pyplot as plt

    curves: dict[str, list[pd.Series]] = {}
    for e in entries:
        if not e.train_dir:
            continue
        records = _read_jsonl(os.path.join(e.train_dir, "val.jsonl"))
        records = [r for r in records if "val/reward" in r]
        if records:
            step_key = "train/step" if "train/step" in records[0] else "step"
            s = pd.Series({r.get(step_key, i): r["val/reward"] for i, r in enumerate(records)})
            curves.setdefault(e.method, []).append(s)
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for method, series in sorted(curves.items()):
        mean = pd.concat(series, axis=1).mean(axis=1).sort_index()
        ax.plot(mean.index, mean.values, marker="o", ms=3, label=method)
    ax.set_xlabel("training step")
    ax.set_ylabel("val reward (greedy)")
    ax.set_title("Validation reward during training (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_reward_distributions(entries: list[RunEntry], path: str) -> str:
    """Per-prompt test reward of every method (all seeds pooled), as box plots."""
    # lazy: matplotlib (evaluation.report imports without it)
    import matplotlib

    matplotlib.use("Agg")
    # lazy: matplotlib, and pyplot only once the Agg backend is chosen
    import matplotlib.pyplot as plt

    data: dict[str, list[np.ndarray]] = {}
    for e in entries:
        data.setdefault(e.method, []).append(pd.read_parquet(e.eval_path, columns=[C.REWARD])[C.REWARD].to_numpy())
    order = sorted(data, key=lambda m: -np.mean(np.concatenate(data[m])))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(order)), 4.2))
    ax.boxplot([np.concatenate(data[m]) for m in order], showmeans=True)
    ax.set_xticks(range(1, len(order) + 1), order, rotation=30, ha="right")
    ax.set_ylabel("test reward per prompt")
    ax.set_title("Test reward distributions (triangle = mean)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_advantages(scored_table: str, path: str) -> Optional[str]:
    """Histogram of the training rows' advantages (the share A-LoL keeps is the part above 0)."""
    # lazy: matplotlib (evaluation.report imports without it)
    import matplotlib

    matplotlib.use("Agg")
    # lazy: matplotlib, and pyplot only once the Agg backend is chosen
    import matplotlib.pyplot as plt

    if not os.path.exists(scored_table):
        return None
    frame = pd.read_parquet(scored_table)
    if C.ADVANTAGE not in frame:
        return None
    adv = frame.loc[frame[C.SPLIT] == "train", C.ADVANTAGE].dropna().to_numpy()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.hist(adv, bins=50, color="#4477aa")
    ax.axvline(0.0, color="black", lw=1)
    ax.set_xlabel("advantage = reward - value")
    ax.set_ylabel("training rows")
    ax.set_title(f"Advantages: {np.mean(adv > 0):.1%} positive")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def portable_command(command: str, base: Optional[str] = None) -> str:
    """The command line with absolute paths shown as they would be typed in ``base`` (see config.portable)."""
    out = []
    for token in shlex.split(command):
        key, sep, value = token.partition("=")
        out.append(f"{key}={portable_path(value, base)}" if sep and not key.startswith("/") else portable_path(token, base))
    return " ".join(shlex.quote(t) for t in out)


def config_section(cfg) -> tuple[str, str]:
    """(what the report shows: the keys that differ from the defaults, the full resolved config), as YAML with
    absolute paths made portable."""
    shown = portable(cfg)
    return yaml.safe_dump(non_defaults(shown), sort_keys=False).rstrip(), to_yaml(shown)


def write_report(run_root: str, entries: list[RunEntry], *, command: str, cfg, scored_table: Optional[str] = None,
                 notes: Sequence[str] = (), n_bootstrap: int = 2000,
                 heading: str = "alol-ray comparison report") -> tuple[str, str]:
    """Write <run>/report.md and <run>/report/ (plots, methods.csv, config.yaml: the full resolved config).
    Returns (report path, the printed table). The report holds no absolute paths of this machine."""
    report_dir = os.path.join(run_root, "report")
    os.makedirs(report_dir, exist_ok=True)
    table = method_rows(entries, n_bootstrap)
    table.to_csv(os.path.join(report_dir, "methods.csv"), index=False)
    plots = [
        ("Validation reward during training", plot_val_curves(entries, os.path.join(report_dir, "val_reward.png"))),
        ("Test reward distributions", plot_reward_distributions(entries, os.path.join(report_dir, "reward_dist.png"))),
        ("Advantage histogram", plot_advantages(scored_table, os.path.join(report_dir, "advantages.png"))
         if scored_table else None),
    ]
    shown, full = config_section(cfg)
    write_text(os.path.join(report_dir, "config.yaml"), full)
    text = [
        f"# {heading}",
        "",
        "Produced by:",
        "",
        "```",
        portable_command(command),
        "```",
        "",
        "Intervals are 95% hierarchical bootstrap intervals over seeds and test prompts. *win vs ref*: share of",
        "test prompts where the method's reply has a higher reward than the reference policy's (ties count half).",
        "*data used*: share of training rows with positive advantage (A-LoL family), else 100%.",
        "",
        _markdown_table(table),
        "",
    ]
    text += [f"- {n}" for n in notes]
    for title, path in plots:
        if path:
            text += ["", f"## {title}", "", f"![{title}](report/{os.path.basename(path)})"]
    text += ["", "## Config", "", "The settings that differ from the defaults (the full resolved config is "
             "[report/config.yaml](report/config.yaml)):", "", "```yaml", shown, "```", ""]
    report_path = os.path.join(run_root, "report.md")
    write_text(report_path, "\n".join(text))
    return report_path, format_table(table)
