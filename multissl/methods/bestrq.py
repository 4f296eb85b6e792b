"""BEST-RQ (Chiu et al. 2022, arXiv 2202.01855): a frozen random projection and a frozen random codebook
(l2-normalised, seeded by ``method.quantizer_seed``, saved with the run) quantise the modality's token signal (for
speech the normalised log-mel frame under each conv frame) into code indices; the student sees the masked
input (masked frames replaced by the local encoder's learned mask embedding) and predicts the codes of the
masked frames with a softmax per codebook, cross-entropy on masked frames only. No teacher.

Frames are not stacked: the paper stacks four 10 ms log-mel frames into 40 ms ones because its encoder
runs at 25 Hz; ours already runs at 50 Hz (20 ms frames, one 25 ms log-mel window each), so each frame
gets the code of its own window.

The export is the bare encoder (``AutoModel``; ``Data2VecAudioModel`` for speech): the code heads and
the quantiser are pretraining-only.

>>> model = BestRQ(audio_adapter, EncoderConfig(), BestRQConfig())  # doctest: +SKIP
>>> model(**collator(examples))["loss"]  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from multissl.core.adapter import Modality, StudentView
from multissl.core.blocks import EncoderConfig
from multissl.core.distributed import global_mean
from multissl.core.encoder import extend_padding, mean_over
from multissl.core.health import compute_var, effective_rank
from multissl.core.init import bert_init
from multissl.core.losses.bestrq import bestrq_loss
from multissl.core.quantizer import RandomProjectionQuantizer
from multissl.methods.base import Method


@dataclass
class BestRQConfig:
    """BEST-RQ's random-projection quantiser and code heads; the masking is the ``mask`` section's."""

    name: Literal["bestrq"] = "bestrq"
    """The objective."""

    code_dim: int = 16
    """Width of the random projection and of each codebook vector (the paper: 16)."""

    codebook_size: int = 8192
    """Entries per codebook, the classes of each softmax (the paper: 8192)."""

    codebooks: int = 1
    """Codebooks, each with its own projection and softmax head; the loss averages over them (the paper:
    1, and 16 for its 0.6B model)."""

    quantizer_seed: int = 0
    """Seed of the quantiser's projection and codebooks, independent of ``train.seed``: the same seed
    gives the same targets whatever the model's initialisation."""

    signal_dim: int = 80
    """Width of the modality's token signal that the quantiser projects (80 log-mel bands for audio);
    checked against the signal at the first forward."""

    def validate(self, where: str = "method") -> None:
        for key in ("code_dim", "codebooks", "signal_dim"):
            if getattr(self, key) < 1:
                raise ValueError(f"{where}.{key} must be >= 1, got {getattr(self, key)}")
        if self.codebook_size < 2:
            raise ValueError(f"{where}.codebook_size must be >= 2, got {self.codebook_size}")
        if self.quantizer_seed < 0:
            raise ValueError(f"{where}.quantizer_seed must be >= 0, got {self.quantizer_seed}")


class BestRQ(Method):
    """The encoder, the frozen quantiser and a linear code head per codebook; ``forward(inputs, mask)``
    takes the collator's batch: the unmasked inputs and the masked frames (B, T)."""

    name = "bestrq"
    config_class = BestRQConfig

    @classmethod
    def student_view(cls, cfg: BestRQConfig) -> StudentView:
        return StudentView(dense=True)

    @classmethod
    def check(cls, cfg: BestRQConfig, encoder: EncoderConfig, mask: Any) -> None:
        if mask.kind in ("none", "bert"):
            raise ValueError(f"method bestrq predicts masked frames: mask.kind {mask.kind!r} does not fit")

    def __init__(self, modality: Modality, encoder: EncoderConfig, cfg: BestRQConfig, run_steps: int = 0):
        super().__init__(modality, encoder, cfg, run_steps)
        self.modality = modality  # a plain attribute (an adapter is no nn.Module), not in the state dict
        self.quantizer = RandomProjectionQuantizer(cfg.signal_dim, cfg.code_dim, cfg.codebook_size, cfg.codebooks,
                                                   cfg.quantizer_seed)
        self.head = nn.Linear(encoder.dim, cfg.codebooks * cfg.codebook_size)
        self.head.apply(bert_init)

    def codes(self, inputs: dict[str, torch.Tensor], tokens: int) -> torch.Tensor:
        """The quantiser's codes (B, tokens, codebooks) of the token signal of ``inputs``."""
        with torch.no_grad():
            signal = self.modality.token_signal(inputs, tokens)
            if signal.shape[-1] != self.cfg.signal_dim:
                raise ValueError(f"method.signal_dim is {self.cfg.signal_dim} but modality {self.modality.name!r} "
                                 f"gives token signals of width {signal.shape[-1]}: set method.signal_dim")
            return self.quantizer(signal)

    def hidden(self, feats: torch.Tensor, pad: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The encoder's output tokens (B, T, D) on local features with the masked ones replaced by the
        mask embedding, extra tokens dropped."""
        enc, e = self.encoder, self.encoder.num_extra
        mask_emb = getattr(enc.local, "mask_embedding", None)
        if mask_emb is None:
            raise ValueError("method bestrq replaces masked frames by the local encoder's mask embedding: "
                             "set adapter.mask_embedding to true")
        feats = torch.where(mask.unsqueeze(-1), mask_emb.to(feats.dtype), feats)
        x = enc.context(feats, pad, None)
        x, _, _ = enc.blocks(x, extend_padding(pad, e))
        return enc.norm(x)[:, e:]

    def forward(self, inputs: dict[str, torch.Tensor], mask: torch.Tensor, **_: object) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        feats, pad = self.encoder.local(inputs)
        codes = self.codes(inputs, feats.shape[1])
        mask = mask & ~pad
        x = self.hidden(feats, pad, mask)
        logits = self.head(x[mask]).view(-1, cfg.codebooks, cfg.codebook_size)
        labels = codes[mask]
        per_frame = bestrq_loss(logits, labels)
        loss = global_mean(per_frame.sum(), per_frame.numel())
        with torch.no_grad():
            accuracy = (logits.argmax(-1) == labels).float().mean() if labels.numel() else logits.new_zeros(())
        return {"loss": loss, "code_accuracy": accuracy, "pred_var": compute_var(x[mask]),
                "student_rank": effective_rank(mean_over(x, pad))}

    @classmethod
    def card_tags(cls, cfg: BestRQConfig) -> list[str]:
        return ["bestrq"]

    @classmethod
    def card_title(cls, cfg: BestRQConfig) -> str:
        return "BEST-RQ (random-projection quantiser targets)"

    @classmethod
    def card_objective(cls, cfg: BestRQConfig, mask: Any) -> str:
        return (f"BEST-RQ: predict the codes of a frozen random-projection quantiser ({cfg.codebooks} x "
                f"{cfg.codebook_size} codes of dim {cfg.code_dim}) at masked frames; {mask.kind} masking at "
                f"{mask.prob} (length {mask.length})")
