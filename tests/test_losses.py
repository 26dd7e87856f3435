"""Hand-computed checks of the A-LoL family losses (alol_ray.losses).

Shared example (B = 2, T = 3; row 1 has one padded position whose value is garbage):

    logps     = [[-1.0, -2.0, -0.5], [-0.2, -0.3, PAD]]   mask = [[1, 1, 1], [1, 1, 0]]
    ref_logps = [[-1.5, -2.0, -1.0], [-0.1, -0.2, 0.0]]
    NLL_seq   = [3.5, 0.5]
    log pi(y|x) - log pi_ref(y|x) = [-3.5 - (-4.5), -0.5 - (-0.3)] = [1.0, -0.2]
    rho       = [e^1.0, e^-0.2] = [2.7182818, 0.8187308]
    eps = 0.9 -> clip to [0.1, 1.9]: w = [1.9 (clip active), 0.8187308 (clip inactive)]
    reward R = [0.8, 0.25], advantage A = [0.5, 2.0]

Everything runs in float64 so that 1e-6 tolerances are meaningful.
"""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import alol_ray.baselines.gold
from alol_ray import losses
from alol_ray.losses import (
    LOSSES,
    MAX_LOG_WEIGHT,
    REQUIRES,
    SAMPLE_WEIGHT,
    LossInputs,
    LossParams,
    get_loss,
    gold_token_weight,
)

TOL = dict(atol=1e-6, rtol=0.0)
REPO_ROOT = Path(__file__).resolve().parents[1]
NLL_SEQ = (3.5, 0.5)
W_SEQ = (1.9, math.exp(-0.2))


def close(actual, expected):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float64),
                               torch.as_tensor(expected, dtype=torch.float64), **TOL)


def make_inputs(pad_value=0.0, advantage=(0.5, 2.0), reward=(0.8, 0.25), stale=None):
    logps = torch.tensor([[-1.0, -2.0, -0.5], [-0.2, -0.3, pad_value]], dtype=torch.float64, requires_grad=True)
    return LossInputs(
        logps=logps,
        mask=torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64),
        ref_logps=torch.tensor([[-1.5, -2.0, -1.0], [-0.1, -0.2, 0.0]], dtype=torch.float64),
        reward=torch.tensor(reward, dtype=torch.float64),
        advantage=torch.tensor(advantage, dtype=torch.float64),
        stale_logps=None if stale is None else torch.tensor(stale, dtype=torch.float64),
    )


def loss_and_grad(name, inputs, params=None):
    loss, metrics = LOSSES[name](inputs, params or LossParams())
    (grad,) = torch.autograd.grad(loss, inputs.logps)
    return loss, grad, metrics


# -- registry -----------------------------------------------------------------------------------------


def test_registry_names_and_declarations():
    """Exactly the eight reference algorithm names, each with REQUIRES and SAMPLE_WEIGHT entries."""
    names = {"nll", "wbc", "r_gold", "r_lol", "a_lol", "a_lol_ref_free", "a_lol_seq", "a_lol_kl"}
    assert set(LOSSES) == names == set(REQUIRES) == set(SAMPLE_WEIGHT)
    assert SAMPLE_WEIGHT == {
        "nll": "none", "wbc": "reward", "r_gold": "reward", "r_lol": "reward",
        "a_lol": "advantage", "a_lol_ref_free": "advantage", "a_lol_seq": "advantage", "a_lol_kl": "advantage",
    }
    assert REQUIRES["a_lol"] == {"ref_logps", "advantage"}
    assert REQUIRES["nll"] == set()
    for name, fields in REQUIRES.items():
        assert fields <= {"ref_logps", "reward", "advantage", "stale_logps"}, name
    assert get_loss("a_lol") is losses.a_lol


def test_every_builtin_declares_what_it_reads():
    """The fields each loss reads, as registered beside it (r_gold may also read stale_logps)."""
    assert REQUIRES == {
        "nll": set(), "wbc": {"reward"}, "r_gold": {"reward"}, "r_lol": {"reward", "ref_logps"},
        "a_lol": {"advantage", "ref_logps"}, "a_lol_ref_free": {"advantage"},
        "a_lol_seq": {"advantage", "ref_logps"}, "a_lol_kl": {"advantage", "ref_logps"},
    }


def test_register_loss_records_its_metadata_once(monkeypatch):
    """register_loss stores LossSpec(name, fn, frozenset(requires), sample_weight) and returns fn itself;
    defaults: requires nothing, sampled uniformly ("none"). A name registered twice, or a sample weight
    outside advantage / reward / none, is an error naming the loss, and the registry keeps the first entry."""
    monkeypatch.setattr(losses, "REGISTRY", {})

    def weighted(inputs, params):
        return inputs.logps.sum(), {}

    def plain(inputs, params):
        return inputs.logps.sum(), {}

    assert losses.register_loss("weighted", requires=("reward", "ref_logps"), sample_weight="reward")(weighted) is weighted
    assert losses.register_loss("plain")(plain) is plain
    assert losses.REGISTRY == {
        "weighted": losses.LossSpec("weighted", weighted, frozenset({"reward", "ref_logps"}), "reward"),
        "plain": losses.LossSpec("plain", plain, frozenset(), "none"),
    }
    with pytest.raises(ValueError, match="^loss 'plain' is registered twice$"):
        losses.register_loss("plain", sample_weight="advantage")(weighted)
    with pytest.raises(ValueError, match="^loss 'other': sample_weight must be advantage, reward or none$"):
        losses.register_loss("other", sample_weight="rewards")
    assert losses.REGISTRY["plain"] == losses.LossSpec("plain", plain, frozenset(), "none")
    assert set(losses.REGISTRY) == {"weighted", "plain"}


def test_get_loss_unknown_name_suggests_closest():
    with pytest.raises(ValueError, match=r"unknown loss 'alol'.*Did you mean 'a_lol'.*Valid losses: nll, wbc"):
        get_loss("alol")
    with pytest.raises(ValueError, match="Valid losses"):
        get_loss("zzzzzz")


def test_get_loss_error_messages_exactly():
    """The whole message: the name, the hint only when a close name exists, then every valid name in
    registration order."""
    valid = "Valid losses: nll, wbc, r_gold, r_lol, a_lol, a_lol_ref_free, a_lol_seq, a_lol_kl"
    with pytest.raises(ValueError, match=re.escape(f"unknown loss 'zzzzzz'. {valid}") + "$"):
        get_loss("zzzzzz")
    with pytest.raises(ValueError, match="^" + re.escape(f"unknown loss 'a_lol_sq'. Did you mean 'a_lol_seq'? {valid}") + "$"):
        get_loss("a_lol_sq")


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_missing_required_field_is_a_clear_error(name):
    """Each loss names the LossInputs fields it lacks instead of failing inside the arithmetic."""
    for field in REQUIRES[name]:
        inputs = make_inputs()
        setattr(inputs, field, None)
        with pytest.raises(ValueError, match=field):
            LOSSES[name](inputs, LossParams())


def test_shape_mismatch_is_a_clear_error():
    inputs = make_inputs()
    inputs.advantage = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    with pytest.raises(ValueError, match=re.escape("advantage must be [B] = (2,), got (3,)")):
        losses.a_lol(inputs, LossParams())
    inputs = make_inputs()
    inputs.ref_logps = inputs.ref_logps[:, :2]
    with pytest.raises(ValueError, match="ref_logps must have the shape"):
        losses.a_lol(inputs, LossParams())


def test_logps_and_mask_shape_errors_name_both_shapes():
    """logps must be [B, T] and the mask the same shape; either failing alone is an error naming both shapes."""
    inputs = make_inputs()
    inputs.mask = inputs.mask[:, :2]
    with pytest.raises(ValueError, match=re.escape("logps and mask must both be [B, T]; got (2, 3) and (2, 2)")):
        losses.nll(inputs, LossParams())
    flat = LossInputs(torch.tensor([-1.0, -2.0, -0.5]), torch.ones(3))
    with pytest.raises(ValueError, match=re.escape("logps and mask must both be [B, T]; got (3,) and (3,)")):
        losses.nll(flat, LossParams())


def test_loss_params_validation():
    with pytest.raises(ValueError, match="clip_eps"):
        LossParams(clip_eps=-0.1)
    with pytest.raises(ValueError, match="gold_u"):
        LossParams(gold_u=1.5)
    with pytest.raises(ValueError, match="kl_beta"):
        LossParams(kl_beta=-1.0)


def test_loss_params_bounds_are_inclusive():
    """clip_eps = 0, gold_u = 0 or 1 and kl_beta = 0 are valid; just outside each is an error naming the value."""
    for kwargs in (dict(clip_eps=0.0), dict(gold_u=0.0), dict(gold_u=1.0), dict(kl_beta=0.0)):
        params = LossParams(**kwargs)
        assert all(getattr(params, key) == value for key, value in kwargs.items())
    with pytest.raises(ValueError, match=r"^gold_u must be in \[0, 1\], got -0.01$"):
        LossParams(gold_u=-0.01)
    with pytest.raises(ValueError, match=r"^clip_eps must be >= 0, got -0.5$"):
        LossParams(clip_eps=-0.5)
    with pytest.raises(ValueError, match=r"^kl_beta must be >= 0, got -0.1$"):
        LossParams(kl_beta=-0.1)


# -- every loss: padding garbage is invisible ---------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("garbage", [float("nan"), float("inf"), -float("inf"), 1e4])
def test_garbage_at_padding_changes_nothing(name, garbage):
    """PAD = 0.0 vs PAD in {nan, +-inf, 1e4}: identical loss, identical finite gradient, 0 grad at PAD."""
    stale = [[-0.1, -3.0, -0.7], [0.0, -1.0, garbage]]
    clean_stale = [[-0.1, -3.0, -0.7], [0.0, -1.0, 0.0]]
    clean_loss, clean_grad, clean_metrics = loss_and_grad(name, make_inputs(0.0, stale=clean_stale))
    inputs = make_inputs(garbage, stale=stale)
    inputs.ref_logps[1, 2] = garbage
    loss, grad, metrics = loss_and_grad(name, inputs)
    close(loss, clean_loss)
    assert torch.isfinite(grad).all()
    close(grad, clean_grad)
    assert grad[1, 2] == 0.0
    assert metrics == pytest.approx(clean_metrics, abs=1e-6)


# -- shared helpers -----------------------------------------------------------------------------------


def test_sequence_logps_sums_the_real_tokens():
    """log pi(y|x) per row = sum over the mask: [-1 - 2 - 0.5, -0.2 - 0.3] = [-3.5, -0.5], PAD = nan skipped;
    the gradient is the mask (1 on real tokens, exactly 0 at PAD)."""
    inputs = make_inputs(pad_value=float("nan"))
    seq = losses.sequence_logps(inputs.logps, inputs.mask)
    assert seq.shape == (2,)
    close(seq, [-3.5, -0.5])
    (grad,) = torch.autograd.grad(seq.sum(), inputs.logps)
    close(grad, [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


def test_compute_dtype_keeps_full_precision_and_upcasts_half():
    """float32 and float64 pass through as the same tensor; bf16 and fp16 become float32. A float64 batch
    stays float64 end to end: the a_lol loss of the shared example is float64."""
    for dtype in (torch.float32, torch.float64):
        x = torch.zeros(2, dtype=dtype)
        assert losses.compute_dtype(x) is x
    for dtype in (torch.bfloat16, torch.float16):
        assert losses.compute_dtype(torch.zeros(2, dtype=dtype)).dtype == torch.float32
    loss, _ = losses.a_lol(make_inputs(), LossParams())
    assert loss.dtype == torch.float64


def test_data_columns_follow_the_log_probs_dtype_and_device():
    """A reward / advantage column comes in the compute dtype and on the device of the log-probs, detached:
    float64 advantages with float32 log-probs give a float32 loss; on the meta device the column moves there."""
    inputs = LossInputs(torch.tensor([[-1.0, -2.0]], requires_grad=True), torch.ones(1, 2),
                        ref_logps=torch.tensor([[-1.0, -2.0]]), advantage=torch.tensor([0.5], dtype=torch.float64))
    loss, _ = losses.a_lol(inputs, LossParams())
    assert loss.dtype == torch.float32
    close(loss, 0.5 * 3.0)
    column = torch.tensor([0.5, 2.0], requires_grad=True)
    out = losses._per_example(column, torch.empty(2, device="meta", dtype=torch.float64))
    assert (out.device.type, out.dtype, out.requires_grad) == ("meta", torch.float64, False)


def test_kl_metric_sums_float32_reference_in_the_loss_dtype():
    """Reference log-probs kept in float32 (the scored table) are summed in float64 with float64 log-probs:
    ref = float32([-3, -1e-8, -5]) sums to -8 - 9.99999993922529e-09 in float64 (float32 would round the sum to
    -8.0), so kl/mean = -3.5 - that = 4.5 + 9.99999993922529e-09."""
    inputs = LossInputs(torch.tensor([[-1.0, -2.0, -0.5]], dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64),
                        ref_logps=torch.tensor([[-3.0, -1e-8, -5.0]], dtype=torch.float32))
    _, metrics = losses.nll(inputs, LossParams())
    tiny = float(torch.tensor(-1e-8, dtype=torch.float32))
    assert tiny == -9.99999993922529e-09
    assert metrics["kl/mean"] == pytest.approx(4.5 + 9.99999993922529e-09, abs=1e-14)


# -- nll, wbc -----------------------------------------------------------------------------------------


def test_nll():
    """NLL_seq = [1 + 2 + 0.5, 0.2 + 0.3] = [3.5, 0.5]; loss = (3.5 + 0.5) / 2 = 2.0.

    d loss / d logps = -mask / B = -0.5 on real tokens, 0 on padding.
    """
    loss, grad, metrics = loss_and_grad("nll", make_inputs())
    close(loss, 2.0)
    close(grad, [[-0.5, -0.5, -0.5], [-0.5, -0.5, 0.0]])
    close(metrics["loss/policy"], 2.0)
    close(metrics["nll/seq_mean"], 2.0)


def test_wbc():
    """R * NLL_seq = [0.8 * 3.5, 0.25 * 0.5] = [2.8, 0.125]; loss = 2.925 / 2 = 1.4625.

    d loss / d logps = -R * mask / B = [-0.4]*3, [-0.125, -0.125, 0].
    """
    loss, grad, metrics = loss_and_grad("wbc", make_inputs())
    close(loss, 1.4625)
    close(grad, [[-0.4, -0.4, -0.4], [-0.125, -0.125, 0.0]])
    close(metrics["reward/mean"], 0.525)


# -- a_lol --------------------------------------------------------------------------------------------


def test_a_lol_clip_active_and_inactive():
    """A+ * w * NLL_seq with w = [1.9 (rho = e clipped at 1 + 0.9), e^-0.2 = 0.8187308 (inside [0.1, 1.9])]:

        row 0: 0.5 * 1.9 * 3.5       = 3.325
        row 1: 2.0 * 0.8187308 * 0.5 = 0.8187308
        loss = (3.325 + 0.8187308) / 2 = 2.0718654

    grad wrt logps = -A+ * w * mask / B = row 0: -0.5 * 1.9 / 2 = -0.475; row 1: -2 * 0.8187308 / 2 = -0.8187308.
    is_weight: mean (1.9 + 0.8187308) / 2, clip_frac 1/2 (only row 0 is outside [0.1, 1.9]).
    """
    loss, grad, metrics = loss_and_grad("a_lol", make_inputs())
    w1 = math.exp(-0.2)
    close(loss, (0.5 * 1.9 * 3.5 + 2.0 * w1 * 0.5) / 2)
    close(grad, [[-0.475] * 3, [-w1, -w1, 0.0]])
    close(metrics["is_weight/mean"], (1.9 + w1) / 2)
    close(metrics["is_weight/max"], 1.9)
    close(metrics["is_weight/min"], w1)
    close(metrics["is_weight/clip_frac"], 0.5)
    close(metrics["kl/mean"], (1.0 - 0.2) / 2)
    close(metrics["advantage/mean"], 1.25)
    close(metrics["advantage/pos_frac"], 1.0)


def test_a_lol_grad_matches_formula_general():
    """grad of a_lol wrt logps equals -A+ * w * mask / B on a random batch, w recomputed independently."""
    g = torch.Generator().manual_seed(0)
    logps = (-torch.rand(4, 5, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    ref = -torch.rand(4, 5, generator=g, dtype=torch.float64) * 3
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.float64)
    adv = torch.tensor([0.3, -0.2, 1.5, 0.0], dtype=torch.float64)
    inputs = LossInputs(logps=logps, mask=mask, ref_logps=ref * mask, advantage=adv)
    params = LossParams(clip_eps=0.2)
    loss, _ = losses.a_lol(inputs, params)
    (grad,) = torch.autograd.grad(loss, logps)
    rho = torch.exp(((logps.detach() - ref) * mask).sum(-1)).clamp(0.8, 1.2)
    expected = -(adv.clamp(min=0) * rho)[:, None] * mask / 4
    close(grad, expected)


def test_a_lol_zero_advantage():
    """A = [0, 2]: row 0 contributes 0; loss = 2 * 0.8187308 * 0.5 / 2 = 0.4093654; row 0 grad is 0;
    advantage/pos_frac = 1/2 (0 is not positive)."""
    loss, grad, metrics = loss_and_grad("a_lol", make_inputs(advantage=(0.0, 2.0)))
    w1 = math.exp(-0.2)
    close(loss, w1 / 2)
    close(grad, [[0.0, 0.0, 0.0], [-w1, -w1, 0.0]])
    close(metrics["advantage/pos_frac"], 0.5)  # A = 0 is not positive


def test_a_lol_negative_advantage_gives_zero_loss_and_grad():
    """A = [-1, -0.5] -> A+ = [0, 0]: loss exactly 0 and gradient exactly 0 (negative A never pushes down)."""
    loss, grad, metrics = loss_and_grad("a_lol", make_inputs(advantage=(-1.0, -0.5)))
    assert loss.item() == 0.0
    assert torch.equal(grad, torch.zeros_like(grad))
    close(metrics["advantage/pos_frac"], 0.0)


def test_a_lol_eps_zero_gives_weight_exactly_one():
    """clip_eps = 0 -> bounds [1, 1] -> w = 1 exactly: loss = (0.5 * 3.5 + 2 * 0.5) / 2 = 1.375."""
    loss, grad, metrics = loss_and_grad("a_lol", make_inputs(), LossParams(clip_eps=0.0))
    assert loss.item() == 1.375
    close(grad, [[-0.25] * 3, [-1.0, -1.0, 0.0]])
    assert metrics["is_weight/mean"] == 1.0


def test_a_lol_no_clip():
    """clip = False: w = rho = [e, e^-0.2]: loss = (0.5 * e * 3.5 + 2 * e^-0.2 * 0.5) / 2 = 2.7878620."""
    loss, _, metrics = loss_and_grad("a_lol", make_inputs(), LossParams(clip=False))
    close(loss, (0.5 * math.e * 3.5 + math.exp(-0.2)) / 2)
    close(metrics["is_weight/max"], math.e)
    assert metrics["is_weight/clip_frac"] == 0.0


def test_a_lol_huge_ratio_never_overflows():
    """log rho = 0 - (-1000) = 1000 would be exp -> inf. Clipped: w = 1.9; unclipped: w = exp(MAX_LOG_WEIGHT)."""
    inputs = LossInputs(
        logps=torch.tensor([[-0.5, -0.5]], dtype=torch.float32, requires_grad=True),
        mask=torch.ones(1, 2),
        ref_logps=torch.tensor([[-500.0, -500.0]]),
        advantage=torch.tensor([1.0]),
    )
    loss, grad, metrics = loss_and_grad("a_lol", inputs)
    close(loss, 1.9 * 1.0)
    close(metrics["is_weight/clip_frac"], 1.0)
    loss, grad, metrics = loss_and_grad("a_lol", inputs, LossParams(clip=False))
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    torch.testing.assert_close(loss, torch.tensor(math.exp(MAX_LOG_WEIGHT) * 1.0), rtol=1e-6, atol=0)
    close(metrics["is_weight/clip_frac"], 1.0)  # capped counts as clipped


def test_clip_bounds_for_eps_at_and_above_1():
    """eps >= 1 has no lower bound (1 - eps <= 0): eps = 1 and eps = 1.5 clip rho = e^-3.5 only from above.
    Row log ratios [-3.5, 1.0] (logps [[-4], [-1]] against ref [[-0.5], [-2]]), A = [1, 1]:
        eps = 1:   w = [e^-3.5 = 0.0301974, min(e, 2) = 2];   loss = (0.0301974 * 4 + 2 * 1) / 2 = 1.0603947
        eps = 1.5: w = [0.0301974, min(e, 2.5) = 2.5]; loss = (0.0301974 * 4 + 2.5 * 1) / 2 = 1.3103947
    clip_frac 1/2 in both (only the upper bound binds)."""
    inputs = LossInputs(torch.tensor([[-4.0], [-1.0]], dtype=torch.float64, requires_grad=True),
                        torch.ones(2, 1, dtype=torch.float64), ref_logps=torch.tensor([[-0.5], [-2.0]], dtype=torch.float64),
                        advantage=torch.tensor([1.0, 1.0], dtype=torch.float64))
    w0 = math.exp(-3.5)
    for eps, upper in ((1.0, 2.0), (1.5, 2.5)):
        loss, metrics = losses.a_lol(inputs, LossParams(clip_eps=eps))
        close(loss, (w0 * 4 + upper) / 2)
        close(metrics["is_weight/min"], w0)
        close(metrics["is_weight/clip_frac"], 0.5)


def test_a_ratio_exactly_at_a_bound_is_not_counted_as_clipped():
    """eps = 0: rho = 1 exactly (logps == ref) sits on both bounds [1, 1] and is not clipped; clip = False:
    a log ratio of exactly MAX_LOG_WEIGHT = 20 (-1 vs -21) is kept, not counted as capped, while 20.5 is capped
    at e^20 and counted."""
    same = LossInputs(torch.tensor([[-1.0, -2.0]], dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64),
                      ref_logps=torch.tensor([[-1.0, -2.0]], dtype=torch.float64),
                      advantage=torch.tensor([1.0], dtype=torch.float64))
    _, metrics = losses.a_lol(same, LossParams(clip_eps=0.0))
    assert (metrics["is_weight/mean"], metrics["is_weight/clip_frac"]) == (1.0, 0.0)
    _, metrics = losses.a_lol_seq(same, LossParams(clip_eps=0.0))
    assert metrics["is_weight/clip_frac"] == 0.0
    at_cap = LossInputs(torch.tensor([[-1.0], [-1.0]], dtype=torch.float64), torch.ones(2, 1, dtype=torch.float64),
                        ref_logps=torch.tensor([[-21.0], [-21.5]], dtype=torch.float64),
                        advantage=torch.tensor([1.0, 1.0], dtype=torch.float64))
    _, metrics = losses.a_lol(at_cap, LossParams(clip=False))
    assert metrics["is_weight/max"] == pytest.approx(math.exp(MAX_LOG_WEIGHT), rel=1e-7)  # a float32 metric
    close(metrics["is_weight/clip_frac"], 0.5)


def test_a_lol_bf16_inputs_are_upcast():
    """bf16 log-probs are summed in float32: 64 tokens of bf16(-0.1) = -0.10009765625 sum to -6.40625 exactly
    in float32, while a bf16 running sum would round. A = 1, eps = 0 (w = 1): loss = 6.40625."""
    lp16 = torch.full((1, 64), -0.1, dtype=torch.bfloat16, requires_grad=True)
    inputs = LossInputs(lp16, torch.ones(1, 64), torch.zeros(1, 64), advantage=torch.tensor([1.0]))
    loss, _ = losses.a_lol(inputs, LossParams(clip_eps=0.0))
    assert loss.dtype == torch.float32
    close(loss, 64 * 0.10009765625)


# -- a_lol_ref_free, a_lol_seq, a_lol_kl ---------------------------------------------------------------


def test_a_lol_ref_free_uses_signed_advantage():
    """A * NLL_seq with A = [0.5, -1.0] (NOT clamped): [1.75, -0.5]; loss = 1.25 / 2 = 0.625.

    grad = -A * mask / B = row 0: -0.25; row 1: +0.5.
    """
    loss, grad, _ = loss_and_grad("a_lol_ref_free", make_inputs(advantage=(0.5, -1.0)))
    close(loss, 0.625)
    close(grad, [[-0.25] * 3, [0.5, 0.5, 0.0]])


def test_a_lol_seq_per_token_clip():
    """Per-token log ratios: row 0 [0.5, 0.0, 0.5], row 1 [-0.1, -0.1, pad].

    eps = 0.5 -> clamp rho_t to [0.5, 1.5]:
        row 0: rho = [e^0.5 = 1.6487 -> 1.5 (clipped), 1.0, 1.5 (clipped)]
        row 1: rho = [e^-0.1 = 0.9048374, 0.9048374] (inside)
    sum_t w_t * NLL_t: row 0 = 1.5 * 1 + 1.0 * 2 + 1.5 * 0.5 = 4.25
                       row 1 = 0.9048374 * (0.2 + 0.3) = 0.4524187
    A+ = [0.5, 2.0]: per example [2.125, 0.9048374]; loss = 1.5148687.
    grad = -A+ * w_t / B: row 0 [-0.375, -0.25, -0.375], row 1 [-0.9048374, -0.9048374, 0].
    clip_frac over the 5 real tokens = 2 / 5.
    """
    loss, grad, metrics = loss_and_grad("a_lol_seq", make_inputs(), LossParams(clip_eps=0.5))
    w1 = math.exp(-0.1)
    close(loss, (0.5 * 4.25 + 2.0 * w1 * 0.5) / 2)
    close(grad, [[-0.375, -0.25, -0.375], [-w1, -w1, 0.0]])
    close(metrics["is_weight/clip_frac"], 0.4)
    close(metrics["is_weight/mean"], (1.5 + 1.0 + 1.5 + w1 + w1) / 5)


def test_a_lol_seq_negative_advantage_zero_grad():
    loss, grad, _ = loss_and_grad("a_lol_seq", make_inputs(advantage=(-3.0, 0.0)))
    assert loss.item() == 0.0
    assert torch.equal(grad, torch.zeros_like(grad))


def test_a_lol_kl():
    """A+ * NLL_seq + beta * (log pi - log pi_ref), beta = 0.1, log ratios [1.0, -0.2]:

        row 0: 0.5 * 3.5 + 0.1 * 1.0    = 1.85
        row 1: 2.0 * 0.5 + 0.1 * (-0.2) = 0.98
        loss = 2.83 / 2 = 1.415
    The KL term is not detached: grad = (-A+ + beta) * mask / B = row 0 -0.2, row 1 -0.95.
    """
    loss, grad, metrics = loss_and_grad("a_lol_kl", make_inputs())
    close(loss, 1.415)
    close(grad, [[-0.2] * 3, [-0.95, -0.95, 0.0]])
    close(metrics["loss/kl"], 0.1 * 0.8 / 2)


def test_a_lol_kl_negative_advantage_keeps_kl_gradient():
    """A+ = 0: only beta * log ratio remains: loss = 0.1 * (1.0 - 0.2) / 2 = 0.04; grad = beta / B = 0.05."""
    loss, grad, _ = loss_and_grad("a_lol_kl", make_inputs(advantage=(-1.0, -1.0)))
    close(loss, 0.04)
    close(grad, [[0.05] * 3, [0.05, 0.05, 0.0]])


def test_a_lol_kl_beta_zero_equals_a_lol_eps_zero():
    """The HHA setting 'a_lol with eps 0': with beta = 0 both are A+ * NLL_seq = 1.375."""
    kl_loss, kl_grad, _ = loss_and_grad("a_lol_kl", make_inputs(), LossParams(kl_beta=0.0))
    alol_loss, alol_grad, _ = loss_and_grad("a_lol", make_inputs(), LossParams(clip_eps=0.0))
    close(kl_loss, 1.375)
    close(kl_loss, alol_loss)
    close(kl_grad, alol_grad)


# -- r_lol, r_gold ------------------------------------------------------------------------------------


def test_r_lol():
    """R * w * NLL_seq, w = [1.9, e^-0.2]: [0.8 * 1.9 * 3.5, 0.25 * 0.8187308 * 0.5] = [5.32, 0.1023413];
    loss = 2.7111707. grad = -R * w * mask / B = row 0 -0.76, row 1 -0.25 * 0.8187308 / 2 = -0.1023413.
    """
    loss, grad, metrics = loss_and_grad("r_lol", make_inputs())
    w1 = math.exp(-0.2)
    close(loss, (5.32 + 0.25 * w1 * 0.5) / 2)
    close(grad, [[-0.76] * 3, [-0.125 * w1, -0.125 * w1, 0.0]])
    close(metrics["is_weight/clip_frac"], 0.5)


def test_r_gold_current_model_weights():
    """u = 0.2, weights max(u, exp(logps)) from the current model:

        row 0: exp([-1, -2, -0.5]) = [0.3678794, 0.1353353 -> 0.2 (floored), 0.6065307]
        row 1: exp([-0.2, -0.3])   = [0.8187308, 0.7408182]
        sum_t w_t NLL_t: row 0 = 0.3678794 * 1 + 0.2 * 2 + 0.6065307 * 0.5 = 1.0711448
                         row 1 = 0.8187308 * 0.2 + 0.7408182 * 0.3      = 0.3859916
        R = [0.8, 0.25]: loss = (0.8 * 1.0711448 + 0.25 * 0.3859916) / 2 = 0.4767068
    The weight is detached: grad = -R * w_t / B.
    """
    e = math.exp
    loss, grad, metrics = loss_and_grad("r_gold", make_inputs(), LossParams(gold_u=0.2))
    row0 = e(-1) * 1 + 0.2 * 2 + e(-0.5) * 0.5
    row1 = e(-0.2) * 0.2 + e(-0.3) * 0.3
    close(loss, (0.8 * row0 + 0.25 * row1) / 2)
    close(grad, [[-0.4 * e(-1), -0.4 * 0.2, -0.4 * e(-0.5)], [-0.125 * e(-0.2), -0.125 * e(-0.3), 0.0]])
    close(metrics["gold_weight/mean"], (e(-1) + 0.2 + e(-0.5) + e(-0.2) + e(-0.3)) / 5)


def test_r_gold_stale_weights():
    """stale_logps = [[-0.1, -3.0, -0.7], [0.0, -1.0, pad]], u = 0.1:
    w = [[e^-0.1 = 0.9048374, e^-3 = 0.0498 -> 0.1, e^-0.7 = 0.4965853], [1.0, 0.3678794]]
    loss = (0.8 * (0.9048374 + 0.1 * 2 + 0.4965853 * 0.5) + 0.25 * (1.0 * 0.2 + 0.3678794 * 0.3)) / 2
         = (0.8 * 1.3531301 + 0.25 * 0.3103638) / 2 = 0.5800475
    """
    e = math.exp
    inputs = make_inputs(stale=[[-0.1, -3.0, -0.7], [0.0, -1.0, 0.0]])
    loss, _, _ = loss_and_grad("r_gold", inputs)
    close(loss, (0.8 * (e(-0.1) + 0.2 + e(-0.7) * 0.5) + 0.25 * (0.2 + e(-1) * 0.3)) / 2)


def test_r_gold_uses_gold_token_weight(monkeypatch):
    """r_gold's weight IS gold_token_weight (the helper baselines/gold.py reuses): a spy sees the call."""
    calls = []

    def spy(token_logps, u, mask=None):
        calls.append(u)
        return gold_token_weight(token_logps, u, mask)

    monkeypatch.setattr(losses, "gold_token_weight", spy)
    loss, _ = losses.r_gold(make_inputs(), LossParams(gold_u=0.15))
    assert calls == [0.15]
    assert alol_ray.baselines.gold.gold_token_weight is gold_token_weight


def test_gold_token_weight_bounds():
    """clamp(exp(lp), u, 1): lp = [-50, log 0.05, log 0.3, 0, 1e-7 (rounding above 0), -inf] with u = 0.1
    -> [0.1, 0.1, 0.3, 1, 1, 0.1]; never below u, never above 1; detached; masked positions -> 0."""
    lp = torch.tensor([[-50.0, math.log(0.05), math.log(0.3), 0.0, 1e-7, -math.inf]], dtype=torch.float64)
    w = gold_token_weight(lp.requires_grad_(True), 0.1)
    close(w, [[0.1, 0.1, 0.3, 1.0, 1.0, 0.1]])
    assert not w.requires_grad
    g = torch.Generator().manual_seed(1)
    many = -torch.rand(1000, generator=g) * 30
    for u in (0.1, 0.15, 0.2):
        w = gold_token_weight(many, u)
        assert w.min() >= u and w.max() <= 1.0
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, 0.0]])
    bad = lp.detach().clone()
    bad[0, 4:] = float("nan")
    close(gold_token_weight(bad, 0.1, mask), [[0.1, 0.1, 0.3, 1.0, 0.0, 0.0]])


# -- import hygiene -----------------------------------------------------------------------------------


def test_losses_module_imports_no_ray_or_vllm():
    """The loss module is importable on a driver or worker without pulling in ray or vllm."""
    code = "import alol_ray.losses, sys; assert 'ray' not in sys.modules and 'vllm' not in sys.modules"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
