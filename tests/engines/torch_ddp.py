"""torchrun worker: DDP (gloo) fed by Loader(shard="auto"); writes the row ids it trained on to OUT/rank<r>.json."""

import json
import sys

import torch
import torch.distributed as dist

from npyfeed import Loader

path, out = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo")
rank = dist.get_rank()
loader = Loader((path + "/x.npy", path + "/y.npy"), 16, shuffle=True, seed=7, shard="auto")
data = torch.utils.data.DataLoader(loader.to_torch(), batch_size=None)
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
ids, steps = [], 0
for x, y in data:
    optimizer.zero_grad()
    loss = ((model(x).squeeze(1) - y.float()) ** 2).mean()
    loss.backward()  # all-reduce: a rank with a step more than the other would hang here
    optimizer.step()
    ids += y.tolist()
    steps += 1
# Every rank must end with the same weights (the gradients were averaged each step).
weights = torch.cat([p.detach().flatten() for p in model.parameters()])
gathered = [torch.zeros_like(weights) for _ in range(dist.get_world_size())]
dist.all_gather(gathered, weights)
same = all(torch.equal(g, weights) for g in gathered)
with open(f"{out}/rank{rank}.json", "w") as f:
    json.dump(
        {
            "ids": ids,
            "steps": steps,
            "shard": [loader.shard.index, loader.shard.count, loader.shard.source],
            "same_weights": same,
        },
        f,
    )
dist.destroy_process_group()
