"""Checkpoints that survive crashes: each is written to a staging folder, sealed with a manifest of
file sizes and SHA-256 sums, then renamed into place; resume takes the newest checkpoint whose
manifest still holds and sets aside the ones that do not."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

MANIFEST = "multissl-checkpoint.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written; the previous ones are intact."""


# What a failed save raises: OSError from Python's own writes, RuntimeError from torch.save (a full
# disk shows as "unexpected pos" there: a short write), SafetensorError from safetensors.
SAVE_ERRORS: tuple[type[BaseException], ...] = (OSError, RuntimeError)
try:
    from safetensors import SafetensorError

    SAVE_ERRORS += (SafetensorError,)
except ImportError:  # older safetensors raise plain OSError / RuntimeError
    pass


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""  # unreachable


def save_failed(run_dir: Path, name: str, error: BaseException, staging: Path | None) -> CheckpointError:
    """The one-line error for a save of ``run_dir / name`` that raised ``error``: why (a full disk
    whatever form it took), the free space once ``staging`` (the unfinished checkpoint, removed here)
    is gone, what a checkpoint takes, and which checkpoint is intact."""
    free_then = shutil.disk_usage(run_dir).free
    freed = 0  # counted, not measured after: a file the failed writer still holds keeps its space until then
    if staging is not None:
        freed = _bytes(staging)
        shutil.rmtree(staging, ignore_errors=True)
    full = getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or free_then < 1 << 20
    detail = getattr(error, "strerror", None) or (str(error).strip().splitlines() or [type(error).__name__])[0]
    if full and detail != os.strerror(errno.ENOSPC):
        log.warning("checkpoint: %s while saving %s: %s", type(error).__name__, name, detail[:200])
    why = os.strerror(errno.ENOSPC) if full else f"{type(error).__name__}: {detail[:200]}"
    found = checkpoints(run_dir)
    took = f", a checkpoint takes {_size(_bytes(found[0]))}" if found else ""
    kept = f"{found[0].name} is intact" if found else "no earlier checkpoint exists"
    return CheckpointError(f"saving {run_dir / name} failed ({why}; {_size(free_then + freed)} free in {run_dir}"
                           f"{took}); {kept}")


def _bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def seal(folder: str | Path) -> None:
    """Write the manifest of every file in ``folder`` (the last file a checkpoint gets).

    >>> import tempfile; d = Path(tempfile.mkdtemp()); _ = (d / "a").write_text("x"); seal(d)
    >>> problem(d) is None
    True
    """
    folder = Path(folder)
    files = {str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}
    tmp = folder / f".{MANIFEST}.tmp"
    with open(tmp, "w") as fh:
        json.dump({"files": files}, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, folder / MANIFEST)


def problem(folder: str | Path) -> str | None:
    """Why ``folder`` cannot be resumed from (no manifest, a file missing, truncated or changed), or None."""
    folder = Path(folder)
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError):
        return f"no valid {MANIFEST} (the save did not finish)"
    for name, meta in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != meta["size"]:
            return f"{name} is truncated ({path.stat().st_size} of {meta['size']} bytes)"
        if _sha256(path) != meta["sha256"]:
            return f"{name} is corrupt (its SHA-256 differs from the manifest)"
    return None


def checkpoints(run_dir: str | Path) -> list[Path]:
    """The ``checkpoint-N`` folders of a run, newest (highest N) first."""
    found = [p for p in Path(run_dir).glob("checkpoint-*") if p.is_dir() and _NAME.match(p.name)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]), reverse=True)


def latest_good(run_dir: str | Path, set_aside: bool = True) -> Path | None:
    """The newest checkpoint that passes :func:`problem`. Each newer one that fails is logged with the
    reason and, with ``set_aside``, renamed to ``checkpoint-N.bad`` so no later step trusts it."""
    for ckpt in checkpoints(run_dir):
        why = problem(ckpt)
        if why is None:
            return ckpt
        log.warning("resume: %s is unusable: %s; falling back to the previous checkpoint", ckpt.name, why)
        if set_aside:
            bad = ckpt.with_name(ckpt.name + ".bad")
            shutil.rmtree(bad, ignore_errors=True)
            os.replace(ckpt, bad)
    return None


def publish(staged: Path, final: Path) -> None:
    """Move a sealed staging folder to ``final``; an older folder of that name is replaced only once the
    new one is in place."""
    old = final.with_name(final.name + ".old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(staged, final)
    shutil.rmtree(old, ignore_errors=True)


def rotate(run_dir: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints (0 keeps all)."""
    if keep > 0:
        for old in checkpoints(run_dir)[keep:]:
            shutil.rmtree(old, ignore_errors=True)
