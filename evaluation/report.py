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
from alol_ray.config import non_defaults
from alol_ray.config_loading import to_yaml
from alol_ray.config_paths import portable, portable_path
from alol_ray.runs import GREEDY, SAMPLED
from alol_ray.evaluation.metrics import DISTINCT_BLOCK, distinct_n, distinct_n_per_block, repetition

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
    decoding: str = GREEDY  # greedy, or sampled (eval.sample_top_p)


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


def paired_hierarchical_ci(a: np.ndarray, b: np.ndarray, n_samples: int = 2000, seed: int = 0,
                           chunk: int = 250) -> tuple[float, float, float]:
    """Mean per-prompt difference A - B and its 95% paired hierarchical bootstrap interval.

    ``a``: [seeds of A, prompts], ``b``: [seeds of B, prompts], the same prompts in the same order. Each
    resample draws A's seeds and B's seeds with replacement (each method's own seed-to-seed variation), then
    one draw of prompts shared by both sides (the pairing): the statistic is the mean over those prompts of
    (A's mean over its drawn seeds - B's mean over its drawn seeds). The point estimate is the same without
    resampling: the mean over prompts of the difference of the seed means.
    """
    a, b = np.atleast_2d(np.asarray(a, dtype=np.float64)), np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"paired_hierarchical_ci: {a.shape[1]} prompts vs {b.shape[1]}")
    n_prompts = a.shape[1]
    if n_prompts == 0:
        return float("nan"), float("nan"), float("nan")
    point = float((a.mean(axis=0) - b.mean(axis=0)).mean())
    rng = np.random.default_rng(seed)
    stats = []
    for start in range(0, n_samples, chunk):
        n = min(chunk, n_samples - start)
        diff = (a[rng.integers(0, len(a), size=(n, len(a)))].mean(axis=1)
                - b[rng.integers(0, len(b), size=(n, len(b)))].mean(axis=1))  # [n, prompts]
        stats.append(np.take_along_axis(diff, rng.integers(0, n_prompts, size=(n, n_prompts)), axis=1).mean(axis=1))
    lo, hi = np.percentile(np.concatenate(stats), [2.5, 97.5])
    return point, float(lo), float(hi)


HIGHER, LOWER, OPEN = "higher (established)", "lower (established)", "not established"


def verdict(lo: float, hi: float) -> str:
    """Whether a paired difference is established at 95%: its interval excludes 0."""
    if lo > 0:
        return HIGHER
    if hi < 0:
        return LOWER
    return OPEN


def _per_prompt(runs: list[RunEntry], column: str = C.REWARD) -> pd.DataFrame:
    """[seeds, prompts] of ``column`` for one method, prompts as columns (by prompt_id)."""
    frames = [pd.read_parquet(r.eval_path, columns=[C.PROMPT_ID, column]).drop_duplicates(C.PROMPT_ID)
              .set_index(C.PROMPT_ID)[column] for r in runs]
    return pd.DataFrame(frames).reset_index(drop=True)


def by_method(entries: list[RunEntry]) -> dict[str, list[RunEntry]]:
    """The entries grouped by method (one per seed), in the order the methods first appear."""
    groups: dict[str, list[RunEntry]] = {}
    for e in entries:
        groups.setdefault(e.method, []).append(e)
    return groups


def paired_rows(entries: list[RunEntry], baselines: Sequence[str] = (REFERENCE, "nll"),
                n_bootstrap: int = 2000) -> pd.DataFrame:
    """Every method against each baseline present (the reference policy, NLL): the mean per-prompt reward
    difference on the prompts both answered, its 95% paired hierarchical bootstrap interval and the verdict."""
    tables = {m: _per_prompt(runs) for m, runs in by_method(entries).items()}
    rows = []
    for base in baselines:
        if base not in tables:
            continue
        for method, table in tables.items():
            if method == base or method == REFERENCE:
                continue
            shared = table.columns.intersection(tables[base].columns)  # in this method's order
            a, b = table[shared].to_numpy(), tables[base][shared].to_numpy()
            diff, lo, hi = paired_hierarchical_ci(a, b, n_bootstrap)
            rows.append({"method": method, "versus": base, "seeds": len(a), "versus_seeds": len(b),
                         "prompts": len(shared), "difference": diff, "lo": lo, "hi": hi, "verdict": verdict(lo, hi)})
    columns = ["method", "versus", "seeds", "versus_seeds", "prompts", "difference", "lo", "hi", "verdict"]
    return pd.DataFrame(rows, columns=columns)


def paired_markdown(paired: pd.DataFrame) -> list[str]:
    """The paired differences as a markdown table, then one plain sentence per baseline."""
    if paired.empty:
        return []
    lines = ["| method | versus | reward difference (95% CI) | seeds | prompts | |", "|---|---|---|---|---|---|"]
    for _, r in paired.iterrows():
        lines.append(f"| {r['method']} | {r['versus']} | {r['difference']:+.3f} ({r['lo']:+.3f} to {r['hi']:+.3f}) "
                     f"| {r['seeds']} vs {r['versus_seeds']} | {r['prompts']} | {r['verdict']} |")
    lines.append("")
    for base, part in paired.groupby("versus", sort=False):
        said = [f"{label}: " + (", ".join(part.loc[part["verdict"] == v, "method"]) or "none")
                for label, v in ((f"above {base}", HIGHER), (f"below {base}", LOWER),
                                 ("not established either way", OPEN))]
        lines.append(f"- Established at 95% (interval excludes 0): {'; '.join(said)}.")
    return lines


def _read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _distinct(texts: list[str], n: int) -> float:
    return distinct_n(texts, n)


def step_throughput(records: list[dict]) -> tuple[float, float]:
    """(tokens per second of optimizer step, mean seconds per step) from a run's metrics.jsonl records:
    the sum of ``train/tokens`` (non-padding tokens through the policy, all workers) over the sum of
    ``time/step_s``. Only the steps count, so every method is measured the same way: the stage's wall time
    also holds Ray Train's start, the val-reward generations, checkpoint writes and any wait for CPUs, a share
    that differs between runs (A-LoL runs fewer steps). NaN when the records carry no step times."""
    timed = [m for m in records if m.get("time/step_s") and "train/tokens" in m]
    if not timed:
        return float("nan"), float("nan")
    seconds = sum(m["time/step_s"] for m in timed)
    return sum(m["train/tokens"] for m in timed) / seconds, seconds / len(timed)


def method_rows(entries: list[RunEntry], n_bootstrap: int = 2000) -> pd.DataFrame:
    """One row per method: means with 95% intervals over seeds and prompts, diversity, length, cost."""
    rows = []
    for method, runs in by_method(entries).items():
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
        for n in (1, 2, 3):
            row[f"distinct/{n}@{DISTINCT_BLOCK}"] = float(np.mean([distinct_n_per_block(f[C.RESPONSE].tolist(), n)
                                                                 for f in frames]))
        repeats = [repetition(f[C.RESPONSE].tolist()) for f in frames]
        row["repeat/share"] = float(np.mean([r[0] for r in repeats]))
        row["repeat/top_share"] = float(np.mean([r[1] for r in repeats]))
        row["length/words"] = float(np.mean([f[C.RESPONSE].str.split().str.len().mean() for f in frames]))
        if all("response_tokens" in f for f in frames):
            row["length/tokens"] = float(np.mean([f["response_tokens"].mean() for f in frames]))
        fracs, seconds, tok_rates, step_times = [], [], [], []
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
            rate, step_s = step_throughput(_read_jsonl(os.path.join(r.train_dir, "metrics.jsonl")))
            if rate == rate:
                tok_rates.append(rate)
                step_times.append(step_s)
        row["data_used"] = float(np.mean(fracs)) if fracs else (1.0 if method != REFERENCE else float("nan"))
        row["train_seconds"] = float(np.mean(seconds)) if seconds else float("nan")
        row["tokens_per_s"] = float(np.mean(tok_rates)) if tok_rates else float("nan")
        row["step_s"] = float(np.mean(step_times)) if step_times else float("nan")
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.sort_values(C.REWARD, ascending=False).reset_index(drop=True)


def format_table(table: pd.DataFrame) -> str:
    """A plain-text table for the terminal (and the report)."""
    head = ["method", "seeds", "reward [95% CI]", "win vs ref", "distinct-1/2/3", "words", "data used", "train s",
            "s/step", "tok/s"]
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
            "-" if pd.isna(r["step_s"]) else f"{r['step_s']:.3f}",
            "-" if pd.isna(r["tokens_per_s"]) else f"{r['tokens_per_s']:.0f}",
        ])
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    return "\n".join(out)


def _markdown_table(table: pd.DataFrame) -> str:
    comps = sorted(c for c in table.columns if c.startswith(C.REWARD_PREFIX) and not c.endswith("/ci"))
    head = ["method", "seeds", "reward (95% CI)"] + comps + [
        "win vs ref (95% CI)", "distinct-1", "distinct-2", "distinct-3", "words", "data used", "train s", "s/step",
        "tokens/s"]
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
                  "-" if pd.isna(r["step_s"]) else f"{r['step_s']:.3f}",
                  "-" if pd.isna(r["tokens_per_s"]) else f"{r['tokens_per_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _share(value: float) -> str:
    return "-" if pd.isna(value) else f"{value:.0%}"


def repetition_markdown(table: pd.DataFrame, entries: list[RunEntry], top: int = 3, max_chars: int = 60) -> list[str]:
    """Diversity and repetition per method, as a markdown table: distinct-n per DISTINCT_BLOCK replies (the same
    count for every prompt set, so sets of different sizes compare), the share of replies that repeat another
    reply word for word, the share of the most common reply (means over seeds), and the ``top`` most common
    repeated replies of the method's first seed with their counts."""
    first: dict[str, RunEntry] = {}
    for e in sorted(entries, key=lambda e: (e.seed is not None, e.seed or 0)):
        first.setdefault(e.method, e)
    lines = [f"| method | distinct-1 / 2 / 3 per {DISTINCT_BLOCK} replies | replies that repeat another | share of the "
             "most common reply | most common repeated replies (first seed: count) |", "|---|---|---|---|---|"]
    for _, r in table.iterrows():
        per_block = [r.get(f"distinct/{n}@{DISTINCT_BLOCK}") for n in (1, 2, 3)]
        shown = "-" if any(pd.isna(v) for v in per_block) else " / ".join(f"{v:.3f}" for v in per_block)
        texts = pd.read_parquet(first[r["method"]].eval_path, columns=[C.RESPONSE])[C.RESPONSE].tolist()
        common = []
        for text, count in repetition(texts, top)[2]:
            text = text if len(text) <= max_chars else text[:max_chars] + "..."
            common.append(f"\"{text}\": {count}" if text else f"(empty): {count}")
        cells = [r["method"], shown, _share(r["repeat/share"]), _share(r["repeat/top_share"]),
                 "; ".join(common).replace("|", "\\|") or "none"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def with_paired_columns(table: pd.DataFrame, paired: pd.DataFrame) -> pd.DataFrame:
    """methods.csv gains ``vs_<baseline>`` (mean paired difference) and its interval ``vs_<baseline>_lo/_hi``."""
    table = table.copy()
    for base, part in paired.groupby("versus", sort=False):
        by_method = part.set_index("method")
        for col, src in ((f"vs_{base}", "difference"), (f"vs_{base}_lo", "lo"), (f"vs_{base}_hi", "hi")):
            table[col] = table["method"].map(by_method[src])
    return table


def decoding_tables(entries: list[RunEntry], report_dir: str, suffix: str,
                    n_bootstrap: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One decoding's method table (with the paired columns) and paired differences, also written as
    report/methods<suffix>.csv and report/paired<suffix>.csv."""
    paired = paired_rows(entries, n_bootstrap=n_bootstrap)
    table = with_paired_columns(method_rows(entries, n_bootstrap), paired)
    table.to_csv(os.path.join(report_dir, f"methods{suffix}.csv"), index=False)
    paired.to_csv(os.path.join(report_dir, f"paired{suffix}.csv"), index=False)
    return table, paired


def format_paired(paired: pd.DataFrame) -> str:
    """The paired differences for the terminal, one line each."""
    if paired.empty:
        return "paired differences: none (no reference or nll rows)"
    lines = ["paired reward differences (95% paired hierarchical bootstrap):"]
    for _, r in paired.iterrows():
        lines.append(f"  {r['method']:>16} vs {r['versus']:<9} {r['difference']:+.3f} "
                     f"[{r['lo']:+.3f}, {r['hi']:+.3f}]  {r['verdict']}")
    return "\n".join(lines)


def decoding_title(decoding: str, cfg) -> str:
    """How the replies of one table were decoded, in words."""
    if decoding == SAMPLED:
        return f"Sampled decoding (temperature {cfg.eval.sample_temperature:g}, top-p {cfg.eval.sample_top_p:g})"
    gen = cfg.generation
    if gen.temperature == 0:
        return "Greedy decoding"
    return f"Decoding: temperature {gen.temperature:g}, top-p {gen.top_p:g}"


def sample_replies(entries: list[RunEntry], n_prompts: int = 3, max_chars: int = 300) -> list[str]:
    """A few test prompts (the first by prompt_id) with every method's reply (its first seed), for the report."""
    first: dict[str, RunEntry] = {}
    for e in sorted(entries, key=lambda e: (e.seed is not None, e.seed or 0)):
        first.setdefault(e.method, e)
    if not first:
        return []
    columns = [C.PROMPT_ID, C.PROMPT, C.RESPONSE]
    frames = {m: pd.read_parquet(e.eval_path, columns=columns).drop_duplicates(C.PROMPT_ID).set_index(C.PROMPT_ID)
              for m, e in first.items()}
    pids = sorted(set.intersection(*(set(f.index) for f in frames.values())))[:n_prompts]

    def clip(text: str) -> str:
        text = " ".join(str(text).split())
        return text if len(text) <= max_chars else "..." + text[-max_chars:]

    out = ["", "## Sample replies", "", f"The first {len(pids)} test prompts (end of the prompt shown) and each "
           "method's reply (first seed).", ""]
    any_frame = next(iter(frames.values()))
    for pid in pids:
        out += [f"**Prompt** `{pid}`: {clip(any_frame.loc[pid, C.PROMPT])}", ""]
        out += [f"- *{m}*: {clip(f.loc[pid, C.RESPONSE]) or '(empty)'}" for m, f in sorted(frames.items())]
        out.append("")
    return out


def plot_val_curves(entries: list[RunEntry], path: str) -> Optional[str]:
    """Val reward against training steps, one line per method (mean over seeds)."""
    # lazy: matplotlib (alol_ray.evaluation.report imports without it)
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
    # lazy: matplotlib (alol_ray.evaluation.report imports without it)
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
    # lazy: matplotlib (alol_ray.evaluation.report imports without it)
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
    greedy = [e for e in entries if e.decoding == GREEDY]
    table, paired = decoding_tables(greedy, report_dir, "", n_bootstrap)
    sampled = [e for e in entries if e.decoding == SAMPLED]
    sampled_table, sampled_paired = decoding_tables(sampled, report_dir, "_sampled", n_bootstrap) if sampled \
        else (None, None)
    plots = [
        ("Validation reward during training", plot_val_curves(greedy, os.path.join(report_dir, "val_reward.png"))),
        ("Test reward distributions", plot_reward_distributions(greedy, os.path.join(report_dir, "reward_dist.png"))),
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
        "*data used*: share of training rows with positive advantage (A-LoL family), else 100%. *train s*: wall",
        "time of the training stage (start-up, val generations and checkpoints included); *s/step* and *tokens/s*:",
        "optimizer steps only (non-padding tokens per second of step time), the same measure for every method.",
        "",
        f"### {decoding_title(GREEDY, cfg)}",
        "",
        _markdown_table(table),
        "",
    ]
    text += [f"- {n}" for n in notes]
    if sampled_table is not None:
        text += ["", f"### {decoding_title(SAMPLED, cfg)}", "", _markdown_table(sampled_table), ""]
    text += ["", "## Diversity and repetition", "",
             f"distinct-n per {DISTINCT_BLOCK} replies: the replies (in prompt order) cut into blocks of "
             f"{DISTINCT_BLOCK}, distinct-n of each, their mean (- with fewer than {DISTINCT_BLOCK} replies); corpus",
             "distinct-n (the tables above) falls as the corpus grows, this one compares across prompt sets. Two replies",
             "are the same when they match word for word (case and spacing aside).", "",
             f"**{decoding_title(GREEDY, cfg)}**", ""] + repetition_markdown(table, greedy)
    if sampled_table is not None:
        text += ["", f"**{decoding_title(SAMPLED, cfg)}**", ""] + repetition_markdown(sampled_table, sampled)
    text += ["", "## Paired differences", "",
             "Mean per-prompt difference in test reward against the reference policy and against NLL, on the same",
             "prompts, with a 95% paired hierarchical bootstrap interval (each method's seeds resampled, then the",
             "prompts, shared by both sides). A difference is established when its interval excludes 0.", ""]
    text += [f"**{decoding_title(GREEDY, cfg)}**", ""] + paired_markdown(paired)
    if sampled_paired is not None:
        text += ["", f"**{decoding_title(SAMPLED, cfg)}**", ""] + paired_markdown(sampled_paired)
    text += sample_replies(greedy)
    for title, path in plots:
        if path:
            text += ["", f"## {title}", "", f"![{title}](report/{os.path.basename(path)})"]
    text += ["", "## Config", "", "The settings that differ from the defaults (the full resolved config is "
             "[report/config.yaml](report/config.yaml)):", "", "```yaml", shown, "```", ""]
    report_path = os.path.join(run_root, "report.md")
    write_text(report_path, "\n".join(text))
    printed = format_table(table) + "\n\n" + format_paired(paired)
    if sampled_table is not None:
        printed += f"\n\n{decoding_title(SAMPLED, cfg)}\n" + format_table(sampled_table)
    return report_path, printed
