import torch
import torch.nn.functional as F
from torch import nn

from multissl.core.heads import MLPConfig, PrototypeHead, PrototypeHeadConfig, mlp, pool


def test_prototype_head_scores_are_cosines_between_the_bottleneck_and_each_prototype():
    torch.manual_seed(0)
    head = PrototypeHead(6, PrototypeHeadConfig(hidden_dim=12, bottleneck_dim=4, prototypes=5))
    x = torch.randn(3, 6)
    z = head.mlp(x)
    want = torch.stack([torch.stack([F.cosine_similarity(z[i], head.prototypes[k], dim=0) for k in range(5)])
                        for i in range(3)])
    assert torch.allclose(head(x), want, atol=1e-6)
    # scaling a prototype changes nothing: its gain is fixed at 1 (DINO's norm_last_layer)
    with torch.no_grad():
        head.prototypes[2] *= 7.0
    assert torch.allclose(head(x), want, atol=1e-6)


def test_mlp_layout_follows_its_config():
    m = mlp(8, MLPConfig(layers=3, hidden_dim=16, out_dim=4, norm="batch", last_norm=True))
    kinds = [type(x).__name__ for x in m]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert m[-2].bias is None and not m[-1].affine
    assert [type(x) for x in mlp(8, MLPConfig(layers=1, out_dim=4))] == [nn.Linear]


def test_pool_takes_cls_or_the_mean_of_real_tokens():
    x = torch.tensor([[[9.0], [1.0], [3.0], [100.0]]])
    pad = torch.tensor([[False, False, False, True]])
    assert pool(x, pad, 1, "cls").item() == 9.0
    assert pool(x, pad, 1, "mean").item() == 2.0
    assert abs(pool(x, pad, 0, "cls").item() - 13.0 / 3) < 1e-6  # no extra token: the mean
