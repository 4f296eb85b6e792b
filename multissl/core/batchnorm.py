"""Batch norm over the global batch. Under data parallelism a projector's batch norm (SimCLR, BYOL)
would normalise each rank's slice of the batch by that slice's own statistics, so N ranks would not
train what one rank with N times the batch trains, and a contrastive loss can cheat through
statistics local to a rank (the "information leakage" SimCLR's global BN removes). torch's
``SyncBatchNorm`` fixes this on GPUs only (it refuses CPU tensors under a process group);
:class:`GlobalBatchNorm1d` does the same with an autograd-aware all-reduce of the sums, so it also
runs on gloo, and without a process group it is ``BatchNorm1d``."""

from __future__ import annotations

import torch
from torch import nn

from multissl.core.distributed import all_sum, all_sum_with_grad, world_size


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """``BatchNorm1d`` whose training statistics (mean and biased variance) are those of every rank's
    rows; the running statistics use the unbiased variance of the global batch, as ``BatchNorm1d``
    does of its batch. Its state dict is ``BatchNorm1d``'s.

    >>> bn = GlobalBatchNorm1d(3)
    >>> x = torch.randn(8, 3)
    >>> torch.allclose(bn(x), nn.BatchNorm1d(3)(x), atol=1e-6)
    True
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        if x.ndim != 2:
            raise ValueError(f"GlobalBatchNorm1d: expected (N, C) inputs, got {tuple(x.shape)}")
        xf = x.float()
        count = all_sum(xf.new_tensor(float(x.shape[0])))
        sums = all_sum_with_grad(torch.cat([xf.sum(0), (xf * xf).sum(0)]))
        mean = sums[: x.shape[1]] / count
        var = (sums[x.shape[1]:] / count - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * count / (count - 1).clamp_min(1)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
                self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), m)
        y = (xf - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight + self.bias
        return y.to(x.dtype)


def global_batch_norm(module: nn.Module) -> nn.Module:
    """``module`` with every ``BatchNorm1d`` replaced by a :class:`GlobalBatchNorm1d` holding the same
    parameters and statistics (in place for children; returns the module, or its replacement).

    >>> type(global_batch_norm(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))[1]).__name__
    'GlobalBatchNorm1d'
    """
    if type(module) is nn.BatchNorm1d:
        out = GlobalBatchNorm1d(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats)
        out.load_state_dict(module.state_dict())
        return out
    for name, child in module.named_children():
        setattr(module, name, global_batch_norm(child))
    return module

