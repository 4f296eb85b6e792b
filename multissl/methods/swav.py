"""SwAV (Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster
Assignments", arXiv 2006.09882): every view of a sample goes through the encoder and a projector to
an l2-normalised embedding, scored against K learned prototypes (unit vectors); the scores of each
global view become a code, a soft assignment to the prototypes balanced over the batch by
Sinkhorn-Knopp (:func:`multissl.core.losses.swav.swav_codes`), and every other view, local crops
included (multi-crop, section 3.2), predicts that code from its own scores: the swapped prediction
(:func:`multissl.core.losses.swav.swav_loss`). No teacher, no negatives: the balanced assignment keeps
the codes from collapsing.

As the paper's code does: the prototypes are normalised to unit length at the start of every
training step and get no gradient during the first ``freeze_prototypes`` steps; all the views go
through the projector together (its batch norm over every crop); with ``queue_length`` > 0 a queue
of the global views' embeddings from earlier batches (the paper's small-batch queue, section 4.4)
joins the batch in Sinkhorn-Knopp, scored by the current prototypes, once it is full.

Data parallelism: Sinkhorn-Knopp balances over the global batch (its sums run over ranks); the queue
holds the global batch's embeddings (gathered, so it is the same on every rank) and each rank hands
Sinkhorn-Knopp its own share of the queue's rows, so N ranks compute the codes one rank with the
global batch computes. The queue and its fill are buffers saved in checkpoints, so resume is exact.

>>> model = SwAV(vision_adapter, EncoderConfig(), SwAVConfig())  # doctest: +SKIP
>>> model(**view_collator(examples))["loss"]  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from multissl.core.adapter import Modality, StudentView
from multissl.core.batchnorm import global_batch_norm
from multissl.core.blocks import EncoderConfig
from multissl.core.distributed import all_gather_rows, global_mean, rank, world_size
from multissl.core.heads import MLPConfig, mlp
from multissl.core.health import compute_var, effective_rank
from multissl.core.init import bert_init
from multissl.core.losses.nnclr import nnclr_queue_update
from multissl.core.losses.swav import swav_codes, swav_loss
from multissl.methods.base import Method
from multissl.methods.siamese import (
    check_batch_views,
    check_view_counts,
    count_batch,
    encode_views,
    finite,
    global_average,
)

CODED_VIEWS = 2
"""SwAV computes codes for the two global views (the paper's ``crops_for_assign``)."""


def swav_projector() -> MLPConfig:
    """The paper's projector: Linear 2048, batch norm, ReLU, Linear 128."""
    return MLPConfig(layers=2, hidden_dim=2048, out_dim=128, norm="batch", activation="relu")


@dataclass
class SwAVConfig:
    """SwAV: swapped prediction of Sinkhorn-Knopp codes over learned prototypes, with multi-crop."""

    name: Literal["swav"] = "swav"
    """The objective."""

    pool: Literal["cls", "mean"] = "cls"
    """What the projector sees of a view: the encoder's first extra token (cls; encoders without one,
    as speech's, fall back to the mean) or the mean over its tokens."""

    projector: MLPConfig = field(default_factory=swav_projector)
    """The projector on the pooled encoder output (the paper's: 2048 hidden, 128 out); its output is
    l2-normalised. Dropped at export."""

    prototypes: int = 3000
    """K, the number of prototypes (the paper: 3000 for ImageNet)."""

    temperature: float = 0.1
    """Temperature of the softmax over the prototype scores in the swapped prediction (the paper: 0.1)."""

    epsilon: float = 0.05
    """Sinkhorn-Knopp's entropy regularisation: the codes are ``exp(scores / epsilon)`` balanced (the
    paper: 0.05)."""

    sinkhorn_iterations: int = 3
    """Sinkhorn-Knopp iterations (the paper: 3)."""

    freeze_prototypes: int = 313
    """Training steps at the start during which the prototypes get no gradient (the paper: its first
    epoch, 313 steps at 4096 images; counted in training batches, which are optimiser updates without
    gradient accumulation)."""

    queue_length: int = 0
    """Rows of the queue of past global-view embeddings (per global view) that joins the batch in
    Sinkhorn-Knopp; 0: no queue (the paper: 3840 for batches of 256, none for 4096). It must hold at
    least one global batch."""

    queue_start: int = 0
    """Training batches before the queue starts to fill (the paper: 15 epochs); it is used once full."""

    def validate(self, where: str = "method") -> None:
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"{where}.pool must be cls or mean, got {self.pool!r}")
        self.projector.validate(f"{where}.projector")
        if self.prototypes < 2:
            raise ValueError(f"{where}.prototypes must be >= 2, got {self.prototypes}")
        for key in ("temperature", "epsilon"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{where}.{key} must be > 0, got {getattr(self, key)}")
        if self.sinkhorn_iterations < 1:
            raise ValueError(f"{where}.sinkhorn_iterations must be >= 1, got {self.sinkhorn_iterations}")
        for key in ("freeze_prototypes", "queue_length", "queue_start"):
            if getattr(self, key) < 0:
                raise ValueError(f"{where}.{key} must be >= 0, got {getattr(self, key)}")


class SwAV(Method):
    """The encoder, the projector and the prototypes (``prototypes.weight``, K x out_dim). ``forward(views,
    global_views)`` takes the view collator's batch (two global views, then any local crops) and returns
    the loss and the health metrics: ``pred_var`` (per-dimension spread over the batch of the
    embeddings), ``student_rank`` (RankMe of the pooled encoder outputs of the first view),
    ``code_entropy`` (mean entropy of the codes, in nats: log K when every code is uniform) and
    ``queue_used`` (1 when the queue joined Sinkhorn-Knopp)."""

    name = "swav"
    config_class = SwAVConfig

    @classmethod
    def student_view(cls, cfg: SwAVConfig) -> StudentView:
        return StudentView(dense=False, views=True)

    @classmethod
    def check_views(cls, cfg: SwAVConfig, views: Any) -> None:
        check_view_counts(cls.name, views, CODED_VIEWS, local_views=True)

    def __init__(self, modality: Modality, encoder: EncoderConfig, cfg: SwAVConfig, run_steps: int = 0):
        super().__init__(modality, encoder, cfg, run_steps)
        self.projector = mlp(encoder.dim, cfg.projector)
        self.projector.apply(bert_init)
        self.projector = global_batch_norm(self.projector)
        self.prototypes = nn.Linear(cfg.projector.out_dim, cfg.prototypes, bias=False)
        self.register_buffer("batches_seen", torch.zeros((), dtype=torch.long))
        # the queue: the global views' normalised embeddings of earlier global batches, first in first out
        self.register_buffer("queue", torch.zeros(CODED_VIEWS, cfg.queue_length, cfg.projector.out_dim))
        self.register_buffer("queue_pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_rows", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def normalise_prototypes(self) -> None:
        """Each prototype to unit length, in place (the paper's code, at the start of every step)."""
        w = self.prototypes.weight
        w.copy_(F.normalize(w, dim=1))

    def forward(self, views: list[dict[str, torch.Tensor]], global_views: int = CODED_VIEWS,
                **_: object) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        b = check_batch_views(self.name, views, global_views, CODED_VIEWS, local_views=True)
        step = count_batch(self.batches_seen, self.training)
        if self.training:
            self.normalise_prototypes()
        h = encode_views(self.encoder, views, cfg.pool)
        z = F.normalize(self.projector(torch.cat(h)), dim=-1)  # every crop through the projector together
        w = self.prototypes.weight
        if self.training and step < cfg.freeze_prototypes:  # in the graph with a zero gradient, so DDP sees it
            w = w.detach() + 0.0 * w
        scores = (z @ w.t()).view(len(views), b, -1)

        use_queue = cfg.queue_length > 0 and int(self.queue_rows) >= cfg.queue_length
        with torch.no_grad():
            codes = []
            for v in range(CODED_VIEWS):
                # this rank's share of the queue (rows rank, rank + N, ...): the shares of all ranks make the
                # whole queue once, so Sinkhorn-Knopp's global sums are those of one rank with the whole queue
                queue_scores = self.queue[v, rank()::world_size()] @ w.detach().t() if use_queue else None
                codes.append(swav_codes(scores[v].detach(), cfg.epsilon, cfg.sinkhorn_iterations, queue_scores))
            codes_t = torch.stack(codes)
        per_sample = swav_loss(scores, codes_t, cfg.temperature)
        embeddings = z.detach().view(len(views), b, -1)[:CODED_VIEWS]
        if self.training and cfg.queue_length > 0 and step >= cfg.queue_start:
            self._enqueue(embeddings)
        entropy = -(codes_t * codes_t.clamp_min(1e-30).log()).sum(-1)
        return {"loss": global_mean(per_sample * b, b),
                "pred_var": compute_var(z.detach().float()),
                "student_rank": effective_rank(h[0]),
                "code_entropy": global_average(entropy),
                "queue_used": torch.tensor(float(use_queue))}

    @torch.no_grad()
    def _enqueue(self, embeddings: torch.Tensor) -> None:
        """Push the global batch's embeddings of the coded views (every rank's rows, gathered) into the queue."""
        rows = torch.stack([all_gather_rows(e) for e in embeddings])
        if rows.shape[1] > self.cfg.queue_length:
            raise ValueError(f"method.queue_length ({self.cfg.queue_length}) must hold at least one global batch "
                             f"({rows.shape[1]} rows)")
        if not finite(rows):
            return
        pointer = int(self.queue_pointer)
        for v in range(CODED_VIEWS):
            queue, new_pointer = nnclr_queue_update(self.queue[v], pointer, rows[v])
            self.queue[v].copy_(queue)
        self.queue_pointer.fill_(new_pointer)
        self.queue_rows.fill_(min(self.cfg.queue_length, int(self.queue_rows) + rows.shape[1]))

    @classmethod
    def card_title(cls, cfg: SwAVConfig) -> str:
        return "SwAV (swapping assignments between views)"

    @classmethod
    def card_tags(cls, cfg: SwAVConfig) -> list[str]:
        return ["swav"]

    @classmethod
    def card_objective(cls, cfg: SwAVConfig, mask: Any) -> str:
        queue = f", a queue of {cfg.queue_length}" if cfg.queue_length else ""
        return (f"SwAV: swapped prediction of Sinkhorn-Knopp codes over {cfg.prototypes} prototypes (temperature "
                f"{cfg.temperature}, epsilon {cfg.epsilon}) between the global views and from every crop{queue}; "
                f"projector and prototypes not exported; {cfg.pool}-pooled encoder output")
