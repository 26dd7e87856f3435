"""The training methods alol-ray ships, listed explicitly (nothing is discovered by probing imports).

    get_method("a_lol") -> Method     method_names() -> ["a_lol", ..., "ppo"]

Built in: the A-LoL family (``alol_ray.losses``: nll, wbc, r_gold, r_lol, a_lol, a_lol_ref_free,
a_lol_seq, a_lol_kl), the offline baselines (``baselines.methods``: dpo, dpo_ref_free, pro, gold,
gold_delta, gold_s, gold_p) and the online one (``baselines.ppo``: ppo). A new method registers itself
with ``alol_ray.train.methods.register`` in its module, and that module is imported here.
"""

from __future__ import annotations

import difflib

import baselines.methods  # noqa: F401  (registers dpo, dpo_ref_free, pro, gold, gold_*)
import baselines.ppo  # noqa: F401  (registers ppo)
from alol_ray.train.methods import METHODS, Method, register_alol_family

register_alol_family()


def get_method(name: str) -> Method:
    """The method registered as ``name``; an unknown name raises ValueError naming the closest one."""
    if name not in METHODS:
        close = difflib.get_close_matches(name, list(METHODS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown training method '{name}' (known: {sorted(METHODS)}){hint}")
    return METHODS[name]


def method_names() -> list[str]:
    return sorted(METHODS)
