"""Text adapter: token embeddings and learned positions laid out like RoBERTa, so a trained encoder
is exactly a ``Data2VecTextModel`` (or ``RobertaModel``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from multissl.core.adapter import Modality, StudentView
from multissl.core.blocks import EncoderConfig
from multissl.core.hf_names import block_tensors, fuse_block, pool_states
from multissl.errors import RecipeError
from multissl.modalities.text.views import TextViews

# multissl block tensor -> Data2VecText / RoBERTa / BERT layer module
HF_BLOCK_NAMES = {
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "out": "attention.output.dense", "norm1": "attention.output.LayerNorm",
    "fc1": "intermediate.dense", "fc2": "output.dense", "norm2": "output.LayerNorm",
}


EXAMPLE_TEXTS = [
    "In the beginning God created the heaven and the earth.",
    "And the earth was without form, and void; and darkness was upon the face of the deep.",
    "Jesus wept.",
]


@dataclass
class TextConfig:
    """Text-specific settings. Token ids come from the tokenizer when the recipe leaves them at -1."""

    max_length: int = 512
    """Longest sequence (the packed block size)."""

    vocab_size: int = -1
    """Vocabulary size; -1 takes it from the tokenizer."""

    pad_token_id: int = -1
    """Padding id (also RoBERTa's position offset); -1 takes it from the tokenizer."""

    bos_token_id: int = -1
    """Id that opens a block (<s> / [CLS]); -1 takes it from the tokenizer."""

    eos_token_id: int = -1
    """Id that closes a block and separates documents (</s> / [SEP]); -1 takes it from the tokenizer."""

    mask_token_id: int = -1
    """The <mask> id used by dense (v1) masking; -1 takes it from the tokenizer."""

    mask_with: Literal["token", "embedding"] = "token"
    """Dense (v1) masking: replace masked ids by <mask> in the collator, or replace masked embeddings
    by a learned vector in the model."""

    def validate(self, where: str = "text") -> None:
        if self.max_length < 8:
            raise ValueError(f"{where}.max_length must be >= 8, got {self.max_length}")

    @property
    def position_rows(self) -> int:
        """RoBERTa position table size: positions start after the padding id."""
        return self.max_length + self.pad_token_id + 1


class TextLocal(nn.Module):
    def __init__(self, cfg: TextConfig, dim: int):
        super().__init__()
        self.pad = cfg.pad_token_id
        self.embed_tokens = nn.Embedding(cfg.vocab_size, dim, padding_idx=cfg.pad_token_id)  # BERT init (core)
        self.mask_embedding = nn.Parameter(torch.zeros(dim).normal_(std=0.02)) if cfg.mask_with == "embedding" else None

    def forward(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = inputs["input_ids"]
        return self.embed_tokens(ids), ids.eq(self.pad)


class TextContext(nn.Module):
    """Learned positions (RoBERTa numbering: padding keeps the padding row), LayerNorm, dropout."""

    def __init__(self, cfg: TextConfig, enc: EncoderConfig):
        super().__init__()
        self.pad = cfg.pad_token_id
        self.embed_positions = nn.Embedding(cfg.position_rows, enc.dim, padding_idx=cfg.pad_token_id)
        self.layer_norm = nn.LayerNorm(enc.dim, eps=enc.eps)
        self.dropout = nn.Dropout(enc.dropout)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        valid = (~padding_mask).long()
        positions = torch.cumsum(valid, dim=1) * valid + self.pad
        return self.dropout(self.layer_norm(x + self.embed_positions(positions)))


class Text(Modality):
    name = "text"
    config_class = TextConfig
    views_class = TextViews
    input_extensions = ()

    def build_local(self, enc: EncoderConfig) -> nn.Module:
        return TextLocal(self.cfg, enc.dim)

    def build_context(self, enc: EncoderConfig) -> nn.Module:
        return TextContext(self.cfg, enc)

    def token_embedding(self, local: nn.Module) -> nn.Embedding:
        return local.embed_tokens

    def teacher_sharing(self, dense: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
        # Embeddings and positions are shared with the teacher, which averages the blocks only
        # (data2vec text copies its embeddings every step, which is the same thing, cheaper).
        return ("local", "context"), ()

    def prepare(self, data: Any, mask: Any, seed: int, view: StudentView, views: Any = None) -> tuple[Any, Any, Any]:
        from multissl.modalities.text.data import TextCollator, build_text_dataset

        tok = load_tokenizer(data.tokenizer)
        c = self.cfg
        if c.vocab_size not in (-1, len(tok)):
            raise RecipeError(f"data.tokenizer: {data.tokenizer} has {len(tok)} tokens but the model "
                              f"has vocab_size {c.vocab_size}")
        c.vocab_size = len(tok)
        for key, value in (("pad_token_id", tok.pad_token_id), ("bos_token_id", tok.cls_token_id),
                           ("eos_token_id", tok.sep_token_id), ("mask_token_id", tok.mask_token_id)):
            if value is None:
                raise RecipeError(f"data.tokenizer: {data.tokenizer} has no {key.replace('_id', '')}")
            if getattr(c, key) == -1:
                setattr(c, key, value)
        if view.views:  # one sentence per example instead of packed blocks
            from multissl.data.views import ViewCollator
            from multissl.modalities.text.views import SentenceViews, build_sentence_dataset

            views = views or TextViews()
            collator = ViewCollator(SentenceViews(views, c), mask if view.view_masks else None)
            return build_sentence_dataset(data, tok, c, views, seed), collator, tok
        return build_text_dataset(data, tok, c, seed), TextCollator(mask, c, view), tok

    def hf_config(self, enc: EncoderConfig, arch: str | None = None):
        from transformers import AutoConfig

        arch = arch or "data2vec-text"
        if arch not in ("data2vec-text", "roberta"):
            raise ValueError(f"--arch: text encoders export as data2vec-text or roberta, not {arch!r}")
        c = self.cfg
        return AutoConfig.for_model(
            arch, vocab_size=c.vocab_size, hidden_size=enc.dim, num_hidden_layers=enc.depth,
            num_attention_heads=enc.heads, intermediate_size=enc.ffn_dim, hidden_act="gelu",
            hidden_dropout_prob=enc.dropout, attention_probs_dropout_prob=enc.attention_dropout,
            max_position_embeddings=c.position_rows, type_vocab_size=1, layer_norm_eps=enc.eps,
            pad_token_id=c.pad_token_id, bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id,
        )

    @classmethod
    def load_preprocessor(cls, folder: str | Path):
        return load_tokenizer(str(folder))

    @classmethod
    def holds_preprocessor(cls, folder: Path) -> bool:
        return (folder / "tokenizer_config.json").is_file()

    @classmethod
    def card_usage(cls, name: str) -> list[str]:
        return ["from transformers import AutoModel, AutoTokenizer", f'model = AutoModel.from_pretrained("{name}")',
                f'tokenizer = AutoTokenizer.from_pretrained("{name}")']

    @classmethod
    def probe_features(cls, model: nn.Module, preprocessor: Any, inputs: list[Any], pool: str = "mean") -> np.ndarray:
        return text_features(model, preprocessor, inputs, pool)

    def example_inputs(self, preprocessor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        batch = preprocessor(EXAMPLE_TEXTS, padding=True, truncation=True, max_length=self.cfg.max_length,
                             return_tensors="pt")
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}, {
            "input_ids": batch["input_ids"]}

    def to_hf_state_dict(self, state: dict[str, torch.Tensor], enc: EncoderConfig) -> dict[str, torch.Tensor]:
        out = {
            "embeddings.word_embeddings.weight": state["local.embed_tokens.weight"],
            "embeddings.position_embeddings.weight": state["context.embed_positions.weight"],
            "embeddings.token_type_embeddings.weight": torch.zeros(1, enc.dim),
            "embeddings.LayerNorm.weight": state["context.layer_norm.weight"],
            "embeddings.LayerNorm.bias": state["context.layer_norm.bias"],
        }
        for i in range(enc.depth):
            for key, t in block_tensors(state, i).items():
                part, kind = key.split(".")
                out[f"encoder.layer.{i}.{HF_BLOCK_NAMES[part]}.{kind}"] = t
        return out

    def from_hf(self, folder: str) -> tuple[EncoderConfig, dict[str, torch.Tensor]]:
        """Read a Data2VecText / RoBERTa / BERT folder. BERT's positions (from 0) and token-type row
        are folded into the RoBERTa-style position table, which keeps the outputs exact."""
        from transformers import AutoConfig, AutoModel

        hf_cfg = AutoConfig.from_pretrained(folder)
        if hf_cfg.model_type not in ("data2vec-text", "roberta", "bert", "xlm-roberta"):
            raise ValueError(f"{folder}: model_type {hf_cfg.model_type!r} is not a BERT-family text encoder")
        if getattr(hf_cfg, "hidden_act", "gelu") != "gelu":
            raise ValueError(f"{folder}: hidden_act {hf_cfg.hidden_act!r} is not supported (gelu only)")
        sd = AutoModel.from_pretrained(folder, add_pooling_layer=False).state_dict()
        enc = EncoderConfig(
            dim=hf_cfg.hidden_size, depth=hf_cfg.num_hidden_layers, heads=hf_cfg.num_attention_heads,
            ffn_dim=hf_cfg.intermediate_size, norm="post", eps=hf_cfg.layer_norm_eps,
            dropout=hf_cfg.hidden_dropout_prob, attention_dropout=hf_cfg.attention_probs_dropout_prob,
        )
        pad = hf_cfg.pad_token_id if hf_cfg.pad_token_id is not None else 0
        pos = sd["embeddings.position_embeddings.weight"]
        tok_type = sd["embeddings.token_type_embeddings.weight"][0]
        if hf_cfg.model_type == "bert":  # positions 0..P-1 -> rows pad+1 .. pad+P
            table = torch.zeros(pos.shape[0] + pad + 1, pos.shape[1])
            table[pad + 1:] = pos
        else:
            table = pos.clone()
        table[pad + 1:] += tok_type
        max_length = table.shape[0] - pad - 1
        self.cfg.vocab_size, self.cfg.pad_token_id, self.cfg.max_length = hf_cfg.vocab_size, pad, max_length
        state = {
            "local.embed_tokens.weight": sd["embeddings.word_embeddings.weight"],
            "context.embed_positions.weight": table,
            "context.layer_norm.weight": sd["embeddings.LayerNorm.weight"],
            "context.layer_norm.bias": sd["embeddings.LayerNorm.bias"],
        }
        for i in range(enc.depth):
            parts = {f"{k}.{kind}": sd[f"encoder.layer.{i}.{v}.{kind}"] for k, v in HF_BLOCK_NAMES.items()
                     for kind in ("weight", "bias")}
            state.update(fuse_block(parts, i))
        return enc, state


def load_tokenizer(folder: str):
    """``AutoTokenizer`` from a local folder, with a one-line error when it is not there."""
    from transformers import AutoTokenizer

    if not folder:
        raise RecipeError("data.tokenizer is empty: pass --tokenizer FOLDER (make one with "
                          "'multissl tokenizer train')")
    if not (Path(folder) / "tokenizer_config.json").is_file():
        raise RecipeError(f"data.tokenizer: {folder}: no tokenizer there (no tokenizer_config.json)")
    return AutoTokenizer.from_pretrained(folder)


def text_features(model: nn.Module, tokenizer: Any, texts: list[str], pool: str = "mean",
                  batch_size: int = 64) -> np.ndarray:
    """Every hidden state mean-pooled over non-padding tokens, or its first token (``pool="cls"``, ``<s>``
    or ``[CLS]``): (texts, layers + 1, D)."""
    rows = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i:i + batch_size], padding=True, truncation=True,
                            max_length=model.config.max_position_embeddings - model.config.pad_token_id - 1,
                            return_tensors="pt").to(model.device)
            states = model(**enc, output_hidden_states=True).hidden_states
            if pool == "cls":
                rows.append(torch.stack([h[:, 0] for h in states], 1).float().cpu().numpy())
            else:
                rows.append(pool_states(states, enc["attention_mask"].bool()))
    return np.concatenate(rows)
