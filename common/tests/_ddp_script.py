"""Run by test_train.py under torchrun: a few SGD steps of a fixed model on a fixed dataset through DDP."""
import json
import sys

import torch

from common.train import cleanup_distributed, init_distributed, mean_over_ranks, resumable_loader, seed_everything

torch.set_num_threads(1)
dist_info = init_distributed("cpu")
seed_everything(0)
x, y = torch.randn(64, 5), torch.randn(64, 1)
model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
if dist_info.world_size > 1:
    model = torch.nn.parallel.DistributedDataParallel(model)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
loader = resumable_loader(torch.utils.data.TensorDataset(x, y), global_batch=16, seed=3, rank=dist_info.rank,
                          world_size=dist_info.world_size)
losses = []
for _ in range(6):
    xb, yb = next(loader)
    loss = torch.nn.functional.mse_loss(model(xb), yb)
    opt.zero_grad()
    loss.backward()  # DDP averages gradients over ranks
    opt.step()
    losses.append(mean_over_ranks(loss).item())
if dist_info.is_main:
    json.dump(losses, open(sys.argv[1], "w"))
cleanup_distributed()
