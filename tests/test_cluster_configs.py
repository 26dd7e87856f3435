"""cluster/: the launcher YAMLs, KubeRay manifests, runtime_env, Dockerfile and README parse, stay secure by
default, and provide what the configs in configs/ ask Ray for (GPUs per training worker, scorer GPUs, ...).
The entrypoints they name are real `alol` subcommands with real config files."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from alol_ray.cli import COMMANDS
from alol_ray.config import load_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
LAUNCHERS = ["aws.yaml", "gcp.yaml"]
STANDARD_RESOURCES = {"CPU", "GPU", "memory", "object_store_memory"}
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def load(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def test_every_cluster_yaml_parses():
    files = sorted(CLUSTER.rglob("*.yaml"))
    assert {f.name for f in files} >= {"aws.yaml", "gcp.yaml", "runtime_env.yaml", "raycluster.yaml", "rayjob.yaml"}
    for f in files:
        assert load(f), f"{f} is empty"


def _alol_commands(text: str) -> list[list[str]]:
    """Every `alol ...` command line in a text (shell-split, up to a shell operator or quote end)."""
    found = []
    for m in re.finditer(r"(?<![\w/.-])alol\s+([^\n\"'`&;|\\#]*)", text):
        found.append(shlex.split(m.group(1)))
    return found


def _check_alol_command(words: list[str], where: str) -> None:
    assert words and words[0] in COMMANDS, f"{where}: `alol {' '.join(words)}` is not a subcommand of {sorted(COMMANDS)}"
    if "--config" in words:
        path = words[words.index("--config") + 1]
        assert (REPO / path).exists(), f"{where}: config file {path} does not exist"


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_config_is_complete_and_secure(name):
    (cfg,) = load(CLUSTER / name)
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types and cfg["provider"]["type"] in ("aws", "gcp")
    assert cfg["cluster_name"] and cfg["max_workers"] >= 1
    for tname, t in types.items():
        if tname != cfg["head_node_type"]:
            assert 0 <= t["min_workers"] <= t["max_workers"], tname  # autoscaling range
            assert t["min_workers"] == 0, f"{tname}: idle GPU workers should scale to zero"
        # The code asks Ray for CPUs and GPUs only: a custom resource here would never be requested.
        assert set(t["resources"]) <= STANDARD_RESOURCES, f"{tname}: custom resources {t['resources']}"
    gpu_types = [t for t in types.values() if t["resources"].get("GPU", 0) >= 1]
    assert len(gpu_types) >= 2, "a GPU type for training/generation and a small-GPU type for reward scoring"
    assert types[cfg["head_node_type"]]["resources"].get("GPU", 0) == 0, "no GPU work on the head"

    head_start = " ".join(cfg["head_start_ray_commands"])
    worker_start = " ".join(cfg["worker_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start  # the dashboard/Jobs API stays on the head's localhost
    assert "RAY_AUTH_MODE=token" in head_start and "RAY_AUTH_MODE=token" in worker_start
    assert cfg["file_mounts"].get("~/.ray/auth_token"), "the token must reach every node"
    assert any(".venv" in x for x in cfg["rsync_exclude"]) and any("runs" in x for x in cfg["rsync_exclude"])
    import ray

    assert ray.__version__ in cfg["docker"]["image"], "the image's Ray must match the Ray the code is tested with"
    assert any(f"ray[default,data,train,serve]=={ray.__version__}" in c for c in cfg["setup_commands"])
    for line in (CLUSTER / name).read_text().splitlines():
        if line.lstrip().startswith("#"):
            for words in _alol_commands(line):
                _check_alol_command(words, name)


@pytest.mark.parametrize("config_path", CONFIGS, ids=[p.name for p in CONFIGS])
@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_node_types_fit_what_each_config_asks_for(name, config_path):
    """Every resource request the config makes fits on some worker type, and the GPU workers can hold
    train.num_workers training workers at once."""
    (cluster,) = load(CLUSTER / name)
    run = load_config(str(config_path), resolve=False)
    nodes = [t for n, t in cluster["available_node_types"].items() if n != cluster["head_node_type"]]

    def fits(cpus: float, gpus: float) -> list[dict]:
        return [t for t in nodes if t["resources"].get("CPU", 0) >= cpus and t["resources"].get("GPU", 0) >= gpus]

    tc = run.train
    worker = fits(tc.cpus_per_worker, 1 if tc.use_gpu else 0)
    assert worker, f"no worker type fits a training worker of {config_path.name}"
    if tc.use_gpu:
        capacity = sum(t["max_workers"] * int(t["resources"]["GPU"]) for t in worker)
        assert capacity >= tc.num_workers * run.compare.max_concurrent
    for pool in (run.scoring.reward_pool, run.scoring.reference_pool):
        assert fits(pool.num_cpus, pool.num_gpus), f"{config_path.name}: a scoring actor does not fit"
    gen = run.generation
    assert fits(gen.cpus_per_engine, gen.gpus_per_engine * gen.tensor_parallel_size), "a generation engine does not fit"
    assert fits(run.serve.num_cpus, run.serve.num_gpus), "a Serve replica does not fit"


def _kuberay_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_manifests_autoscale_with_token_auth(name):
    import ray

    (doc,) = load(CLUSTER / "kuberay" / name)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] in ("RayCluster", "RayJob")
    spec = _kuberay_spec(doc)
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"]["mode"] == "token"
    assert spec["rayVersion"] == ray.__version__
    assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP", "never a public dashboard"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    gpu_groups = []
    for g in groups.values():
        assert 0 == g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
        assert "resources" not in g["rayStartParams"], "no custom resources: the code never asks for them"
        (container,) = g["template"]["spec"]["containers"]
        limits = container["resources"]["limits"]
        if int(limits.get("nvidia.com/gpu", 0)) >= 1:
            gpu_groups.append(g["groupName"])
    assert len(gpu_groups) >= 2, "GPU workers for training and small-GPU workers for reward scoring"
    # Every pod mounts the shared run storage the entrypoint's storage= points into.
    claims = {v["persistentVolumeClaim"]["claimName"] for g in [spec["headGroupSpec"], *groups.values()]
              for v in g["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v}
    (pvc,) = load(CLUSTER / "kuberay" / "runs-pvc.yaml")
    assert claims == {pvc["metadata"]["name"]} and "ReadWriteMany" in pvc["spec"]["accessModes"]


def test_rayjob_matches_the_raycluster_and_runs_a_real_stage():
    (job,) = load(CLUSTER / "kuberay" / "rayjob.yaml")
    (cluster,) = load(CLUSTER / "kuberay" / "raycluster.yaml")
    assert job["spec"]["rayClusterSpec"] == cluster["spec"], "the two manifests describe the same cluster"
    commands = _alol_commands(job["spec"]["entrypoint"])
    assert commands
    for words in commands:
        _check_alol_command(words, "rayjob.yaml entrypoint")
    storage = [w for w in commands[0] if w.startswith("storage=")]
    mounts = {m["mountPath"] for m in cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert storage and any(storage[0].split("=", 1)[1].startswith(m) for m in mounts), "storage must be on the shared volume"


def test_runtime_env_is_valid_and_ships_only_the_code():
    from ray.runtime_env import RuntimeEnv

    (env,) = load(CLUSTER / "runtime_env.yaml")
    RuntimeEnv(**env)  # Ray's own validation of the fields
    assert env["working_dir"] == "."
    for pattern in ("runs/", ".venv/", ".git/"):
        assert pattern in env["excludes"], pattern
    assert all(isinstance(v, str) for v in env.get("env_vars", {}).values())


def test_dockerfile_copies_existing_folders_and_installs_alol():
    import ray

    text = (CLUSTER / "Dockerfile").read_text()
    assert f"rayproject/ray:{ray.__version__}" in text
    for m in re.finditer(r"^COPY\s+(?:--\S+\s+)*(.+)\s+\S+$", text, re.M):
        for src in m.group(1).split():
            assert (REPO / src).exists(), f"Dockerfile copies {src}, which does not exist"
    assert ".venv" not in text.replace("never .venv", "")
    assert "alol --help" in text


def test_readme_names_real_commands_configs_and_files():
    text = (CLUSTER / "README.md").read_text()
    commands = _alol_commands(text)
    assert {c[0] for c in commands} >= {"compare", "serve-rewards"}
    for words in commands:
        _check_alol_command(words, "cluster/README.md")
    for path in set(re.findall(r"\b((?:cluster|configs)/[\w./-]+\.(?:yaml|md|py)|cluster/Dockerfile)\b", text)):
        assert (REPO / path).exists(), f"cluster/README.md names {path}, which does not exist"
    for topic in ("RAY_AUTH_MODE=token", "TLS", "RAY_USE_TLS", "127.0.0.1", "trust_remote_code", "safetensors"):
        assert topic in text, f"cluster/README.md does not cover {topic}"


@pytest.mark.parametrize("config_path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_header_has_a_real_launch_command(config_path):
    header = []
    for line in config_path.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    commands = _alol_commands("\n".join(header))
    assert commands, f"{config_path.name}: no launch command in the header"
    for words in commands:
        _check_alol_command(words, config_path.name)
