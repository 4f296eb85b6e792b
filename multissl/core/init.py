"""The reference initialisation of the data2vec encoders (fairseq's ``init_bert_params``, which
data2vec v1 and 2.0 apply to the whole model): every Linear and Embedding weight from N(0, 0.02),
their biases zero, an Embedding's padding row zero, every LayerNorm at weight 1 and bias 0. Other
layers (convolutions) keep PyTorch's initialisation; a modality part that the reference initialises
its own way (the patch embedding, the speech conv encoder, the feature projection) says so in a
``reset_parameters_after_bert`` method, which runs after this one, as the reference's per-modality
``reset_parameters`` does.

It runs on a fresh build only; weights imported with ``init_from`` replace it.
"""

from __future__ import annotations

from torch import nn

BERT_STD = 0.02


def bert_init(module: nn.Module) -> None:
    """Apply the rule to ``module`` itself (use with ``model.apply(bert_init)``).

    >>> layer = nn.Linear(64, 64); bert_init(layer)
    >>> abs(float(layer.weight.detach().std()) - 0.02) < 0.002, float(layer.bias.detach().abs().max())
    (True, 0.0)
    """
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=BERT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=BERT_STD)
        if module.padding_idx is not None:
            nn.init.zeros_(module.weight[module.padding_idx])
    elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
        nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def reference_init(*modules: nn.Module) -> None:
    """``bert_init`` over every sub-module of ``modules``, then each sub-module's own
    ``reset_parameters_after_bert`` (modality parts the reference initialises differently)."""
    for module in modules:
        module.apply(bert_init)
    for module in modules:
        for sub in module.modules():
            reset = getattr(sub, "reset_parameters_after_bert", None)
            if reset is not None:
                reset()
