"""`alol rm train --config FILE [key=value ...]`: train a reward model on the run's canonical rows.

Writes a standard HF folder (rm.output, default <run>/rm/model) that a reward component of kind
`hf_classifier` loads by path, plus alol_reward.json (input rendering) and alol_rm_eval.json (evaluation).
"""

from __future__ import annotations

import argparse
import os

from alol_ray.cli import add_config_arguments

USES_RUN = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="rm_command", metavar="ACTION", required=True)
    sp = sub.add_parser("train", help="fit the reward model (rm section of the config) and evaluate it",
                        description="Fit AutoModelForSequenceClassification(num_labels=1) on the run's rows "
                        "(rm.loss: regression on the reward, or pairwise Bradley-Terry on the ranking) as a "
                        "Ray Train job; save it as an HF folder and print held-out metrics.")
    add_config_arguments(sp)
    sp.add_argument("--force", action="store_true", help="retrain even if the output is up to date")


def run(args: argparse.Namespace, session) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(session.pipeline.reward_model(force=args.force))
    return 0
