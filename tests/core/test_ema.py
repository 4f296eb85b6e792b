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


def test_cosine_schedule_is_byols_formula():
    """BYOL (Grill et al. 2020, sec. 3.2): tau_k = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2."""
    import math

    cfg = EMAConfig(decay=0.996, end_decay=1.0, anneal_fraction=1.0, shape="cosine")
    for k in (0, 1, 37, 50, 99, 100, 150):
        want = 1 - (1 - 0.996) * (math.cos(math.pi * min(k, 100) / 100) + 1) / 2
        assert annealed_decay(k, cfg, run_steps=100) == pytest.approx(want, abs=1e-12)


def test_a_declared_head_is_averaged_and_left_out_of_the_exported_encoder():
    from multissl.core.teacher import TeacherStudent

    class Tiny(TeacherStudent):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Module()
            self.encoder.local, self.encoder.context = nn.Linear(2, 2), nn.Identity()
            self.encoder.blocks, self.encoder.norm = nn.Linear(2, 2), nn.Identity()
            self.head = nn.Linear(2, 3)
            self.init_teacher(["local", "blocks"], (), EMAConfig(decay=0.5, end_decay=0.5, anneal_steps=0), 10,
                              heads=["head"])

    torch.manual_seed(0)
    m = Tiny()
    before = m.teacher["head"].weight.clone()
    with torch.no_grad():
        m.head.weight.add_(1.0)
    m.ema_step()
    assert torch.allclose(m.teacher["head"].weight, 0.5 * before + 0.5 * m.head.weight)
    assert set(m.teacher.keys()) == {"local", "blocks", "head"}
    merged = m.teacher_encoder()
    assert not hasattr(merged, "head") and torch.equal(merged.blocks.weight, m.teacher["blocks"].weight)
    m.reset_teacher()
    assert torch.equal(m.teacher["head"].weight, m.head.weight)
