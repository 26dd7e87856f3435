"""ReferenceScorer: the frozen reference policy pi_ref, as a callable class for ``map_batches``.

For each (prompt, response) row it computes log pi_ref(y_t | x, y_<t) of every response token
(``ref_token_logps``, EOS included) and their sum (``ref_logp``). The pair is tokenised by
``alol_ray.tokenization`` (``encode_pair`` + ``collate`` + ``response_token_logps``), the very path the
training loss takes, so at step 0 (policy == pi_ref) the A-LoL importance weight
pi_theta(y|x) / pi_ref(y|x) = exp(sum logps - ref_logp) is 1 for every row.

It also gives the prompt hidden states the value head reads (``prompt_hidden_states``).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from alol_ray import columns as C
from alol_ray.config import PolicyConfig
from alol_ray.families import TEXT, PromptFormat, check_chat_template
from alol_ray.tokenization import collate, encode_pair, prompt_batch, response_token_logps


class ReferenceScorer:
    """Frozen pi_ref: per-token log-probs of given responses; prompt hidden states for the value head."""

    def __init__(self, model_path: str, *, max_prompt_tokens: int, max_response_tokens: int, model_cfg=None,
                 prompt_format: Optional[PromptFormat] = None, use_gpu: bool = False, bf16: bool = False,
                 num_threads: Optional[int] = None):
        """``model_cfg``: the run's ``model`` section (PolicyConfig): pi_ref is loaded with the weight dtype
        and quantization training loads the policy with (``models.load_frozen_policy``); None = defaults.
        ``prompt_format``: how prompts become ids, as for the policy (``families.prompt_format(cfg)``)."""
        # lazy: torch, alol_ray.models (torch, transformers) (alol_ray.scoring.reference imports without them)
        import torch

        from alol_ray.models import load_frozen_policy

        if num_threads:
            torch.set_num_threads(int(num_threads))
        self.device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        # bf16 as training does it (fp32 weights under bf16 autocast), so that at step 0 the policy's
        # log-probs and these agree as closely as the hardware allows.
        self.autocast = bf16 and self.device == "cuda"
        self.model, self.tokenizer = load_frozen_policy(model_path, model_cfg or PolicyConfig(),
                                                        torch.device(self.device))
        self.prompt_format = prompt_format or TEXT
        check_chat_template(self.tokenizer, self.prompt_format, model_path)
        self.max_prompt_tokens = max_prompt_tokens
        self.max_response_tokens = max_response_tokens

    def token_logps(self, prompts: list[str], responses: list[str]) -> list[np.ndarray]:
        """Per-token log-probs of each response (float32 array of its length, EOS included)."""
        # lazy: torch (alol_ray.scoring.reference imports without it)
        import torch

        pairs = [encode_pair(self.tokenizer, p, r, self.max_prompt_tokens, self.max_response_tokens, self.prompt_format)
                 for p, r in zip(prompts, responses)]
        batch = collate(pairs, self.tokenizer.pad_token_id).to(self.device)
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            logps = response_token_logps(self.model, batch).float().cpu().numpy()
        lengths = batch.response_lengths.cpu().numpy()
        return [logps[i, : lengths[i]].astype(np.float32) for i in range(len(pairs))]

    def __call__(self, batch):
        """Adds ``ref_token_logps`` (list of float32) and ``ref_logp`` (float64) to a pandas batch; with a
        ``row_key`` column present, returns just ``row_key`` and the two new columns (the table's cache)."""
        # lazy: pandas (alol_ray.scoring.reference imports without it)
        import pandas as pd

        token_logps = self.token_logps(batch[C.PROMPT].tolist(), batch[C.RESPONSE].tolist())
        # The sum in float64 of the stored float32 values: exactly what a reader of the table recomputes.
        sums = np.array([float(np.sum(t, dtype=np.float64)) for t in token_logps])
        if C.ROW_KEY in batch:
            return pd.DataFrame({C.ROW_KEY: batch[C.ROW_KEY].to_numpy(), C.REF_TOKEN_LOGPS: token_logps,
                                 C.REF_LOGP: sums})
        out = batch.copy()
        out[C.REF_TOKEN_LOGPS] = token_logps
        out[C.REF_LOGP] = sums
        return out

    def prompt_hidden_states(self, prompts: list[str]):
        """Last-layer hidden states of the prompts, tokenised as training does (left-truncated):
        (hidden [B, P, H] float32, attention_mask [B, P] long), right-padded, on the CPU."""
        # lazy: torch (alol_ray.scoring.reference imports without it)
        import torch

        input_ids, attention_mask = prompt_batch(self.tokenizer, list(prompts), self.max_prompt_tokens,
                                                 self.prompt_format)
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            out = self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                             output_hidden_states=True)
        return out.hidden_states[-1].float().cpu(), attention_mask
