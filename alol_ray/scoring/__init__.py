"""Batched reward and reference scoring on Ray actor pools, cached in one scored table.

- ``reward.RewardScorer``: callable class for ``Dataset.map_batches``; HF sequence classifiers, Python
  callables and the built-in scorers of ``scorers``, summed with weights into ``reward``.
- ``reference.ReferenceScorer``: the frozen pi_ref's per-token log-probs of each response
  (``ref_token_logps``, ``ref_logp``) and the prompt hidden states the value head reads.
- ``table``: content-addressed cache and the scored table ``<run>/scored/table.parquet``.
- ``cli``: ``alol score``.

Nothing heavy is imported here: ``alol --help`` imports the CLI module.
"""
