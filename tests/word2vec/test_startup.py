"""What `multissl word2vec` costs before it trains: no torch, transformers or datasets on the CPU
path, and compiled loops read back from numba's disk cache on the second run."""

import json
import os
import subprocess
import sys

from tests.conftest import ROOT

RUN = """
import json, sys
HEAVY = ("torch", "transformers", "datasets")
from multissl.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:  # --help
    code = e.code
report = {"code": code, "heavy": [m for m in HEAVY if m in sys.modules]}
if "multissl.word2vec.kernels" in sys.modules:
    stats = sys.modules["multissl.word2vec.kernels"].train_sentences.stats
    report.update(hits=sum(stats.cache_hits.values()), misses=sum(stats.cache_misses.values()),
                  cache=str(stats.cache_path))
print(json.dumps(report))
"""


def run_cli(*args: str, env: dict[str, str] | None = None) -> dict:
    out = subprocess.run([sys.executable, "-c", RUN, *args], capture_output=True, text=True, timeout=600,
                         cwd=ROOT, env={**os.environ, **(env or {})}, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_help_imports_nothing_heavy():
    assert run_cli("--help") == {"code": 0, "heavy": []}
    assert run_cli("word2vec", "--help") == {"code": 0, "heavy": []}


def test_second_run_loads_the_compiled_loops_and_never_imports_torch(tmp_path, kjv_file):
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "numba")}  # empty: the first run compiles
    args = ("word2vec", str(kjv_file), "--out", str(tmp_path / "v"), "--sg", "--epochs", "1", "--dim", "8",
            "--overwrite")
    first = run_cli(*args, env=env)
    second = run_cli(*args, env=env)
    assert first["code"] == second["code"] == 0 and first["heavy"] == second["heavy"] == []
    assert first["misses"] == 1 and first["hits"] == 0  # compiled, and written to the cache
    assert second["misses"] == 0 and second["hits"] == 1 and second["cache"].startswith(str(tmp_path / "numba"))
    assert (tmp_path / "v" / "vectors.bin").is_file()
