"""Bad files are real life: skip each one with a warning that names it, count them, and stop only
when nothing is left or ``data.strict`` asks for it. Shared by the speech and image datasets."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from multissl.errors import RecipeError

log = logging.getLogger(__name__)


def warn_skipped(bad: list[tuple[str, str]], n_good: int, spec: str, what: str, noun: str) -> None:
    """Log each skipped file and the count; raise when no file is left.

    >>> warn_skipped([], 3, "wavs/", "audio", "files")
    """
    for name, why in bad:
        log.warning("%s: skipped %s: %s", what, name, why)
    if bad:
        log.warning("%s: %d of %d %s skipped (pass --strict to stop instead)", what, len(bad), len(bad) + n_good, noun)
    if not n_good:
        raise RecipeError(f"data.path: {spec}: none of the {len(bad)} {noun} is usable")


def first_decodable(names: Sequence[str], i: int, load: Callable[[int], Any], strict: bool, failed: list[str],
                    what: str, error: type[Exception]) -> Any:
    """``load(i)``, or when that fails (a file changed or vanished after the scan) ``load`` of the
    next index that works; each failure is logged and appended to ``failed``, or with ``strict``
    raised as ``error``."""
    for k in range(len(names)):
        j = (int(i) + k) % len(names)
        try:
            return load(j)
        except Exception as e:  # corrupt data surfaces as several exception types
            if strict:
                raise error(f"{names[j]}: cannot decode ({e})") from e
            failed.append(names[j])
            log.warning("%s: skipped %s: cannot decode (%s)", what, names[j], str(e)[:120])
    raise RecipeError("data.path: no file could be decoded")


def made_or_skipped(name: str, make: Callable[[], Any], strict: bool, what: str, error: type[Exception]) -> Any:
    """``make()``, or None when it fails: the file is logged as skipped (with ``strict``, raised as
    ``error``). For streams, where files are checked as they come.

    >>> made_or_skipped("a.wav", lambda: 1, False, "audio", ValueError)
    1
    """
    try:
        return make()
    except Exception as e:  # corrupt data surfaces as several exception types
        if strict:
            raise error(f"{name}: {e} (data.strict is set)") from e
        log.warning("%s: skipped %s: %s", what, name, str(e)[:160])
        return None


def warn_unrecognised(folder: Path, files: Sequence[Path], known: Iterable[str]) -> None:
    """Name and count the files of ``folder`` that are left out because of their extension.

    >>> warn_unrecognised(Path("imgs"), [], [".png"])
    """
    if files:
        names = [str(f.relative_to(folder)) for f in files]
        more = f" and {len(names) - 5} more" if len(names) > 5 else ""
        log.warning("data: %s: left out %d file(s) whose extension is not one of %s: %s%s", folder, len(names),
                    " ".join(sorted(known)), ", ".join(names[:5]), more)
