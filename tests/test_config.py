"""Typed config: YAML + dotted overrides, unknown and moved keys with suggestions, values checked at load,
every YAML in configs/ validates and round-trips, paths resolved against the working directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from alol_ray.config import RunConfig, load_config, non_defaults
from alol_ray.config_loading import save_config, to_yaml
from alol_ray.config_paths import looks_local, path_fields, portable, resolve_paths
from alol_ray.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_configs_dir_is_not_empty():
    assert len(CONFIGS) >= 2


def _placeholders(cfg, root: Path) -> None:
    """Create, under ``root``, every local file or folder a config's path fields name (hub ids stay)."""
    for _, owner, name, kind, keywords in path_fields(cfg):
        value = getattr(owner, name)
        if not value or value in keywords or kind in ("storage", "output") or not looks_local(value):
            continue
        target = root / value
        if target.suffix:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("[]")
        else:
            target.mkdir(parents=True, exist_ok=True)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_loads_validates_and_round_trips(path, tmp_path):
    cfg = load_config(str(path), resolve=False)
    assert isinstance(cfg, RunConfig)
    header = path.read_text().splitlines()[:6]
    assert any("alol " in line for line in header if line.startswith("#")), "launch command in the header"
    # Saved and loaded back: the same config, field for field.
    saved = tmp_path / "saved.yaml"
    save_config(cfg, str(saved))
    assert load_config(str(saved), resolve=False) == cfg
    # From a working directory that has its data and model folders, every local path resolves to there.
    _placeholders(cfg, tmp_path)
    resolved = load_config(str(path), cwd=str(tmp_path))
    for key, owner, name, kind, keywords in path_fields(resolved):
        value = getattr(owner, name)
        if value and value not in keywords and (kind in ("storage", "output") or looks_local(value)):
            assert value.startswith(str(tmp_path)), (key, value)


def test_overrides_win_and_are_typed(tmp_path):
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text("train:\n  lr: 0.1\n  steps: 5\n")
    (tmp_path / "x.jsonl").write_text("")
    cfg = load_config(str(yaml_path), ["train.lr=1e-5", "data.sources.0.path=x.jsonl", "compare.methods=[nll,a_lol]"],
                      cwd=str(tmp_path))
    assert cfg.train.lr == pytest.approx(1e-5) and cfg.train.steps == 5
    assert cfg.data.sources[0].path == str(tmp_path / "x.jsonl")
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


@pytest.mark.parametrize("key,new", [("train.dpo_beta", "train.dpo.beta"), ("train.clip_eps", "train.alol.clip_eps"),
                                     ("reference.train.kl_beta", "reference.train.alol.kl_beta"),
                                     ("train.pro_sft_weight", "train.pro.sft_weight")])
def test_moved_keys_name_their_new_place(key, new):
    with pytest.raises(ConfigError, match=f"'{key}' .* moved to '{new}'"):
        load_config(None, [f"{key}=0.5"])


def test_test_hooks_are_not_config():
    for key in ("train.crash_at_step", "train.stop_at_step"):
        with pytest.raises(ConfigError, match="was removed"):
            load_config(None, [f"{key}=3"])


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
        # each of these used to pass the config and fail minutes later inside a Ray worker
        (["train.alol.clip_eps=-1"], "train.alol.clip_eps must be >= 0"),
        (["train.lr=-1"], "train.lr must be > 0"),
        (["train.lr=.nan"], "train.lr must be > 0"),
        (["train.lr=.inf"], "train.lr must be a finite number"),
        (["train.dpo.beta=-1"], "train.dpo.beta must be > 0"),
        (["model.max_prompt_tokens=-1"], "model.max_prompt_tokens must be >= 1"),
        (["train.num_workers=0"], "train.num_workers must be >= 1"),
        (["data.sources=[]"], "data.sources is empty"),
        (["value.max_value=.nan"], "value.max_value"),
        (["train.gold.reward=q"], "train.gold.reward must be one of"),
        (["name=a/b"], "plain folder name"),
        (["reward.train_transform=sigmoid"], "reward.components.0.transform=sigmoid"),
    ],
)
def test_bad_values_are_config_errors(overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(None, overrides)


def test_relative_paths_resolve_against_the_working_directory(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "rows.jsonl").write_text("")
    (tmp_path / "pi").mkdir()
    cfg = load_config(None, ["storage=runs", "data.sources.0.path=data/rows.jsonl", "data.sources.0.format=rows",
                             "reference.path=pi", "model.init=pretrained", "model.name_or_path=EleutherAI/pythia-1b"],
                      cwd=str(tmp_path))
    assert cfg.storage == str(tmp_path / "runs")
    assert cfg.data.sources[0].path == str(tmp_path / "data" / "rows.jsonl")
    assert cfg.reference.path == str(tmp_path / "pi")
    assert cfg.model.name_or_path == "EleutherAI/pythia-1b"  # a hub id stays one
    with pytest.raises(ConfigError, match=r"reference.path: 'runs/x/base' is not a file or folder .*" + str(tmp_path)):
        load_config(None, ["reference.path=runs/x/base"], cwd=str(tmp_path))
    with pytest.raises(ConfigError, match="data.sources.0.path: 'missing.jsonl' is not a file"):
        load_config(None, ["data.sources.0.path=missing.jsonl", "data.sources.0.format=rows"], cwd=str(tmp_path))


def test_relative_storage_in_a_ray_job_goes_to_a_stable_place(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")  # what Ray sets for a job's driver
    monkeypatch.setenv("ALOL_JOB_STORAGE", str(tmp_path / "jobs"))
    cfg = load_config(None, ["storage=runs"], resolve=False)
    notes = resolve_paths(cfg, str(tmp_path / "_ray_pkg_abc"))
    assert cfg.storage == str(tmp_path / "jobs" / "runs")
    assert "Ray deletes" in notes[0]
    cfg = load_config(None, [f"storage={tmp_path / 'abs'}"])
    assert cfg.storage == str(tmp_path / "abs")


def test_report_config_shows_only_what_differs_and_no_machine_paths(tmp_path):
    cfg = load_config(None, ["train.lr=0.01", "storage=runs"], cwd=str(tmp_path))
    shown = non_defaults(portable(cfg, str(tmp_path)))
    assert shown == {"train": {"lr": 0.01}}
    cfg = load_config(None, ["storage=elsewhere"], cwd=str(tmp_path))
    assert non_defaults(portable(cfg, str(tmp_path))) == {"storage": "elsewhere"}


def test_cli_config_error_exits_2(tmp_path, alol_cli):
    res = subprocess.run([*alol_cli, "data", "validate", "--config", str(tmp_path / "missing.yaml")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "config file not found" in res.stderr and "Traceback" not in res.stderr


def test_alol_help_lists_the_subcommands(alol_cli):
    res = subprocess.run([*alol_cli, "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    for name in ("data", "score", "train", "value", "eval", "compare", "demo", "rm", "serve-rewards"):
        assert name in res.stdout


def test_losses_import_without_ray_or_vllm():
    code = "import alol_ray.losses, alol_ray.config, alol_ray.columns, sys; " \
           "bad = [m for m in ('ray', 'vllm') if m in sys.modules]; assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=os.path.dirname(__file__))


# -- every declared choice and bound is enforced, with one kind of message (alol_ray/config_fields.py) ---------------


def declared_fields():
    """(section, override key, field name, choices, bounds, whether an int) of every field of the run's schema that
    declares choices (its Literal type) or bounds, list sections through their first item (data.sources.0)."""
    from dataclasses import fields, is_dataclass
    from typing import Optional

    from alol_ray.config_fields import choices_of, type_hints

    found = []

    def walk(node, prefix):
        hints = type_hints(type(node))
        for f in fields(node):
            value, key = getattr(node, f.name), f"{prefix}{f.name}"
            if is_dataclass(value):
                walk(value, f"{key}.")
            elif isinstance(value, list) and value and is_dataclass(value[0]):
                walk(value[0], f"{key}.0.")
            elif choices_of(hints[f.name]) or "bounds" in f.metadata:
                integer = hints[f.name] in (int, Optional[int])
                found.append((node, key, f.name, choices_of(hints[f.name]), f.metadata.get("bounds"), integer))

    walk(RunConfig(), "")
    return found


def outside(bounds, integer: bool):
    """A value just outside the bounds (ge, gt, le, lt)."""
    ge, gt, le, lt = bounds
    step = 1 if integer else 0.5
    return ge - step if ge is not None else gt if gt is not None else le + step if le is not None else lt


def test_every_declared_choice_and_bound_is_enforced_with_a_message_naming_the_key():
    """A section that forgot check_fields, or a bound declared and not checked, fails here; so does a message that
    does not name the field, what it accepts and what it got, or a Literal field whose key load_config cannot find
    (it words OmegaConf's refusal of a YAML or override value through the same key)."""
    from dataclasses import replace

    from alol_ray.config_fields import choices_at, describe

    declared = declared_fields()
    assert len([d for d in declared if d[3]]) >= 20 and len([d for d in declared if d[4]]) >= 80, len(declared)
    for section, key, name, choices, bounds, integer in declared:
        if choices:
            with pytest.raises(ConfigError) as err:
                replace(section, **{name: "no_such_choice"})
            assert f"{name} must be one of {list(choices)}, got 'no_such_choice'" in str(err.value), (key, err.value)
            assert choices_at(RunConfig, key) == choices, key
        if bounds:
            bad = outside(bounds, integer)
            with pytest.raises(ConfigError) as err:
                replace(section, **{name: bad})
            assert f"{name} must be {describe(bounds)}" in str(err.value) and f"got {bad}" in str(err.value), (
                key, str(err.value))


def test_a_section_built_in_python_is_checked_as_a_loaded_one():
    from alol_ray.config import GenerationConfig, TrainConfig

    with pytest.raises(ConfigError, match=r"train.sampler must be one of \[.*\], got 'good_prio'; did you mean "
                                          r"'good_priority'\?"):
        TrainConfig(sampler="good_prio")
    with pytest.raises(ConfigError, match=r"train.sampler must be one of \[.*\], got 'good_prio'; did you mean"):
        load_config(None, ["train.sampler=good_prio"])
    with pytest.raises(ConfigError, match=r"data.sources\[0\].format must be one of \[.*'rows'.*\], got 'jsnl'"):
        load_config(None, ["data.sources.0.format=jsnl"])
    with pytest.raises(ConfigError, match=r"generation.top_p must be in \(0, 1\], got 0"):
        GenerationConfig(top_p=0)
    with pytest.raises(ConfigError, match=r"value.max_prompts must be >= 2 \(or null\), got 1"):
        load_config(None, ["value.max_prompts=1"])
    assert load_config(None, ["value.max_prompts=null"]).value.max_prompts is None
