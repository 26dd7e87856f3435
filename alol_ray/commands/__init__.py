"""The `alol` subcommands, one module each (see ``alol_ray.cli``). This is the CLI layer: the only layer,
with the comparison runner, that sits above ``alol_ray.pipeline``."""
