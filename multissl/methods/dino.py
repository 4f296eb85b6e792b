"""DINO (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers", arXiv
2104.14294): self-distillation without labels. A student and its EMA teacher see augmented views of
each sample (2 global views for the teacher; the global views and smaller local crops for the
student); a prototype head turns each pooled output into scores over K prototypes, and the student
learns to predict, from every view, the teacher's centred and sharpened distribution for every other
global view.

Options:

- iBOT's masked patch loss (Zhou et al. 2021, arXiv 2111.07832): the student's global views have
  some patches masked (replaced by the local encoder's mask embedding); at each masked patch the
  student predicts the teacher's distribution for the same patch of the unmasked view, through the
  same prototype head or a separate one, with a centre of its own.
- DINOv2's ingredients (Oquab et al. 2023, arXiv 2304.07193): Sinkhorn-Knopp centring of the
  teacher instead of the running centre, and the KoLeo regulariser on the student's l2-normalised
  pooled backbone features of the global views.

The teacher is a full EMA copy of the encoder and of the heads (cosine schedule to 1.0). Schedules
inside the method (the teacher temperature's warm-up, the prototypes' freeze) count optimiser updates
with ``ema_updates``, a checkpointed buffer, so a resumed run continues them exactly.

>>> model = DINO(vision_adapter, EncoderConfig(), DINOConfig(ibot_weight=1.0))  # doctest: +SKIP
>>> model(**view_collator(examples))["loss"]  # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from multissl.core.adapter import PARTS, Modality, StudentView
from multissl.core.blocks import EncoderConfig
from multissl.core.distributed import all_gather_with_grad, all_sum, global_mean
from multissl.core.ema import EMAConfig
from multissl.core.encoder import extend_padding
from multissl.core.heads import PrototypeHead, PrototypeHeadConfig, pool
from multissl.core.health import compute_var, effective_rank
from multissl.core.losses.dino import dino_center_update, dino_cross_entropy, dino_teacher_probabilities
from multissl.core.losses.ibot import ibot_patch_cross_entropy
from multissl.core.losses.koleo import koleo_loss
from multissl.core.losses.sinkhorn import sinkhorn_knopp
from multissl.methods.base import Method

Inputs = dict[str, torch.Tensor]


def _dino_ema() -> EMAConfig:
    return EMAConfig(shape="cosine", decay=0.996, end_decay=1.0, anneal_fraction=1.0)


@dataclass
class DINOConfig:
    """DINO self-distillation between views, with iBOT's masked patch loss and DINOv2's Sinkhorn-Knopp
    centring and KoLeo regulariser as options. The views are the recipe's ``views`` section; the masks
    of the global views (iBOT) its ``mask`` section."""

    name: Literal["dino"] = "dino"
    """The objective."""

    head: PrototypeHeadConfig = field(default_factory=PrototypeHeadConfig)
    """The prototype head on the pooled output (DINO's: 3 layers of 2048, bottleneck 256, 65,536
    prototypes for ViT-S)."""

    pool: Literal["cls", "mean"] = "cls"
    """What the head sees of a view: the first extra token (CLS), or the mean of the tokens; encoders
    without an extra token (speech) take the mean either way."""

    student_temp: float = 0.1
    """Temperature of the student's softmax (the paper: 0.1)."""

    teacher_temp: float = 0.07
    """Temperature of the teacher's softmax after the warm-up (the paper: 0.04 to 0.07)."""

    teacher_temp_start: float = 0.04
    """Teacher temperature at the first update, raised linearly to ``teacher_temp``."""

    teacher_temp_warmup: float = 0.1
    """Share of the run (``train.max_steps``) over which the teacher temperature warms up (the paper:
    30 of 300 epochs); 0: ``teacher_temp`` from the start."""

    centering: Literal["center", "sinkhorn"] = "center"
    """How the teacher's scores are centred: ``center`` subtracts a running mean of the teacher's
    scores over the global batch (DINO, iBOT); ``sinkhorn`` turns them into Sinkhorn-Knopp
    assignments with equal mass per prototype over the global batch (DINOv2)."""

    center_momentum: float = 0.9
    """Momentum of the running centre(s), updated after each training forward (the paper: 0.9)."""

    sinkhorn_iterations: int = 3
    """Sinkhorn-Knopp iterations (``centering: sinkhorn``; DINOv2: 3)."""

    ibot_weight: float = 0.0
    """Weight of iBOT's masked patch loss (iBOT and DINOv2: 1.0); 0 turns it off, and with it the
    masks of the global views."""

    shared_head: bool = True
    """iBOT: the patch tokens go through the same prototype head as the pooled output (iBOT's ViT-S);
    false: through a head of their own (``patch_head``; DINOv2's larger models)."""

    patch_head: PrototypeHeadConfig = field(default_factory=lambda: PrototypeHeadConfig(prototypes=8192))
    """iBOT with ``shared_head: false``: the patch tokens' prototype head."""

    patch_teacher_temp: float = 0.07
    """iBOT: the teacher's temperature for patches after the warm-up (iBOT: 0.07)."""

    patch_teacher_temp_start: float = 0.04
    """iBOT: the teacher's patch temperature at the first update (same warm-up as the pooled one)."""

    koleo_weight: float = 0.0
    """Weight of the KoLeo regulariser on the student's l2-normalised pooled backbone features of each
    global view (DINOv2: 0.1), over the global batch; 0: off."""

    freeze_prototypes: int = 0
    """Optimiser updates at the start during which the student's prototypes get no gradient (DINO:
    the first epoch), so that the head's MLP settles first."""

    ema: EMAConfig = field(default_factory=_dino_ema)
    """The teacher's decay: cosine from 0.996 to 1.0 over the whole run (DINO)."""

    def validate(self, where: str = "method") -> None:
        for key in ("student_temp", "teacher_temp", "teacher_temp_start", "patch_teacher_temp",
                    "patch_teacher_temp_start"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{where}.{key} must be > 0, got {getattr(self, key)}")
        for key in ("teacher_temp_warmup", "center_momentum"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"{where}.{key} must lie in [0, 1], got {getattr(self, key)}")
        for key in ("ibot_weight", "koleo_weight", "freeze_prototypes"):
            if getattr(self, key) < 0:
                raise ValueError(f"{where}.{key} must be >= 0, got {getattr(self, key)}")
        if self.centering not in ("center", "sinkhorn"):
            raise ValueError(f"{where}.centering must be center or sinkhorn, got {self.centering!r}")
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"{where}.pool must be cls or mean, got {self.pool!r}")
        if self.sinkhorn_iterations < 1:
            raise ValueError(f"{where}.sinkhorn_iterations must be >= 1, got {self.sinkhorn_iterations}")
        self.head.validate(f"{where}.head")
        self.patch_head.validate(f"{where}.patch_head")
        self.ema.validate(f"{where}.ema")


def _cat(views: list[Inputs]) -> Inputs:
    """Views of one shape as one batch (view after view)."""
    return {k: torch.cat([v[k] for v in views]) for k in views[0]}


def _shape(inputs: Inputs) -> tuple:
    return tuple((k, tuple(t.shape)) for k, t in sorted(inputs.items()))


def _rows(inputs: Inputs) -> int:
    return next(iter(inputs.values())).shape[0]


def _spread(probs: torch.Tensor) -> torch.Tensor:
    """The spread over the global batch of probabilities (..., K): the mean over prototypes of each
    one's standard deviation over the rows, times sqrt(K) so that K does not set its scale (rows
    that each put all their mass on a prototype of their own give sqrt(rows / K) for rows <= K, 1 for
    rows >> K). Near 0 when every row has the same distribution: DINO's two collapses, uniform and
    one-hot, both give it."""
    k = probs.shape[-1]
    return compute_var(probs.reshape(-1, k) * math.sqrt(k))


class DINO(Method):
    """Student and EMA teacher with prototype heads. ``forward(views, global_views, view_masks=None)``
    takes the view collator's batch: ``views`` a list of input dicts (the ``global_views`` global views
    first, then the local crops), ``view_masks`` one (B, T) mask per global view (iBOT). It returns the
    loss, its parts and the health metrics."""

    name = "dino"
    config_class = DINOConfig

    @classmethod
    def student_view(cls, cfg: DINOConfig) -> StudentView:
        # the mask embedding exists only where it is used (iBOT): an unused parameter would stall DDP
        ibot = cfg.ibot_weight > 0
        return StudentView(dense=ibot, views=True, view_masks=ibot)

    @classmethod
    def check(cls, cfg: DINOConfig, encoder: EncoderConfig, mask: Any) -> None:
        if cfg.ibot_weight > 0 and (mask.kind == "none" or not mask.prob > 0):
            raise ValueError(f"method.ibot_weight > 0 predicts masked patches: the mask section masks none "
                             f"(mask.kind {mask.kind!r}, mask.prob {mask.prob})")

    @classmethod
    def card_tags(cls, cfg: DINOConfig) -> list[str]:
        return ["dino", *(["ibot"] if cfg.ibot_weight > 0 else []),
                *(["dinov2"] if cfg.centering == "sinkhorn" or cfg.koleo_weight > 0 else [])]

    @classmethod
    def card_title(cls, cfg: DINOConfig) -> str:
        return "DINO with iBOT's masked patch loss" if cfg.ibot_weight > 0 else "DINO"

    @classmethod
    def card_objective(cls, cfg: DINOConfig, mask: Any) -> str:
        parts = [f"DINO self-distillation over {cfg.head.prototypes} prototypes ({cfg.centering} centring, "
                 f"temperatures {cfg.student_temp} student / {cfg.teacher_temp} teacher)"]
        if cfg.ibot_weight > 0:
            parts.append(f"iBOT masked patch loss x {cfg.ibot_weight} ({mask.kind} masking at {mask.prob})")
        if cfg.koleo_weight > 0:
            parts.append(f"KoLeo x {cfg.koleo_weight}")
        return ", ".join(parts)

    def __init__(self, modality: Modality, encoder: EncoderConfig, cfg: DINOConfig, run_steps: int = 0):
        super().__init__(modality, encoder, cfg, run_steps)
        self.ibot = cfg.ibot_weight > 0
        mask_embedding = getattr(self.encoder.local, "mask_embedding", None)
        if self.ibot and mask_embedding is None:
            raise ValueError("method.ibot_weight > 0 replaces masked patches by the adapter's mask embedding: "
                             "remove adapter.mask_embedding: false")
        if not self.ibot and mask_embedding is not None:
            mask_embedding.requires_grad_(False)  # never used without iBOT
        self.head = PrototypeHead(encoder.dim, cfg.head)
        heads = ["head"]
        if self.ibot and not cfg.shared_head:
            self.patch_head = PrototypeHead(encoder.dim, cfg.patch_head)
            heads.append("patch_head")
        self.init_teacher(PARTS, (), cfg.ema, run_steps, heads=heads)
        # running centres of the teacher's scores (state of the objective, saved in checkpoints)
        self.register_buffer("center", torch.zeros(cfg.head.prototypes))
        if self.ibot:
            patch_prototypes = cfg.head.prototypes if cfg.shared_head else cfg.patch_head.prototypes
            self.register_buffer("patch_center", torch.zeros(patch_prototypes))

    def teacher_temperatures(self, step: int) -> tuple[float, float]:
        """The teacher's temperatures (pooled, patches) at optimiser update ``step`` (0-based): linear
        from the start values over the first ``teacher_temp_warmup`` of the run, then constant."""
        cfg = self.cfg
        warmup = cfg.teacher_temp_warmup * self.run_steps
        done = 1.0 if warmup <= 0 else min(1.0, step / warmup)
        return (cfg.teacher_temp_start + (cfg.teacher_temp - cfg.teacher_temp_start) * done,
                cfg.patch_teacher_temp_start + (cfg.patch_teacher_temp - cfg.patch_teacher_temp_start) * done)

    def student_encode(self, inputs: Inputs, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The student's output (N, E + T, D), final norm applied, and its padding (N, E + T); tokens
        where ``mask`` (N, T) is set are replaced by the mask embedding first (as data2vec v1)."""
        enc = self.encoder
        feats, pad = enc.local(inputs)
        if mask is not None:
            mask = mask & ~pad
            feats = torch.where(mask.unsqueeze(-1), enc.local.mask_embedding.to(feats.dtype), feats)
        x = enc.context(feats, pad)
        pad = extend_padding(pad, enc.num_extra)
        x, _, _ = enc.blocks(x, pad)
        return enc.norm(x), pad

    def _student_local(self, views: list[Inputs]) -> list[torch.Tensor]:
        """The student's pooled output of each local crop, crops of one shape in one encoder call."""
        groups: dict[tuple, list[int]] = {}
        for i, v in enumerate(views):
            groups.setdefault(_shape(v), []).append(i)
        out: list[torch.Tensor] = [torch.empty(0)] * len(views)
        for idx in groups.values():
            x, pad = self.student_encode(_cat([views[i] for i in idx]))
            for i, chunk in zip(idx, pool(x, pad, self.encoder.num_extra, self.cfg.pool).chunk(len(idx)), strict=True):
                out[i] = chunk
        return out

    def forward(self, views: list[Inputs], global_views: int, view_masks: list[torch.Tensor] | None = None,
                **_: object) -> dict[str, torch.Tensor]:
        cfg, e, g = self.cfg, self.encoder.num_extra, global_views
        if len({_shape(v) for v in views[:g]}) != 1:
            raise ValueError("dino: the global views must all have one shape (the teacher encodes them together)")
        b = _rows(views[0])
        temp, patch_temp = self.teacher_temperatures(int(self.ema_updates))
        glob = _cat(views[:g])  # (g * B, ...)
        mask = torch.cat(view_masks[:g]).bool() if self.ibot and view_masks is not None else None
        if self.ibot and mask is None:
            raise ValueError("dino: method.ibot_weight > 0 needs the batch's view_masks")

        with torch.no_grad():  # the teacher sees the global views, unmasked
            t_x, t_pad = self.teacher_encode(glob)
            t_pooled = pool(t_x, t_pad, e, cfg.pool)
            t_logits = self.teacher["head"](t_pooled).float().view(g, b, -1)
        s_x, s_pad = self.student_encode(glob, mask)
        s_global = pool(s_x, s_pad, e, cfg.pool)
        s_pooled = torch.cat([s_global, *self._student_local(views[g:])])
        frozen = self.training and int(self.ema_updates) < cfg.freeze_prototypes
        s_logits = self.head(s_pooled, frozen_prototypes=frozen).view(len(views), b, -1)

        k = t_logits.shape[-1]
        if cfg.centering == "center":
            t_probs = dino_teacher_probabilities(t_logits, self.center, temp)
        else:
            t_probs = sinkhorn_knopp(t_logits.reshape(-1, k), temp, cfg.sinkhorn_iterations).view(g, b, k)
        dino = dino_cross_entropy(s_logits, t_probs, cfg.student_temp)
        loss = global_mean(dino * b, b)
        parts = {"dino_loss": dino * b}

        if self.ibot:
            ibot, t_patch_logits, valid = self._ibot(s_x, s_pad, t_x, t_pad, mask, patch_temp, frozen)
            loss = loss + cfg.ibot_weight * global_mean(ibot * g * b, g * b)
            parts["ibot_loss"] = ibot * b  # a mean over g * B images, counted per B like the rest
        if cfg.koleo_weight > 0:
            # over the global batch, so N ranks compute what one rank computes (DINOv2: per GPU)
            koleo = sum(koleo_loss(all_gather_with_grad(f)) for f in s_global.float().chunk(g))
            loss = loss + cfg.koleo_weight * koleo
            parts["koleo_loss"] = koleo.detach() * b  # the same on every rank

        if self.training:
            self._update_centers(t_logits, t_patch_logits[valid] if self.ibot else None)
        return {"loss": loss, **self._metrics(parts, b, t_probs, s_logits, s_global, t_pooled)}

    def _ibot(self, s_x: torch.Tensor, s_pad: torch.Tensor, t_x: torch.Tensor, t_pad: torch.Tensor,
              mask: torch.Tensor, patch_temp: float, frozen: bool
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(iBOT's patch loss over the global views, the teacher's patch scores (g * B, T, K), the
        non-padding patches (g * B, T))."""
        cfg, e = self.cfg, self.encoder.num_extra
        valid = ~t_pad[:, e:]
        mask = mask & valid
        head = self.head if cfg.shared_head else self.patch_head
        with torch.no_grad():
            t_patch_logits = self.teacher["head" if cfg.shared_head else "patch_head"](t_x[:, e:]).float()
        # the student's head runs on the masked patches only; the loss reads no other position
        s_masked = head(s_x[:, e:][mask], frozen_prototypes=frozen).float()
        s_patch_logits = s_masked.new_zeros(t_patch_logits.shape).index_put((mask,), s_masked)
        if cfg.centering == "center":
            t_patch_probs = dino_teacher_probabilities(t_patch_logits, self.patch_center, patch_temp)
        else:  # DINOv2: Sinkhorn-Knopp over the masked patches of the global batch
            t_patch_probs = torch.zeros_like(t_patch_logits)
            t_patch_probs[mask] = sinkhorn_knopp(t_patch_logits[mask], patch_temp, cfg.sinkhorn_iterations)
        return ibot_patch_cross_entropy(s_patch_logits, t_patch_probs, mask, cfg.student_temp), t_patch_logits, valid

    @torch.no_grad()
    def _update_centers(self, t_logits: torch.Tensor, t_patch_logits: torch.Tensor | None) -> None:
        """DINO's running centre (and iBOT's patch centre) from the teacher's scores of the global batch;
        a non-finite result (the same on every rank) leaves a centre as it was."""
        if self.cfg.centering != "center":
            return
        pairs = [(self.center, t_logits)]
        if t_patch_logits is not None:
            pairs.append((self.patch_center, t_patch_logits))
        for center, logits in pairs:
            new = dino_center_update(center, logits, self.cfg.center_momentum)
            if bool(torch.isfinite(new).all()):
                center.copy_(new)

    @torch.no_grad()
    def _metrics(self, parts: dict[str, torch.Tensor], b: int, t_probs: torch.Tensor, s_logits: torch.Tensor,
                 s_global: torch.Tensor, t_pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss parts, the teacher's entropy and the teacher-to-student KL (means over the global
        batch), the spread of the teacher's and the student's probabilities over the batch
        (``target_var``, ``pred_var``) and the effective rank of the pooled backbone features."""
        entropy = -(t_probs * t_probs.clamp_min(1e-30).log()).sum(-1)
        names = list(parts)
        stats = all_sum(torch.stack([*(parts[n].detach().float() for n in names), entropy.sum(),
                                     t_probs.new_tensor(float(entropy.numel())), t_probs.new_tensor(float(b))]))
        *sums, ent_sum, ent_count, rows = stats
        out = {n: s / rows for n, s in zip(names, sums, strict=True)}
        out["teacher_entropy"] = ent_sum / ent_count
        # the mean cross-entropy over the pairs is the teacher's mean entropy plus the mean KL: every
        # teacher view meets the same number of student views
        out["kl"] = out["dino_loss"] - out["teacher_entropy"]
        s_probs = F.softmax(s_logits.float() / self.cfg.student_temp, dim=-1)
        out["target_var"], out["pred_var"] = _spread(t_probs), _spread(s_probs)
        out["student_rank"], out["teacher_rank"] = effective_rank(s_global), effective_rank(t_pooled)
        return out
