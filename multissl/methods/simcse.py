"""SimCSE (Gao et al. 2021, "SimCSE: Simple Contrastive Learning of Sentence Embeddings", arXiv
2104.08821): sentence embeddings by contrastive learning with in-batch negatives (the InfoNCE of
``multissl.core.losses.simcse``, temperature 0.05).

- Unsupervised (section 3): the same sentence goes through the encoder twice; the two dropout masks
  make the two views (the recipe's ``views: {copies: 2}``, the default).
- Supervised (section 4): the anchor and its positive come from two columns of a table, optional hard
  negatives from further columns (``views: {columns: [sent0, sent1, hard_neg]}``, as the paper's NLI
  triples).

A sentence's embedding is the encoder output's first token (``pool: cls``, the <s> / [CLS] token) or
the mean of its tokens. During training it goes through the paper's MLP (Linear + tanh, ``mlp``);
the export is the encoder and its pooling only, as the paper evaluates unsupervised SimCSE ("w/ MLP
(train)"). No teacher.

The export is a Hugging Face encoder folder that ``AutoModel`` loads, and also a sentence-transformers
model: ``modules.json``, ``sentence_bert_config.json`` and ``1_Pooling/config.json`` beside it make
``SentenceTransformer(folder).encode(sentences)`` give this method's embeddings.

>>> model = SimCSE(text_adapter, EncoderConfig(), SimCSEConfig())  # doctest: +SKIP
>>> model(**sentence_view_collator(rows))["loss"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from multissl.core.adapter import Modality, StudentView
from multissl.core.blocks import EncoderConfig
from multissl.core.encoder import mean_over
from multissl.core.health import compute_var, effective_rank
from multissl.core.init import bert_init
from multissl.core.losses.simcse import simcse_loss
from multissl.methods.base import Method


@dataclass
class SimCSEConfig:
    """SimCSE: views are dropout copies of a sentence, or columns of a table (``views`` section)."""

    name: Literal["simcse"] = "simcse"
    """The objective."""

    pool: Literal["cls", "mean"] = "cls"
    """A sentence's embedding: the encoder output's first token (<s> / [CLS]; the paper's) or the mean
    of its tokens. The export's sentence-transformers pooling is the same."""

    temperature: float = 0.05
    """The InfoNCE temperature (the paper's 0.05)."""

    mlp: bool = True
    """Train through the paper's MLP over the embedding (Linear + tanh, as BERT's pooler); the export
    leaves it out (the paper's "w/ MLP (train)", its best unsupervised setting)."""

    def validate(self, where: str = "method") -> None:
        if self.temperature <= 0:
            raise ValueError(f"{where}.temperature must be > 0, got {self.temperature}")


class SimCSE(Method):
    """The encoder (and the training MLP); ``forward(views)`` takes the sentence view collator's batch:
    view 0 the anchors, view 1 their positives, further views hard negatives."""

    name = "simcse"
    config_class = SimCSEConfig
    pipeline_tag = "sentence-similarity"

    @classmethod
    def student_view(cls, cfg: SimCSEConfig) -> StudentView:
        return StudentView(dense=False, views=True)

    def __init__(self, modality: Modality, encoder: EncoderConfig, cfg: SimCSEConfig, run_steps: int = 0):
        super().__init__(modality, encoder, cfg, run_steps)
        if modality.token_embedding(self.encoder.local) is None:
            raise ValueError(f"method simcse embeds sentences: modality {modality.name!r} has no tokens "
                             "(method simclr compares views of other inputs)")
        self.max_length = int(modality.cfg.max_length)  # what the sentence-transformers export truncates to
        self.mlp = nn.Sequential(nn.Linear(encoder.dim, encoder.dim), nn.Tanh()) if cfg.mlp else nn.Identity()
        self.mlp.apply(bert_init)

    def embed(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sentence embeddings (B, D), as the export's sentence-transformers pooling computes them."""
        x, pad = self.encoder.encode(inputs)
        return x[:, 0] if self.cfg.pool == "cls" else mean_over(x, pad)

    def forward(self, views: list[dict[str, torch.Tensor]], **_: object) -> dict[str, torch.Tensor]:
        if len(views) < 2:
            raise ValueError(f"method simcse: needs 2 views of each sentence or more, got {len(views)} "
                             "(views.copies or views.columns)")
        h = [self.embed(v) for v in views]  # each its own dropout masks
        z = [self.mlp(x) for x in h]
        negatives = torch.stack(z[2:], dim=1) if len(z) > 2 else None
        loss = simcse_loss(z[0], z[1], negatives, self.cfg.temperature, gather=True)
        return {"loss": loss, "pred_var": compute_var(h[0]), "student_rank": effective_rank(h[0])}

    def hf_extra_files(self) -> dict[str, str]:
        """sentence-transformers' layout around the exported encoder: the Transformer module at the folder
        root (the HF model and tokenizer), then a Pooling module of this method's pooling."""
        dim = self.encoder.cfg.dim
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        pooling = {"word_embedding_dimension": dim, "pooling_mode_cls_token": self.cfg.pool == "cls",
                   "pooling_mode_mean_tokens": self.cfg.pool == "mean", "pooling_mode_max_tokens": False,
                   "pooling_mode_mean_sqrt_len_tokens": False}
        return {
            "modules.json": json.dumps(modules, indent=2),
            "sentence_bert_config.json": json.dumps({"max_seq_length": self.max_length, "do_lower_case": False},
                                                    indent=2),
            "1_Pooling/config.json": json.dumps(pooling, indent=2),
            "config_sentence_transformers.json": json.dumps({"prompts": {}, "default_prompt_name": None,
                                                              "similarity_fn_name": "cosine"}, indent=2),
        }

    @classmethod
    def card_tags(cls, cfg: SimCSEConfig) -> list[str]:
        return ["simcse", "sentence-transformers", "sentence-similarity"]

    @classmethod
    def card_title(cls, cfg: SimCSEConfig) -> str:
        return "SimCSE (contrastive sentence embeddings)"

    @classmethod
    def card_objective(cls, cfg: SimCSEConfig, mask: Any) -> str:
        return (f"SimCSE: InfoNCE with in-batch negatives (temperature {cfg.temperature}) between views of a "
                f"sentence, {cfg.pool}-pooled{', through a training-only MLP' if cfg.mlp else ''}; "
                "load it with sentence_transformers.SentenceTransformer(folder)")
