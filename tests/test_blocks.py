"""Shared blocks checked against hand computations: the cubic schedule, the sensitivity variants, the
smoothed freezing score, and the attention/FFN role of a layer name."""

from __future__ import annotations

import pytest
import torch

from peftlab.blocks.importance import SmoothedSensitivity, sensitivity
from peftlab.blocks.schedules import cubic_fraction
from peftlab.blocks.targeting import module_role


@pytest.mark.parametrize(
    ("step", "fraction"),
    [(0, 0.0), (9, 0.0), (10, 0.0), (40, 1 - 0.5**3), (55, 1 - 0.25**3), (70, 1.0), (99, 1.0)],
)
def test_cubic_schedule(step, fraction):
    # T = 100, t_i = 10, t_f = 30: the ramp runs over steps 10..70
    assert cubic_fraction(step, 100, 10, 30) == pytest.approx(fraction)


def test_sensitivity_variants():
    p = torch.tensor([2.0, -0.5, 0.0])
    p.grad = torch.tensor([1.0, 1.0, 3.0])
    torch.testing.assert_close(sensitivity([p], "grad")[0], torch.tensor([1.0, 1.0, 3.0]))
    torch.testing.assert_close(sensitivity([p], "weight_grad")[0], torch.tensor([2.0, 0.5, 0.0]))
    torch.testing.assert_close(
        sensitivity([p], "grad_over_weight", eps=1e-3)[0], torch.tensor([0.5, 2.0, 3000.0])
    )
    with pytest.raises(ValueError, match="allowed: grad, weight_grad, grad_over_weight"):
        sensitivity([p], "hessian")


def test_smoothed_score_by_hand():
    p = torch.zeros(2)
    scorer = SmoothedSensitivity([p], "grad", beta1=0.5, beta2=0.5, window=2)
    for grad in ([1.0, -2.0], [3.0, 0.0]):
        p.grad = torch.tensor(grad)
        scorer.accumulate()
    assert scorer.window_full()
    scorer.update()
    # I = window mean |g| = [2, 1]; I_bar = .5 I = [1, .5]
    # U = |I - I_bar| = [1, .5]; U_bar = .5 U = [.5, .25]
    torch.testing.assert_close(scorer.i_bar[0], torch.tensor([1.0, 0.5]))
    torch.testing.assert_close(scorer.u_bar[0], torch.tensor([0.5, 0.25]))
    assert scorer.scores([0]).item() == pytest.approx((1 * 0.5 + 0.5 * 0.25) / 2)
    for _ in range(2):
        p.grad = torch.zeros(2)
        scorer.accumulate()
    scorer.update()
    # I = 0; I_bar = [.5, .25]; U = [.5, .25]; U_bar = .5 [.5, .25] + .5 [.5, .25] = [.5, .25]
    assert scorer.scores([0]).item() == pytest.approx((0.5 * 0.5 + 0.25 * 0.25) / 2)
    assert not scorer.window_full() and scorer.updates == 2


def test_inactive_tensors_are_not_scored():
    a, b = torch.zeros(2), torch.zeros(2)
    scorer = SmoothedSensitivity([a, b], "grad", beta1=0.0, beta2=0.0, window=1)
    scorer.set_active([1])
    a.grad = None  # a frozen tensor has no gradient
    b.grad = torch.ones(2)
    scorer.accumulate()
    scorer.update()
    assert scorer.i_bar[0].sum() == 0 and scorer.i_bar[1].sum() == 2


@pytest.mark.parametrize(
    ("name", "role"),
    [
        ("encoder.layer.0.attention.self.query", "attention"),
        ("encoder.layer.0.attention.output.dense", "attention"),
        ("encoder.layer.0.intermediate.dense", "ffn"),
        ("encoder.layer.0.output.dense", "ffn"),
        ("model.layers.3.self_attn.o_proj", "attention"),
        ("model.layers.3.mlp.down_proj", "ffn"),
    ],
)
def test_module_role(name, role):
    assert module_role(name) == role
