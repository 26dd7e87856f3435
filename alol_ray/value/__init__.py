"""The value estimate V(x) of A-LoL (Baheti et al., ICLR 2024, arXiv 2305.14718, Sec. 2.2).

pi_ref answers each val prompt once (greedy), the reward function scores the answers, and a small head
on the frozen pi_ref's prompt hidden states learns prompt -> expected reward. Its prediction on every
training prompt gives ``value`` and ``advantage = reward - value`` in the scored table.

    head.py  ValueHead (attention pooling with one learned query), safetensors save/load
    fit.py   prompt states, fitting with held-out epoch selection, advantages, reports, the stage
    cli.py   `alol value`

Kept free of heavy imports: `alol --help` imports the CLI module only.
"""
