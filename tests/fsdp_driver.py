"""Three training steps of a tiny text model in a plain loop: alone (4 samples per step), or as one of
two ranks of a torchrun job with every block, the teacher's included, sharded by FSDP2's
``fully_shard`` (2 samples per rank). Writes the full weights to ``$OUT/weights.pt`` and, when
sharded, how each teacher and student tensor is split (``$OUT/shards.json``)."""

import json
import os
import sys

import torch
import torch.distributed as dist

from multissl.core.blocks import Block
from multissl.recipe import load_recipe
from multissl.train import build_model

if __name__ == "__main__":
    recipe, *overrides = sys.argv[1:]
    sharded = "RANK" in os.environ
    rank, world = 0, 1
    if sharded:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        from torch.distributed.tensor import DTensor

        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    _, model, dataset, collate, *_ = build_model(load_recipe(recipe, overrides))
    if sharded:
        mesh = init_device_mesh("cpu", (world,))
        for module in model.modules():
            if isinstance(module, Block):
                fully_shard(module, mesh=mesh)
        fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    per_rank = 4 // world
    for step in range(3):
        first = step * 4 + rank * per_rank
        loss = model(**collate([dataset[i] for i in range(first, first + per_rank)]))["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        model.ema_step()
    state = model.state_dict()
    if sharded:
        shards = {k: [str(v.placements[0]), list(v.to_local().shape), list(v.shape)]
                  for k, v in state.items() if isinstance(v, DTensor)}
        state = {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in state.items()}
    if rank == 0:
        torch.save(state, os.path.join(os.environ["OUT"], "weights.pt"))
        if sharded:
            with open(os.path.join(os.environ["OUT"], "shards.json"), "w") as fh:
                json.dump(shards, fh)
    if sharded:
        dist.destroy_process_group()
