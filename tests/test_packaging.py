"""What `pip install alol-ray` puts into site-packages: one top-level package, ``alol_ray``.

The repository keeps ``baselines/`` and ``evaluation/`` at its top; they are imported, and installed, as
``alol_ray.baselines`` and ``alol_ray.evaluation`` (symlinks inside ``alol_ray/``), so alol-ray installs next to
any other package named ``baselines`` (OpenAI's, common in RL environments) or ``evaluation``. The test builds
the wheel from a copy of the checkout, installs it into a new venv that already holds a package named
``baselines``, and imports both.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def other_baselines_wheel(folder: Path) -> Path:
    """A minimal wheel of another project whose top-level package is called ``baselines``."""
    files = {"baselines/__init__.py": b'WHO = "another project"\n',
             "other_baselines-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: other-baselines\nVersion: 1.0\n",
             "other_baselines-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                    b"Tag: py3-none-any\n",
             "other_baselines-1.0.dist-info/top_level.txt": b"baselines\n"}
    record = "".join(f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
                     f"{len(data)}\n" for name, data in files.items())
    path = folder / "other_baselines-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
        wheel.writestr("other_baselines-1.0.dist-info/RECORD", record + "other_baselines-1.0.dist-info/RECORD,,\n")
    return path


def test_the_wheel_installs_one_top_level_package_beside_another_baselines(tmp_path):
    # a copy of what the wheel is built from (an in-tree build would leave build/ and *.egg-info in the checkout);
    # alol_ray/'s two symlinks are copied as symlinks, as a clone has them
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for folder in ("alol_ray", "baselines", "evaluation"):
        shutil.copytree(REPO / folder, source / folder, symlinks=True, ignore=ignore)
    for file in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / file, source / file)
    assert (source / "alol_ray" / "baselines").is_symlink()
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("alol_ray-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names if not name.startswith("alol_ray-")} == {"alol_ray"}
    for module in ("alol_ray/baselines/dpo.py", "alol_ray/baselines/ppo.py", "alol_ray/evaluation/compare.py",
                   "alol_ray/evaluation/report.py"):
        assert module in names, module

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                                str(other_baselines_wheel(tmp_path)), str(wheel)], capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr[-3000:]
    # both import, each from its own install; alol-ray's modules are the wheel's, not this checkout's
    code = ("import baselines, importlib.util, alol_ray.baselines.dpo_config as dpo, alol_ray.evaluation as ev; "
            "print(baselines.WHO); print(dpo.DPO_LOSS_TYPES); print(dpo.__file__); print(ev.__file__); "
            "print(importlib.util.find_spec('evaluation'))")
    ran = subprocess.run([str(python), "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr[-3000:]
    who, loss_types, dpo_file, eval_file, evaluation = ran.stdout.splitlines()
    assert who == "another project"
    assert loss_types == "('sigmoid', 'ipo')"
    site = str(venv / "lib")
    assert dpo_file.startswith(site) and dpo_file.endswith("alol_ray/baselines/dpo_config.py"), dpo_file
    assert eval_file.startswith(site) and eval_file.endswith("alol_ray/evaluation/__init__.py"), eval_file
    assert evaluation == "None"  # no top-level `evaluation` either
