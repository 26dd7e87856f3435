"""The training methods: the built-in ones, listed explicitly, and one method per module of ``alol_ray/methods/``.

    get_method("a_lol") -> Method     method_names() -> ["a_lol", ..., "ppo"]     check_method_name("dpoo")

Built in: the A-LoL family (``alol_ray.losses``: nll, wbc, r_gold, r_lol, a_lol, a_lol_ref_free,
a_lol_seq, a_lol_kl), the offline baselines (``alol_ray.baselines.methods``: dpo, dpo_ref_free, pro, gold,
gold_delta, gold_s, gold_p) and the online one (``alol_ray.baselines.ppo``: ppo), each listed in ``BUILTIN`` below with
the module whose import registers it.

A new method is one module ``alol_ray/methods/<name>.py`` (in this package, or under any folder on ``sys.path``:
``PYTHONPATH=my_folder`` with ``my_folder/alol_ray/methods/<name>.py``) that registers the method ``<name>`` with
``alol_ray.train.methods.register``: its file name makes it known, no list is edited.

The names are known without importing the methods (torch, transformers): a misspelt ``--algo`` is refused in
a fraction of a second, and ``get_method`` imports the modules on first use.
"""

from __future__ import annotations

import difflib
import importlib
import os
import pkgutil
import sys

# name -> the module whose import registers it (tests/test_train_methods.py checks that they agree)
ALOL_FAMILY = "alol_ray.losses"
BUILTIN: dict[str, str] = {
    **{name: ALOL_FAMILY for name in ("nll", "wbc", "r_gold", "r_lol", "a_lol", "a_lol_ref_free", "a_lol_seq",
                                      "a_lol_kl")},
    **{name: "alol_ray.baselines.methods" for name in ("dpo", "dpo_ref_free", "pro", "gold", "gold_delta", "gold_s",
                                              "gold_p")},
    "ppo": "alol_ray.baselines.ppo",
}


PLUGINS = "alol_ray.methods"  # one method per module, named by its file


def plugin_folders() -> list[str]:
    """``alol_ray/methods/`` of this package and under every folder of ``sys.path`` that has one."""
    own = os.path.join(os.path.dirname(os.path.abspath(__file__)), "methods")
    found = [own] + [os.path.join(entry or os.getcwd(), *PLUGINS.split(".")) for entry in sys.path]
    return list(dict.fromkeys(os.path.abspath(f) for f in found if os.path.isdir(f)))


def plugin_methods() -> dict[str, str]:
    """Method name -> its module, for every module file of the plugin folders (listed, not imported)."""
    return {info.name: f"{PLUGINS}.{info.name}" for info in pkgutil.iter_modules(plugin_folders())
            if not info.ispkg and not info.name.startswith("_") and info.name not in BUILTIN}


def known_methods() -> dict[str, str]:
    """Every method name -> the module whose import registers it (a built-in name wins over a plugin's)."""
    return {**plugin_methods(), **BUILTIN}


def method_names() -> list[str]:
    return sorted(known_methods())


def check_method_name(name: str) -> None:
    """ValueError naming the closest known method when ``name`` is none of them (imports nothing)."""
    known = known_methods()
    if name not in known:
        close = difflib.get_close_matches(name, list(known), n=1)
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


def load_plugin(name: str) -> dict:
    """Import ``alol_ray/methods/<name>.py`` (registering its method) and return the registry."""
    package = importlib.import_module(PLUGINS)
    package.__path__ = plugin_folders()  # folders put on sys.path after its import too
    importlib.import_module(f"{PLUGINS}.{name}")
    # lazy: torch comes with the methods (the names above are known without it)
    from alol_ray.train.methods import METHODS

    if name not in METHODS:
        raise ValueError(f"{PLUGINS}.{name} registers no training method named '{name}' (its file name)")
    return METHODS


def get_method(name: str):
    """The method registered as ``name`` (an ``alol_ray.train.methods.Method``); an unknown name raises
    ValueError naming the closest one."""
    check_method_name(name)
    return load_builtin_methods()[name] if name in BUILTIN else load_plugin(name)[name]
