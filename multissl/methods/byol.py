"""BYOL (Grill et al. 2020, "Bootstrap your own latent: A new approach to self-supervised learning",
arXiv 2006.07733): two augmented views of each sample; the online network (encoder, projector,
predictor) predicts, from one view, the target network's projection of the other view; the target
network (encoder and projector, not the predictor) is an EMA of the online one, its decay rising from
0.996 to 1 along a half cosine over the run. The loss is ``2 - 2 cos`` between the prediction and the
target (:func:`multissl.core.losses.byol.byol_loss`), summed over both directions and averaged over the
batch. It needs no negatives and no masking: the views come from the modality's view maker (images:
crops, flip, colour jitter, grayscale, blur, solarisation; speech: crops, gain and mixing, as BYOL-A
does), so the same objective runs on images and on speech.

The projector and the predictor are MLPs with batch norm (the paper's: 4096 hidden, 256 out). Each
view goes through the heads on its own, as in the paper's reference, so batch norm takes its
statistics over one view of the batch; under data parallelism over that view of the global batch
(:class:`multissl.core.batchnorm.GlobalBatchNorm1d`, on CPU ranks too; the target's copies alike).

The target's batch norms normalise with the batch statistics, as the online network's do; they never
use or update running statistics: the EMA copies the online network's running statistics (buffers) to
the target at each update, so they always equal the online network's.

>>> model = BYOL(vision_adapter, EncoderConfig(), BYOLConfig(), run_steps=1000)  # doctest: +SKIP
>>> model(**collator(examples))["loss"]  # the collator makes the two views  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from multissl.core.adapter import PARTS, Modality, StudentView
from multissl.core.batchnorm import global_batch_norm
from multissl.core.blocks import EncoderConfig
from multissl.core.distributed import all_sum, global_mean
from multissl.core.ema import EMAConfig
from multissl.core.heads import MLPConfig, mlp, pool
from multissl.core.health import compute_var, effective_rank
from multissl.core.init import bert_init
from multissl.core.losses.byol import byol_loss
from multissl.methods.base import Method

VIEWS = 2
"""BYOL compares two global views of each sample."""


@dataclass
class BYOLHeadConfig(MLPConfig):
    """BYOL's projector or predictor: Linear -> batch norm -> ReLU -> Linear (section 3.3 of the paper)."""

    hidden_dim: int = 4096
    """Width of the hidden layer (the paper: 4096)."""

    out_dim: int = 256
    """Output width (the paper: 256); the predictor's must equal the projector's."""


@dataclass
class BYOLEMAConfig(EMAConfig):
    """The target network's decay: the paper's ``tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2`` over
    the run's K updates, from ``tau_base`` = 0.996 to 1."""

    decay: float = 0.996
    """Decay at the first update (the paper's tau_base: 0.996)."""

    end_decay: float = 1.0
    """Decay at the end of the anneal (the paper: 1)."""

    anneal_fraction: float = 1.0
    """Anneal over this fraction of the run's ``train.max_steps`` (the paper: the whole run)."""

    shape: Literal["linear", "cosine"] = "cosine"
    """The decay's path over the anneal (the paper: cosine)."""


@dataclass
class BYOLConfig:
    """BYOL: the online network's prediction of one view regresses the EMA target's projection of the
    other view."""

    name: Literal["byol"] = "byol"
    """The objective."""

    pooling: Literal["cls", "mean"] = "cls"
    """What the heads see of a view: the encoder's first extra token (cls; encoders without one, as
    speech's, fall back to the mean) or the mean over its tokens."""

    projector: BYOLHeadConfig = field(default_factory=BYOLHeadConfig)
    """The projector, on the pooled encoder output (part of the target network too)."""

    predictor: BYOLHeadConfig = field(default_factory=BYOLHeadConfig)
    """The predictor, on the projection (the online network's only)."""

    ema: BYOLEMAConfig = field(default_factory=BYOLEMAConfig)
    """The target network's decay schedule."""

    def validate(self, where: str = "method") -> None:
        if self.pooling not in ("cls", "mean"):
            raise ValueError(f"{where}.pooling must be cls or mean, got {self.pooling!r}")
        self.projector.validate(f"{where}.projector")
        self.predictor.validate(f"{where}.predictor")
        if self.predictor.out_dim != self.projector.out_dim:
            raise ValueError(f"{where}.predictor.out_dim ({self.predictor.out_dim}) must equal "
                             f"{where}.projector.out_dim ({self.projector.out_dim}): the prediction regresses "
                             "the target's projection")
        self.ema.validate(f"{where}.ema")


@contextlib.contextmanager
def batch_statistics(module: nn.Module) -> Iterator[None]:
    """Run ``module``'s batch norms on the batch's statistics without touching their running statistics
    (the target network's: it normalises as the online network does, and its buffers are the EMA's)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.track_running_stats) for m in norms]
    for m in norms:
        m.training, m.track_running_stats = True, False
    try:
        yield
    finally:
        for m, (training, track) in zip(norms, saved, strict=True):
            m.training, m.track_running_stats = training, track


class BYOL(Method):
    """The encoder, the projector and the predictor (the online network) and the EMA target (encoder and
    projector). ``forward(views)`` takes the collator's batch of two views and returns the loss and the
    health metrics: ``target_var`` and ``pred_var`` (per-dimension spread over the batch of the
    l2-normalised targets and predictions; about ``1/sqrt(out_dim)`` when spread, 0 when collapsed),
    ``student_rank`` and ``teacher_rank`` (RankMe of the pooled encoder outputs of both views) and
    ``view_cos`` (mean cosine similarity of the two views' predictions)."""

    name = "byol"
    config_class = BYOLConfig

    @classmethod
    def student_view(cls, cfg: BYOLConfig) -> StudentView:
        return StudentView(dense=False, views=True)

    @classmethod
    def check_views(cls, cfg: BYOLConfig, views: Any) -> None:
        # the views sections name their counts differently (images: global and local crops; speech: crops)
        wanted = {"global_crops": VIEWS, "crops": VIEWS, "local_crops": 0}
        for key, count in wanted.items():
            if hasattr(views, key) and getattr(views, key) != count:
                raise ValueError(f"views.{key} must be {count} for method byol (two global views, no local crops), "
                                 f"got {getattr(views, key)}")

    def __init__(self, modality: Modality, encoder: EncoderConfig, cfg: BYOLConfig, run_steps: int = 0):
        super().__init__(modality, encoder, cfg, run_steps)
        # batch norms over the global batch (on CPU ranks too), so N ranks train what one rank does
        self.projector = global_batch_norm(mlp(encoder.dim, cfg.projector))
        self.predictor = global_batch_norm(mlp(cfg.projector.out_dim, cfg.predictor))
        for head in (self.projector, self.predictor):
            head.apply(bert_init)
        # the target network: an EMA of the whole encoder and of the projector
        self.init_teacher(PARTS, (), cfg.ema, run_steps, heads=["projector"])

    def pooled(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        return pool(x, pad, self.encoder.num_extra, self.cfg.pooling)

    def forward(self, views: list[dict[str, torch.Tensor]], global_views: int = VIEWS,
                **_: object) -> dict[str, torch.Tensor]:
        if len(views) != VIEWS or global_views != VIEWS:
            raise ValueError(f"method byol compares {VIEWS} global views of each sample, got {global_views} global "
                             f"and {len(views) - global_views} local: set the views section to two views")
        b = next(iter(views[0].values())).shape[0]
        if self.training and b < 2:
            raise ValueError(f"method byol: batch norm in the heads needs train.batch_size >= 2, got {b}")
        # one encoder pass over both views (the two global views have one size)
        both = {k: torch.cat([views[0][k], views[1][k]]) for k in views[0]}
        x, pad = self.encoder.encode(both)
        h = self.pooled(x, pad)
        z = [self.projector(h[:b]), self.projector(h[b:])]  # batch norm over each view, as the paper's code
        p = [self.predictor(z[0]), self.predictor(z[1])]
        with torch.no_grad():
            tx, tpad = self.teacher_encode(both)
            th = self.pooled(tx, tpad)
            projector = self.teacher["projector"]
            with batch_statistics(projector):
                t = [projector(th[:b]), projector(th[b:])]
        # each view's prediction regresses the other view's target; mean over the batch, summed over the two
        per_view = byol_loss(p[0], t[1]) + byol_loss(p[1], t[0])
        loss = global_mean(per_view * b, b)
        cos = F.cosine_similarity(p[0].detach().float(), p[1].detach().float(), dim=-1)
        cos_sum, count = all_sum(torch.stack([cos.sum(), cos.new_tensor(float(b))]))
        return {"loss": loss,
                "target_var": compute_var(F.normalize(torch.cat(t).float(), dim=-1)),
                "pred_var": compute_var(F.normalize(torch.cat(p).float(), dim=-1)),
                "student_rank": effective_rank(h), "teacher_rank": effective_rank(th),
                "view_cos": cos_sum / count}

    @classmethod
    def card_tags(cls, cfg: BYOLConfig) -> list[str]:
        return ["byol"]

    @classmethod
    def card_title(cls, cfg: BYOLConfig) -> str:
        return "BYOL (bootstrap your own latent)"

    @classmethod
    def card_objective(cls, cfg: BYOLConfig, mask: Any) -> str:
        return (f"BYOL: two augmented views; the online network's prediction of one view regresses the EMA "
                f"target's projection of the other (2 - 2 cos, both ways), {cfg.pooling} pooling, projector "
                f"{cfg.projector.hidden_dim} -> {cfg.projector.out_dim}")
