"""Model cards: a README.md with Hub metadata, how to load the model, and how it was pretrained."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from multissl.methods import get_method
from multissl.modalities import get_modality
from multissl.recipe import Recipe


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
    method, adapter = get_method(recipe.method.name), get_modality(recipe.modality)
    meta: dict[str, Any] = {
        "library_name": "transformers",
        "license": recipe.card.license,
        "tags": ["multissl", *method.card_tags(recipe.method), recipe.modality, "self-supervised"],
        "pipeline_tag": method.pipeline_tag,
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
        f"A {recipe.modality} encoder pretrained without labels by multissl with {method.card_title(recipe.method)} "
        f"({who} exported). It is a "
        f"`{hf_class}` with {enc.depth} layers of width {enc.dim}; load it with `AutoModel`.", "",
        "## Use", "", "```python", *adapter.card_usage(name), "```", "",
        *adapter.card_notes(recipe.adapter), "",
        "## Pretraining", "",
        f"- objective: {method.card_objective(recipe.method, recipe.mask)}",
        f"- updates: {health.get('step', 'unknown')}",
        "- final health: " + (", ".join(f"{k} {v}" for k, v in health.items()) or "not recorded"),
        "", "Recipe:", "", "```yaml", recipe_yaml, "```", "",
    ]
    return "\n".join(lines)


def _public(d: dict[str, Any]) -> dict[str, Any]:
    """The recipe without local paths (they mean nothing to readers of the card)."""
    d = dict(d)
    d["data"] = {k: v for k, v in d.get("data", {}).items() if k not in ("path", "tokenizer")}
    d["train"] = {k: v for k, v in d.get("train", {}).items() if k != "output_dir"}
    d.pop("init_from", None)
    return d
