"""Reward-model training (`alol rm train`): a one-output sequence classifier on canonical rows.

    backbone.py  locate/load the backbone, mean pooling as a standard BERT layer, input rendering,
                 the `alol_reward.json` spec the RewardScorer reads
    losses.py    pure losses: regression (MSE) and pairwise Bradley-Terry
    metrics.py   Pearson, Spearman, pairwise accuracy, and the evaluation report
    embed.py     the frozen-encoder feature pass (Ray Data actor pool) and its cache
    train.py     the Ray Train job and the stage that writes the HF folder
    cli.py       `alol rm train`

Nothing heavy is imported here (`alol --help` imports the CLI module).
"""
