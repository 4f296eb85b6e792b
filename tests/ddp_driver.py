"""Run ``multissl pretrain`` (one rank of a torchrun job, or alone) and write each rank's teacher and
student weights to ``$DUMP/rank{r}.pt``, so the tests can compare ranks and runs."""

import os
import sys

import torch
from transformers import TrainerCallback

from multissl.config import load_recipe
from multissl.train import pretrain


class DumpWeights(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, **kwargs):
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        torch.save(weights, os.path.join(os.environ["DUMP"], f"rank{args.process_index}.pt"))


if __name__ == "__main__":
    recipe, *overrides = sys.argv[1:]
    pretrain(load_recipe(recipe, overrides), callbacks=[DumpWeights()])
