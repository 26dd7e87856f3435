"""Wall time and peak memory of `alol demo`, the README's main job (budget: <= 10 min, <= 6 GiB on 2 cores).

    python bench/demo_budget.py                         # fresh storage folder under /tmp, default demo
    python bench/demo_budget.py --storage runs/budget -- train.steps=200   # extra demo overrides

Runs `alol demo` as a child process and samples, every --interval seconds, the resident memory of its
whole process tree (the driver, the local Ray's GCS/raylet/dashboard and every Ray worker it starts).
Peak = the largest tree total seen; proportional set size (PSS) is reported next to RSS because Ray
workers share pages (torch, the object store) that RSS counts once per process. Writes a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import psutil

GiB = 1024 ** 3


def tree_memory(root: psutil.Process) -> tuple[int, int, int]:
    """(rss, pss, processes) summed over root and all its descendants; vanished processes are skipped."""
    rss = pss = n = 0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0, 0
    for p in procs:
        try:
            full = p.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        rss += full.rss
        pss += getattr(full, "pss", full.rss)
        n += 1
    return rss, pss, n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", help="storage folder for the demo (default: a fresh temporary folder)")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between memory samples")
    parser.add_argument("--out", default=None, help="summary JSON (default: <tmp>/alol_demo_budget.json)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary storage folder")
    parser.add_argument("overrides", nargs="*", help="extra `alol demo` overrides (after --)")
    args = parser.parse_args()

    storage = args.storage or tempfile.mkdtemp(prefix="alol-demo-budget-")
    alol = shutil.which("alol") or os.path.join(os.path.dirname(sys.executable), "alol")
    cmd = [alol, "demo", f"storage={storage}", *args.overrides]
    print("$", " ".join(cmd), flush=True)
    print(f"load average before: {os.getloadavg()}", flush=True)

    started = time.time()
    proc = subprocess.Popen(cmd)
    root = psutil.Process(proc.pid)
    peak = {"rss": 0, "pss": 0, "processes": 0, "at_s": 0.0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            rss, pss, n = tree_memory(root)
            if pss > peak["pss"]:
                peak.update(pss=pss, at_s=round(time.time() - started, 1))
            peak["rss"] = max(peak["rss"], rss)
            peak["processes"] = max(peak["processes"], n)
            stop.wait(args.interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    rc = proc.wait()
    wall = time.time() - started
    stop.set()
    sampler.join()

    summary = {
        "command": " ".join(cmd), "exit_code": rc, "wall_s": round(wall, 1),
        "peak_pss_gib": round(peak["pss"] / GiB, 2), "peak_rss_gib": round(peak["rss"] / GiB, 2),
        "peak_at_s": peak["at_s"], "max_processes": peak["processes"],
        "cpus": os.cpu_count(), "load_average_after": os.getloadavg(),
        "budget": {"wall_s": 600, "memory_gib": 6},
    }
    summary["within_budget"] = rc == 0 and wall <= 600 and peak["pss"] / GiB <= 6
    out = args.out or os.path.join(tempfile.gettempdir(), "alol_demo_budget.json")
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2)
    print(json.dumps(summary, indent=2))
    print(f"wall {wall / 60:.1f} min (budget 10), peak PSS {summary['peak_pss_gib']} GiB "
          f"(RSS sum {summary['peak_rss_gib']} GiB; budget 6) -> "
          f"{'within' if summary['within_budget'] else 'OVER'} budget; summary: {out}")
    if not args.storage and not args.keep:
        shutil.rmtree(storage, ignore_errors=True)
    return 0 if summary["within_budget"] else 1


if __name__ == "__main__":
    sys.exit(main())
