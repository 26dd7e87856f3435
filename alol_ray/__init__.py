"""alol-ray: offline RL for language models on Ray (A-LoL and baselines)."""

__version__ = "0.1.0"
