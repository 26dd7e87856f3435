"""The training methods alol-ray ships, listed explicitly (nothing is discovered by probing imports).

    get_method("a_lol") -> Method     method_names() -> ["a_lol", ..., "ppo"]     check_method_name("dpoo")

Built in: the A-LoL family (``alol_ray.losses``: nll, wbc, r_gold, r_lol, a_lol, a_lol_ref_free,
a_lol_seq, a_lol_kl), the offline baselines (``baselines.methods``: dpo, dpo_ref_free, pro, gold,
gold_delta, gold_s, gold_p) and the online one (``baselines.ppo``: ppo). A new method registers itself
with ``alol_ray.train.methods.register`` in its module, and is listed in ``BUILTIN`` below with that module.

The names are known without importing the methods (torch, transformers): a misspelt ``--algo`` is refused in
a fraction of a second, and ``get_method`` imports the modules on first use.
"""

from __future__ import annotations

import difflib
import importlib

# name -> the module whose import registers it (tests/test_train_methods.py checks that they agree)
ALOL_FAMILY = "alol_ray.losses"
BUILTIN: dict[str, str] = {
    **{name: ALOL_FAMILY for name in ("nll", "wbc", "r_gold", "r_lol", "a_lol", "a_lol_ref_free", "a_lol_seq",
                                      "a_lol_kl")},
    **{name: "baselines.methods" for name in ("dpo", "dpo_ref_free", "pro", "gold", "gold_delta", "gold_s",
                                              "gold_p")},
    "ppo": "baselines.ppo",
}


def method_names() -> list[str]:
    return sorted(BUILTIN)


def check_method_name(name: str) -> None:
    """ValueError naming the closest built-in method when ``name`` is none of them (imports nothing)."""
    if name not in BUILTIN:
        close = difflib.get_close_matches(name, list(BUILTIN), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown training method '{name}' (known: {method_names()}){hint}")


def load_builtin_methods() -> dict:
    """Import every built-in method's module (registering it) and return the registry, name -> Method."""
    # lazy: torch and transformers come with the methods (the names above are known without them)
    from alol_ray.train.methods import METHODS, register_alol_family

    if not all(name in METHODS for name, module in BUILTIN.items() if module == ALOL_FAMILY):
        register_alol_family()
    for module in sorted(set(BUILTIN.values()) - {ALOL_FAMILY}):
        importlib.import_module(module)
    return METHODS


def get_method(name: str):
    """The method registered as ``name`` (an ``alol_ray.train.methods.Method``); an unknown name raises
    ValueError naming the closest one."""
    check_method_name(name)
    return load_builtin_methods()[name]
