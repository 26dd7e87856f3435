"""ValueHead: V(x) from the frozen reference policy's last-layer hidden states of the prompt.

    keys    = dropout(h)                                  h: [B, P, H] prompt states, right-padded
    pooled  = MultiheadAttention(q, keys, keys, key_padding_mask = ~mask)   one learned query q: [1, H]
    V(x)    = max_value * sigmoid(Linear(dropout(pooled)))                  [B], in [0, max_value]

As the reference code (LoL-RL's ValueHeadAttention) except that padded positions are masked out of the
attention (the reference attends to them) and values are computed in eval() mode (no dropout).
Saved as safetensors + a JSON config; never pickled.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass

import torch
from torch import nn

WEIGHTS_FILE = "value_head.safetensors"
CONFIG_FILE = "value_head.json"


@dataclass(frozen=True)
class ValueHeadConfig:
    hidden_size: int  # width of the reference policy's hidden states
    num_heads: int = 4
    dropout: float = 0.1
    max_value: float = 1.0

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads != 0:
            raise ValueError(f"value head: hidden size {self.hidden_size} is not divisible by "
                             f"{self.num_heads} heads (set value.heads to a divisor)")
        if self.max_value <= 0:
            raise ValueError(f"value head: max_value must be > 0, got {self.max_value}")


class ValueHead(nn.Module):
    """Attention pooling with one learned query over prompt states, then a sigmoid-scaled linear output."""

    def __init__(self, config: ValueHeadConfig):
        super().__init__()
        self.config = config
        h = config.hidden_size
        self.state_dropout = nn.Dropout(config.dropout)
        self.query = nn.Parameter(torch.randn(1, 1, h) / math.sqrt(h))
        self.attention = nn.MultiheadAttention(h, config.num_heads, batch_first=True)
        self.pooled_dropout = nn.Dropout(config.dropout)
        self.out = nn.Linear(h, 1)

    def forward(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """states [B, P, H] float, attention_mask [B, P] (1 = real token) -> values [B] in [0, max_value]."""
        keys = self.state_dropout(states)
        query = self.query.expand(states.shape[0], -1, -1).to(keys.dtype)
        pooled, _ = self.attention(query, keys, keys, key_padding_mask=attention_mask == 0, need_weights=False)
        logit = self.out(self.pooled_dropout(pooled[:, 0])).squeeze(-1)
        return torch.sigmoid(logit) * self.config.max_value

    def start_at(self, value: float) -> None:
        """Set the output bias so that, before training, V(x) is about `value` (e.g. the mean target)."""
        frac = min(max(value / self.config.max_value, 1e-4), 1 - 1e-4)
        with torch.no_grad():
            self.out.bias.fill_(math.log(frac / (1 - frac)))


def save_head(head: ValueHead, folder: str, **extra) -> str:
    """Write value_head.safetensors + value_head.json (the config and `extra` facts) into `folder`."""
    # lazy: safetensors (alol_ray.value.head imports without it)
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    save_file(tensors, os.path.join(folder, WEIGHTS_FILE))
    with open(os.path.join(folder, CONFIG_FILE), "w", encoding="utf-8") as fh:
        json.dump({"config": asdict(head.config), **extra}, fh, indent=2)
    return os.path.join(folder, WEIGHTS_FILE)


def load_head(folder: str, device=None) -> ValueHead:
    """The head saved by `save_head`, in eval() mode."""
    # lazy: safetensors (alol_ray.value.head imports without it)
    from safetensors.torch import load_file

    with open(os.path.join(folder, CONFIG_FILE), encoding="utf-8") as fh:
        config = ValueHeadConfig(**json.load(fh)["config"])
    head = ValueHead(config)
    head.load_state_dict(load_file(os.path.join(folder, WEIGHTS_FILE)))
    if device is not None:
        head = head.to(device)
    return head.eval()
