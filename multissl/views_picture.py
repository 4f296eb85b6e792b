"""``multissl views RECIPE --data ... --out grid.png``: a picture of the augmented views a recipe makes
(a row per example, a column per view; speech views as log-mel spectrograms), since augmentations
are checked by looking at them."""

from __future__ import annotations

import itertools
from pathlib import Path

from multissl.core.adapter import StudentView
from multissl.data.views import ViewCollator, save_views_picture
from multissl.errors import RecipeError
from multissl.modalities import get_modality
from multissl.recipe import load_recipe


def views_picture(recipe_path: str | None, overrides: list[str], out: str | Path, n: int = 8) -> Path:
    """Write the views of the first ``n`` examples of the recipe's data to the PNG ``out``; the recipe's
    ``views`` section (its defaults when it has none) says how they are made.

    >>> views_picture("recipes/vision/tiny.yaml", ["--data", "images/"], "grid.png")  # doctest: +SKIP
    """
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    recipe = load_recipe(recipe_path, overrides)
    modality = get_modality(recipe.modality)(recipe.adapter_config())
    views = recipe.views_config()
    if views is None:
        raise RecipeError(f"views: modality {recipe.modality!r} makes no augmented views")
    view = StudentView(dense=False, views=True)
    dataset, collator, _ = modality.prepare(recipe.data, recipe.mask, recipe.train.seed, view, views)
    if not isinstance(collator, ViewCollator):
        raise RecipeError(f"views: modality {recipe.modality!r} did not make a view collator")
    if hasattr(dataset, "__len__"):
        examples = [dataset[i] for i in range(min(n, len(dataset)))]
    else:  # a stream: its first examples
        examples = list(itertools.islice(iter(dataset), n))
    return save_views_picture(collator.maker, collator(examples), out, n)
