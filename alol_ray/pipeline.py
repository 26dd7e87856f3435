"""The pipeline: which stage needs which, in what order, and whether it is up to date.

    rows -> base policy -> reference (pi_ref) -> scored table -> value table -> train <method>-s<seed> -> eval
                                             \\-> reward model (alol rm train)

``Pipeline(cfg)`` owns the stages. Each method makes one stage's output exist and returns its path: it
asks for what the stage needs first, computes the stage's fingerprint from the config sections and the
*content* of its inputs, and runs the stage only when its published output holds another fingerprint
(``alol_ray.stage``: built in a staging folder, published in one step). The stage implementations live
below this module and receive their inputs as arguments; none of them calls back here.

A pipeline object remembers what it has made, so ``alol compare`` asks for the shared stages once per run
and each is reported once.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Optional

from alol_ray import columns as C
from alol_ray.atomic import read_json
from alol_ray.config import RunConfig
from alol_ray.config_loading import save_config
from alol_ray.errors import ConfigError, UserError
from alol_ray.hashing import file_sha, fingerprint
from alol_ray.preflight import check_run
from alol_ray.runs import GREEDY, SAMPLED, RunPaths
from alol_ray.stage import Unfinished, discard, intact, read_marker, run_stage, stage_fingerprint

log = logging.getLogger("alol")

class Pipeline:
    """Stages of one run (``cfg.storage``/``cfg.name``), each built at most once per pipeline object."""

    def __init__(self, cfg: RunConfig, *, check: bool = True):
        if check:
            check_run(cfg)  # hub ids, method names, reward components: before any stage or Ray starts
        self.cfg = cfg
        self.paths = RunPaths.from_config(cfg)
        self._made: dict[tuple, str] = {}
        if check:
            self.check_chat_template()
        os.makedirs(self.paths.root, exist_ok=True)
        save_config(cfg, self.paths.config)

    def _once(self, key: tuple, make) -> str:
        if key not in self._made:
            self._made[key] = make()
        return self._made[key]

    # ------------------------------------------------------------------------------------------- data

    def rows(self) -> str:
        """Canonical rows: <run>/data/rows.parquet (+ summary.json)."""
        return self._once(("rows",), self._rows)

    def _rows(self) -> str:
        # lazy: alol_ray.data.loaders (pandas, pyarrow) (alol_ray.pipeline imports without them)
        from alol_ray.data.loaders import build_rows

        folder = self.paths.data
        # The sources enter by content (config_fields.path_field): an edited file is read again.
        fp = fingerprint("rows-v2", self.cfg.data)
        run_stage("rows", folder, fp, lambda out: build_rows(self.cfg.data, out))
        return os.path.join(folder, "rows.parquet")

    def require_split(self, split: str, why: str) -> None:
        """A user error now, not after minutes of other stages, when the rows have no ``split`` rows."""
        # lazy: alol_ray.data.loaders (pandas, pyarrow) (alol_ray.pipeline imports without them)
        from alol_ray.data.loaders import SUMMARY_FILE

        self.rows()
        splits = (read_json(os.path.join(self.paths.data, SUMMARY_FILE)) or {}).get("splits", {})
        if not splits.get(split, {}).get("rows"):
            hint = ("set data.holdout_fraction=0.05 data.holdout_from=train data.holdout_split=val, or add a source "
                    "with split: val (on the command line: file.jsonl@val)") if split == "val" else \
                   f"set data.holdout_fraction=0.1 data.holdout_split={split}, or add a source with split: {split}"
            raise UserError(f"{why} needs {split} prompts, and the data has none (splits: {sorted(splits)}): {hint}")

    def require_layout(self, method) -> None:
        """A user error now, not after pi_ref and the scored table, when no train prompt has the replies the
        method's training unit needs: two or more for a pair (dpo) or a ranked list (pro)."""
        if method.layout == "single" or method.online:
            return
        # lazy: pandas (alol_ray.pipeline imports without it)
        import pandas as pd

        rows = pd.read_parquet(self.rows(), columns=[C.PROMPT_ID, C.SPLIT])
        sizes = rows.loc[rows[C.SPLIT] == "train"].groupby(C.PROMPT_ID).size()
        if not (sizes >= 2).any():
            unit = "a preference pair" if method.layout == "pair" else "a ranked list of replies"
            raise UserError(f"{method.name} trains on {unit} per prompt, and no train prompt of the data has two or "
                            f"more replies ({len(sizes)} prompts, one reply each): give prompts several replies "
                            "(format pairs, or rows that share a prompt), or choose a method that trains on single "
                            "replies (e.g. a_lol, nll)")

    def base_policy(self) -> str:
        """The starting policy: a tiny GPT-2 built from config (tokenizer trained on the run's train text), or
        ``model.name_or_path`` as it is (a folder or hub id; a GGUF file imported once into a cached folder)."""
        if self.cfg.model.init == "pretrained":
            return self._once(("pretrained",), lambda: self._pretrained(self.cfg.model.name_or_path))
        return self._once(("base",), self._base_policy)

    @staticmethod
    def _pretrained(name_or_path: str) -> str:
        # lazy: alol_ray.models (torch, transformers) (alol_ray.pipeline imports without them)
        from alol_ray.models import resolve_model

        return resolve_model(name_or_path)

    def check_chat_template(self) -> None:
        """Under ``model.chat_template``, a ConfigError (one line) now, before any stage, when the policy's or
        pi_ref's tokenizer has no chat template."""
        if not self.cfg.model.chat_template:
            return
        # lazy: alol_ray.models (torch, transformers) (alol_ray.pipeline imports without them)
        from alol_ray.families import PromptFormat, check_chat_template
        from alol_ray.models import load_tokenizer

        named = [("model.name_or_path", self.base_policy())]
        if self.cfg.reference.path:
            named.append(("reference.path", self.reference()))
        for key, path in named:
            try:
                tokenizer = load_tokenizer(path, trust_remote_code=self.cfg.model.trust_remote_code)
            except (OSError, ValueError):  # an unreadable model: its stage says why
                continue
            check_chat_template(tokenizer, PromptFormat(chat_template=True), f"{key}={path}")

    def _base_policy(self) -> str:
        # lazy: alol_ray.models (torch, transformers) (alol_ray.pipeline imports without them)
        from alol_ray.models import tiny_policy_from_rows

        rows = self.rows()
        t = self.cfg.model.tiny
        fp = fingerprint("base-v2", t, file_sha(rows), self.cfg.seed)

        def build(out: str) -> dict:
            tiny_policy_from_rows(out, rows, t, seed=self.cfg.seed)
            return {"kind": "tiny"}

        run_stage("base policy", self.paths.base_policy, fp, build)
        return self.paths.base_policy

    # ------------------------------------------------------------------------------------------ reference

    def reference(self) -> str:
        """pi_ref: ``reference.path`` when set, else the base policy fine-tuned by ``reference.train`` (NLL on
        the preferred train responses), exported to <run>/train/reference-s<seed>/best."""
        if self.cfg.reference.path:
            return self._once(("reference.path",), lambda: self._pretrained(self.cfg.reference.path))
        return self._once(("reference",), self._reference)

    def published_reference(self) -> Optional[str]:
        """pi_ref as it already is, building nothing: ``reference.path``, or the reference stage's published
        output whatever config it was built with (None when there is none). ``reference()`` on this pipeline
        returns it from now on, so evaluations measure win rates against the pi_ref the run's policies had."""
        if self.cfg.reference.path:
            return self.reference()
        folder = self.paths.train("reference", self.cfg.reference.train.seed)
        marker = read_marker(folder)
        if not marker or not intact(folder, marker):
            return None
        self._made[("reference",)] = self.paths.reference(self.cfg.reference.train.seed)
        return self._made[("reference",)]

    def _reference(self) -> str:
        tc = self.cfg.reference.train
        if tc.eval_every > 0:
            self.require_split("val", f"reference.train.eval_every={tc.eval_every} (model selection by val reward)")
        # lazy: alol_ray.registry, alol_ray.train.trainer, alol_ray.scoring.reward (torch, transformers, numpy)
        # (alol_ray.pipeline imports without them)
        from alol_ray.registry import get_method
        from alol_ray.scoring.reward import Reward
        from alol_ray.train import trainer

        table, start = self.rows(), self.base_policy()
        # The reward's config only: pi_ref's val selection cannot depend on statistics of a table scored with pi_ref.
        fp = fingerprint("reference-v3", trainer.identity(self.cfg, tc, get_method(tc.algo), init=start, table=table,
                                                          reward=Reward(self.cfg.reward)))
        return self._train_stage("reference", tc, table=table, init=start, fp=fp)

    # ------------------------------------------------------------------------------------------- scoring

    def reward(self):
        """The run's reward (``scoring.reward.Reward``), resolved once per published scored table: the components
        and the table's statistics of the standardised ones. Every stage that scores new replies receives it."""
        # lazy: alol_ray.scoring.table (pandas, pyarrow) (alol_ray.pipeline imports without them)
        from alol_ray.scoring.table import resolve_reward

        return self._once(("reward", stage_fingerprint(self.paths.scored)),
                          lambda: resolve_reward(self.cfg.reward, self.paths.scored))

    def scored(self, reference: Optional[bool] = None) -> str:
        """The scored table <run>/scored/table.parquet: rewards and, unless ``scoring.reference`` is off,
        pi_ref's per-token log-probs. Scores come from the run's content-addressed cache when it has them."""
        with_ref = self.cfg.scoring.reference if reference is None else reference
        return self._once(("scored", with_ref), lambda: self._scored(with_ref))

    def _scored(self, with_ref: bool) -> str:
        # lazy: pandas, alol_ray.scoring.table (pandas, pyarrow) (alol_ray.pipeline imports without them)
        import pandas as pd

        from alol_ray.scoring import table

        rows = self.rows()
        ref_path = self.reference() if with_ref else None
        fp = fingerprint("scored-v3", file_sha(rows), table.stage_identity(self.cfg, ref_path))
        cache = self.paths.score_cache

        def build(out: str) -> dict:
            return table.score_rows(pd.read_parquet(rows), self.cfg, out, cache_dir=cache, ref_path=ref_path).summary()

        run_stage("scored", self.paths.scored, fp, build)
        return os.path.join(self.paths.scored, table.TABLE_FILE)

    def value(self) -> str:
        """The value table <run>/value/table.parquet: the scored table plus ``value`` and ``advantage``, with
        the value head and its fit and advantage reports beside it."""
        return self._once(("value",), self._value)

    def _value(self) -> str:
        # lazy: alol_ray.value.fit (torch, pandas) (alol_ray.pipeline imports without them)
        from alol_ray.value import fit as value

        self.require_split("val", "the value head (A-LoL's V(x), fit on pi_ref's replies to val prompts)")
        ref_path, scored, reward = self.reference(), self.scored(), self.reward()
        c = self.cfg
        fp = fingerprint("value-v3", value.identity(c, reference=ref_path, table=scored, reward=reward))

        def build(out: str) -> dict:
            result = value.build_value(c, ref_path, scored, out, reward=reward)
            fit, adv = result["fit"], result["advantages"]["advantage/train"]
            return {"mse/holdout": fit["mse/holdout"], "mse/holdout_predict_mean": fit["mse/holdout_predict_mean"],
                    "best_epoch": fit["best_epoch"], "advantage/positive_fraction": adv["positive_fraction"]}

        run_stage("value", self.paths.value, fp, build)
        return os.path.join(self.paths.value, value.TABLE_FILE)

    # ------------------------------------------------------------------------------------- reward model

    def reward_model(self, force: bool = False) -> str:
        """A reward model trained on the run's rows (``rm`` section): the HF folder ``rm.output`` or
        <run>/rm/model, with alol_reward.json (input rendering) and alol_rm_eval.json (held-out metrics)."""
        # lazy: alol_ray.rm.train (pandas, pyarrow) (alol_ray.pipeline imports without them)
        from alol_ray.rm.train import learned_settings, train_reward_model

        rows = self.rows()
        out = self.cfg.rm.output or self.paths.reward_model
        fp = fingerprint("rm-v2", learned_settings(self.cfg.rm), file_sha(rows))
        if force:
            discard(out)
        run_stage("reward model", out, fp,
                  lambda staging: train_reward_model(self.cfg, rows, staging, cache_dir=self.paths.rm_features),
                  resumable=True)
        return out

    # ------------------------------------------------------------------------------------------ training

    def train(self, method: Optional[str] = None, seed: Optional[int] = None, *, table: Optional[str] = None,
              init: Optional[str] = None, stop_at_step: int = 0) -> str:
        """A trained policy: <run>/train/<method>-s<seed>/best (HF folder, the checkpoint with the best val
        reward). Its inputs come from the pipeline (value table when the method needs advantages, else the
        scored table; pi_ref as the start) unless ``table`` / ``init`` are given. An interrupted run resumes;
        ``stop_at_step`` ends this call after that step's checkpoint without publishing (a rerun continues)."""
        # lazy: alol_ray.registry, alol_ray.train.trainer (torch, transformers) (alol_ray.pipeline imports without them)
        from alol_ray.registry import get_method
        from alol_ray.train import trainer

        method = method or self.cfg.train.algo
        tc = dataclasses.replace(self.cfg.train, algo=method, seed=self.cfg.train.seed if seed is None else seed)
        m = get_method(method)
        if table is None:
            self.require_layout(m)
        # The value table when the method's loss reads advantages or its sampler draws by them (nll with
        # train.sampler=good_priority trains on A-LoL's rows), else the scored table.
        with_advantage = m.needs_advantage_with(tc.sampler)
        if table is None and tc.eval_every > 0:
            self.require_split("val", f"train.eval_every={tc.eval_every} (model selection by val reward)")
        if table is None and with_advantage:
            self.require_split("val", f"{method} (its advantages need the value head, fit on val prompts)")
        key = ("train", method, tc.seed, table, init)
        if key in self._made and not stop_at_step:
            return self._made[key]
        if init is None:
            init = {"reference": self.reference, "base": self.base_policy}.get(tc.init_from, lambda: tc.init_from)()
        if m.online:
            table = table or self.rows()
        else:
            table = table or (self.value() if with_advantage else self.scored())
        fp = fingerprint("train-v3", trainer.identity(self.cfg, tc, m, init=init, table=table, reward=self.reward(),
                                                      reference=self.reference() if m.online else None))
        best = self._train_stage(method, tc, table=table, init=init, fp=fp, stop_at_step=stop_at_step)
        if not stop_at_step:
            self._made[key] = best
        return best

    def _train_stage(self, method: str, tc, *, table: str, init: str, fp: str, stop_at_step: int = 0) -> str:
        # lazy: alol_ray.registry, alol_ray.train.trainer (torch, transformers) (alol_ray.pipeline imports without them)
        from alol_ray.registry import get_method
        from alol_ray.train.trainer import BEST_DIR, fit

        folder = self.paths.train(method, tc.seed)
        m = get_method(tc.algo)
        ref = self.reference() if m.online else None

        def build(work: str):
            if m.online:
                out = m.fit_online(self.cfg, train_cfg=tc, rows=table, policy_path=init, ref_path=ref, work_dir=work,
                                   stop_at_step=stop_at_step)
            else:
                out = fit(self.cfg, method=m, train_cfg=tc, table=table, policy_path=init, work_dir=work,
                          stop_at_step=stop_at_step, reward=self.reward())
            if isinstance(out, Unfinished):
                return out
            return {"algo": tc.algo, "steps": out.total_steps, "best_step": out.best_step,
                    "best_val_reward": out.best_val_reward, "positive_fraction": out.positive_fraction}

        run_stage(f"train {method}-s{tc.seed}", folder, fp, build, resumable=True)
        return os.path.join(folder, BEST_DIR)

    # ---------------------------------------------------------------------------------------- evaluation

    def eval_prompts(self, split: Optional[str] = None, max_prompts: Optional[int] = None):
        """One row per prompt of ``split`` (prompt_id, prompt), ordered by prompt_id, at most ``max_prompts``."""
        # lazy: pandas (alol_ray.pipeline imports without it)
        import pandas as pd

        split = split or self.cfg.eval.split
        rows = pd.read_parquet(self.rows(), columns=[C.PROMPT_ID, C.PROMPT, C.SPLIT])
        chosen = rows[rows[C.SPLIT] == split]
        if chosen.empty:
            raise UserError(f"eval split '{split}' has no prompts in {self.paths.rows} (splits: "
                            f"{sorted(rows[C.SPLIT].unique())}); pick one with --split or eval.split=, or hold some "
                            f"prompts out with data.holdout_fraction=0.1 data.holdout_split={split}")
        prompts = chosen.drop_duplicates(C.PROMPT_ID).sort_values(C.PROMPT_ID, kind="stable")
        if max_prompts is not None:
            prompts = prompts.head(max_prompts)
        return prompts[[C.PROMPT_ID, C.PROMPT]].reset_index(drop=True)

    def decoding_config(self, decoding: str = GREEDY) -> RunConfig:
        """The run's config for one decoding of the evaluation: ``greedy`` = generation.* as set; ``sampled`` =
        temperature eval.sample_temperature, top-p eval.sample_top_p (ConfigError when that is not set)."""
        if decoding == GREEDY:
            return self.cfg
        ev = self.cfg.eval
        if decoding != SAMPLED or ev.sample_top_p is None:
            raise ConfigError(f"evaluation decoding {decoding!r}: use {GREEDY!r}, or {SAMPLED!r} with "
                              "eval.sample_top_p set")
        gen = dataclasses.replace(self.cfg.generation, temperature=ev.sample_temperature, top_p=ev.sample_top_p)
        return dataclasses.replace(self.cfg, generation=gen)

    def evaluate(self, method: str, seed: int, model_path: Optional[str] = None, *, split: Optional[str] = None,
                 max_prompts: Optional[int] = None, out: Optional[str] = None, decoding: str = GREEDY,
                 prompts=None, ref_cache: Optional[str] = None) -> str:
        """One policy's evaluation: <run>/eval/<method>-s<seed>/ (examples.parquet, summary.json), whose
        folder is returned; the ``sampled`` decoding goes to <run>/eval/sampled/<method>-s<seed>/.
        ``model_path`` None = the reference policy. ``prompts`` (prompt_id, prompt) replace the split's
        (``split`` then names them), with their own ``out`` and pi_ref replies cache ``ref_cache``."""
        # lazy: alol_ray.evaluation.eval_job (pandas, pyarrow) (alol_ray.pipeline imports without them)
        from alol_ray.evaluation import eval_job

        split = split or self.cfg.eval.split
        max_prompts = self.cfg.eval.max_prompts if max_prompts is None else max_prompts
        key = ("eval", method, seed, model_path, split, max_prompts, out, decoding)
        if key in self._made:
            return self._made[key]
        c = self.decoding_config(decoding)
        prompts = self.eval_prompts(split, max_prompts) if prompts is None else prompts
        ref_path = self.reference() if (model_path is None or self.cfg.eval.win_rate) else None
        model_path = model_path or ref_path
        folder = out or self.paths.eval(method, seed, decoding)
        reward = self.reward()
        fp = fingerprint("eval-v3", eval_job.identity(c, model_path=model_path, ref_path=ref_path, split=split,
                                                      prompts=prompts, reward=reward))

        def build(staging: str) -> dict:
            result = eval_job.run_eval(c, prompts=prompts, model_path=model_path, method=method, seed=seed,
                                       split=split, ref_path=ref_path, reward=reward, out_dir=staging,
                                       ref_cache=ref_cache or self.paths.reference_replies(decoding))
            log.info(result.table)
            return {"method": method, "seed": seed}

        run_stage(f"eval {method}-s{seed}", folder, fp, build)
        self._made[key] = folder
        return folder
