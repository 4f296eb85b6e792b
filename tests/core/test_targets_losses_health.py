import math

import pytest
import torch
import torch.nn.functional as F

from multissl.core.health import HealthConfig, check_health, compute_var
from multissl.core.losses import regression_loss
from multissl.core.targets import build_targets, instance_norm


def test_instance_norm_ignores_padding():
    torch.manual_seed(0)
    x = torch.randn(2, 10, 4)
    pad = torch.zeros(2, 10, dtype=torch.bool)
    pad[1, 6:] = True
    y = instance_norm(x, pad)
    ref0 = F.instance_norm(x[:1].transpose(1, 2)).transpose(1, 2)
    ref1 = F.instance_norm(x[1:, :6].transpose(1, 2)).transpose(1, 2)
    assert torch.allclose(y[0], ref0[0], atol=1e-5)
    assert torch.allclose(y[1, :6], ref1[0], atol=1e-5)
    assert y[1, 6:].abs().max() == 0
    assert torch.allclose(instance_norm(x), F.instance_norm(x.transpose(1, 2)).transpose(1, 2), atol=1e-6)


def test_build_targets_averages_top_k_normalised_layers_in_fp32():
    torch.manual_seed(0)
    layers = [torch.randn(2, 5, 8).bfloat16() for _ in range(4)]
    y = build_targets(layers, top_k=2, layer_norm="layer", final_norm="instance")
    manual = sum(F.layer_norm(h.float(), (8,)) for h in layers[-2:]) / 2
    manual = F.instance_norm(manual.transpose(1, 2)).transpose(1, 2)
    assert y.dtype == torch.float32
    assert torch.allclose(y, manual, atol=1e-5)
    with pytest.raises(ValueError, match="top_k"):
        build_targets(layers, top_k=5)


def test_losses_match_torch_and_scale():
    torch.manual_seed(0)
    pred, target = torch.randn(6, 16), torch.randn(6, 16)
    l2 = regression_loss(pred, target)
    assert torch.allclose(l2, ((pred - target) ** 2).sum(-1) / math.sqrt(16))
    sl1 = regression_loss(pred, target, beta=4.0, scale=1.0)
    assert torch.allclose(sl1, F.smooth_l1_loss(pred, target, beta=4.0, reduction="none").sum(-1))


def test_compute_var_and_health_check():
    torch.manual_seed(0)
    assert compute_var(torch.randn(4000, 8)).item() == pytest.approx(1.0, abs=0.05)
    assert compute_var(torch.ones(100, 8)).item() < 0.01
    cfg = HealthConfig(min_target_var=0.1, min_pred_var=0.01, check_after=100)
    assert check_health(50, {"target_var": 0.0}, cfg) is None
    assert check_health(200, {"target_var": 0.5, "pred_var": 0.5}, cfg) is None
    assert "pred_var" in check_health(200, {"target_var": 0.5, "pred_var": 0.001}, cfg)
    assert "target_var" in check_health(200, {"target_var": 0.05, "pred_var": 0.5}, cfg)
