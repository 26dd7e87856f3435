"""The `alol` command: one subcommand per stage, each in its own module (imported only when used).

A stage module provides ``add_arguments(parser)`` and ``run(args) -> int``. A module that is not
installed yet is simply not listed, so `alol --help` shows the subcommands that exist.
User errors (bad data, bad config) print one line per problem and exit 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from alol_ray.errors import EXIT_USER_ERROR, UserError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("alol_ray.data.cli", "validate and convert offline data into canonical rows"),
    "score": ("alol_ray.scoring.cli", "score rows with reward models and the reference policy (cached table)"),
    "rm": ("alol_ray.rm.cli", "train a reward model (regression or pairwise) on canonical rows"),
    "train": ("alol_ray.train.cli", "train a policy with an offline algorithm on the scored table"),
    "value": ("alol_ray.value.cli", "fit the value head and write advantages into the scored table"),
    "eval": ("evaluation.cli", "generate on a split, score and compute metrics"),
    "compare": ("evaluation.compare_cli", "run methods x seeds on one scored table and write a report"),
    "demo": ("evaluation.demo", "run the whole pipeline on the built-in task and print the comparison"),
    "serve-rewards": ("alol_ray.scoring.serve_cli", "serve the reward model as an autoscaled Ray Serve deployment"),
}


def _available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The shared `--config FILE` + dotted `key=value` overrides of every stage."""
    parser.add_argument("--config", "-c", help="YAML config (see configs/); defaults to the built-in task")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.lr=1e-5")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alol",
        description="alol-ray: offline RL for language models on Ray (A-LoL and baselines).",
    )
    from alol_ray import __version__

    parser.add_argument("--version", action="version", version=f"alol-ray {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        if not _available(module):
            continue
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(sp)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        from alol_ray.storage import cli_session

        with cli_session(args):  # a cloud storage URI: pull the run dir, run, push it back
            return int(importlib.import_module(args._module).run(args) or 0)
    except UserError as err:
        print(f"alol {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
