"""Several ``multissl pretrain`` runs one after another in one child process (a rank of a torchrun job,
or alone), so that the family's rank tests pay the start-up of torch and transformers once rather than
once per objective. The argument is a JSON file: a list of
``{"recipe": PATH, "args": [...], "dump": DIR, "resume": BOOL}``; each run's ranks write their weights
and buffers to ``DIR/rank{r}.pt`` at the end (``tests/run_driver.py``'s dump)."""

import json
import logging
import os
import sys

from multissl.recipe import load_recipe
from multissl.train import pretrain
from tests.run_driver import DumpWeights

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for run in json.loads(open(sys.argv[1]).read()):
        os.environ["DUMP"] = run["dump"]
        pretrain(load_recipe(run["recipe"], run["args"]), resume=run.get("resume", False), callbacks=[DumpWeights()])
