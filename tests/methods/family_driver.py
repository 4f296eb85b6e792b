"""``multissl pretrain`` in a child process (a rank of a torchrun job, or alone) for the family's rank and
kill tests: ``tests/run_driver.py``'s weight dump (``DUMP``: each rank writes its weights and buffers to
``$DUMP/rank{r}.pt`` at the end), plus ``STEP_SLEEP``: that many seconds of pause after each update, so
that a test can kill the run between two updates."""

import logging
import os
import sys
import time

from transformers import TrainerCallback

from multissl.recipe import load_recipe
from multissl.train import pretrain
from tests.run_driver import DumpWeights


class Pause(TrainerCallback):
    """Sleeps after each update."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(self.seconds)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    recipe, *overrides = sys.argv[1:]
    resume = "--resume" in overrides
    overrides = [o for o in overrides if o != "--resume"]
    callbacks = [DumpWeights()] if os.environ.get("DUMP") else []
    if os.environ.get("STEP_SLEEP"):
        callbacks.append(Pause(float(os.environ["STEP_SLEEP"])))
    pretrain(load_recipe(recipe, overrides), resume=resume, callbacks=callbacks)
