"""Shared fixtures: the real HH data, one local Ray per test session, a tiny policy built from config."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HH_ENV = "ALOL_HH_DATA"
HH_DIR = Path(os.environ.get(HH_ENV, REPO.parent / "shared" / "data" / "hh"))

# Fault injection (alol_ray.faults): every process of the test session, Ray workers included, reads the armed
# faults from this file, so a test can arm one for Train workers started by a long-running Ray instance.
_FAULTS = Path(tempfile.mkdtemp(prefix="alol-faults-"))
(_FAULTS / "armed").write_text("")
os.environ["ALOL_FAULTS"] = f"@{_FAULTS / 'armed'}"
os.environ["ALOL_FAULTS_DIR"] = str(_FAULTS / "fired")

# Keep torch from fighting Ray workers for the 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def pytest_unconfigure(config):
    shutil.rmtree(_FAULTS, ignore_errors=True)  # one folder per session; without this /tmp fills with them


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture
def alol_log():
    """The messages logged to the ``alol`` logger (the console lines users see) during the test."""
    import logging

    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger, handler = logging.getLogger("alol"), Collect()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)
    logger.setLevel(level)


def require_gpu_extra(module: str) -> None:
    """In the gpu tier a missing dependency is a failure, not a silent skip: the tier installs them all."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        pytest.fail(f"{module} is not installed: the gpu tier needs `pip install -e '.[gpu]'`", pytrace=False)


def in_dir(folder, argv):
    """``alol <argv>`` in-process, from ``folder`` as the working directory (as a user types it there)."""
    from alol_ray.cli import main

    cwd = os.getcwd()
    os.chdir(folder)
    try:
        return main(argv)
    finally:
        os.chdir(cwd)


@contextlib.contextmanager
def armed(spec: str):
    """Arm faults (``ALOL_FAULTS`` syntax, e.g. ``train.step=3``) for the block; each fires once."""
    shutil.rmtree(_FAULTS / "fired", ignore_errors=True)
    (_FAULTS / "armed").write_text(spec)
    try:
        yield
    finally:
        (_FAULTS / "armed").write_text("")


_hh_skipped: list[str] = []


@pytest.fixture(scope="session")
def hh_dir() -> Path:
    if not (HH_DIR / "helpful_base.json").exists():
        _hh_skipped.append(str(HH_DIR))
        pytest.skip(f"HH data not found at {HH_DIR}: set {HH_ENV}=<folder with helpful_base.json, "
                    "harmless_base.json, sampled_dev.json> to run the tests on real data")
    return HH_DIR


def pytest_terminal_summary(terminalreporter):
    """Say it loudly when the real-data tests did not run."""
    if _hh_skipped:
        terminalreporter.write_sep("!", f"tests on the real HH data were SKIPPED: no data at {_hh_skipped[0]}; "
                                        f"set {HH_ENV} to run them", yellow=True)


@pytest.fixture(scope="module", autouse=True)
def _ray_shutdown_after_module():
    """A test module never inherits another module's Ray: actors it leaked would hold the CPUs a later
    Train worker group waits for (seen as a hang in a full run, never in one file)."""
    yield
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray (2 CPUs) shared by the tests of a module: start-up costs seconds."""
    import ray

    from alol_ray.ray_utils import local_ray_environment

    if not ray.is_initialized():
        local_ray_environment()  # as init_ray: workers at the driver's priority, so a busy machine starves none
        # address="local": always a fresh in-process cluster, never one a test started with `ray start`.
        ray.init(address="local", num_cpus=2, include_dashboard=False, ignore_reinit_error=True,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def alol_cli():
    """The installed `alol` command (falls back to `python -m alol_ray.cli`)."""
    exe = Path(sys.executable).parent / "alol"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "alol_ray.cli"]


@pytest.fixture(scope="session")
def builtin_rows():
    """The built-in task's canonical rows (small sizes for speed)."""
    from alol_ray.tasks import builtin

    return builtin.build_rows(seed=0, n_train=240, n_val=40, n_test=40)


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory, builtin_rows) -> str:
    """A tiny GPT-2 + tokenizer trained on the built-in task's text, saved with save_pretrained."""
    from alol_ray.models import init_tiny_policy

    out = tmp_path_factory.mktemp("tiny_policy")
    texts = list(builtin_rows["prompt"].unique()) + list(builtin_rows["response"])
    return init_tiny_policy(str(out), texts, vocab_size=512, n_layer=2, n_embd=64, n_head=2, n_positions=256, seed=0)
