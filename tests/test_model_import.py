"""`alol model import` and a GGUF `model.name_or_path`: what goes wrong is one line (exit 2) before any work. The
import itself, on the real SmolLM2 file from PyPI, is tests/test_smollm2.py (e2e)."""

from __future__ import annotations

import sys
import zipfile

from conftest import in_dir

from alol_ray.config import load_config
from alol_ray.errors import ConfigError


def first_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_a_missing_file_is_one_line(tmp_path, capsys):
    assert in_dir(tmp_path, ["model", "import", "models/smollm2.gguf"]) == 2
    assert "SRC: no such file: models/smollm2.gguf" in first_error_line(capsys)
    try:
        load_config(None, ["model.init=pretrained", "model.name_or_path=models/smollm2.gguf"], cwd=str(tmp_path))
    except ConfigError as err:
        assert "model.name_or_path: 'models/smollm2.gguf' is not a file or folder" in str(err)
    else:
        raise AssertionError("a missing .gguf file passed the config")


def test_the_gguf_package_missing_names_the_extra(tmp_path, capsys, monkeypatch):
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "gguf", None)  # what Python does for a package that is not installed
    assert in_dir(tmp_path, ["model", "import", "model.gguf"]) == 2
    line = first_error_line(capsys)
    assert "needs the gguf package: pip install 'alol-ray[gguf]'" in line and "model.gguf" in line, line


def test_a_wheel_without_a_gguf_file_is_one_line(tmp_path, capsys):
    with zipfile.ZipFile(tmp_path / "other-0.1-py3-none-any.whl", "w") as zf:
        zf.writestr("other/__init__.py", "")
    assert in_dir(tmp_path, ["model", "import", "other-0.1-py3-none-any.whl"]) == 2
    assert "expected one .gguf file inside, found 0" in first_error_line(capsys)
    (tmp_path / "broken.whl").write_bytes(b"not a zip")
    assert in_dir(tmp_path, ["model", "import", "broken.whl"]) == 2
    assert "not a wheel or zip file" in first_error_line(capsys)


def test_a_file_that_is_not_gguf_is_one_line(tmp_path, capsys):
    (tmp_path / "model.gguf").write_bytes(b"not a gguf file at all")
    assert in_dir(tmp_path, ["model", "import", "model.gguf"]) == 2
    assert "transformers could not read this GGUF file" in first_error_line(capsys)
