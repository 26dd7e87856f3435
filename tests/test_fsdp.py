"""The sharded strategy (train.strategy=fsdp) against the replicated one (ddp), on CPU with gloo.

Default tier: two processes (torch.multiprocessing, no Ray: the strategies are plain torch) train a tiny Llama
from the same start on the same global batches with the real nll and a_lol losses, once under DDP and once
under ``Sharded``; the mean loss at every step and the final weights must agree (FSDP reduce-scatters the same
average DDP all-reduces; only float summation order differs, ~1e-7 here). A deliberately wrong sharding -- one
decoder layer's unit never reduce-scatters its gradient -- must fail the same comparison, so the comparison
can tell. Gradient checkpointing on and off must give equal losses and gradients (1e-6) under both strategies.

e2e tier (tests marked e2e below): the same through Ray Train and ``alol train`` (two workers), sharded
checkpoints, resume after --stop-at-step and after a killed worker, ``best/`` loadable by transformers.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest
import torch

from alol_ray.losses import LossInputs, LossParams, get_loss

from test_bucket_storage import BUCKET, bucket_files, read_object, read_object_bytes, s3  # noqa: F401  (s3: moto's S3 server fixture)

WORLD = 2
STEPS = 3
LOCAL_BATCH = 2
SEQ = 12
VOCAB = 96
TOLERANCE = 1e-5  # per-step mean loss (relative) and final weights (absolute); AdamW moves weights ~1e-2 per step


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32))


def batches(rank: int):
    """This rank's slice of each step's global batch: ids, per-token reference log-probs, advantages."""
    g = torch.Generator().manual_seed(7)
    for _ in range(STEPS):
        ids = torch.randint(0, VOCAB, (WORLD * LOCAL_BATCH, SEQ), generator=g)
        ref = -4.0 - torch.rand(WORLD * LOCAL_BATCH, SEQ - 1, generator=g)
        adv = torch.rand(WORLD * LOCAL_BATCH, generator=g) - 0.2
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        yield ids[rows], ref[rows], adv[rows]


def method_loss(model, loss_name: str, ids, ref, adv):
    logits = model(input_ids=ids).logits[:, :-1].float()
    logps = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    inputs = LossInputs(logps=logps, mask=torch.ones_like(logps), ref_logps=ref, advantage=adv)
    return get_loss(loss_name)(inputs, LossParams())[0]


class SkipsOneLayersReduction:
    """A wrong sharding: layer 0's unit never reduce-scatters, so its shards get no averaged gradient."""

    @staticmethod
    def wrap(strategy, model, device):
        wrapped = strategy.wrap(model, device)
        strategy.units[0].set_requires_gradient_sync(False)
        return wrapped


def _train_one(how: str, loss_name: str, checkpointing: bool, rank: int, lora: bool = False) -> dict:
    """One run: per-step mean losses and grad norms, the first step's full gradients, the final full weights."""
    import torch.distributed as dist

    from alol_ray.train.fsdp import Sharded
    from alol_ray.train.memory import checkpoint_activations, precision_policy

    device = torch.device("cpu")
    model = tiny_llama()
    attention_calls = []  # layer 0's attention runs once per forward, and again in backward when recomputed
    model.model.layers[0].self_attn.register_forward_hook(lambda *_: attention_calls.append(1))
    if lora:  # adapters on every linear layer of the decoder layers, the base frozen (build_policy's way)
        import peft

        from alol_ray.families import lora_target_modules

        model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=lora_target_modules(model),
                                                           task_type="CAUSAL_LM", init_lora_weights="gaussian"))
    if how == "ddp":  # what Replicated.wrap gets from ray.train.torch.prepare_model on CPU
        if checkpointing:
            checkpoint_activations(model)
        model = torch.nn.parallel.DistributedDataParallel(model)
        clip = lambda params: float(torch.nn.utils.clip_grad_norm_(params, 1.0))  # noqa: E731
    else:
        strategy = Sharded(WORLD, precision_policy("fp32", on_gpu=False), gradient_checkpointing=checkpointing)
        model = SkipsOneLayersReduction.wrap(strategy, model, device) if how == "wrong" else strategy.wrap(model, device)
        clip = lambda params: strategy.clip_grad_norm(model, params, 1.0)  # noqa: E731
    names = [n.removeprefix("module.") for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    losses, grad_norms, first_grads = [], [], None
    for ids, ref, adv in batches(rank):
        loss = method_loss(model, loss_name, ids, ref, adv)
        loss.backward()
        if first_grads is None:  # sharded gradients are DTensors: gathered whole for the comparison
            first_grads = {n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).clone()
                           for n, p in zip(names, params) if p.grad is not None}
        grad_norms.append(clip(params))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(float(mean) / WORLD)
    if how == "ddp":
        weights = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
    else:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {"losses": losses, "grad_norms": grad_norms, "grads": first_grads, "weights": weights,
            "attention_calls": len(attention_calls)}


def _train_all(rank: int, port: int, runs: list[tuple], out: str) -> None:
    """Every run, one after the other, in one process group (the processes start once: they cost seconds each)."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    results = {key: _train_one(*key[:3], rank, lora=key[3:] == ("lora",)) for key in runs}
    if rank == 0:
        torch.save(results, out)
    dist.destroy_process_group()


RUNS = [("ddp", "nll", False), ("fsdp", "nll", False), ("wrong", "nll", False), ("ddp", "a_lol", False),
        ("fsdp", "a_lol", False), ("ddp", "nll", True), ("fsdp", "nll", True), ("ddp", "a_lol", False, "lora"),
        ("fsdp", "a_lol", False, "lora")]


def differences(a: dict, b: dict) -> tuple[float, float]:
    """(largest relative difference of the per-step losses, largest absolute difference of the weights)."""
    loss = max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a["losses"], b["losses"], strict=True))
    assert a["weights"].keys() == b["weights"].keys()
    weights = max(float((a["weights"][k] - b["weights"][k]).abs().max()) for k in a["weights"])
    return loss, weights


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    import torch.multiprocessing as mp

    with socket.socket() as s:  # a free port for the process group
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path_factory.mktemp("fsdp") / "runs.pt")
    mp.spawn(_train_all, args=(port, RUNS, out), nprocs=WORLD)
    return torch.load(out)


@pytest.mark.parametrize("loss_name", ["nll", "a_lol"])
def test_sharded_steps_equal_replicated_steps(runs, loss_name):
    """Same loss at every step, same grad norm, same final weights (within 1e-5), while the weights moved
    by far more than that."""
    ddp, fsdp = runs[("ddp", loss_name, False)], runs[("fsdp", loss_name, False)]
    loss_diff, weight_diff = differences(ddp, fsdp)
    assert loss_diff < TOLERANCE and weight_diff < TOLERANCE, (loss_diff, weight_diff)
    assert fsdp["grad_norms"] == pytest.approx(ddp["grad_norms"], rel=TOLERANCE)
    start = tiny_llama().state_dict()
    assert max(float((ddp["weights"][k] - start[k]).abs().max()) for k in start) > 1e-2


def test_lora_composes_with_sharding(runs):
    """LoRA adapters on the sharded layers: the same steps as under DDP; only the adapters moved."""
    ddp, fsdp = runs[("ddp", "a_lol", False, "lora")], runs[("fsdp", "a_lol", False, "lora")]
    loss_diff, weight_diff = differences(ddp, fsdp)
    assert loss_diff < TOLERANCE and weight_diff < TOLERANCE, (loss_diff, weight_diff)
    start = {f"base_model.model.{k}".replace(".weight", ".base_layer.weight") if "proj" in k else f"base_model.model.{k}": v
             for k, v in tiny_llama().state_dict().items()}
    assert set(start) <= set(fsdp["weights"])  # every base weight is compared
    moved = {k for k in start if not torch.equal(fsdp["weights"][k], start[k])}
    assert not moved, moved
    assert any("lora_" in k for k in fsdp["grads"]) and all("lora_" in k for k in fsdp["grads"])


def test_a_sharding_that_skips_a_layers_reduction_fails_the_comparison(runs):
    """The comparison above can tell: with layer 0's gradient never reduce-scattered the weights drift apart
    by orders of magnitude more than the tolerance (the losses of later steps too)."""
    loss_diff, weight_diff = differences(runs[("ddp", "nll", False)], runs[("wrong", "nll", False)])
    assert weight_diff > 100 * TOLERANCE, weight_diff
    assert loss_diff > TOLERANCE, loss_diff


@pytest.mark.parametrize("how", ["ddp", "fsdp"])
def test_gradient_checkpointing_changes_neither_losses_nor_gradients(runs, how):
    """Recomputing each decoder layer's activations in backward gives the same loss at every step and the same
    gradients (every parameter's, at step 1) within 1e-6."""
    off, on = runs[(how, "nll", False)], runs[(how, "nll", True)]
    assert (off["attention_calls"], on["attention_calls"]) == (STEPS, 2 * STEPS)  # it did recompute
    assert on["losses"] == pytest.approx(off["losses"], rel=1e-6, abs=0)
    assert on["grads"].keys() == off["grads"].keys() and len(on["grads"]) == len(list(tiny_llama().parameters()))
    assert max(float((on["grads"][k] - off["grads"][k]).abs().max()) for k in on["grads"]) < 1e-6



def test_precision_policies_state_their_dtypes_and_bf16_autocast_runs_on_cpu():
    """params / compute / reduce dtypes per policy; auto is bf16-mixed on GPU only; under bf16-mixed the
    replicated strategy's forward computes in bf16 on CPU while the weights stay fp32."""
    from alol_ray.config import TrainConfig
    from alol_ray.train.memory import precision_policy
    from alol_ray.train.strategy import make_strategy

    f32, bf16 = torch.float32, torch.bfloat16
    table = {name: (p.params, p.compute, p.reduce) for name in ("fp32", "bf16-mixed", "bf16")
             for p in [precision_policy(name, on_gpu=False)]}
    assert table == {"fp32": (None, f32, f32), "bf16-mixed": (None, bf16, f32), "bf16": (bf16, bf16, bf16)}
    assert precision_policy("auto", on_gpu=True).name == "bf16-mixed"
    assert precision_policy("auto", on_gpu=True, bf16_on_gpu=False).name == "fp32"
    assert precision_policy("auto", on_gpu=False).name == "fp32"
    strategy = make_strategy(TrainConfig(precision="bf16-mixed"), 1)
    layer = torch.nn.Linear(8, 8)
    with strategy.autocast(torch.device("cpu")):
        out = layer(torch.randn(2, 8))
    assert out.dtype == bf16 and layer.weight.dtype == f32
    with make_strategy(TrainConfig(precision="fp32"), 1).autocast(torch.device("cpu")):
        assert layer(torch.randn(2, 8)).dtype == f32


def test_strategy_keys_are_checked_and_fsdp_refuses_4bit_weights():
    from alol_ray.config import TrainConfig, load_config
    from alol_ray.errors import ConfigError
    from alol_ray.train.fsdp import Sharded
    from alol_ray.train.strategy import Replicated, make_strategy

    with pytest.raises(ConfigError, match=r"train.strategy must be one of \['ddp', 'fsdp'\], got 'zero3'"):
        TrainConfig(strategy="zero3")
    with pytest.raises(ConfigError, match="train.precision must be"):
        TrainConfig(precision="fp16")
    assert isinstance(make_strategy(TrainConfig(strategy="fsdp"), 2), Sharded)
    assert isinstance(make_strategy(TrainConfig(), 2), Replicated)
    with pytest.raises(ConfigError, match="cannot shard 4-bit"):
        make_strategy(TrainConfig(strategy="fsdp"), 2, load_in_4bit=True)
    with pytest.raises(ConfigError, match="cannot shard 4-bit"):  # before any work, from the config alone
        load_config(None, ["train.strategy=fsdp", "model.lora.enabled=true", "model.lora.load_in_4bit=true"])


def test_strategy_and_precision_enter_the_training_fingerprint_but_checkpointing_does_not():
    """A run resumes with gradient checkpointing switched on (same results); another strategy or precision is
    another run (another checkpoint layout, other numbers)."""
    from alol_ray.config import TrainConfig
    from alol_ray.hashing import fingerprint
    from alol_ray.train.trainer import shared_settings

    base = fingerprint(shared_settings(TrainConfig()))
    assert fingerprint(shared_settings(TrainConfig(gradient_checkpointing=True))) == base
    assert fingerprint(shared_settings(TrainConfig(strategy="fsdp"))) != base
    assert fingerprint(shared_settings(TrainConfig(precision="bf16"))) != base


# ------------------------------------------------------------------ e2e: through Ray Train and `alol train`


@pytest.fixture(scope="module")
def train_setup(ray_local, tmp_path_factory, builtin_rows, tiny_policy_dir):
    """test_train.py's scored table and tiny GPT-2 (tied embeddings: the root unit holds both ends)."""
    import shutil

    from test_train_methods import build_scored_table

    root = tmp_path_factory.mktemp("fsdp_train")
    build_scored_table(builtin_rows, tiny_policy_dir).to_parquet(root / "scored.parquet")
    shutil.copytree(tiny_policy_dir, root / "policy")
    return {"root": root, "table": str(root / "scored.parquet"), "policy": str(root / "policy")}


def _train_argv(*argv, storage: str = "runs") -> list[str]:
    from test_train import COMMON

    return ["train", "--seed", "0", "--table", "scored.parquet", "--init", "policy", f"storage={storage}",
            "train.num_workers=2", "train.eval_every=2", *COMMON, *argv]


def _alol_train(setup, *argv):
    from conftest import in_dir

    return in_dir(setup["root"], _train_argv(*argv))


@pytest.fixture(scope="module")
def ddp_and_fsdp(train_setup):
    """a_lol, 2 workers x 4 steps, eval + checkpoint every 2 (momentum SGD, as test_train.py): DDP straight;
    FSDP stopped at step 2, then rerun, its last worker killed at step 3 (Ray restarts the group from the
    sharded step-2 checkpoint)."""
    from conftest import armed

    assert _alol_train(train_setup, "name=ddp", "train.strategy=ddp") == 0
    assert _alol_train(train_setup, "name=fsdp", "train.strategy=fsdp", "--stop-at-step", "2") == 0
    with armed("train.step=3"):
        assert _alol_train(train_setup, "name=fsdp", "train.strategy=fsdp", "train.max_failures=1") == 0
        fired = os.listdir(os.environ["ALOL_FAULTS_DIR"])
    runs = train_setup["root"] / "runs"
    return {"ddp": str(runs / "ddp" / "train" / "a_lol-s0"), "fsdp": str(runs / "fsdp" / "train" / "a_lol-s0"),
            "fired": fired}


@pytest.mark.e2e
def test_alol_train_fsdp_equals_ddp_after_a_stop_and_a_killed_worker(ddp_and_fsdp):
    """Per-step losses and grad norms equal DDP's, and so do the final weights (1e-5), although the FSDP run
    was stopped at step 2 and lost a worker at step 3: it resumed twice from sharded checkpoints, in which Ray
    Train merged both ranks' optimizer shards."""
    from test_train import final_weights, max_diff

    from alol_ray.atomic import read_jsonl

    assert any(name.startswith("train.step") for name in ddp_and_fsdp["fired"])
    ddp, fsdp = (read_jsonl(os.path.join(ddp_and_fsdp[k], "metrics.jsonl")) for k in ("ddp", "fsdp"))
    assert [m["train/step"] for m in fsdp] == [1, 2, 3, 4]
    for a, b in zip(ddp, fsdp, strict=True):
        for key in ("loss/policy", "train/grad_norm", "is_weight/mean"):
            assert b[key] == pytest.approx(a[key], rel=TOLERANCE), (a["train/step"], key)
    assert max_diff(final_weights(ddp_and_fsdp["fsdp"]), final_weights(ddp_and_fsdp["ddp"])) < TOLERANCE
    shards = os.path.join(ddp_and_fsdp["fsdp"], "checkpoints", "checkpoint-0000002", "optimizer")
    assert sorted(os.listdir(shards)) == [".metadata", "__0_0.distcp", "__1_0.distcp"]


@pytest.mark.e2e
def test_fsdp_best_is_one_hf_folder_that_transformers_loads(ddp_and_fsdp):
    """best/ of the FSDP run: the same val rewards as DDP's (rank 0 generated with the gathered weights), and a
    plain HF folder (full weights, tied embeddings intact) that loads and generates."""
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alol_ray.atomic import read_jsonl

    val = {k: read_jsonl(os.path.join(ddp_and_fsdp[k], "val.jsonl")) for k in ("ddp", "fsdp")}
    assert [v["val/reward"] for v in val["fsdp"]] == pytest.approx([v["val/reward"] for v in val["ddp"]], abs=1e-5)
    best = os.path.join(ddp_and_fsdp["fsdp"], "best")
    ddp_best = load_file(os.path.join(ddp_and_fsdp["ddp"], "best", "model.safetensors"))
    fsdp_best = load_file(os.path.join(best, "model.safetensors"))
    assert fsdp_best.keys() == ddp_best.keys()
    model, tok = AutoModelForCausalLM.from_pretrained(best), AutoTokenizer.from_pretrained(best)
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    out = model.generate(**tok(["### Human: Any tips for cooking? ### Assistant:"], return_tensors="pt"),
                         max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > 0


@pytest.fixture(scope="module")
def ppo_ddp_and_fsdp(train_setup):
    """PPO with LoRA, 2 workers x 2 iterations (rollouts from the Generator actor, pi_ref's actor, a value head):
    DDP straight; FSDP stopped after iteration 1, then rerun from its sharded checkpoint. LoRA: the rollout engines
    get the adapters merged into the gathered weights, and both runs draw the same fresh adapters from the seed
    (unseeded, FSDP's ranks each sharded their own random draw and the losses parted from DDP's at 1e-2)."""
    from conftest import in_dir
    from test_ppo import PPO_CLI

    # 2 workers x 0.5 CPU + the Generator (0.5) + pi_ref (0.5): the module's 2-CPU Ray holds them all at once.
    argv = ["train", "--algo", "ppo", "--init", "policy", "storage=runs", "reference.path=policy", *PPO_CLI,
            "train.num_workers=2", "ppo.cpus_per_worker=0.5", "ppo.checkpoint_every=1", "model.lora.enabled=true"]
    assert in_dir(train_setup["root"], [*argv, "name=ppo_ddp", "train.strategy=ddp"]) == 0
    assert in_dir(train_setup["root"], [*argv, "name=ppo_fsdp", "train.strategy=fsdp", "--stop-at-step", "1"]) == 0
    assert in_dir(train_setup["root"], [*argv, "name=ppo_fsdp", "train.strategy=fsdp"]) == 0
    runs = train_setup["root"] / "runs"
    return {k: str(runs / f"ppo_{k}" / "train" / "ppo-s0") for k in ("ddp", "fsdp")}


@pytest.mark.e2e
def test_ppo_under_fsdp_equals_ddp_and_resumes_from_its_sharded_checkpoint(ppo_ddp_and_fsdp):
    """Under FSDP every rank gathers the policy for the rollout engines and the value head for the checkpoint
    (rank 0 alone held whole copies under DDP): the same rollouts, losses, KL and rewards as DDP at every
    iteration, also across the stop after iteration 1, and the same value head and best/ at the end."""
    import numpy as np
    from safetensors.numpy import load_file
    from test_train import max_diff

    from alol_ray.atomic import read_jsonl
    from alol_ray.baselines.ppo import VALUE_HEAD_FILE

    ddp, fsdp = (read_jsonl(os.path.join(ppo_ddp_and_fsdp[k], "metrics.jsonl")) for k in ("ddp", "fsdp"))
    assert [m["train/step"] for m in fsdp] == [1, 2]
    for a, b in zip(ddp, fsdp, strict=True):
        assert b["response/tokens_mean"] == a["response/tokens_mean"], a["train/step"]  # the same rollouts
        for key in ("loss/policy", "loss/value", "objective/kl", "reward/mean", "train/grad_norm", "values/mean"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["train/step"], key)
    heads = {k: load_file(os.path.join(v, "checkpoints", "checkpoint-0000002", VALUE_HEAD_FILE))
             for k, v in ppo_ddp_and_fsdp.items()}
    assert float(np.abs(heads["ddp"]["weight"]).max()) > 0  # trained away from its zero start
    assert max_diff(heads["fsdp"], heads["ddp"]) < 1e-5
    best = {k: load_file(os.path.join(v, "best", "model.safetensors")) for k, v in ppo_ddp_and_fsdp.items()}
    assert max_diff(best["fsdp"], best["ddp"]) < 1e-5
    shards = os.path.join(ppo_ddp_and_fsdp["fsdp"], "checkpoints", "checkpoint-0000002", "optimizer")
    assert sorted(os.listdir(shards)) == [".metadata", "__0_0.distcp", "__1_0.distcp"]


# slow, not e2e (CI time): nll's sharded steps equal DDP's in the default tier (test_sharded_steps_equal_replicated_steps)
# and the Ray Train path is a_lol's e2e test above; this one adds nll through `alol train`.
@pytest.mark.slow
def test_nll_under_fsdp_equals_ddp_through_ray_train(train_setup):
    from alol_ray.atomic import read_jsonl

    for strategy in ("ddp", "fsdp"):
        assert _alol_train(train_setup, f"name=nll-{strategy}", "--algo", "nll", f"train.strategy={strategy}",
                           "train.eval_every=0", "train.optimizer=adamw", "train.lr=0.001") == 0
    ddp, fsdp = (read_jsonl(str(train_setup["root"] / "runs" / f"nll-{s}" / "train" / "nll-s0" / "metrics.jsonl"))
                 for s in ("ddp", "fsdp"))
    assert [m["loss/policy"] for m in fsdp] == pytest.approx([m["loss/policy"] for m in ddp], rel=TOLERANCE)


# slow, not e2e (CI time: two more `alol train` commands, ~3 min): bucket resumes of Ray Train checkpoints are in
# the e2e tier already (tests/test_bucket_storage.py, DDP); this adds FSDP's sharded optimizer state in the bucket.
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_fsdp_resumes_from_bucket_storage_and_ends_equal_to_ddp(ddp_and_fsdp, train_setup, s3, alol_cli,  # noqa: F811
                                                                tmp_path):
    """The FSDP run of ``ddp_and_fsdp`` with ``storage=s3://...`` (moto's server), as a user types it: stopped at
    step 2, then rerun on a "new machine" with its last worker killed at step 3. Both resumes restore the sharded
    checkpoint from the bucket (no machine's cache holds one); per-step losses and best/ equal the DDP straight
    run's."""
    from conftest import armed
    from safetensors.numpy import load as load_safetensors
    from safetensors.numpy import load_file
    from test_train import max_diff

    storage = f"s3://{BUCKET}/fsdp"
    # A fresh local Ray per command (not the test's: its workers would not see the bucket's endpoint), and a
    # cache folder of its own (a new machine): what the rerun resumes from can only come from the bucket.
    env = {**os.environ, **s3, "RAY_ADDRESS": "local", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

    def alol_train(cache: str, *argv) -> subprocess.CompletedProcess:
        return subprocess.run([*alol_cli, *_train_argv(*argv, storage=storage)], cwd=train_setup["root"],
                              env={**env, "ALOL_LOCAL_STORAGE": str(tmp_path / cache)}, capture_output=True,
                              text=True, timeout=700, check=False)

    stopped = alol_train("machine-1", "name=fsdp", "train.strategy=fsdp", "--stop-at-step", "2")
    assert stopped.returncode == 0, stopped.stderr[-4000:]
    staged = bucket_files(s3, "fsdp/fsdp/train")
    assert any("/checkpoints/checkpoint-0000002/optimizer/__1_0.distcp" in f for f in staged), sorted(staged)
    with armed("train.step=3"):
        resumed = alol_train("machine-2", "name=fsdp", "train.strategy=fsdp", "train.max_failures=1")
        fired = os.listdir(os.environ["ALOL_FAULTS_DIR"])
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    log = resumed.stdout + resumed.stderr
    assert "[train] a_lol: resuming from the checkpoint at step 2/4" in log, log[-4000:]
    assert any(name.startswith("train.step") for name in fired)
    # Ray Train wrote the checkpoints to the bucket and restored them from there: no machine's cache holds one.
    assert not [p for m in ("machine-1", "machine-2") for p in (tmp_path / m).rglob("checkpoint-*")]

    published = bucket_files(s3, "fsdp/fsdp/train/a_lol-s0")
    assert "best/model.safetensors" in published and not any("checkpoints/" in f for f in published)
    from alol_ray.atomic import read_jsonl

    ddp = read_jsonl(os.path.join(ddp_and_fsdp["ddp"], "metrics.jsonl"))
    fsdp = [json.loads(line) for line in read_object(s3, "fsdp/fsdp/train/a_lol-s0/metrics.jsonl").splitlines()
            if line.strip()]
    assert [m["train/step"] for m in fsdp] == [1, 2, 3, 4]
    for a, b in zip(ddp, fsdp, strict=True):
        for key in ("loss/policy", "train/grad_norm", "is_weight/mean"):
            assert b[key] == pytest.approx(a[key], rel=TOLERANCE), (a["train/step"], key)
    best = load_safetensors(read_object_bytes(s3, "fsdp/fsdp/train/a_lol-s0/best/model.safetensors"))
    assert max_diff(best, load_file(os.path.join(ddp_and_fsdp["ddp"], "best", "model.safetensors"))) < TOLERANCE
