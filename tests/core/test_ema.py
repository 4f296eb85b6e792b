import pytest
import torch
from torch import nn

from multissl.core.ema import EMA, EMAConfig, annealed_decay


def test_annealed_decay_is_linear_then_constant():
    cfg = EMAConfig(decay=0.999, end_decay=0.9999, anneal_steps=30000)
    assert annealed_decay(0, cfg) == pytest.approx(0.999)
    assert annealed_decay(15000, cfg) == pytest.approx(0.99945)
    assert annealed_decay(30000, cfg) == pytest.approx(0.9999)
    assert annealed_decay(10**6, cfg) == pytest.approx(0.9999)
    assert annealed_decay(5, EMAConfig(0.5, 1.0, 0)) == 1.0


def test_step_matches_formula_and_copies_declared_parameters():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    teacher = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    EMA([(student, teacher)], copied=["1."]).step(0.9)
    for name, p in student.named_parameters():
        expected = p if name.startswith("1.") else 0.9 * before[name] + 0.1 * p
        assert torch.allclose(teacher.state_dict()[name], expected), name


def test_decay_one_freezes_the_teacher():
    student, teacher = nn.Linear(3, 3), nn.Linear(3, 3)
    before = teacher.weight.clone()
    EMA([(student, teacher)]).step(1.0)
    assert torch.equal(teacher.weight, before)


def test_buffers_and_frozen_parameters_are_copied():
    student, teacher = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    student.running_mean.fill_(2.0)
    student.weight.requires_grad_(False)
    student.weight.data.fill_(5.0)
    EMA([(student, teacher)]).step(0.5)
    assert torch.equal(teacher.running_mean, student.running_mean)
    assert torch.equal(teacher.weight, student.weight)


def test_shadow_must_be_fp32_and_names_must_match():
    with pytest.raises(TypeError, match="fp32"):
        EMA([(nn.Linear(2, 2), nn.Linear(2, 2).bfloat16())])
    with pytest.raises(KeyError, match="teacher has no parameter"):
        EMA([(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)))])


def test_bf16_student_averages_into_fp32_shadow():
    student, teacher = nn.Linear(2, 2).bfloat16(), nn.Linear(2, 2)
    EMA([(student, teacher)]).step(0.0)
    assert teacher.weight.dtype == torch.float32
    assert torch.equal(teacher.weight, student.weight.float())
