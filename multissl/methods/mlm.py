"""BERT's masked language modelling (Devlin et al. 2019, arXiv 1810.04805), as RoBERTa trains it (Liu
et al. 2019, arXiv 1907.11692): 15% of the tokens are selected (mask.kind bert); of those 80% become
<mask>, 10% a random token and 10% stay; the student predicts the original token at every selected
position through an LM head whose output layer is the input embedding (tied). No teacher.

The export is the Hugging Face masked-LM class of the encoder (``RobertaForMaskedLM`` /
``Data2VecTextForMaskedLM``), so ``pipeline("fill-mask", model=export)`` works and ``AutoModel``
still loads the encoder.

>>> model = MaskedLM(text_adapter, EncoderConfig(), MLMConfig())  # doctest: +SKIP
>>> model(**collator(examples))["loss"]  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from multissl.core.adapter import Modality, StudentView
from multissl.core.blocks import EncoderConfig
from multissl.core.distributed import global_mean
from multissl.core.encoder import mean_over
from multissl.core.health import compute_var, effective_rank
from multissl.core.init import bert_init
from multissl.core.losses import masked_lm_loss
from multissl.methods.base import Method


@dataclass
class MLMConfig:
    """Masked language modelling; the selection and the 80/10/10 rule are the ``mask`` section's."""

    name: Literal["mlm"] = "mlm"
    """The objective."""

    def validate(self, where: str = "method") -> None:
        pass


class LMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> the token embedding (tied) + a bias, as BERT's and RoBERTa's."""

    def __init__(self, embedding: nn.Embedding, eps: float):
        super().__init__()
        dim, vocab = embedding.embedding_dim, embedding.num_embeddings
        self.dense = nn.Linear(dim, dim)
        self.layer_norm = nn.LayerNorm(dim, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab))
        self.embedding = [embedding]  # a reference, not a second registration of the tied weight
        self.apply(bert_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer_norm(F.gelu(self.dense(x)))
        return F.linear(x, self.embedding[0].weight, self.bias)


class MaskedLM(Method):
    """The encoder and its tied LM head; ``forward(inputs, mask, student_inputs)`` takes the text
    collator's batch: the original tokens, the selected positions, and the tokens the student sees."""

    name = "mlm"
    config_class = MLMConfig
    pipeline_tag = "fill-mask"

    @classmethod
    def student_view(cls, cfg: MLMConfig) -> StudentView:
        return StudentView(dense=True, clones=1, bert_selected=True)

    @classmethod
    def check(cls, cfg: MLMConfig, encoder: EncoderConfig, mask: Any) -> None:
        if mask.kind != "bert":
            raise ValueError(f"method mlm needs mask.kind 'bert' (BERT's 80/10/10 selection), got {mask.kind!r}")

    def __init__(self, modality: Modality, encoder: EncoderConfig, cfg: MLMConfig, run_steps: int = 0):
        super().__init__(modality, encoder, cfg, run_steps)
        embedding = modality.token_embedding(self.encoder.local)
        if embedding is None:
            raise ValueError(f"method mlm predicts tokens: modality {modality.name!r} has none")
        if getattr(self.encoder.local, "mask_embedding", None) is not None:
            raise ValueError("method mlm reads the collator's <mask> tokens: set adapter.mask_with to token")
        self.head = LMHead(embedding, encoder.eps)

    def hidden(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's output tokens (B, T, D) and padding mask, extra tokens dropped."""
        states, pad = self.encoder(inputs)
        e = self.encoder.num_extra
        return self.encoder.norm(states[-1])[:, e:], pad[:, e:]

    def forward(
        self,
        inputs: dict[str, torch.Tensor],
        mask: torch.Tensor,
        student_inputs: dict[str, torch.Tensor] | None = None,
        **_: object,
    ) -> dict[str, torch.Tensor]:
        x, pad = self.hidden(student_inputs if student_inputs is not None else inputs)
        mask = mask & ~pad
        logits = self.head(x[mask])
        labels = inputs["input_ids"][mask]
        per_token = masked_lm_loss(logits, labels)
        loss = global_mean(per_token.sum(), per_token.numel())
        with torch.no_grad():
            accuracy = (logits.argmax(-1) == labels).float().mean() if labels.numel() else logits.new_zeros(())
        return {"loss": loss, "mlm_accuracy": accuracy, "pred_var": compute_var(x[mask]),
                "student_rank": effective_rank(mean_over(x, pad))}

    @torch.no_grad()
    def task_logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Token logits (B, T, V) at every position, as the exported masked-LM class computes them."""
        return self.head(self.hidden(inputs)[0])

    def hf_task(self) -> tuple[str, dict[str, torch.Tensor]]:
        h = self.head
        return "AutoModelForMaskedLM", {
            "lm_head.dense.weight": h.dense.weight, "lm_head.dense.bias": h.dense.bias,
            "lm_head.layer_norm.weight": h.layer_norm.weight, "lm_head.layer_norm.bias": h.layer_norm.bias,
            "lm_head.bias": h.bias, "lm_head.decoder.weight": h.embedding[0].weight, "lm_head.decoder.bias": h.bias,
        }

    @classmethod
    def card_tags(cls, cfg: MLMConfig) -> list[str]:
        return ["mlm", "fill-mask"]

    @classmethod
    def card_title(cls, cfg: MLMConfig) -> str:
        return "masked language modelling (BERT)"

    @classmethod
    def card_objective(cls, cfg: MLMConfig, mask: Any) -> str:
        return (f"masked language modelling: {mask.prob:.0%} of tokens selected, {mask.bert_mask:.0%} of them "
                f"<mask>, {mask.bert_random:.0%} random, the rest kept; tied output embedding")
