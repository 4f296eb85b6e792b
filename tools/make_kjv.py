"""Make data/kjv.jsonl.gz, the public-domain King James Bible shipped for the demo and the tests,
from Debian's bible-kjv package (``apt-get install bible-kjv``).

Each line: {"ref": "Ge1:1", "book": 0..65, "testament": "OT"|"NT", "section": one of 6, "text": ...}.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import subprocess

# Book index ranges of the six traditional sections of the Protestant canon.
SECTIONS = [(0, "law"), (5, "history"), (17, "poetry"), (22, "prophets"), (39, "gospels"), (44, "letters")]


def section(book: int) -> str:
    return [name for start, name in SECTIONS if book >= start][-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="data/kjv.jsonl.gz")
    args = p.parse_args()
    text = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], capture_output=True, text=True, check=True).stdout
    books: dict[str, int] = {}
    rows = []
    for line in text.splitlines():
        m = re.match(r"^(\S+?)(\d+):(\d+) (.*)$", line)
        if not m:
            continue
        abbr, verse_text = m.group(1), m.group(4).strip()
        book = books.setdefault(abbr, len(books))
        rows.append({"ref": f"{abbr}{m.group(2)}:{m.group(3)}", "book": book,
                     "testament": "OT" if book < 39 else "NT", "section": section(book), "text": verse_text})
    assert len(books) == 66, len(books)
    with gzip.open(args.out, "wt", encoding="utf-8", compresslevel=9) as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    print(f"{len(rows)} verses, {len(books)} books -> {args.out}")


if __name__ == "__main__":
    main()
