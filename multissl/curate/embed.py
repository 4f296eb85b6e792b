"""``multissl embed``: one pooled embedding per item of a dataset, written as a ``datasets`` folder.

Items are embedded shard by shard (``shard_size`` items each); each finished shard is an Arrow file
renamed into ``OUT/parts/`` once complete, so memory stays flat on any dataset size and a killed run
resumes at the first missing shard with the same result. Under ``torchrun`` each rank embeds its
contiguous part of the items (``datasets.distributed.split_dataset_by_node``) into its own shards; rank 0
then joins every shard into one dataset (``save_to_disk`` into ``OUT``) and builds the vector index.

An item that cannot be read or embedded is skipped and named, and the count is reported
(``strict=True`` stops at the first); the pooled features are the modality's probe features, so an
export embeds its inputs exactly as ``multissl probe`` featurises them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from multissl.curate.items import Item, list_items
from multissl.data.skipping import warn_skipped
from multissl.errors import RecipeError

log = logging.getLogger(__name__)
SETTINGS = "embed.json"
SKIPPED = "skipped.jsonl"


class BadItemError(RecipeError):
    """An item could not be embedded and ``--strict`` is set."""


@dataclass
class EmbedSettings:
    """What an embeddings folder was made with; a resumed run must match it."""

    model: str
    """The export (or HF checkpoint) folder, resolved."""

    modality: str
    """The modality whose preprocessor the export holds."""

    view: str
    """How the curation page shows an item (the modality's ``item_view``)."""

    data: str
    """``--data`` as given."""

    input_column: str
    """The column of tables that holds the inputs ("" for the default: path or text)."""

    label_column: str
    """The column of tables that holds labels, where present."""

    pool: str
    """mean (over valid positions) or cls (the first token)."""

    layer: int
    """Hidden state pooled: 0 is the embedding output, -1 the last layer."""

    normalize: bool
    """Whether each embedding is scaled to unit l2 norm."""

    shard_size: int
    """Items per shard."""

    world_size: int
    """Ranks that embedded the items (each writes its own shards)."""

    items: int
    """Items listed in ``data``."""


def export_modality(model_dir: str | Path):
    """The adapter whose preprocessor the export ``model_dir`` holds (one-line error when none does)."""
    from multissl.modalities import MODALITIES

    folder = Path(model_dir)
    if not (folder / "config.json").is_file():
        raise RecipeError(f"{model_dir}: not a model folder (no config.json); pass a multissl export or an HF "
                          "checkpoint folder")
    for adapter in MODALITIES.values():
        if adapter.holds_preprocessor(folder):
            return adapter
    raise RecipeError(f"{model_dir}: no tokenizer_config.json or audio/image preprocessor_config.json")


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(tmp, path)


def _check_settings(out: Path, settings: EmbedSettings) -> bool:
    """True when ``out`` already holds a run with these settings (to resume); raises when it holds another."""
    path = out / SETTINGS
    if not path.is_file():
        return False
    old = json.loads(path.read_text())
    for key, value in asdict(settings).items():
        if old.get(key) != value:
            raise RecipeError(f"{out}: embedded with {key}={old.get(key)!r}, not {value!r}; pass --overwrite or "
                              "another --out")
    return True


def _features(items: list[Item], adapter, model, preprocessor, pool: str, layer: int, normalize: bool,
              strict: bool) -> tuple[list[int], np.ndarray, list[tuple[str, str]]]:
    """(positions of the embedded items, their embeddings, [(id, why)] of the others). A batch that fails
    is retried item by item, so one bad file costs only itself."""

    def one_batch(batch: list[Item]) -> np.ndarray:
        states = adapter.probe_features(model, preprocessor, [i.input for i in batch], pool)
        vectors = np.asarray(states[:, layer], dtype=np.float32)
        if normalize:
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)
        return vectors

    problems = [adapter.check_input(model.config, item.input) if item.input.strip() else "empty input"
                for item in items]
    usable = [k for k, why in enumerate(problems) if not why]
    bad = [(item.id, why) for item, why in zip(items, problems, strict=True) if why]
    if bad and strict:
        raise BadItemError(f"{bad[0][0]}: {bad[0][1]} (--strict is set)")
    try:
        vectors = one_batch([items[k] for k in usable])
        ok = np.isfinite(vectors).all(1)
        if ok.all():
            return usable, vectors, bad
    except Exception as e:  # a bad file surfaces as many exception types: find it item by item
        if isinstance(e, ValueError) and str(e).startswith("--pool"):
            raise
    kept, rows = [], []
    for k in usable:
        try:
            v = one_batch([items[k]])[0]
            if not np.isfinite(v).all():
                raise ValueError("its embedding is not finite")
        except Exception as e:
            why = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
            if strict:
                raise BadItemError(f"{items[k].id}: cannot embed it ({why}) (--strict is set)") from e
            bad.append((items[k].id, why))
            continue
        kept.append(k)
        rows.append(v)
    dim = model.config.hidden_size
    return kept, np.stack(rows) if rows else np.zeros((0, dim), np.float32), bad


def _write_shard(path: Path, items: list[Item], vectors: np.ndarray, labelled: bool, skipped: list) -> None:
    """One shard as an Arrow stream file (what ``Dataset.from_file`` reads), and its skipped items,
    each written under a temporary name and renamed once complete."""
    import pyarrow as pa
    from datasets import Features, List, Value

    columns: dict[str, Any] = {"id": Value("string"), "input": Value("string")}
    if labelled:
        columns["label"] = Value("string")
    columns["embedding"] = List(Value("float32"), length=vectors.shape[1])
    features = Features(columns)
    data = {"id": [i.id for i in items], "input": [i.input for i in items]}
    if labelled:
        data["label"] = [i.label for i in items]
    data["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()),
                                                          vectors.shape[1])
    table = pa.table(data, schema=features.arrow_schema)
    _write_json(path.with_suffix(".skipped.json"), skipped)
    tmp = path.with_name(path.name + ".tmp")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    os.replace(tmp, path)


def _rank_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        dist.barrier()


def embed(model_dir: str | Path, data: str, out: str | Path, *, pool: str = "mean", layer: int = -1,
          normalize: bool = False, strict: bool = False, batch_size: int = 32, shard_size: int = 1024,
          input_column: str = "", label_column: str = "label", overwrite: bool = False, index: str = "auto",
          make_map: bool = False, device: str | None = None) -> Path:
    """Embed every item of ``data`` with the export ``model_dir`` into the ``datasets`` folder ``out``
    (columns ``id``, ``input``, ``label`` where the data has labels, ``embedding``), build its vector
    index (``index``: auto, flat, hnsw or ivfpq; see :mod:`multissl.curate.index`) and, with
    ``make_map``, draw ``out/map.png``. Resumes an interrupted run into the same ``out``. Returns ``out``.

    >>> embed("out/v1", "photos/", "emb/", pool="cls", normalize=True)  # doctest: +SKIP
    """
    import torch
    from datasets import Dataset
    from datasets.distributed import split_dataset_by_node
    from tqdm.auto import tqdm
    from transformers import AutoModel

    if pool not in ("mean", "cls"):
        raise RecipeError(f"--pool {pool}: expected mean or cls")
    if shard_size < 1 or batch_size < 1:
        raise RecipeError(f"--shard-size {shard_size} / --batch-size {batch_size}: must be at least 1")
    adapter = export_modality(model_dir)
    if not adapter.padding_exact:
        batch_size = 1
    items = list_items(data, adapter.input_extensions, input_column, label_column)
    rank, world = _rank_world()
    out = Path(out)
    settings = EmbedSettings(str(Path(model_dir).resolve()), adapter.name, adapter.item_view, data, input_column,
                             label_column, pool, layer, normalize, shard_size, world, len(items))
    if overwrite and rank == 0 and out.exists():
        shutil.rmtree(out)
    _barrier(world)
    if out.exists() and any(out.iterdir()) and not _check_settings(out, settings):
        raise FileExistsError(f"--out {out}: exists and holds no embeddings of these items (pass --overwrite)")
    if (out / "state.json").is_file():
        log.info("%s already holds the embeddings of %s: nothing to do", out, data)
        return out
    _barrier(world)  # every rank has checked ``out`` before any writes to it
    parts = out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        _write_json(out / SETTINGS, asdict(settings))

    model = AutoModel.from_pretrained(str(model_dir)).eval()
    local = int(os.environ.get("LOCAL_RANK", 0))
    model.to(device or (f"cuda:{local}" if torch.cuda.is_available() else "cpu"))
    preprocessor = adapter.load_preprocessor(Path(model_dir))
    depth = model.config.num_hidden_layers + 1
    if not -depth <= layer < depth:
        raise RecipeError(f"--layer {layer}: the encoder has hidden states 0 to {depth - 1} (-1: the last)")
    labelled = any(i.label is not None for i in items)
    rows = split_dataset_by_node(Dataset.from_dict({"row": list(range(len(items)))}), rank, world)["row"]
    shards = [rows[k:k + shard_size] for k in range(0, len(rows), shard_size)]
    with tqdm(total=len(rows), unit="item", desc=f"embed {Path(data).name or data}", disable=rank != 0) as bar:
        for k, shard in enumerate(shards):
            path = parts / f"rank{rank:05d}-shard{k:05d}.arrow"
            if not path.is_file():  # a shard written by an earlier, interrupted run is kept as it is
                shard_items = [items[r] for r in shard]
                kept, vectors, skipped = [], [], []
                for b in range(0, len(shard_items), batch_size):
                    got, v, bad = _features(shard_items[b:b + batch_size], adapter, model, preprocessor, pool, layer,
                                            normalize, strict)
                    kept += [b + g for g in got]
                    vectors.append(v)
                    skipped += bad
                _write_shard(path, [shard_items[g] for g in kept], np.concatenate(vectors), labelled, skipped)
            bar.update(len(shard))
    _barrier(world)
    if rank == 0:
        _finish(out, parts, len(items), data)
        from multissl.curate.index import build_index

        build_index(out, index)
        if make_map:
            from multissl.curate.atlas import draw_map

            draw_map(out)
    _barrier(world)
    return out


def _finish(out: Path, parts: Path, n_items: int, data: str) -> None:
    """Join every rank's shards, in item order, into the ``datasets`` folder ``out``."""
    from datasets import Dataset, concatenate_datasets

    files = sorted(parts.glob("rank*-shard*.arrow"))
    skipped = [tuple(s) for f in files for s in json.loads(f.with_suffix(".skipped.json").read_text())]
    kept = sum(Dataset.from_file(str(f)).num_rows for f in files)
    warn_skipped(skipped, kept, data, "embed", "items")
    with open(out / SKIPPED, "w") as fh:
        for name, why in skipped:
            fh.write(json.dumps({"id": name, "problem": why}) + "\n")
    ds = concatenate_datasets([Dataset.from_file(str(f)) for f in files])
    ds.save_to_disk(str(out))
    del ds
    shutil.rmtree(parts)
    log.info("embedded %d of %d items into %s (%d skipped)", kept, n_items, out, len(skipped))
