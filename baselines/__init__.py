"""Baseline methods compared against A-LoL: offline losses (dpo, pro, gold) and the online PPO loop."""
