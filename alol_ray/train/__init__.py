"""Training on the scored table with Ray Train: one loop skeleton, losses and samplers looked up by name.

    samplers.py   which units (rows, pairs, lists) each optimizer step trains on; seeded, sharded, resumable
    methods.py    the Method registry: a name -> batch layout, table columns and the loss call
    worker_loop.py the worker-loop skeleton every Ray Train job runs (offline, PPO, reward model): resume,
                  LR, cadence, logging, checkpoints through the parallel strategy, selection; methods as hooks
    strategy.py   the parallel strategy (DDP now): wrap, gradient sync, autocast, clip, save, load optimizer
    loop.py       `OfflineHooks`: the offline methods' step (micro-batches, the method's loss by name)
    checkpoint.py checkpoint contents (model, optimizer, step, sampler) and the HF export of the best one
    selection.py  greedy generation on val prompts + reward: the paper's checkpoint selection
    trainer.py    the driver: prepares the table, runs `TorchTrainer.fit`, exports the best checkpoint
    cli.py        `alol train`

Heavy libraries (torch, ray, transformers) are imported by the modules that need them, never here.
"""
