"""The masked language modelling loss of BERT (Devlin et al. 2019, arXiv 1810.04805): cross-entropy of
the predicted token at each selected position against the original token.

>>> import torch
>>> masked_lm_loss(torch.zeros(2, 4), torch.tensor([1, 3])).tolist()  # uniform over 4 tokens: log 4
[1.3862943649291992, 1.3862943649291992]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token loss (N,) for ``logits`` (N, V) at the N selected positions and their original
    tokens ``labels`` (N,), in float32; average it over the selected tokens of the global batch."""
    return F.cross_entropy(logits.float(), labels, reduction="none")
