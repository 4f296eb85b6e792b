"""multissl from Python: the functions the ``multissl`` command calls, importable as ``multissl.pretrain``,
``multissl.export`` and so on (nothing heavy is imported until one is called).

>>> import multissl
>>> run = multissl.pretrain("text/tiny", data="corpus.txt", tokenizer="tok/", output_dir="runs/t1",
...                         max_steps=100, method__ema__decay=0.999)  # doctest: +SKIP
>>> model = multissl.export(run, "out/t1")  # doctest: +SKIP
>>> rows = multissl.probe(model, "labelled.jsonl", label_column="label")  # doctest: +SKIP

Recipe keys as keyword arguments
--------------------------------
A keyword argument sets one key of the recipe, spelled as on the command line with ``__`` for the dots:
``method__ema__decay=0.999`` is ``--method.ema.decay 0.999``, and the short forms work as there
(``max_steps=5`` for ``train.max_steps``, ``data=`` and ``tokenizer=`` for ``data.path`` and
``data.tokenizer``). Nested dicts (``method={"ema": {"decay": 0.999}}``) are not taken: a dict would
leave open whether it replaces the section or merges into it, and would have no short forms. With one
spelling for both, a key that works in a terminal works in a notebook, and a typo gets the same
one-line error naming it (``unknown override --max_stepz (did you mean --max_steps?)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from multissl.recipe import Recipe, RecipeInfo

__all__ = ["curate", "embed", "export", "load_recipe", "pretrain", "probe", "push", "recipe_keys", "recipes", "search",
           "select", "show_recipe"]


def _keys(overrides: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments as recipe keys: ``method__ema__decay`` -> ``method.ema.decay``."""
    return {key.replace("__", "."): value for key, value in overrides.items()}


def load_recipe(recipe: str | Path | Recipe | None = None, /, **overrides: Any) -> Recipe:
    """The recipe ``recipe`` (a shipped recipe's name such as ``"text/tiny"``, a YAML file, or a
    :class:`~multissl.recipe.Recipe`) with ``overrides`` applied (recipe keys, see the module's
    docstring), validated. None starts from the defaults.

    >>> import multissl
    >>> r = multissl.load_recipe("text/tiny", max_steps=5, method__ema__decay=0.99)
    >>> r.train.max_steps, r.method.ema.decay
    (5, 0.99)
    """
    from multissl.recipe import load_recipe as load

    return load(recipe, values=_keys(overrides))


def pretrain(recipe: str | Path | Recipe, /, *, resume: bool = False, overwrite: bool = False,
             **overrides: Any) -> Path:
    """Pretrain an encoder as ``recipe`` says, with ``overrides`` (recipe keys, see the module's
    docstring); returns the run folder (``train.output_dir``). ``resume`` continues the run there;
    ``overwrite`` replaces a non-empty one. What ``multissl pretrain RECIPE --key value ...`` runs.

    >>> import multissl
    >>> run = multissl.pretrain("text/tiny", data="corpus.txt", tokenizer="tok/", output_dir="runs/t1",
    ...                         max_steps=100, batch_size=16)  # doctest: +SKIP
    """
    from multissl.train import pretrain as run

    return run(load_recipe(recipe, **overrides), resume=resume, overwrite=overwrite)


def export(run_dir: str | Path, out_dir: str | Path, *, which: str | None = None, arch: str | None = None,
           overwrite: bool = False) -> Path:
    """Write the encoder of the run ``run_dir`` (its ``which``: student or teacher; by default the one
    the objective's paper evaluates) to ``out_dir`` as a Hugging Face model folder with its preprocessor
    and a model card; returns ``out_dir``. ``arch`` picks the class family where there is a choice
    (``roberta`` for text). What ``multissl export`` runs.

    >>> import multissl
    >>> out = multissl.export("runs/t1", "out/t1")  # doctest: +SKIP
    >>> transformers.AutoModel.from_pretrained(out)  # doctest: +SKIP
    """
    from multissl.export.hf import export as write

    return write(run_dir, out_dir, which=which, arch=arch, overwrite=overwrite)


def probe(model_dir: str | Path, data: str | Path, *, label_column: str, input_column: str = "text",
          folds: int = 5, seeds: int = 1, seed: int = 0, baseline: str | Path | None = None, max_samples: int = 0,
          pool: str = "mean", k: int = 20, sts: str | Path | None = None) -> list[dict[str, Any]]:
    """Cross-validated linear, k-NN and layer-weighted probes of the frozen features of the export
    ``model_dir`` on the labelled ``data`` (JSON lines / CSV / parquet, or a folder of class folders),
    against random init (or the export ``baseline``) on the same folds. Returns one row per model and
    features (``accuracy``, ``se``, ``gain``, ...); :func:`multissl.probe.format_table` prints them as
    ``multissl probe`` does. See :func:`multissl.probe.probe` for every argument.

    >>> import multissl
    >>> rows = multissl.probe("out/t1", "labelled.jsonl", label_column="label", seeds=3)  # doctest: +SKIP
    """
    from multissl.probe import probe as run

    return run(model_dir, data, label_column=label_column, input_column=input_column, folds=folds, seeds=seeds,
               seed=seed, baseline=baseline, max_samples=max_samples, pool=pool, k=k, sts=sts)


def push(model_dir: str | Path, repo_id: str, *, token: str | None = None, private: bool = False,
         endpoint: str | None = None) -> str:
    """Upload the export ``model_dir`` to the Hub repository ``repo_id`` (created if needed) in one
    commit; returns the commit URL. The token (default: ``HF_TOKEN`` or the saved login) is never logged.

    >>> import multissl
    >>> multissl.push("out/t1", "my-org/my-text-encoder", private=True)  # doctest: +SKIP
    """
    from multissl.export.hub import push as upload

    return upload(model_dir, repo_id, token=token, private=private, endpoint=endpoint)


def recipes() -> list[RecipeInfo]:
    """The recipes shipped with multissl: name, modality, method and a one-line description each.

    >>> import multissl
    >>> [r.name for r in multissl.recipes() if r.modality == "text"][:2]
    ['text/data2vec-base', 'text/data2vec2-base']
    """
    from multissl.recipe import recipe_info, shipped_recipes

    return [recipe_info(name) for name in shipped_recipes()]


def show_recipe(name: str | Path) -> str:
    """The text of a recipe (shipped, by name, or a file), to copy and edit.

    >>> import multissl
    >>> multissl.show_recipe("text/tiny").startswith("#")
    True
    """
    from multissl.recipe import find_recipe

    return find_recipe(name).read_text()


def recipe_keys(recipe: str | Path | Recipe | None = None, /, **overrides: Any) -> str:
    """Every key of ``recipe`` (with ``overrides``) with its type, value and docstring, by section:
    what ``multissl pretrain RECIPE --help`` prints.

    >>> import multissl
    >>> "--train.max_steps, --max_steps  int = 5" in multissl.recipe_keys("text/tiny", max_steps=5)
    True
    """
    from multissl.recipe import keys_help

    name = recipe if isinstance(recipe, str | Path) else ""
    return keys_help(load_recipe(recipe, **overrides), str(name))


def embed(model_dir: str | Path, data: str, out: str | Path, *, pool: str = "mean", layer: int = -1,
          normalize: bool = False, strict: bool = False, batch_size: int = 32, shard_size: int = 1024,
          input_column: str = "", label_column: str = "label", overwrite: bool = False, index: str = "auto",
          make_map: bool = False) -> Path:
    """Embed every item of ``data`` (files, folders, tables, ``datasets`` folders) with the export
    ``model_dir`` into the ``datasets`` folder ``out`` (id, input, label where the data has one,
    embedding), in shards, resumable; build its vector index and, with ``make_map``, ``out/map.png``.
    Under ``torchrun`` each rank embeds its part. What ``multissl embed`` runs; see
    :func:`multissl.curate.embed.embed`.

    >>> import multissl
    >>> emb = multissl.embed("out/v1", "photos/", "emb/", normalize=True)  # doctest: +SKIP
    """
    from multissl.curate.embed import embed as run

    return run(model_dir, data, out, pool=pool, layer=layer, normalize=normalize, strict=strict,
               batch_size=batch_size, shard_size=shard_size, input_column=input_column, label_column=label_column,
               overwrite=overwrite, index=index, make_map=make_map)


def search(emb: str | Path, query: list[str], *, avoid: list[str] = (), k: int = 20,
           reindex: str | None = None) -> list[dict[str, Any]]:
    """The ``k`` items of the embeddings folder ``emb`` most like the items ``query`` and least like
    ``avoid`` (by id): id, input, label, score each. What ``multissl search`` runs.

    >>> import multissl
    >>> hits = multissl.search("emb/", ["photos/cat1.png"], k=5)  # doctest: +SKIP
    """
    from multissl.curate.search import search as run

    return run(emb, list(query), list(avoid), k=k, reindex=reindex)


def select(emb: str | Path, budget: int, *, strategy: str = "kcenter", labels: str | Path | None = None,
           seed: int = 0, measure: str = "margin", out: str | Path | None = None) -> list[dict[str, Any]]:
    """``budget`` items of ``emb`` to label next by ``strategy`` (kcenter, kmeans, uncertainty, random),
    leaving out the labelled ones; written to ``out`` (default ``emb/next.csv``). What ``multissl
    select`` runs; see :mod:`multissl.curate.select`.

    >>> import multissl
    >>> batch = multissl.select("emb/", 100, strategy="kcenter")  # doctest: +SKIP
    """
    from multissl.curate.select import select as run

    return run(emb, budget, strategy, labels=labels, seed=seed, measure=measure, out=out)


def curate(emb: str | Path, *, port: int = 8765, host: str = "127.0.0.1", classes: list[str] | tuple[str, ...] = ()
           ) -> None:
    """Serve the labelling page of the embeddings folder ``emb`` on ``host:port`` until interrupted.

    >>> import multissl
    >>> multissl.curate("emb/", classes=["cat", "dog"])  # doctest: +SKIP
    """
    from multissl.curate.server import serve

    serve(emb, port=port, host=host, classes=classes)
