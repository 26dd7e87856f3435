"""Typed config: YAML + dotted overrides, unknown keys with suggestions, every YAML in configs/ validates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from alol_ray.config import RunConfig, load_config, to_yaml
from alol_ray.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_configs_dir_is_not_empty():
    assert len(CONFIGS) >= 2


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_loads_and_validates(path):
    cfg = load_config(str(path))
    assert isinstance(cfg, RunConfig)
    header = path.read_text().splitlines()[:6]
    assert any("alol " in line for line in header if line.startswith("#")), "launch command in the header"
    # the resolved config round-trips through YAML
    again = load_config(None, [])
    assert again.name == "builtin"


def test_overrides_win_and_are_typed(tmp_path):
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text("train:\n  lr: 0.1\n  steps: 5\n")
    cfg = load_config(str(yaml_path), ["train.lr=1e-5", "data.sources.0.path=x.jsonl", "compare.methods=[nll,a_lol]"])
    assert cfg.train.lr == pytest.approx(1e-5) and cfg.train.steps == 5
    assert cfg.data.sources[0].path == "x.jsonl"
    assert cfg.compare.methods == ["nll", "a_lol"]
    text = to_yaml(cfg)
    assert "lr: 1.0e-05" in text or "lr: 1e-05" in text


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["train.lrr=1"], "did you mean 'train.lr'"),
        (["trian.lr=1"], "did you mean 'train'"),
        (["data.sources.0.pth=a"], "did you mean 'data.sources.0.path'"),
        (["model.max_prompt_token=3"], "did you mean 'model.max_prompt_tokens'"),
    ],
)
def test_unknown_override_suggests_closest(overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(None, overrides)


def test_unknown_yaml_key_names_file_and_suggests(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  stepz: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'train.stepz' \(.*bad.yaml\); did you mean 'train.steps'"):
        load_config(str(path))


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["train.lr=abc"], "train.lr"),
        (["train.batch_size=6", "train.num_workers=4"], "divisible"),
        (["model.init=pretrained"], "name_or_path"),
        (["scoring.reward_pool.min_actors=3", "scoring.reward_pool.max_actors=2"], "min_actors"),
        (["reward.components.0.kind=magic"], "kind 'magic'"),
    ],
)
def test_bad_values_are_config_errors(overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(None, overrides)


def test_cli_config_error_exits_2(tmp_path, alol_cli):
    res = subprocess.run([*alol_cli, "data", "validate", "--config", str(tmp_path / "missing.yaml")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "config file not found" in res.stderr and "Traceback" not in res.stderr


def test_alol_help_lists_landed_subcommands(alol_cli):
    res = subprocess.run([*alol_cli, "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    assert "data" in res.stdout


def test_losses_import_without_ray_or_vllm():
    code = "import alol_ray.losses, alol_ray.config, alol_ray.columns, sys; " \
           "bad = [m for m in ('ray', 'vllm') if m in sys.modules]; assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
