"""The run folder, read by training (to resume) and by export (to load what was trained), and the
layout version of what multissl writes: run folders (``run.json``) and exports (the ``multissl``
entry of ``config.json``). A folder of an older layout is read (migrated), one of a newer layout is
refused with a message that says so. Version 0 is what multissl wrote before it recorded versions;
version 1 has the same files plus the record; version 2 names the objective (``method.name``; a
recipe without it is data2vec)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
import yaml

from multissl.checkpoints import latest_good
from multissl.core.adapter import Modality
from multissl.methods import get_method
from multissl.modalities import get_modality
from multissl.recipe import Recipe, from_dict

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
RUN_FILE = "run.json"
RECIPE_FILE = "recipe.yaml"
PREPROCESSOR_DIR = "preprocessor"
EXPORT_KEY = "multissl"


class SchemaError(ValueError):
    """A folder written by a newer multissl, or with an unreadable version record."""


def check_version(version: Any, where: str) -> int:
    """``version`` if this multissl reads it, else a :class:`SchemaError` naming ``where``.

    >>> check_version(1, "runs/t1")
    1
    """
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise SchemaError(f"{where}: schema_version {version!r} is not a version number")
    if version > SCHEMA_VERSION:
        raise SchemaError(f"{where}: written by a newer multissl (schema_version {version}; this one reads up to "
                          f"{SCHEMA_VERSION}); upgrade multissl to use it")
    return version


def write_run_info(run_dir: str | Path) -> None:
    """Record the layout version in ``run_dir`` (to a temporary name, then renamed)."""
    path = Path(run_dir) / RUN_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"schema_version": SCHEMA_VERSION}) + "\n")
    os.replace(tmp, path)


def run_version(run_dir: str | Path) -> int:
    """The layout version of a run folder (0: written before versions were recorded)."""
    path = Path(run_dir) / RUN_FILE
    if not path.exists():
        return 0
    try:
        version = json.loads(path.read_text())["schema_version"]
    except (ValueError, KeyError, TypeError):
        raise SchemaError(f"{path}: not a multissl run record (no schema_version)") from None
    return check_version(version, str(run_dir))


def migrate_run(run_dir: str | Path) -> None:
    """Bring a run folder of an older layout to this one before it is written to (0 -> 1: the record;
    1 -> 2: nothing to rewrite, since a recipe without ``method.name`` reads as data2vec)."""
    version = run_version(run_dir)
    if version < SCHEMA_VERSION:
        log.info("%s: run folder of schema_version %d, migrated to %d", run_dir, version, SCHEMA_VERSION)
        write_run_info(run_dir)


def export_info() -> dict[str, Any]:
    """What an export records about itself (under ``EXPORT_KEY`` in ``config.json``)."""
    return {"schema_version": SCHEMA_VERSION}


def check_export(model_dir: str | Path) -> int | None:
    """The layout version of an exported model folder; None for a model multissl did not export."""
    path = Path(model_dir) / "config.json"
    try:
        info = json.loads(path.read_text()).get(EXPORT_KEY)
    except (OSError, ValueError, AttributeError):
        return None  # not readable here: the model loader says why
    if info is None:
        return None
    if not isinstance(info, dict) or "schema_version" not in info:
        raise SchemaError(f"{path}: {EXPORT_KEY!r} entry without a schema_version")
    return check_version(info["schema_version"], str(model_dir))


def load_run(run_dir: str | Path, which: str = "student") -> tuple[Recipe, Modality, torch.nn.Module]:
    """(recipe, adapter, encoder) from a run folder: final weights, or the newest checkpoint."""
    if which not in ("student", "teacher"):
        raise ValueError(f"--which must be student or teacher, got {which!r}")
    recipe, modality, model = load_run_model(run_dir)
    encoder = model.encoder if which == "student" else model.teacher_encoder()
    return recipe, modality, encoder.eval()


def load_run_model(run_dir: str | Path) -> tuple[Recipe, Modality, Any]:
    """(recipe, adapter, the whole model: encoder, heads, teacher) from a run folder."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    recipe_path = run_dir / RECIPE_FILE
    if not recipe_path.exists():
        raise FileNotFoundError(f"{run_dir}: not a multissl run folder (no {RECIPE_FILE})")
    run_version(run_dir)  # older layouts read as they are (see the module docstring); newer ones fail
    recipe = from_dict(Recipe, yaml.safe_load(recipe_path.read_text()))
    weights = run_dir / "model.safetensors"
    if not weights.exists():
        last = latest_good(run_dir, set_aside=False)
        if last is None:
            raise FileNotFoundError(f"{run_dir}: no model.safetensors and no checkpoint-* folder")
        weights = Path(last) / "model.safetensors"
    modality = get_modality(recipe.modality)(recipe.adapter_config())
    model = get_method(recipe.method.name).build(modality, recipe.encoder, recipe.method, recipe.train.max_steps)
    model.load_state_dict(load_file(str(weights)))
    return recipe, modality, model.eval()
