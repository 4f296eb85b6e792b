"""Model cards: a README.md with Hub metadata, how to load the model, and how it was pretrained."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from multissl.config import Recipe


def last_metrics(run_dir: str | Path) -> dict[str, Any]:
    """The last training log row of a run (loss, target_var, pred_var, ...), or {}."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return {}
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else {}


def model_card(recipe: Recipe, hf_class: str, which: str, metrics: dict[str, Any], name: str) -> str:
    """README.md text for an exported encoder.

    >>> "library_name: transformers" in model_card(Recipe(), "Data2VecTextModel", "student", {}, "m")
    True
    """
    meta: dict[str, Any] = {
        "library_name": "transformers",
        "license": recipe.card.license,
        "tags": ["multissl", "data2vec", f"data2vec-v{recipe.method.version}", recipe.modality,
                 "self-supervised"],
        "pipeline_tag": "feature-extraction",
    }
    if recipe.card.datasets:
        meta["datasets"] = list(recipe.card.datasets)
    if recipe.card.language:
        meta["language"] = list(recipe.card.language)
    enc = recipe.encoder
    health = {k: metrics[k] for k in ("step", "loss", "target_var", "pred_var", "ema_decay") if k in metrics}
    who = "the EMA teacher is" if which == "teacher" else "the student is"
    recipe_yaml = yaml.safe_dump(_public(recipe.to_dict()), sort_keys=False).strip()
    lines = [
        "---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "",
        f"# {name}", "",
        f"A {recipe.modality} encoder pretrained without labels by multissl with data2vec "
        f"{'2.0' if recipe.method.version == 2 else '(v1)'} ({who} exported). It is a "
        f"`{hf_class}` with {enc.depth} layers of width {enc.dim}; load it with `AutoModel`.", "",
        "## Use", "", "```python",
        "from transformers import AutoModel, AutoTokenizer" if recipe.modality == "text"
        else "from transformers import AutoModel, AutoProcessor",
        f'model = AutoModel.from_pretrained("{name}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{name}")' if recipe.modality == "text"
        else f'processor = AutoProcessor.from_pretrained("{name}")',
        "```", "",
        *_modality_notes(recipe), "",
        "## Pretraining", "",
        f"- objective: data2vec v{recipe.method.version}, top-{recipe.method.top_k} teacher layers, "
        f"{recipe.mask.kind} masking at {recipe.mask.prob}, {recipe.method.clones} clone(s) per sample",
        f"- updates: {health.get('step', 'unknown')}",
        "- final health: " + (", ".join(f"{k} {v}" for k, v in health.items()) or "not recorded"),
        "", "Recipe:", "", "```yaml", recipe_yaml, "```", "",
    ]
    return "\n".join(lines)


def _modality_notes(recipe: Recipe) -> list[str]:
    """What a user of this kind of encoder needs to know beyond loading it."""
    if recipe.modality == "audio":
        rate = recipe.adapter.get("sample_rate", 16000)
        notes = [f"Inputs are raw {rate} Hz mono waveforms; the processor normalises each utterance and "
                 "returns the attention mask. Fine-tune for speech recognition with "
                 "`Data2VecAudioForCTC.from_pretrained(name, vocab_size=...)` (a new CTC head)."]
        if not recipe.adapter.get("mask_embedding"):
            notes.append("`masked_spec_embed` (the SpecAugment vector used when fine-tuning) was not trained "
                         "(data2vec 2.0 drops masked frames instead).")
        return notes
    return ["The pooler, if the class has one, was not trained: use the hidden states (for example "
            "mean-pooled) or fine-tune."]


def _public(d: dict[str, Any]) -> dict[str, Any]:
    """The recipe without local paths (they mean nothing to readers of the card)."""
    d = dict(d)
    d["data"] = {k: v for k, v in d.get("data", {}).items() if k not in ("path", "tokenizer")}
    d["train"] = {k: v for k, v in d.get("train", {}).items() if k != "output_dir"}
    d.pop("init_from", None)
    return d
