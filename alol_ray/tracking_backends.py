"""Experiment-tracking backends by name: the package each needs and the class that writes to it.

    get_backend("wandb") -> Backend("wandb", "wandb", "alol_ray.tracking:WandBBackend")
    check_names(["wandb"]); check_installed(["wandb"])  # ConfigError: unknown or twice; not installed here
    register_backend(Backend("my_tracker", "my_pkg", "my_pkg.tracking:MyBackend"))

A backend class is built as ``cls(spec, first_step)`` (``spec``: ``alol_ray.tracking.TrackingSpec``) and answers
``log(metrics, step)``, ``log_table(name, frame, step)`` and ``close()`` (see ``alol_ray/tracking.py``).
``tracking.backends`` takes any registered name: the config, ``alol_ray.tracking`` and the error messages read
this table, nothing else lists the backends.

Standard library only: the config checks names and installs without importing tensorboard, mlflow or wandb
(or ``alol_ray.tracking``); a backend's class is a "module:attribute" string imported where a run opens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from alol_ray.engines import module_installed, resolve, say_choices
from alol_ray.errors import ConfigError

INSTALL_HINT = "pip install 'alol-ray[tracking]'"


@dataclass(frozen=True)
class Backend:
    """One tracking backend (see the module docs)."""

    name: str
    package: str  # the module its class imports, checked with find_spec before any work (not imported)
    backend_class: Any  # "package.module:Class" (imported where a run opens) or the class itself

    def installed(self) -> bool:
        return module_installed(self.package)

    def load_class(self) -> type:
        return resolve(self.backend_class)


BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    BACKENDS[backend.name] = backend
    return backend


def unregister_backend(name: str) -> None:
    BACKENDS.pop(name, None)


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise ConfigError(f"tracking.backends: unknown {name!r}; choose from {say_choices(BACKENDS)}") from None


def check_names(names: list[str]) -> None:
    """ConfigError for an unknown name or a name listed twice."""
    unknown = [b for b in names if b not in BACKENDS]
    if unknown:
        raise ConfigError(f"tracking.backends: unknown {unknown}; choose from {list(BACKENDS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"tracking.backends lists a backend twice: {names}")


def check_installed(names: list[str]) -> None:
    """ConfigError naming the extra to install when a backend's package cannot be found (cheap: no import), so a
    missing package fails at config load, not in a Train worker."""
    missing = [b for b in names if not BACKENDS[b].installed()]
    if missing:
        packages = ", ".join(f"'{BACKENDS[b].package}'" for b in missing)
        raise ConfigError(f"tracking.backends: {', '.join(missing)} is not installed here (package {packages}): "
                          f"{INSTALL_HINT}")


register_backend(Backend("tensorboard", "tensorboard", "alol_ray.tracking:TensorBoardBackend"))
register_backend(Backend("mlflow", "mlflow", "alol_ray.tracking:MLflowBackend"))
register_backend(Backend("wandb", "wandb", "alol_ray.tracking:WandBBackend"))
