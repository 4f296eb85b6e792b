"""The layout version of what multissl writes: run folders (``run.json``) and exports (the ``multissl``
entry of ``config.json``). A folder of an older layout is read (migrated), one of a newer layout is
refused with a message that says so. Version 0 is what multissl wrote before it recorded versions;
version 1 has the same files plus the record."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
RUN_FILE = "run.json"
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
    """Bring a run folder of an older layout to this one before it is written to (0 -> 1: the record)."""
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
