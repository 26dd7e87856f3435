"""Training on the scored table with Ray Train: one linear loop, losses and samplers looked up by name.

    samplers.py   which units (rows, pairs, lists) each optimizer step trains on; seeded, sharded, resumable
    methods.py    the Method registry: a name -> batch layout, table columns and the loss call
    loop.py       `train_loop_per_worker`, the one training loop every method runs
    checkpoint.py checkpoint contents (model, optimizer, step, sampler) and the HF export of the best one
    selection.py  greedy generation on val prompts + reward: the paper's checkpoint selection
    trainer.py    the driver: prepares the table, runs `TorchTrainer.fit`, exports the best checkpoint
    cli.py        `alol train`

Heavy libraries (torch, ray, transformers) are imported by the modules that need them, never here.
"""
