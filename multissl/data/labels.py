"""Labels of pretraining examples (``data.label_column``), for objectives that train on them (SupCon).
Each label becomes an integer id from a hash of its text, so that every rank, DataLoader worker and
stream part gives the same label the same id without a pass over the data first."""

from __future__ import annotations

import hashlib
import math
from typing import Any


def label_id(value: Any) -> int:
    """A stable id for a label (the same text, the same id, in every process); ``1`` and ``"1"`` are
    the same label. Ids are 56-bit, so two labels of a data set share one with negligible probability.

    >>> label_id("cat") == label_id("cat") != label_id("dog"), label_id(1) == label_id("1")
    (True, True)
    """
    return int.from_bytes(hashlib.blake2b(str(value).encode(), digest_size=7).digest(), "little")


def missing_label(value: Any) -> bool:
    """Whether a table cell holds no label (None, NaN, blank text).

    >>> missing_label(None), missing_label(float("nan")), missing_label(" "), missing_label(0)
    (True, True, True, False)
    """
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()
