"""Time per update of our IQL and CQL against CORL's single-file IQL and CQL, on the same data, in one process.

    python benchmarks/offline_rl_vs_corl.py --corl /path/to/CORL        # a checkout of github.com/corl-team/CORL
    python benchmarks/offline_rl_vs_corl.py --corl ... --quick          # fewer timed blocks
    python benchmarks/offline_rl_vs_corl.py --corl ... --device cpu     # the CPU even where a GPU is present

CORL's files import d4rl, gym, pyrallis and wandb at the top; `offline_rl.tools.corl_reference.load_corl` puts
empty stand-ins in their place (only CORL's `train()` entry point uses them, and it is not called). Its trainers
are built exactly as its `train()` builds them for the D4RL locomotion configs (IQL: Gaussian actor, 2×256
networks; CQL: 3×256 orthogonally initialised critics, 10 sampled actions per source, α_cql = 10, no BC warm-up)
and fed CORL's batch format; ours are built from their `default` presets with the same sizes. Both train on the
generated default dataset (`python offline_rl/generate.py`); without it the script stops, unless `--random_data`
asks for random tensors of a locomotion-like shape, which the table's header then says. The two sides alternate
in blocks of `block` updates (which goes first alternating too); a ratio ours / CORL of the time per update is
taken for each adjacent pair of blocks and the median reported (lower is better, as in every side-by-side table
here), so the drifting speed of this shared machine moves both sides of every ratio alike. The issue's target,
twice CORL's speed, is a ratio of 0.5x or less. Each side's matrix-product FLOPs per update are counted (torch's
FlopCounterMode, forward and backward) and reported with the rate they are achieved at, beside the rate of a lone
256×256×256 product on the same device: where both sides already run near that rate, no rewrite of the same
arithmetic can be much faster. Nothing from CORL is copied into this repository: the checkout is read at run time.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from _results import paired_ratios, save_table, stamp  # noqa: E402
from offline_rl import cql, iql  # noqa: E402
from offline_rl.data import OfflineDataset, load_dataset  # noqa: E402
from offline_rl.tools.corl_reference import cql_trainer, iql_trainer, load_corl  # noqa: E402

DEFAULT_DATA = Path(__file__).parents[1] / "offline_rl/datasets/inverted_double_pendulum-medium.hdf5"


def corl_iql(m, obs_dim: int, act_dim: int, max_steps: int, device: str):
    q, v = m.TwinQ(obs_dim, act_dim).to(device), m.ValueFunction(obs_dim).to(device)
    actor = m.GaussianPolicy(obs_dim, act_dim, 1.0, dropout=None).to(device)
    return iql_trainer(m, q, v, actor, max_steps, device)


def corl_cql(m, obs_dim: int, act_dim: int, device: str):
    c1 = m.FullyConnectedQFunction(obs_dim, act_dim, True, 3).to(device)
    c2 = m.FullyConnectedQFunction(obs_dim, act_dim, True).to(device)  # as CORL's train() builds its second critic
    actor = m.TanhGaussianPolicy(obs_dim, act_dim, 1.0, log_std_multiplier=1.0, orthogonal_init=True).to(device)
    return cql_trainer(m, c1, c2, actor, act_dim, device)


def dataset(random_data: bool) -> OfflineDataset:
    if not random_data:
        if not DEFAULT_DATA.exists():
            raise SystemExit(f"no dataset at {DEFAULT_DATA}: run `python offline_rl/generate.py` first, or pass "
                             f"--random_data to time the updates on random tensors")
        return load_dataset(DEFAULT_DATA)
    rng = np.random.default_rng(0)  # random tensors of a locomotion-like shape (obs 11, act 3)
    n = 10_000
    obs = rng.standard_normal((n, 11)).astype(np.float32)
    return OfflineDataset(observations=obs, actions=rng.uniform(-1, 1, (n, 3)).astype(np.float32),
                          rewards=rng.standard_normal(n).astype(np.float32), next_observations=obs,
                          terminals=np.zeros(n, bool), timeouts=np.zeros(n, bool), env_id=None)


def gflop(fn: Callable[[], object]) -> float:
    """Matrix-product GFLOP of one call of `fn`, forward and backward."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def matmul_gflops(device: str, size: int = 256, repeats: int = 200) -> float:
    """GFLOP/s of a lone size³ float32 matrix product: the ceiling for updates made of such products."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    for _ in range(10):
        a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corl", type=Path, required=True, help="a checkout of github.com/corl-team/CORL")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="5 pairs of blocks instead of 15")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--random_data", action="store_true", help="random tensors instead of the generated dataset")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ds = dataset(args.random_data)
    obs_dim, act_dim = ds.observations.shape[1], ds.actions.shape[1]
    pairs = 5 if args.quick else 15
    rows = []
    gpu = args.device.startswith("cuda")
    for name, block in (("IQL", 200 if gpu else 20), ("CQL", 50 if gpu else 3)):
        if name == "IQL":
            ours = iql.IQL(replace(iql.PRESETS["default"], device=args.device), ds).to(args.device)
            theirs = corl_iql(load_corl(args.corl, "iql"), obs_dim, act_dim, 1_000_000, args.device)
        else:
            ours = cql.CQL(replace(cql.PRESETS["default"], device=args.device), ds).to(args.device)
            theirs = corl_cql(load_corl(args.corl, "cql"), obs_dim, act_dim, args.device)
        buffer = ours.buffer

        def corl_update():
            o, a, r, o2, d = buffer.sample(256)  # CORL's batch: a list, rewards and dones as (B, 1)
            theirs.train([o, a, r[:, None], o2, d[:, None]])

        def timed(fn) -> float:
            start = time.perf_counter()
            for _ in range(block):
                fn()
            if gpu:
                torch.cuda.synchronize()
            return (time.perf_counter() - start) * 1e3 / block  # ms per update

        timed(ours.update), timed(corl_update)  # warm-up
        flops = gflop(ours.update), gflop(corl_update)
        a, b = [], []
        for i in range(pairs):
            if i % 2 == 0:
                a.append(timed(ours.update))
                b.append(timed(corl_update))
            else:
                b.append(timed(corl_update))
                a.append(timed(ours.update))
        rows.append((name, paired_ratios(a, b), flops))
    where = torch.cuda.get_device_name() if gpu else f"CPU, {args.threads} thread(s)"
    data = "random tensors (obs 11, act 3; --random_data)" if args.random_data else DEFAULT_DATA.name
    header = (f"milliseconds per update, batch 256, {where}, torch {torch.__version__}, data: {data}; "
              f"{pairs} alternating pairs of blocks, the ratio taken within each pair; matrix-product GFLOP per "
              f"update and the rate achieved (a lone 256×256×256 product: {matmul_gflops(args.device):.0f} GFLOP/s). "
              f"{stamp(dict(vars(args), pairs=pairs, seed=0))}")
    save_table("offline_rl_vs_corl", header,
               ["algorithm", "ours (ms/update)", "CORL (ms/update)", "ours / CORL in time, median (lower is better)",
                "range", "GFLOP/update, ours / CORL", "GFLOP/s, ours / CORL"],
               [(n, f"{r['ours']:.2f}", f"{r['theirs']:.2f}", f"**{r['ratio']:.2f}x**", f"{r['lo']:.2f}-{r['hi']:.2f}",
                 f"{f[0]:.2f} / {f[1]:.2f}", f"{f[0] * 1e3 / r['ours']:.0f} / {f[1] * 1e3 / r['theirs']:.0f}")
                for n, r, f in rows],
               ["algorithm", "ours_ms_per_update", "corl_ms_per_update", "ratio_median", "ratio_min", "ratio_max",
                "ours_gflop_per_update", "corl_gflop_per_update"],
               [(n, f"{r['ours']:.2f}", f"{r['theirs']:.2f}", f"{r['ratio']:.3f}", f"{r['lo']:.3f}", f"{r['hi']:.3f}",
                 f"{f[0]:.3f}", f"{f[1]:.3f}") for n, r, f in rows])


if __name__ == "__main__":
    main()
