"""alol-ray next to TRL, the library a user would pick instead: the same model, data and batch, side by side.

    python bench/vs_trl.py                   # GPT-2 on the built-in task and Llama on an HH slice (data/hh)
    python bench/vs_trl.py --hh DIR          # the HH files (helpful_base.json) are elsewhere
    python bench/vs_trl.py --job-steps 300   # also the whole DPO job at 300 steps, measured end to end
    python bench/vs_trl.py --smoke           # toy sizes, GPT-2 on the built-in task, one round: every path runs

Each configuration is a policy built from config (a GPT-2 or a Llama of about 25 M parameters, random init, a
byte-level BPE trained on the texts) and one data set (the built-in task's rows, or the first prompts of
helpful_base.json). Six runs are made per configuration, each a fresh process, the order reversed every round:

    dpo          `alol train --algo dpo` (Ray Train); pi_ref's log-probs come from the scored table
    trl_dpo      TRL ``DPOTrainer(precompute_ref_log_probs=True)``: TRL computes them before training
    trl_dpo_ref  TRL ``DPOTrainer`` without precompute: a reference forward pass in every step
    nll          `alol train --algo nll` on the preferred (rank-0) replies
    trl_sft      TRL ``SFTTrainer``, completion-only loss, on the same replies
    a_lol        `alol train --algo a_lol` on the same replies (advantage 1 everywhere: every row is eligible)

The same for both sides: the weights (one saved folder), fp32, AdamW (betas 0.9/0.999, eps 1e-8, no weight
decay), constant learning rate, gradient clipping at 1.0, dropout off, no gradient checkpointing, the batch size,
the torch threads, and the token ids: TRL gets the ids of alol_ray.tokenization.encode_pair (prompt
left-truncated, reply right-truncated, EOS appended), the function alol-ray's training collates with. TRL
reads its examples in the order alol-ray's sampler draws them (``train_sampling_strategy="sequential"``), so
step k of both sides trains on the same sequences (A-LoL draws by advantage, so its batches hold other rows
than SFT's: compare it by tokens/s too).

Measured per run: the wall time of every optimizer step from the end of one step to the end of the next (step
time, warm-up steps dropped; it includes collation and logging), the compute part (alol-ray's ``time/step_s``,
TRL's step begin-to-end, which leaves out its data loading), tokens/s (non-padding tokens over step time),
peak RSS (the largest process, and all processes of the run together, sampled every 0.2 s), and the whole job
from the process start (scored table and model on disk) to the saved model, split into start-up (for
alol-ray: CLI, Ray, the Train worker group, loading; for TRL: imports, loading, dataset preparation and, with
precompute, the reference pass), steps, and finish (alol-ray: the final checkpoint with optimizer state,
exporting it, stopping Ray; TRL: ``save_model``). It also checks the losses on one batch (DPO sigmoid and
IPO, and NLL, which alol-ray sums over a reply's tokens where TRL averages over all completion tokens of the
batch, so alol-ray's = TRL's x tokens / replies) and prints both sides' DPO loss per step.

Ratios are taken per round between the two runs of a pair (they ran one after the other) and averaged
geometrically over rounds and configurations. The last line reads ``alol-ray / trl step time: dpo = X, nll = Y,
a_lol_vs_sft = Z``: alol-ray's median step time over TRL's (DPO against TRL with precompute); the CPU-time ratios
printed beside them move far less with the machine's other load.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

ALOL_KINDS = {"dpo": "dpo", "nll": "nll", "a_lol": "a_lol"}  # run kind -> alol-ray method
RUN_KINDS = ("dpo", "trl_dpo", "trl_dpo_ref", "nll", "trl_sft", "a_lol")
PAIRS = {"dpo": "trl_dpo", "nll": "trl_sft", "a_lol": "trl_sft"}  # alol-ray run -> the TRL run it is held against
RAY_STARTED = "Started a local Ray instance"  # the line `ray.init` logs (with its time) when the local Ray is up


@dataclass
class Sizes:
    """Everything both sides share; ``--smoke`` shrinks it."""

    width: int = 512
    layers: int = 6
    heads: int = 8
    vocab: int = 8192
    prompts: int = 160  # per data set (HH: records read from helpful_base.json)
    batch: int = 4  # pairs (DPO) or replies per optimizer step
    max_prompt: int = 64
    max_response: int = 32
    warmup: int = 2  # steps left out of the step-time medians
    steps: int = 12  # optimizer steps per run (warm-up included)
    rounds: int = 3
    threads: int = 2
    lr: float = 5e-5
    beta: float = 0.1


SMOKE = Sizes(width=64, layers=2, heads=4, vocab=512, prompts=24, batch=2, max_prompt=24, max_response=12,
              warmup=1, steps=3, rounds=1)


@dataclass
class Config:
    """One (model family, data set) pair and where its inputs lie under the work folder."""

    family: str  # gpt2 | llama
    data: str  # builtin | hh
    model_dir: str = ""
    table: str = ""
    n_params: int = 0

    @property
    def name(self) -> str:
        return f"{self.family}-{self.data}"


# ------------------------------------------------------------------------------------ models and data


def build_tokenizer(texts: list[str], vocab: int, family: str):
    """A byte-level BPE trained on ``texts``. GPT-2: alol-ray's tiny tokenizer (``<|endoftext|>`` is BOS and
    EOS, no BOS added). Llama: ``<s>`` added before every text, ``</s>`` ends replies, as LLaMA tokenizers do."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from alol_ray.models import train_tokenizer

    if family == "gpt2":
        return train_tokenizer(texts, vocab_size=vocab)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>", "<pad>"]
    tok.train_from_iterator(texts, trainer=trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   padding_side="right")


def build_model(family: str, tokenizer, sizes: Sizes, seed: int = 0):
    """A randomly initialised GPT-2 or Llama (the same ``seed``, the same weights), dropout off."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    positions = 2 * (sizes.max_prompt + sizes.max_response)
    if family == "gpt2":
        config = GPT2Config(vocab_size=len(tokenizer), n_positions=positions, n_embd=sizes.width,
                            n_layer=sizes.layers, n_head=sizes.heads, resid_pdrop=0.0, embd_pdrop=0.0,
                            attn_pdrop=0.0, **ids)
        cls = GPT2LMHeadModel
    elif family == "llama":
        # intermediate ~ 8/3 of the width (LLaMA's SwiGLU sizing), rounded to 16; tied embeddings as GPT-2
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=sizes.width,
                             intermediate_size=16 * round(sizes.width * 8 / 3 / 16), num_hidden_layers=sizes.layers,
                             num_attention_heads=sizes.heads, num_key_value_heads=sizes.heads,
                             max_position_embeddings=positions, tie_word_embeddings=True, **ids)
        cls = LlamaForCausalLM
    else:
        raise ValueError(f"unknown model family {family!r}: gpt2 or llama")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    return model


def load_data(data: str, sizes: Sizes, hh_dir: str):
    """Canonical training rows of prompts that have a preferred (rank 0) and a second (rank 1) reply."""
    from alol_ray import columns as C

    if data == "builtin":
        from alol_ray.tasks import builtin

        frame = builtin.build_rows(seed=0, n_train=sizes.prompts, n_val=1, n_test=1)
    elif data == "hh":
        from alol_ray.config import SourceConfig
        from alol_ray.data.loaders import load_source

        path = os.path.join(hh_dir, "helpful_base.json")
        frame, _ = load_source(SourceConfig(path=path, format="hh_pro", limit=sizes.prompts), skip_invalid=True)
    else:
        raise ValueError(f"unknown data set {data!r}: builtin or hh")
    frame = frame[frame[C.SPLIT] == "train"]
    ranks = frame.groupby(C.PROMPT_ID)[C.RANK].agg(set)
    keep = ranks[ranks.map(lambda r: {0, 1} <= r)].index
    frame = frame[frame[C.PROMPT_ID].isin(keep)].reset_index(drop=True)
    return frame[[C.PROMPT_ID, C.PROMPT, C.RESPONSE, C.RANK, C.SPLIT, C.REWARD]]


def score_table(frame, model_dir: str, sizes: Sizes, out: str) -> str:
    """The scored table alol-ray trains from: pi_ref's (here the starting policy's) per-token log-probs by the
    ReferenceScorer, and advantage 1 for every row."""
    import numpy as np
    import pandas as pd

    from alol_ray import columns as C
    from alol_ray.scoring.reference import ReferenceScorer

    scorer = ReferenceScorer(model_dir, max_prompt_tokens=sizes.max_prompt, max_response_tokens=sizes.max_response,
                             num_threads=sizes.threads)
    parts = [scorer(frame.iloc[i:i + 32]) for i in range(0, len(frame), 32)]
    table = pd.concat(parts, ignore_index=True)
    table[C.ADVANTAGE] = np.ones(len(table))
    table.to_parquet(out)
    return out


def prepare(work: str, configs: list[Config], sizes: Sizes, hh_dir: str) -> None:
    """Models (one per family, a tokenizer trained on all data sets' texts; and a second init, ``-ref``, for the
    one-batch loss check) and one scored table per config."""
    from alol_ray import columns as C

    frames = {d: load_data(d, sizes, hh_dir) for d in sorted({c.data for c in configs})}
    texts = [t for f in frames.values() for t in list(f[C.PROMPT].unique()) + list(f[C.RESPONSE])]
    for family in sorted({c.family for c in configs}):
        folder = os.path.join(work, "models", family)
        if not os.path.exists(os.path.join(folder, "n_params.json")):
            tokenizer = build_tokenizer(texts, sizes.vocab, family)
            for seed, out in ((1, folder + "-ref"), (0, folder)):
                model = build_model(family, tokenizer, sizes, seed=seed)
                model.save_pretrained(out, safe_serialization=True)
                tokenizer.save_pretrained(out)
            with open(os.path.join(folder, "n_params.json"), "w") as fh:
                json.dump(sum(p.numel() for p in model.parameters()), fh)
    for config in configs:
        config.model_dir = os.path.join(work, "models", config.family)
        config.table = os.path.join(work, "tables", f"{config.name}.parquet")
        if not os.path.exists(config.table):
            os.makedirs(os.path.dirname(config.table), exist_ok=True)
            score_table(frames[config.data], config.model_dir, sizes, config.table)
        with open(os.path.join(config.model_dir, "n_params.json")) as fh:
            config.n_params = json.load(fh)


# -------------------------------------------------------------------------------- the examples TRL reads


def train_config(method: str, sizes: Sizes, steps: int):
    """alol-ray's TrainConfig for the bench's runs (the YAML written for `alol train` says the same)."""
    from alol_ray.config import TrainConfig

    return TrainConfig(algo=method, steps=steps, batch_size=sizes.batch, lr=sizes.lr, eval_every=0,
                       cpus_per_worker=sizes.threads, seed=0)


def drawn_units(table_path: str, method: str, sizes: Sizes, steps: int):
    """(frame, units in the order alol-ray's sampler draws them for steps 0..steps-1), by alol-ray's own
    ``prepare_data`` and sampler: what `alol train` trains on, step by step."""
    import pandas as pd

    from alol_ray.registry import get_method
    from alol_ray.train.trainer import prepare_data

    data = prepare_data(pd.read_parquet(table_path), get_method(method), train_config(method, sizes, steps))
    order = [j for step in range(steps) for j in data.sampler.shard(step, 0, 1)]
    return data.frame, [data.units[j] for j in order], data.units


def trl_examples(frame, units, tokenizer, sizes: Sizes, kind: str) -> list[dict]:
    """TRL's pre-tokenised examples: DPO ``prompt_ids``/``chosen_ids``/``rejected_ids``; SFT ``input_ids`` and
    ``completion_mask``. The ids come from ``encode_pair``, alol-ray's tokenisation."""
    from alol_ray import columns as C
    from alol_ray.tokenization import encode_pair

    prompts, responses = frame[C.PROMPT].to_numpy(), frame[C.RESPONSE].to_numpy()

    def ids(row):
        return encode_pair(tokenizer, prompts[row], responses[row], sizes.max_prompt, sizes.max_response)

    out = []
    for unit in units:
        if kind == "sft":
            prompt, reply = ids(unit[0])
            out.append({"input_ids": prompt + reply, "completion_mask": [0] * len(prompt) + [1] * len(reply)})
        else:
            (prompt, chosen), (_, rejected) = ids(unit[0]), ids(unit[1])
            out.append({"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected})
    return out


# ----------------------------------------------------------------------------------------- TRL's side


def trl_trainers():
    """TRL's DPOTrainer / SFTTrainer with two additions: each records the loss of every training step, and the
    DPO one takes examples that are already tokenised (TRL 1.16's DPOTrainer always tokenises text; the SFT
    trainer accepts ``input_ids`` as they are)."""
    from trl import DPOTrainer, SFTTrainer

    class RecordLoss:
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if model.training:
                self.step_losses.append(float((loss[0] if return_outputs else loss).detach()))
            return loss

    class DPO(RecordLoss, DPOTrainer):
        step_losses: list

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset  # prompt_ids / chosen_ids / rejected_ids from alol-ray's encode_pair

    class SFT(RecordLoss, SFTTrainer):
        step_losses: list

    return DPO, SFT


def trl_args(kind: str, out: str, sizes: Sizes, steps: int, *, sequential: bool, loss_type: str = "sigmoid"):
    """TRL's config, set to what alol-ray does (TRL's own defaults differ in bf16 and gradient checkpointing)."""
    from trl import DPOConfig, SFTConfig

    common = dict(output_dir=out, per_device_train_batch_size=sizes.batch, max_steps=steps, learning_rate=sizes.lr,
                  lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                  optim="adamw_torch", bf16=False, fp16=False, gradient_checkpointing=False, logging_steps=10,
                  save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0, seed=0,
                  disable_tqdm=True, max_length=None,
                  train_sampling_strategy="sequential" if sequential else "random")
    if kind == "trl_sft":
        return SFTConfig(**common, completion_only_loss=True, packing=False, padding_free=False)
    return DPOConfig(**common, beta=sizes.beta, loss_type=[loss_type],
                     precompute_ref_log_probs=kind == "trl_dpo")


def trl_job(spec: dict) -> dict:
    """One TRL run in this process (``--trl-run``): load, build the trainer, train, save. Times in epoch seconds."""
    times = {"enter": time.time()}
    import torch

    torch.set_num_threads(spec["threads"])
    import datasets
    from transformers import AutoModelForCausalLM, TrainerCallback

    from alol_ray.models import load_tokenizer

    times["imported"] = time.time()
    sizes = Sizes(**spec["sizes"])
    kind = spec["kind"]
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    tokenizer = load_tokenizer(spec["model"])
    with open(spec["examples"]) as fh:
        dataset = datasets.Dataset.from_list(json.load(fh))
    times["loaded"] = time.time()

    class Clock(TrainerCallback):
        def __init__(self):
            self.begin, self.end = [], []

        def on_step_begin(self, args, state, control, **kwargs):
            self.begin.append(time.time())

        def on_step_end(self, args, state, control, **kwargs):
            self.end.append(time.time())

    clock = Clock()
    dpo_cls, sft_cls = trl_trainers()
    cls = sft_cls if kind == "trl_sft" else dpo_cls
    args = trl_args(kind, spec["out"], sizes, spec["steps"], sequential=spec["sequential"])
    trainer = cls(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=[clock])
    trainer.step_losses = []
    tokens: list[int] = []
    collate = trainer.data_collator

    def counting(examples):  # non-padding tokens of every batch the training loop collates
        batch = collate(examples)
        tokens.append(int(batch["attention_mask"].sum()))
        return batch

    trainer.data_collator = counting
    times["built"] = time.time()
    trainer.train()
    times["trained"] = time.time()
    trainer.save_model(os.path.join(spec["out"], "final"))
    times["saved"] = time.time()
    return {"times": times, "step_begin": clock.begin, "step_end": clock.end, "tokens": tokens[:len(clock.end)],
            "losses": trainer.step_losses}


# ------------------------------------------------------------------------------------- alol-ray's side


def write_alol_config(path: str, config: Config, sizes: Sizes, steps: int) -> None:
    """The run's YAML: the bench's sizes; nothing else differs from alol-ray's defaults (checkpoint_every 100
    with the optimizer state in each checkpoint, log_every 10) except evaluation, which TRL does not do."""
    tc = train_config("nll", sizes, steps)
    text = (f"# bench/vs_trl.py: {config.name}\nname: vs_trl\nstorage: runs\n"
            f"model: {{max_prompt_tokens: {sizes.max_prompt}, max_response_tokens: {sizes.max_response}}}\n"
            f"train: {{steps: {tc.steps}, batch_size: {tc.batch_size}, lr: {tc.lr}, eval_every: 0, "
            f"num_workers: 1, cpus_per_worker: {sizes.threads}, seed: 0, dpo: {{beta: {sizes.beta}}}}}\n"
            f"ray: {{num_cpus: {sizes.threads}}}\n")
    with open(path, "w") as fh:
        fh.write(text)


class ProcessTree:
    """A process and all its descendants, sampled every ``every`` seconds: peak resident memory (the largest
    process, and all together) and the CPU seconds they have used (user + system), with the time of each sample."""

    def __init__(self, pid: int, every: float = 0.2):
        import psutil

        self.root = psutil.Process(pid)
        self.largest = self.total = 0
        self.cpu: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._every = every
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.root] + self.root.children(recursive=True)
            except psutil.Error:
                break
            sizes, cpu = [], 0.0
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    with p.oneshot():
                        sizes.append(p.memory_info().rss)
                        times = p.cpu_times()
                        cpu += times.user + times.system
            if sizes:
                self.largest, self.total = max(self.largest, max(sizes)), max(self.total, sum(sizes))
                self.cpu.append((time.time(), cpu))
            self._stop.wait(self._every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_process(cmd: list[str], cwd: str, log_path: str, threads: int) -> dict:
    """Run ``cmd`` to its end with its output in ``log_path``; wall times, peak RSS, CPU seconds over time."""
    import psutil

    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
    with open(log_path, "w") as log:
        start = time.time()
        proc = psutil.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)
        tree = ProcessTree(proc.pid)
        try:
            rc = proc.wait()
        except BaseException:  # Ctrl-C: `alol train` stops its local Ray on SIGINT; wait for it
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
            raise
        end = time.time()
    tree.stop()
    if rc != 0:
        with open(log_path) as fh:
            tail = "".join(fh.readlines()[-15:])
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed (exit {rc}); the end of {log_path}:\n{tail}")
    return {"start": start, "end": end, "rss_largest": tree.largest, "rss_total": tree.total, "cpu": tree.cpu}


def alol_run(config: Config, kind: str, sizes: Sizes, steps: int, work: str, tag: str) -> dict:
    """`alol train` as a user types it, from the work folder; its metrics.jsonl gives the step times."""
    folder = os.path.join(work, "runs-alol", f"{config.name}-{kind}-{tag}")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    write_alol_config(os.path.join(folder, "config.yaml"), config, sizes, steps)
    alol = shutil.which("alol", path=os.path.dirname(sys.executable)) or "alol"
    cmd = [alol, "train", "--config", "config.yaml", "--algo", ALOL_KINDS[kind],
           "--table", os.path.relpath(config.table, folder), "--init", os.path.relpath(config.model_dir, folder)]
    proc = run_process(cmd, folder, os.path.join(folder, "log.txt"), sizes.threads)
    rows = []
    with open(os.path.join(folder, "runs", "vs_trl", "train", f"{ALOL_KINDS[kind]}-s0", "metrics.jsonl")) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    ends = [r["time/wall"] for r in rows]
    begins = [r["time/wall"] - r["time/step_s"] for r in rows]
    proc["phases"] = {"ray_up": ray_started(os.path.join(folder, "log.txt"))}
    return {**proc, "step_begin": begins, "step_end": ends, "compute": [r["time/step_s"] for r in rows],
            "tokens": [int(r["train/tokens"]) for r in rows],
            "losses": [r.get("loss/policy", r.get("loss/total")) for r in rows], "first_step_begin": begins[0],
            "train_end": ends[-1]}


def ray_started(log_path: str):
    """Epoch time of the local Ray's start in an `alol train` log (its line carries a local timestamp)."""
    import datetime

    with open(log_path, errors="replace") as fh:
        for line in fh:
            if RAY_STARTED in line:
                with contextlib.suppress(ValueError):
                    return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


def trl_run(config: Config, kind: str, sizes: Sizes, steps: int, work: str, tag: str, sequential: bool = True) -> dict:
    """A TRL run in its own process (this file with ``--trl-run``); examples in alol-ray's draw order, or
    (``sequential=False``) each unit once, shuffled by TRL, as a user would give them."""
    from alol_ray.models import load_tokenizer

    folder = os.path.join(work, "runs-trl", f"{config.name}-{kind}-{tag}")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    layout = "sft" if kind == "trl_sft" else "dpo"
    method = "nll" if layout == "sft" else "dpo"
    frame, drawn, every_unit = drawn_units(config.table, method, sizes, steps)
    examples = trl_examples(frame, drawn if sequential else every_unit, load_tokenizer(config.model_dir), sizes, layout)
    examples_path = os.path.join(folder, "examples.json")
    with open(examples_path, "w") as fh:
        json.dump(examples, fh)
    spec = {"kind": kind, "model": config.model_dir, "examples": examples_path, "out": folder, "steps": steps,
            "threads": sizes.threads, "sizes": asdict(sizes), "sequential": sequential,
            "result": os.path.join(folder, "result.json")}
    spec_path = os.path.join(folder, "spec.json")
    with open(spec_path, "w") as fh:
        json.dump(spec, fh)
    proc = run_process([sys.executable, os.path.abspath(__file__), "--trl-run", spec_path], folder,
                       os.path.join(folder, "log.txt"), sizes.threads)
    with open(spec["result"]) as fh:
        result = json.load(fh)
    return {**proc, "step_begin": result["step_begin"], "step_end": result["step_end"],
            "compute": [e - b for b, e in zip(result["step_begin"], result["step_end"])],
            "tokens": result["tokens"], "losses": result["losses"], "first_step_begin": result["step_begin"][0],
            "train_end": result["step_end"][-1], "phases": result["times"]}


# ----------------------------------------------------------------------------------------------- figures


def step_times(run: dict) -> list[float]:
    """Seconds from the end of one step to the end of the next (the first: from its own beginning)."""
    ends = run["step_end"]
    return [ends[0] - run["step_begin"][0]] + [b - a for a, b in zip(ends, ends[1:])]


def cpu_per_step(run: dict, warmup: int) -> float:
    """CPU seconds all the run's processes used per timed step (from the end of the warm-up to the end of the last
    step, interpolated between samples): unlike wall time, hardly moved by other jobs on the machine."""
    import numpy as np

    if len(run["cpu"]) < 2:
        return float("nan")
    t, cpu = np.array(run["cpu"]).T
    begin = run["step_end"][warmup - 1] if warmup else run["first_step_begin"]
    end = run["step_end"][-1]
    return float(np.interp(end, t, cpu) - np.interp(begin, t, cpu)) / (len(run["step_end"]) - warmup)


def summarize(run: dict, warmup: int) -> dict:
    times = step_times(run)[warmup:]
    tokens = run["tokens"][warmup:]
    return {
        "ms_step": 1e3 * statistics.median(times),
        "cpu_ms_step": 1e3 * cpu_per_step(run, warmup),
        "ms_compute": 1e3 * statistics.median(run["compute"][warmup:]),
        "tokens_s": sum(tokens) / sum(times),
        "rss_largest_mb": run["rss_largest"] / 2**20,
        "rss_total_mb": run["rss_total"] / 2**20,
        "job_s": run["end"] - run["start"],
        "startup_s": run["first_step_begin"] - run["start"],
        "steps_s": run["train_end"] - run["first_step_begin"],
        "finish_s": run["end"] - run["train_end"],
        "startup_parts": startup_parts(run),
        "step_times": times,
    }


def startup_parts(run: dict) -> dict[str, float]:
    """Where the start-up goes. alol-ray: the CLI until the local Ray is up, then the Train controller, the worker
    group and the model until the first step. TRL: imports, loading model and examples, building the trainer (its
    dataset preparation and, with precompute, the reference pass), and ``train()`` until the first step."""
    p, first = run.get("phases", {}), run["first_step_begin"]
    if "imported" in p:
        return {"imports": p["imported"] - run["start"], "load": p["loaded"] - p["imported"],
                "trainer": p["built"] - p["loaded"], "to step 1": first - p["built"]}
    if p.get("ray_up"):
        return {"cli + ray": p["ray_up"] - run["start"], "train workers + load": first - p["ray_up"]}
    return {}


def padding_share(examples_path: str, batch: int) -> float:
    """The share of padded positions in the batches a run's examples make (both sides pad every sequence of a
    batch on the right to its longest): what padding-free batches or packing could save at most."""
    with open(examples_path) as fh:
        examples = json.load(fh)
    if "input_ids" in examples[0]:
        lengths = [[len(e["input_ids"])] for e in examples]
    else:
        lengths = [[len(e["prompt_ids"]) + len(e["chosen_ids"]), len(e["prompt_ids"]) + len(e["rejected_ids"])]
                   for e in examples]
    real = padded = 0
    for start in range(0, len(lengths), batch):
        seqs = [n for unit in lengths[start:start + batch] for n in unit]
        real, padded = real + sum(seqs), padded + len(seqs) * max(seqs)
    return 1.0 - real / padded


def geometric_mean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


# ------------------------------------------------------------------------------- the losses on one batch


def alol_loss_and_grads(method_name: str, model, frame, units, tokenizer, sizes: Sizes, loss_type: str = "sigmoid"):
    """alol-ray's loss on one micro-batch through the training loop's code: the method registry's ``compute``
    on ``collate_units``; returns (loss, {parameter name: gradient})."""
    from alol_ray.config import DPOConfig
    from alol_ray.registry import get_method
    from alol_ray.train.methods import collate_units

    method = get_method(method_name)
    tc = replace(train_config(method_name, sizes, 1), dpo=DPOConfig(beta=sizes.beta, loss_type=loss_type))
    batch = collate_units(frame, units, tokenizer, max_prompt_tokens=sizes.max_prompt,
                          max_response_tokens=sizes.max_response, columns=method.columns)
    model.zero_grad(set_to_none=True)
    loss, _ = method.compute(model, batch, method.make_params(tc), None)
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def trl_loss_and_grads(kind: str, model, examples: list[dict], tokenizer, sizes: Sizes, loss_type: str = "sigmoid"):
    """TRL's loss on the same examples through its trainer's ``compute_loss`` (DPO with the reference
    log-probs given in the batch, as after precompute). Returns (loss, gradients, completion tokens)."""
    import datasets

    dpo_cls, sft_cls = trl_trainers()
    with tempfile.TemporaryDirectory() as out:
        if kind == "trl_sft":
            args = trl_args("trl_sft", out, sizes, 1, sequential=True)
            trainer = sft_cls(model=model, args=args, train_dataset=datasets.Dataset.from_list(examples),
                              processing_class=tokenizer)
        else:
            args = trl_args("trl_dpo", out, sizes, 1, sequential=True, loss_type=loss_type)
            plain = [{k: v for k, v in e.items() if not k.startswith("ref_")} for e in examples]
            trainer = dpo_cls(model=model, args=args, train_dataset=datasets.Dataset.from_list(plain),
                              processing_class=tokenizer)
        trainer.step_losses = []
        # SFT: TRL's prepared rows (its preparation turns completion_mask into labels); DPO: our rows, which
        # carry the reference log-probs as precompute leaves them
        rows = [trainer.train_dataset[i] for i in range(len(examples))] if kind == "trl_sft" else examples
        inputs = trainer.data_collator(rows)
        model.train()
        model.zero_grad(set_to_none=True)
        loss = trainer.compute_loss(model, inputs)
        loss.backward()
        # completion tokens: TRL's DPO batch marks them, its SFT batch labels them (-100 elsewhere)
        tokens = int(inputs["completion_mask"].sum() if "completion_mask" in inputs else (inputs["labels"] != -100).sum())
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}, tokens


def same_batch_gaps(model_dir: str, ref_dir: str, table_path: str, sizes: Sizes, n_units: int = 4) -> dict:
    """Loss and gradient of alol-ray vs TRL on the first ``n_units`` training units of ``table_path``, from the
    weights in ``model_dir``: DPO (sigmoid, ipo) with the reference log-probs of another model (``ref_dir``,
    scored by the ReferenceScorer, so the margins are not 0), and NLL vs the completion-only SFT loss, where
    alol-ray's = TRL's x completion tokens / replies. Per check: both losses, that scale, and the largest
    differences of loss and of any gradient entry on TRL's scale (alol-ray's divided by the scale), relative to
    the magnitude where that exceeds 1 (IPO's loss at beta 0.1 is about 25)."""
    import copy

    import numpy as np
    import pandas as pd
    import torch

    from alol_ray import columns as C
    from alol_ray.models import load_policy
    from alol_ray.registry import get_method
    from alol_ray.scoring.reference import ReferenceScorer
    from alol_ray.train.trainer import prepare_data

    policy, tokenizer = load_policy(model_dir, dtype=torch.float32)
    table = pd.read_parquet(table_path).drop(columns=[C.REF_TOKEN_LOGPS, C.REF_LOGP])
    scorer = ReferenceScorer(ref_dir, max_prompt_tokens=sizes.max_prompt, max_response_tokens=sizes.max_response)
    gaps = {}
    for method, kind, loss_types in (("dpo", "trl_dpo", ("sigmoid", "ipo")), ("nll", "trl_sft", ("sigmoid",))):
        data = prepare_data(table.assign(**{C.REF_TOKEN_LOGPS: 0.0}), get_method(method), train_config(method, sizes, 1))
        rows = np.concatenate(data.units[:n_units])  # those units' rows, renumbered 0, 1, ...
        frame = scorer(data.frame.iloc[rows].drop(columns=[C.REF_TOKEN_LOGPS], errors="ignore").reset_index(drop=True))
        units = np.split(np.arange(len(rows)), np.cumsum([len(u) for u in data.units[:n_units]])[:-1])
        examples = trl_examples(frame, units, tokenizer, sizes, "sft" if kind == "trl_sft" else "dpo")
        for example, unit in zip(examples, units):
            if kind == "trl_dpo":  # what TRL's precompute would have put there: the summed reference log-probs
                example["ref_chosen_logps"] = float(frame[C.REF_LOGP].iloc[unit[0]])
                example["ref_rejected_logps"] = float(frame[C.REF_LOGP].iloc[unit[1]])
        for loss_type in loss_types:
            ours, our_grads = alol_loss_and_grads(method, copy.deepcopy(policy), frame, units, tokenizer, sizes,
                                                  loss_type)
            theirs, their_grads, tokens = trl_loss_and_grads(kind, copy.deepcopy(policy), examples, tokenizer, sizes,
                                                             loss_type)
            scale = tokens / len(units) if method == "nll" else 1.0  # alol-ray's NLL / TRL's
            grad_size = max(float(g.abs().max()) for g in their_grads.values())
            reply_ids = "completion_mask" if kind == "trl_sft" else "chosen_ids"
            gaps[f"dpo/{loss_type}" if method == "dpo" else "nll"] = {
                "alol": float(ours), "trl": float(theirs), "scale": scale,
                "reply_tokens": [sum(e[reply_ids]) if kind == "trl_sft" else len(e[reply_ids]) for e in examples],
                # on TRL's scale, relative to the magnitude where it exceeds 1 (fp32 resolves ~1e-7 of it)
                "loss": abs(float(ours) / scale - float(theirs)) / max(1.0, abs(float(theirs))),
                "grad": max(float((our_grads[k] / scale - their_grads[k]).abs().max()) for k in their_grads)
                / max(1.0, grad_size),
                "grad_max": grad_size,
                "same_params": sorted(our_grads) == sorted(their_grads),
            }
    return gaps


# ----------------------------------------------------------------------------------------------- the bench


def parse_configs(text: str) -> list[Config]:
    configs = []
    for item in text.split(","):
        family, _, data = item.strip().partition("/")
        if family not in ("gpt2", "llama") or data not in ("builtin", "hh"):
            raise SystemExit(f"vs_trl: --configs: {item!r} is not FAMILY/DATA with FAMILY gpt2|llama, DATA builtin|hh")
        configs.append(Config(family, data))
    return configs


def run_kind(config: Config, kind: str, sizes: Sizes, steps: int, work: str, tag: str, sequential: bool = True) -> dict:
    if kind in ALOL_KINDS:
        return alol_run(config, kind, sizes, steps, work, tag)
    return trl_run(config, kind, sizes, steps, work, tag, sequential=sequential)


def round_ratios(figures: dict[str, list[dict]], key: str) -> dict[str, list[float]]:
    """alol-ray's figure over TRL's, per round: the two runs of a pair ran one after the other, so a change of
    the machine's load hits a round's pair alike more often than two rounds."""
    pairs = dict(PAIRS, dpo_vs_ref="trl_dpo_ref")
    return {name: [a[key] / b[key] for a, b in zip(figures[name.split("_vs")[0]], figures[trl])]
            for name, trl in pairs.items()}


def print_config_table(config: Config, sizes: Sizes, figures: dict[str, list[dict]], work: str) -> dict[str, float]:
    """The per-run table of one config; returns alol-ray / TRL ratios (geometric means over the rounds)."""
    print(f"\n{config.name}: {config.family} of {config.n_params / 1e6:.1f} M parameters, {sizes.batch} pairs or "
          f"replies per step, {sizes.steps - sizes.warmup} timed steps x {len(figures['dpo'])} round(s); means over "
          "the rounds (ms/step: median step of a run; CPU ms: CPU time of all the run's processes per step)")
    print(f"{'run':<13}{'ms/step':>9}{'CPU ms':>8}{'compute':>9}{'tokens/s':>10}{'RSS MiB':>9}{'(all)':>8}"
          f"{'job s':>8}{'start-up':>10}{'steps':>8}{'finish':>8}")
    for kind in RUN_KINDS:
        mean = {k: statistics.mean(r[k] for r in figures[kind]) for k in figures[kind][0]
                if k not in ("step_times", "startup_parts")}
        print(f"{kind:<13}{mean['ms_step']:>9.0f}{mean['cpu_ms_step']:>8.0f}{mean['ms_compute']:>9.0f}"
              f"{mean['tokens_s']:>10.0f}{mean['rss_largest_mb']:>9.0f}{mean['rss_total_mb']:>8.0f}"
              f"{mean['job_s']:>8.1f}{mean['startup_s']:>10.1f}{mean['steps_s']:>8.1f}{mean['finish_s']:>8.1f}")
    for kind in ("dpo", "trl_dpo", "trl_dpo_ref"):
        parts = figures[kind][0]["startup_parts"]
        if parts:
            shown = ", ".join(f"{k} {statistics.mean(r['startup_parts'][k] for r in figures[kind]):.1f} s" for k in parts)
            print(f"  start-up of {kind}: {shown}")
    shares = {kind: padding_share(os.path.join(work, "runs-trl", f"{config.name}-{kind}-r0", "examples.json"),
                                  sizes.batch) for kind in ("trl_dpo", "trl_sft")}
    print(f"  padding: {shares['trl_dpo']:.0%} of the positions of a DPO batch, {shares['trl_sft']:.0%} of an SFT "
          "batch, on both sides (the most that padding-free batches or packing could save)")
    wall, cpu = round_ratios(figures, "ms_step"), round_ratios(figures, "cpu_ms_step")
    per_token = round_ratios({k: [{"t": 1 / f["tokens_s"]} for f in v] for k, v in figures.items()}, "t")
    ratios = {name: geometric_mean(values) for name, values in wall.items()}
    ratios.update({f"{name}/cpu": geometric_mean(values) for name, values in cpu.items()})
    ratios["a_lol/per_token"] = geometric_mean(per_token["a_lol"])
    for label, values in (("step time", wall), ("CPU time per step", cpu)):
        print(f"  alol-ray / TRL {label} by round: " + "; ".join(
            f"{name} {', '.join(f'{v:.3f}' for v in vals)}" for name, vals in values.items()))
    print(f"alol-ray / TRL step time: dpo {ratios['dpo']:.3f} (vs TRL without precompute {ratios['dpo_vs_ref']:.3f}), "
          f"nll {ratios['nll']:.3f}, a_lol / sft {ratios['a_lol']:.3f} (per token {ratios['a_lol/per_token']:.3f}); "
          f"CPU time: dpo {ratios['dpo/cpu']:.3f}, nll {ratios['nll/cpu']:.3f}, a_lol / sft {ratios['a_lol/cpu']:.3f}")
    return ratios


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="gpt2/builtin,llama/hh",
                        help="FAMILY/DATA list: gpt2|llama on builtin|hh (default: %(default)s)")
    parser.add_argument("--hh", default="data/hh", metavar="DIR",
                        help="the HH data folder with helpful_base.json (default: %(default)s, as the HH configs)")
    parser.add_argument("--work", default="runs/bench_vs_trl", help="models, tables, runs and logs (default: %(default)s)")
    parser.add_argument("--steps", type=int, help=f"optimizer steps per run (default {Sizes.steps})")
    parser.add_argument("--rounds", type=int, help=f"alternating rounds (default {Sizes.rounds})")
    parser.add_argument("--threads", type=int, help=f"torch threads on both sides (default {Sizes.threads})")
    parser.add_argument("--job-steps", type=int, default=0, metavar="N",
                        help="also the whole DPO job at N steps (alol-ray's default checkpoints, TRL's default "
                             "data order), on the first config")
    parser.add_argument("--smoke", action="store_true",
                        help="toy sizes, one round, gpt2/builtin unless --configs says otherwise")
    parser.add_argument("--trl-run", help=argparse.SUPPRESS)  # internal: one TRL run in this process
    args = parser.parse_args(argv)
    if args.trl_run:
        with open(args.trl_run) as fh:
            spec = json.load(fh)
        result = trl_job(spec)
        with open(spec["result"], "w") as fh:
            json.dump(result, fh)
        return 0

    sizes = SMOKE if args.smoke else Sizes()
    sizes = replace(sizes, **{k: v for k, v in (("steps", args.steps), ("rounds", args.rounds),
                                                ("threads", args.threads)) if v is not None})
    if sizes.steps <= sizes.warmup:
        raise SystemExit(f"vs_trl: --steps must exceed the {sizes.warmup} warm-up steps")
    configs = parse_configs("gpt2/builtin" if args.smoke and args.configs == parser.get_default("configs")
                            else args.configs)
    if any(c.data == "hh" for c in configs) and not os.path.exists(os.path.join(args.hh, "helpful_base.json")):
        print(f"vs_trl: no HH data at {args.hh} (helpful_base.json; see the README's 'The HH data', or pass "
              f"--hh DIR): the HH configurations are left out", file=sys.stderr)
        configs = [replace(c, data="builtin") for c in configs]
        configs = [c for i, c in enumerate(configs) if c.name not in {d.name for d in configs[:i]}]
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    import torch

    torch.set_num_threads(sizes.threads)
    load = os.getloadavg()[0]
    print(f"vs_trl: {len(configs)} config(s) x {len(RUN_KINDS)} runs x {sizes.rounds} round(s), "
          f"{sizes.steps} steps each ({sizes.warmup} warm-up), batch {sizes.batch}, prompt <= {sizes.max_prompt} "
          f"and reply <= {sizes.max_response} tokens, {sizes.threads} threads; load average {load:.1f} on "
          f"{os.cpu_count()} CPUs; work folder {work}", flush=True)
    t0 = time.time()
    prepare(work, configs, sizes, args.hh)
    print(f"models and scored tables ready ({time.time() - t0:.0f} s)", flush=True)

    gaps = same_batch_gaps(configs[0].model_dir, configs[0].model_dir + "-ref", configs[0].table, sizes)
    print(f"\nlosses on one batch of {configs[0].name} (alol-ray vs TRL; the largest difference of the loss and of "
          "any gradient entry, relative where the magnitude exceeds 1):")
    for name, g in gaps.items():
        scale = "" if g["scale"] == 1.0 else f" (x {g['scale']:.2f} tokens/reply = {g['trl'] * g['scale']:.4f})"
        print(f"  {name:<12} alol-ray {g['alol']:.6f}  TRL {g['trl']:.6f}{scale}  |loss| {g['loss']:.1e}  "
              f"|grad| {g['grad']:.1e} (largest entry {g['grad_max']:.2g})")

    figures = {c.name: {k: [] for k in RUN_KINDS} for c in configs}
    losses = {}
    for r in range(sizes.rounds):
        for config in configs:
            for kind in (RUN_KINDS if r % 2 == 0 else RUN_KINDS[::-1]):
                run = run_kind(config, kind, sizes, sizes.steps, work, f"r{r}")
                figures[config.name][kind].append(summarize(run, sizes.warmup))
                losses.setdefault((config.name, kind), run["losses"])
                f = figures[config.name][kind][-1]
                print(f"  round {r} {config.name} {kind}: {f['ms_step']:.0f} ms/step, {f['tokens_s']:.0f} tokens/s, "
                      f"job {f['job_s']:.1f} s (load {os.getloadavg()[0]:.1f})", flush=True)

    ratios = {}
    for config in configs:
        ratios[config.name] = print_config_table(config, sizes, figures[config.name], work)
        ours, theirs = losses[(config.name, "dpo")], losses[(config.name, "trl_dpo")]
        n = min(len(ours), len(theirs))
        print(f"DPO loss per step, same batches: alol-ray {', '.join(f'{x:.4f}' for x in ours[:n])}\n"
              f"{'':>33}TRL {', '.join(f'{x:.4f}' for x in theirs[:n])}  (max |difference| "
              f"{max(abs(a - b) for a, b in zip(ours, theirs)):.1e})")
        f = figures[config.name]
        fixed = {k: statistics.mean(r["startup_s"] + r["finish_s"] for r in f[k]) for k in ("dpo", "trl_dpo")}
        med = {k: statistics.median([t for r in f[k] for t in r["step_times"]]) for k in ("dpo", "trl_dpo")}
        print(f"whole DPO job at 300 steps, projected (start-up + finish + 300 x median step): alol-ray "
              f"{fixed['dpo'] + 300 * med['dpo']:.0f} s, TRL {fixed['trl_dpo'] + 300 * med['trl_dpo']:.0f} s, ratio "
              f"{(fixed['dpo'] + 300 * med['dpo']) / (fixed['trl_dpo'] + 300 * med['trl_dpo']):.3f}; alol-ray's "
              f"start-up {fixed['dpo'] - statistics.mean(r['finish_s'] for r in f['dpo']):.1f} s vs TRL's "
              f"{fixed['trl_dpo'] - statistics.mean(r['finish_s'] for r in f['trl_dpo']):.1f} s")

    if args.job_steps:
        config = configs[0]
        print(f"\nwhole DPO job at {args.job_steps} steps on {config.name} (alol-ray: its default checkpoints, every "
              "100 steps with the optimizer state; TRL: its own shuffled data order, no checkpoint, as its default "
              "saves every 500 steps):", flush=True)
        jobs = {}
        for kind in ("dpo", "trl_dpo"):
            run = run_kind(config, kind, sizes, args.job_steps, work, "job", sequential=False)
            jobs[kind] = summarize(run, sizes.warmup)
            j = jobs[kind]
            print(f"  {kind:<8} {j['job_s']:.0f} s = start-up {j['startup_s']:.1f} + steps {j['steps_s']:.1f} "
                  f"+ finish {j['finish_s']:.1f}; peak RSS {j['rss_largest_mb']:.0f} MiB (all processes "
                  f"{j['rss_total_mb']:.0f})", flush=True)
        print(f"  alol-ray / TRL whole job: {jobs['dpo']['job_s'] / jobs['trl_dpo']['job_s']:.3f}")

    final = {k: geometric_mean([ratios[c.name][k] for c in configs]) for k in list(ALOL_KINDS) + ["dpo/cpu", "nll/cpu",
                                                                                                  "a_lol/cpu"]}
    with open(os.path.join(work, "results.json"), "w") as fh:
        json.dump({"sizes": asdict(sizes), "load_at_start": load, "gaps": gaps, "ratios": ratios, "final": final,
                   "figures": figures}, fh, indent=1)
    print(f"\nload average now {os.getloadavg()[0]:.1f}; results in {os.path.join(work, 'results.json')}")
    print(f"alol-ray / trl CPU time per step: dpo = {final['dpo/cpu']:.3f}, nll = {final['nll/cpu']:.3f}, "
          f"a_lol_vs_sft = {final['a_lol/cpu']:.3f}")
    print(f"alol-ray / trl step time: dpo = {final['dpo']:.3f}, nll = {final['nll']:.3f}, "
          f"a_lol_vs_sft = {final['a_lol']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
