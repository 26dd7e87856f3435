"""A-LoL and the baselines head to head on real data: Helpful-and-Harmless (issue #8's benchmark).

    python bench/hh_compare.py                                  # configs/hh_tiny_cpu.yaml as committed
    python bench/hh_compare.py --methods nll,a_lol,dpo --seeds 1 train.steps=100   # a smaller run
    python bench/hh_compare.py --limit 400 --methods pro --seeds 1                  # 400 records per file
    python bench/hh_compare.py --publish docs/results/hh_compare                    # copy the report there

1. The reward model: `configs/rm_hh.yaml` (all-MiniLM-L6-v2, frozen, head distilled by regression on the
   harmless_base + helpful_base reward labels, 10% of their prompts held out), through the same stage as
   `alol rm train`; skipped when the storage folder already holds it with the same fingerprint.
2. The comparison: `configs/hh_tiny_cpu.yaml` (train = harmless_base + helpful_base minus the 10% holdout,
   val = sampled_dev, test = that same 10% holdout, which the reward model never saw; pi_ref = a tiny GPT-2
   trained from scratch by NLL) with that reward model as the evaluation reward, through `alol compare`.
3. With --publish DIR: report.md, methods.csv and the plots are copied to DIR, headed by the exact command,
   the machine and the wall time of each part.

The data folder defaults to ../shared/data/hh (or $ALOL_HH_DATA); it is read in place, never copied.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
FILES = [("harmless_base", "train"), ("helpful_base", "train"), ("sampled_dev", "val")]


def data_overrides(data_dir: str, limit: int | None = None) -> list[str]:
    """The three HH files from ``data_dir``; with ``limit``, only the first ``limit`` records of each."""
    out = [f"data.sources.{i}.path={os.path.join(data_dir, name + '.json')}" for i, (name, _) in enumerate(FILES)]
    return out + ([f"data.sources.{i}.limit={limit}" for i in range(len(FILES))] if limit else [])


def stage_times(run_root: str) -> list[str]:
    """Wall time of every stage the run published (stage.json "seconds"), summed by kind, as report lines."""
    from alol_ray.stage import read_marker

    kinds: dict[str, list[float]] = {}
    for folder, dirs, _ in os.walk(run_root):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("best", "checkpoints", "report")]
        marker = read_marker(folder)
        if not marker or marker.get("seconds") is None or folder == run_root:
            continue
        rel = os.path.relpath(folder, run_root).split(os.sep)
        if rel[0] == "train":
            kind = "pi_ref training" if rel[1].startswith("reference-") else f"training {rel[1].rsplit('-s', 1)[0]}"
        elif rel[0] == "eval":
            kind = "evaluation (sampled)" if rel[1] == "sampled" else "evaluation (greedy)"
        elif rel[0] == "prompts":  # alol eval --prompts FILE: <file stem>-<sha>/[sampled/]<method>-s<seed>
            kind = f"evaluation on {rel[1].rsplit('-', 1)[0]} ({'sampled' if rel[2] == 'sampled' else 'greedy'})"
        else:
            kind = rel[0]
        kinds.setdefault(kind, []).append(float(marker["seconds"]))
    lines = ["| stage | runs | wall time, min (sum) | per run, s (mean) |", "|---|---|---|---|"]
    for kind, secs in sorted(kinds.items()):
        lines.append(f"| {kind} | {len(secs)} | {sum(secs) / 60:.1f} | {sum(secs) / len(secs):.0f} |")
    return lines


def judge_lines(rm_dir: str) -> list[str]:
    """The evaluation reward model's held-out figures (its alol_rm_eval.json), as report lines."""
    from alol_ray.rm.backbone import EVAL_FILE

    path = os.path.join(rm_dir, EVAL_FILE)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as fh:
        slices = json.load(fh)["slices"]
    lines = ["| slice | scorer | Pearson with the labels | pairwise accuracy (rank 0 over rank 1) | pairs |",
             "|---|---|---|---|---|"]
    names = {"model": "the judge (MiniLM reward model)", "length": "reply length", "labels": "the data's own rewards"}
    for name, res in slices.items():
        for scorer in ("model", "length", "labels"):
            r = res.get(scorer)
            if r:
                pearson = "-" if scorer == "labels" or r.get("pearson") is None else f"{r['pearson']:.3f}"
                lines.append(f"| {name} | {names[scorer]} | {pearson} | {r['pairwise_acc']:.3f} | {r['pairs']} |")
    return lines


def claim_lines(report_dir: str) -> list[str]:
    """The paper's claim checked on this run: the best A-LoL variant (highest mean greedy test reward) against
    NLL and the reference policy, paired differences with their 95% intervals, under each decoding."""
    import pandas as pd

    methods_csv = os.path.join(report_dir, "methods.csv")
    if not os.path.exists(methods_csv):
        return []
    table = pd.read_csv(methods_csv)
    variants = table[table["method"].str.startswith("a_lol")]
    if variants.empty:
        return []
    best = variants.sort_values("reward", ascending=False).iloc[0]["method"]
    lines = [f"The paper's claim is that A-LoL beats NLL and the reference policy. The best A-LoL variant here, by "
             f"mean greedy test reward, is **{best}** (picking the best of {len(variants)} variants on the test "
             "split favours A-LoL; every variant's paired differences are in the report below). Its paired "
             "differences (mean per-prompt reward difference, 95% paired hierarchical bootstrap over seeds and "
             "prompts):", "", "| decoding | comparison | reward difference (95% CI) | |", "|---|---|---|---|"]
    supported, decodings = True, []
    for decoding, suffix in (("greedy", ""), ("sampled", "_sampled")):
        path = os.path.join(report_dir, f"paired{suffix}.csv")
        if not os.path.exists(path):
            continue
        decodings.append(decoding)
        paired = pd.read_csv(path)
        for versus in ("nll", "reference"):
            row = paired[(paired["method"] == best) & (paired["versus"] == versus)]
            if row.empty:
                supported = False
                continue
            r = row.iloc[0]
            supported &= r["lo"] > 0
            interval = f"{r['difference']:+.3f} ({r['lo']:+.3f} to {r['hi']:+.3f})"
            lines.append(f"| {decoding} | {best} - {versus} | {interval} | {r['verdict']} |")
    under = f"under {' and '.join(decodings)} decoding"
    lines += ["", (f"**The run supports the claim** {under}: every difference above is positive and its interval "
                   "excludes 0." if supported else
                   f"**The run does not support the claim in full** {under}: not every difference above is positive "
                   "with an interval that excludes 0 (see the verdicts)."),
              "These are differences in the judge's reward: they say how the judge ranks the replies, and are worth "
              "as much as its pairwise accuracy (below)."]
    return lines


def data_dir_shown(text: str, data_dir: str) -> str:
    """``text`` with the HH data folder as typed from the repository's root (``../shared/data/hh`` for the
    default), not as this machine's absolute path: the run's report makes only paths below its working
    directory relative, and the data lies outside it."""
    where = os.path.abspath(data_dir)
    return text.replace(where + os.sep, os.path.relpath(where, REPO) + "/")


def copy_report(report: str, dest: str, data_dir: str = "") -> str:
    """Copy the report's plots and tables (its report/ folder) to ``dest``/report, the data folder ``data_dir``
    shown relative to the repository; returns the text of report.md, shown the same way."""
    src_root = os.path.dirname(report)
    os.makedirs(os.path.join(dest, "report"), exist_ok=True)
    for name in os.listdir(os.path.join(src_root, "report")):
        src, out = os.path.join(src_root, "report", name), os.path.join(dest, "report", name)
        if data_dir and name.endswith((".yaml", ".csv")):
            with open(src, encoding="utf-8") as fh, open(out, "w", encoding="utf-8") as dst:
                dst.write(data_dir_shown(fh.read(), data_dir))
        else:
            shutil.copy2(src, out)
    with open(report, encoding="utf-8") as fh:
        return data_dir_shown(fh.read(), data_dir) if data_dir else fh.read()


def publish(report: str, dest: str, command: str, timings: dict[str, float], rm_dir: str = "",
            data_dir: str = "", notes: Sequence[str] = (), claims: bool = True, script: str = "hh_compare.py") -> None:
    """Copy the report and its plots to ``dest``, headed by how they were made (``notes``: more lines for that
    head, after the timings; ``claims``: the paper's claim checked on the report's tables); the data folder
    ``data_dir`` is shown relative to the repository."""
    src_root = os.path.dirname(report)
    body = copy_report(report, dest, data_dir)
    judge = judge_lines(rm_dir) if rm_dir else []
    head = [
        f"<!-- written by bench/{script} --publish; rerun the command below to reproduce -->",
        "",
        "How this report was made:",
        "",
        "```",
        command,
        "```",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}",
        *(f"- {part}: {seconds / 60:.1f} min wall" for part, seconds in timings.items()),
        *notes,
        "",
        "Time per stage (the wall time each stage recorded when it was built; a resumed run adds up its parts):",
        "",
        *stage_times(src_root),
        "",
        *(claim_lines(os.path.join(src_root, "report")) if claims else []),
        "",
        *(["The judge: the evaluation reward model, on prompts it never saw (the 10% holdout, the same prompts "
           "as the test split) and on sampled_dev (labelled by another reward model):", "", *judge, ""]
          if judge else []),
    ]
    with open(os.path.join(dest, "README.md"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(head) + "\n" + body)
    print(f"published to {dest}")


def print_outcome(table: str, reports: dict[str, str], timings: dict[str, float]) -> None:
    """The comparison table, where its reports are, and the minutes each part took."""
    print()
    print(table)
    print()
    for name, path in reports.items():
        print(f"{name}: {path}")
    for part, seconds in timings.items():
        print(f"{part}: {seconds / 60:.1f} min")


def judge(storage: str, data: list[str]) -> str:
    """The evaluation reward model of configs/rm_hh.yaml (``alol rm train``) on the HH files ``data`` (the
    overrides of ``data_overrides``), trained into ``storage`` unless it is there with the same fingerprint;
    returns its folder."""
    from alol_ray.config import load_config
    from alol_ray.pipeline import Pipeline

    return Pipeline(load_config(str(REPO / "configs" / "rm_hh.yaml"), [f"storage={storage}", *data])).reward_model()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("ALOL_HH_DATA", str(REPO.parent / "shared" / "data" / "hh")))
    parser.add_argument("--storage", default=str(REPO / "runs"))
    parser.add_argument("--methods", help="comma-separated methods (default: the config's compare.methods)")
    parser.add_argument("--seeds", type=int, help="seeds per method (default: the config's compare.seeds)")
    parser.add_argument("--limit", type=int, help="read only the first N records of each HH file (a quick run; the "
                        "reward model and the comparison read the same records)")
    parser.add_argument("--publish", metavar="DIR", help="copy the report here (e.g. docs/results/hh_compare)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of configs/hh_tiny_cpu.yaml")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.data_dir):
        print(f"error: HH data folder not found: {args.data_dir} (set --data-dir or ALOL_HH_DATA)", file=sys.stderr)
        return 2

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from alol_ray import logs
    from alol_ray.commands.demo import load_sized
    from alol_ray.pipeline import Pipeline
    from alol_ray.evaluation.compare import run_compare

    logs.setup()

    command = " ".join(shlex.quote(a) for a in ["python", "bench/hh_compare.py", *(argv or sys.argv[1:])])
    timings: dict[str, float] = {}
    t = time.time()
    data = data_overrides(args.data_dir, args.limit)
    rm_dir = judge(args.storage, data)
    timings["reward model (alol rm train; cached when up to date)"] = time.time() - t

    t = time.time()
    base = [f"storage={args.storage}", *data, f"reward.components.0.model={rm_dir}"]
    if args.methods:
        base.append(f"compare.methods=[{args.methods}]")
    if args.seeds:
        base.append(f"compare.seeds={args.seeds}")
    cfg = load_sized(str(REPO / "configs" / "hh_tiny_cpu.yaml"), base, args.overrides)
    report, table = run_compare(Pipeline(cfg), command=command)
    timings["comparison (alol compare)"] = time.time() - t
    print_outcome(table, {"report": report}, timings)
    if args.publish:
        publish(report, args.publish, command, timings, rm_dir, args.data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
