"""Every stage's fingerprint covers what the stage reads.

A toy run walks the stages (rows, base policy, scored table, value table, evaluation) through the pipeline with a
config whose dataclasses record every attribute read. A stage's reads are split in two: those made before it
starts to build (the pipeline asking for its inputs and computing its fingerprint: the stage's ``identity``),
and those made while it builds (``build``, the actors and jobs it starts: a config section shipped to another
process counts as read whole). A key the build reads and the fingerprint does not is a fault: changing it would
change the output and leave the stage "up to date". Runtime-only keys (``config_fields.runtime_field``: resources,
retries, logging) and where outputs go (``storage``) are exempt.

Files too: the build must not open a file of the run directory (with Python's ``open``) that its fingerprint does
not cover, other than its own staging folder, the content-addressed caches and model folders (fingerprinted by
content). That is how the evaluation used to read the scored table's reward statistics behind its fingerprint.
"""

from __future__ import annotations

import builtins
import copy
import os
from dataclasses import fields, is_dataclass

import pytest

from alol_ray import pipeline as pipeline_module
from alol_ray.config import RunConfig, load_config

TOY = [
    "name=reads", "ray.num_cpus=2", "data.builtin_train_prompts=60", "data.builtin_eval_prompts=8",
    "model.tiny.n_layer=1", "model.tiny.n_embd=32", "model.tiny.n_head=2", "model.tiny.vocab_size=300",
    "model.tiny.n_positions=96", "model.max_prompt_tokens=32", "model.max_response_tokens=16",
    "value.epochs=1", "eval.max_prompts=4", "eval.bootstrap_samples=20", "generation.max_new_tokens=4",
    "scoring.agreement_rows=0",
    # a standardised component: the value targets and the evaluation need the scored table's statistics
    "reward.components=[{name: builtin, kind: builtin_task}, {name: words, kind: length, transform: standardise, "
    "weight: 0.0}]", "reward.rescore=true",
]


class Reads:
    """Dotted config keys read while ``active``, and files of ``root`` opened."""

    def __init__(self, root: str):
        self.root, self.keys, self.files, self.active = root, set(), set(), False

    def take(self) -> tuple[set, set]:
        out = (self.keys, self.files)
        self.keys, self.files = set(), set()
        return out


def _is_node(value) -> bool:
    return is_dataclass(value) or (isinstance(value, list) and any(is_dataclass(v) for v in value))


def _leaves(obj, path: str):
    for f in fields(obj):
        value = object.__getattribute__(obj, f.name)
        if is_dataclass(value):
            yield from _leaves(value, f"{path}{f.name}.")
        elif isinstance(value, list) and any(is_dataclass(v) for v in value):
            for i, item in enumerate(value):
                yield from _leaves(item, f"{path}{f.name}.{i}.")
        else:
            yield f"{path}{f.name}"


def _plain(obj):
    """The same tree with the recording classes taken off (what a pickle of it carries)."""
    if is_dataclass(obj) and not isinstance(obj, type):
        cls = type(obj).__mro__[1] if type(obj).__name__.startswith("Recording") else type(obj)
        out = object.__new__(cls)
        for f in fields(obj):
            object.__setattr__(out, f.name, _plain(object.__getattribute__(obj, f.name)))
        return out
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj


_CLASSES: dict[type, type] = {}


def _recording_class(cls: type) -> type:
    if cls not in _CLASSES:
        names = {f.name for f in fields(cls)}

        def __getattribute__(self, name):
            value = object.__getattribute__(self, name)
            state = object.__getattribute__(self, "__dict__")
            reads = state.get("_reads")
            if reads is not None and reads.active and name in names and not _is_node(value):
                reads.keys.add(state["_path"] + name)
            return value

        def __reduce_ex__(self, protocol):  # shipped to an actor or a worker: read whole
            state = object.__getattribute__(self, "__dict__")
            reads = state.get("_reads")
            if reads is not None and reads.active:
                reads.keys.update(_leaves(self, state["_path"]))
            return copy.copy, (_plain(self),)  # unpickles as the plain config (copy.copy: any stdlib callable)

        _CLASSES[cls] = type(f"Recording{cls.__name__}", (cls,),
                             {"__getattribute__": __getattribute__, "__reduce_ex__": __reduce_ex__})
    return _CLASSES[cls]


def recording(obj, reads: Reads, path: str = ""):
    """A copy of the config tree ``obj`` whose dataclasses add every leaf key read to ``reads``."""
    if is_dataclass(obj):
        out = object.__new__(_recording_class(type(obj)))
        for f in fields(obj):
            value = getattr(obj, f.name)
            if is_dataclass(value):
                value = recording(value, reads, f"{path}{f.name}.")
            elif isinstance(value, list) and any(is_dataclass(v) for v in value):
                value = [recording(v, reads, f"{path}{f.name}.{i}.") for i, v in enumerate(value)]
            object.__setattr__(out, f.name, value)
        out.__dict__.update(_reads=reads, _path=path)
        return out
    return obj


def exempt(key: str) -> bool:
    """A runtime-only key, or where outputs go."""
    node: type = RunConfig
    for part in key.split("."):
        if part.isdigit():
            continue
        f = {f.name: f for f in fields(node)}[part]
        if f.metadata.get("runtime") or f.metadata.get("path") in ("storage", "output"):
            return True
        default = f.default_factory() if callable(f.default_factory) else f.default
        if isinstance(default, list) and default and is_dataclass(default[0]):
            default = default[0]
        if not is_dataclass(default):
            return False
        node = type(default)
    return False


@pytest.fixture(scope="module")
def walked(tmp_path_factory, ray_local, tiny_policy_dir):
    """{stage name: (keys its fingerprint read, keys its build read, run files its build opened)}."""
    root = tmp_path_factory.mktemp("reads")
    cfg = load_config(None, [*TOY, f"storage={root}", f"reference.path={tiny_policy_dir}"])
    reads = Reads(str(root))
    walk: dict[str, tuple[set, set, set]] = {}
    real_run_stage, real_open = pipeline_module.run_stage, builtins.open

    def run_stage(name, folder, fp, build, **kwargs):
        identity, _ = reads.take()

        def recorded(staging):
            reads.take()
            try:
                return build(staging)
            finally:
                keys, files = reads.take()
                cache = os.path.join(str(root), cfg.name, "cache")
                files = {f for f in files if not f.startswith((os.path.abspath(staging), cache))
                         and not os.path.isfile(os.path.join(os.path.dirname(f), "config.json"))}
                walk[name] = (identity, keys, files)

        return real_run_stage(name, folder, fp, recorded, **kwargs)

    def recording_open(file, *args, **kwargs):
        if reads.active and isinstance(file, (str, os.PathLike)):
            path = os.path.abspath(os.fspath(file))
            if path.startswith(reads.root + os.sep):
                reads.files.add(path)
        return real_open(file, *args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(pipeline_module, "run_stage", run_stage)
    mp.setattr(builtins, "open", recording_open)
    try:
        p = pipeline_module.Pipeline(cfg)
        p.cfg = recording(cfg, reads)
        reads.active = True
        for make in (p.rows, p.base_policy, p.scored, p.value, lambda: p.evaluate("reference", 0)):
            reads.take()
            make()
    finally:
        reads.active = False
        mp.undo()
    return walk


STAGES = ["rows", "base policy", "scored", "value", "eval reference-s0"]


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_reads_no_config_key_its_fingerprint_leaves_out(walked, stage):
    identity, build, _ = walked[stage]
    assert build, f"{stage}: no reads recorded (the recorder is broken)"
    missing = sorted(k for k in build - identity if not exempt(k))
    assert not missing, f"{stage} reads {missing}, which its fingerprint leaves out"


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_reads_no_run_file_its_fingerprint_leaves_out(walked, stage):
    _, _, files = walked[stage]
    assert not files, f"{stage} opens {sorted(files)} behind its fingerprint"
