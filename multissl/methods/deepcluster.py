"""DeepCluster v2 (Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster
Assignments", arXiv 2006.09882, appendix A.2 and its released code): every view of a sample goes
through the encoder and a projector to an l2-normalised embedding; a memory bank keeps each sample's
embedding of its first view; k-means on the bank (spherical: cosine similarity, unit centroids) gives
each sample of the bank a cluster, and the centroids become the prototypes of a classifier that every
crop of a sample (multi-crop) must assign to its sample's cluster
(:func:`multissl.core.losses.deepcluster.deepcluster_loss`). The prototypes are the centroids: they get no
gradient. No teacher, no negatives.

The paper's code clusters once per epoch the bank of the epoch before (every image of the data set). Runs
here are counted in updates, so k-means runs every ``cluster_every`` training batches (an epoch's worth
is the paper's) on a first-in-first-out bank of ``bank_size`` rows keyed by the samples' ids (the view
collator's ``example_ids``); a sample is assigned when the bank held it at the last k-means, and the
crops of samples without an assignment (before the first k-means, or seen since) are left out of the
loss. The first k-means runs as soon as the bank holds ``prototypes`` rows.

Data parallelism: the bank is filled with the GLOBAL batch's rows (gathered), so it is the same on every
rank; k-means starts from rows drawn by a generator seeded with the batch count and runs the same
arithmetic on every rank, so every rank holds the same centroids and assignments, as one rank with the
same global batch does. The bank, its ids, the centroids and the assignments are buffers saved in
checkpoints, so resume is exact.

>>> model = DeepClusterV2(vision_adapter, EncoderConfig(), DeepClusterConfig())  # doctest: +SKIP
>>> model(**view_collator(examples))["loss"]  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from multissl.core.adapter import Modality, StudentView
from multissl.core.batchnorm import global_batch_norm
from multissl.core.blocks import EncoderConfig
from multissl.core.distributed import all_gather_rows, all_sum, global_mean
from multissl.core.heads import MLPConfig, mlp
from multissl.core.health import compute_var, effective_rank
from multissl.core.init import bert_init
from multissl.core.losses.deepcluster import deepcluster_loss
from multissl.core.losses.nnclr import nnclr_queue_update
from multissl.methods.base import Method
from multissl.methods.siamese import (
    check_batch_views,
    check_view_counts,
    count_batch,
    encode_views,
    finite,
)

GLOBAL_VIEWS = 2
"""DeepCluster v2 takes two global views (and any local crops), as SwAV."""


@torch.no_grad()
def spherical_kmeans(x: torch.Tensor, k: int, iterations: int, generator: torch.Generator
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(centroids (k, D) of unit length, the cluster of each row (N,)) of the l2-normalised rows ``x``
    (N, D), N >= k, by k-means on the cosine similarity as DeepCluster v2's code runs it: the centroids
    start at k distinct rows drawn with ``generator``; each of ``iterations`` rounds assigns every row to
    its most similar centroid and moves each centroid to the normalised sum of its rows (a centroid
    without rows stays where it is); the returned clusters are those of the final centroids. Float32.

    >>> x = F.normalize(torch.tensor([[1.0, 0.1], [1.0, -0.1], [-0.1, 1.0], [0.1, 1.0]]), dim=1)
    >>> _, labels = spherical_kmeans(x, 2, 5, torch.Generator().manual_seed(0))
    >>> len(set(labels[:2].tolist())), len(set(labels[2:].tolist())), len(set(labels.tolist()))
    (1, 1, 2)
    """
    if x.ndim != 2 or not 1 <= k <= x.shape[0]:
        raise ValueError(f"spherical_kmeans: expected (N, D) rows with 1 <= k <= N, got {tuple(x.shape)} and k={k}")
    x = x.float()
    start = torch.randperm(x.shape[0], generator=generator)[:k].to(x.device)
    centroids = x[start].clone()
    for _ in range(iterations):
        labels = (x @ centroids.T).argmax(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k)
        centroids = torch.where((counts > 0).unsqueeze(1), F.normalize(sums, dim=1), centroids)
    return centroids, (x @ centroids.T).argmax(dim=1)


def deepcluster_projector() -> MLPConfig:
    """The paper's projector: Linear 2048, batch norm, ReLU, Linear 128."""
    return MLPConfig(layers=2, hidden_dim=2048, out_dim=128, norm="batch", activation="relu")


@dataclass
class DeepClusterConfig:
    """DeepCluster v2: every crop classified into its sample's k-means cluster of a memory bank, the
    centroids as prototypes."""

    name: Literal["deepcluster"] = "deepcluster"
    """The objective."""

    pool: Literal["cls", "mean"] = "cls"
    """What the projector sees of a view: the encoder's first extra token (cls; encoders without one,
    as speech's, fall back to the mean) or the mean over its tokens."""

    projector: MLPConfig = field(default_factory=deepcluster_projector)
    """The projector on the pooled encoder output (the paper's: 2048 hidden, 128 out); its output is
    l2-normalised. Dropped at export."""

    prototypes: int = 3000
    """K, the number of k-means clusters, the classifier's prototypes (the released code: 3000, in 3
    k-means runs of its own each; one here)."""

    temperature: float = 0.1
    """Temperature of the softmax over the prototype scores (the released code: 0.1)."""

    bank_size: int = 65536
    """Rows of the memory bank (the paper: the whole data set, refreshed each epoch). At most the number of
    samples keeps one row per sample; it must hold at least one global batch and ``prototypes`` rows."""

    cluster_every: int = 313
    """Training batches between two k-means runs (the paper: once per epoch, 313 steps of 4096 ImageNet
    images; counted in training batches, which are optimiser updates without gradient accumulation)."""

    kmeans_iterations: int = 10
    """k-means rounds per run (the released code: 10)."""

    def validate(self, where: str = "method") -> None:
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"{where}.pool must be cls or mean, got {self.pool!r}")
        self.projector.validate(f"{where}.projector")
        if self.prototypes < 2:
            raise ValueError(f"{where}.prototypes must be >= 2, got {self.prototypes}")
        if not self.temperature > 0:
            raise ValueError(f"{where}.temperature must be > 0, got {self.temperature}")
        if self.bank_size < self.prototypes:
            raise ValueError(f"{where}.bank_size ({self.bank_size}) must be >= {where}.prototypes "
                             f"({self.prototypes}): k-means needs a row per centroid")
        for key in ("cluster_every", "kmeans_iterations"):
            if getattr(self, key) < 1:
                raise ValueError(f"{where}.{key} must be >= 1, got {getattr(self, key)}")


class DeepClusterV2(Method):
    """The encoder, the projector and the clustering state (buffers: ``bank`` and ``bank_ids``, the bank's
    pointer and fill, ``centroids``, and the assignments of the last k-means: ``assigned_ids`` sorted and
    their ``assigned_clusters``). ``forward(views, global_views, example_ids)`` takes the view collator's
    batch and returns the loss and the health metrics: ``pred_var`` (per-dimension spread over the batch
    of the embeddings), ``student_rank`` (RankMe of the pooled encoder outputs of the first view),
    ``assigned`` (the share of the batch's samples with a cluster) and ``clusters_used`` (clusters of the
    last k-means that hold a row)."""

    name = "deepcluster"
    config_class = DeepClusterConfig

    @classmethod
    def student_view(cls, cfg: DeepClusterConfig) -> StudentView:
        return StudentView(dense=False, views=True)

    @classmethod
    def check_views(cls, cfg: DeepClusterConfig, views: Any) -> None:
        check_view_counts(cls.name, views, GLOBAL_VIEWS, local_views=True)

    def __init__(self, modality: Modality, encoder: EncoderConfig, cfg: DeepClusterConfig, run_steps: int = 0):
        super().__init__(modality, encoder, cfg, run_steps)
        self.projector = mlp(encoder.dim, cfg.projector)
        self.projector.apply(bert_init)
        self.projector = global_batch_norm(self.projector)
        dim, rows = cfg.projector.out_dim, cfg.bank_size
        self.register_buffer("batches_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("bank", torch.zeros(rows, dim))
        self.register_buffer("bank_ids", torch.full((rows,), -1, dtype=torch.long))
        self.register_buffer("bank_pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("bank_rows", torch.zeros((), dtype=torch.long))
        self.register_buffer("centroids", torch.zeros(cfg.prototypes, dim))
        self.register_buffer("assigned_ids", torch.full((rows,), -1, dtype=torch.long))
        self.register_buffer("assigned_clusters", torch.full((rows,), -1, dtype=torch.long))
        self.register_buffer("kmeans_runs", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def cluster(self, step: int) -> None:
        """k-means on the bank's filled rows: new centroids, and each banked sample's cluster."""
        rows = int(self.bank_rows)
        generator = torch.Generator().manual_seed(step)  # the same draw on every rank, and on resume
        centroids, clusters = spherical_kmeans(self.bank[:rows], self.cfg.prototypes, self.cfg.kmeans_iterations,
                                               generator)
        ids, order = self.bank_ids[:rows].sort(stable=True)
        self.centroids.copy_(centroids)
        self.assigned_ids.fill_(-1)
        self.assigned_clusters.fill_(-1)
        self.assigned_ids[:rows] = ids
        self.assigned_clusters[:rows] = clusters[order]
        self.kmeans_runs += 1

    @torch.no_grad()
    def assignments(self, example_ids: torch.Tensor) -> torch.Tensor:
        """The cluster of each sample (B,) at the last k-means, -1 for a sample the bank did not hold."""
        rows = int((self.assigned_ids >= 0).sum())
        if rows == 0:
            return torch.full_like(example_ids, -1)
        ids = self.assigned_ids[:rows]  # sorted
        at = torch.searchsorted(ids, example_ids).clamp_max(rows - 1)
        return torch.where(ids[at] == example_ids, self.assigned_clusters[:rows][at], -1)

    def forward(self, views: list[dict[str, torch.Tensor]], global_views: int = GLOBAL_VIEWS,
                example_ids: torch.Tensor | None = None, **_: object) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        b = check_batch_views(self.name, views, global_views, GLOBAL_VIEWS, local_views=True)
        if example_ids is None:
            raise ValueError("method deepcluster keys its memory bank on the batch's example_ids (the view collator's)")
        example_ids = example_ids.to(self.bank_ids.device)
        step = count_batch(self.batches_seen, self.training)
        first = int(self.kmeans_runs) == 0
        if self.training and int(self.bank_rows) >= cfg.prototypes and (first or step % cfg.cluster_every == 0):
            self.cluster(step)
        h = encode_views(self.encoder, views, cfg.pool)
        z = F.normalize(self.projector(torch.cat(h)), dim=-1)  # every crop through the projector together
        with torch.autocast(device_type=z.device.type, enabled=False):
            scores = (z.float() @ self.centroids.t()).view(len(views), b, -1)  # the prototypes: no gradient
        clusters = self.assignments(example_ids)
        loss = deepcluster_loss(scores, clusters, cfg.temperature)
        assigned = int((clusters >= 0).sum())
        if self.training:
            self._remember(example_ids, z.detach()[:b])
        used, total = all_sum(torch.stack([clusters.new_tensor(assigned).float(), clusters.new_tensor(b).float()]))
        held = self.assigned_clusters[self.assigned_clusters >= 0]
        return {"loss": global_mean(loss * assigned, assigned),
                "pred_var": compute_var(z.detach().float()),
                "student_rank": effective_rank(h[0]), "assigned": used / total.clamp_min(1),
                "clusters_used": torch.tensor(float(held.unique().numel()))}

    @torch.no_grad()
    def _remember(self, example_ids: torch.Tensor, embeddings: torch.Tensor) -> None:
        """Push the global batch's first-view embeddings and their ids into the bank."""
        rows, ids = all_gather_rows(embeddings.float()), all_gather_rows(example_ids)
        if rows.shape[0] > self.cfg.bank_size:
            raise ValueError(f"method.bank_size ({self.cfg.bank_size}) must hold at least one global batch "
                             f"({rows.shape[0]} rows)")
        if not finite(rows):
            return
        pointer = int(self.bank_pointer)
        bank, new_pointer = nnclr_queue_update(self.bank, pointer, rows)
        at = (pointer + torch.arange(ids.shape[0], device=ids.device)) % self.cfg.bank_size
        self.bank.copy_(bank)
        self.bank_ids[at] = ids
        self.bank_pointer.fill_(new_pointer)
        self.bank_rows.fill_(min(self.cfg.bank_size, int(self.bank_rows) + rows.shape[0]))

    @classmethod
    def card_title(cls, cfg: DeepClusterConfig) -> str:
        return "DeepCluster v2 (k-means clusters of a memory bank as pseudo-labels)"

    @classmethod
    def card_tags(cls, cfg: DeepClusterConfig) -> list[str]:
        return ["deepcluster-v2"]

    @classmethod
    def card_objective(cls, cfg: DeepClusterConfig, mask: Any) -> str:
        return (f"DeepCluster v2: every crop classified (temperature {cfg.temperature}) into its sample's cluster of "
                f"k-means ({cfg.prototypes} centroids, every {cfg.cluster_every} batches) on a memory bank of "
                f"{cfg.bank_size}; projector not exported; {cfg.pool}-pooled encoder output")
