"""Train-step time of our DreamerV3 against the official code (danijar/dreamerv3), same sizes, same CPU, one run.

    python benchmarks/dreamer_vs_official.py                      # writes results/dreamer_vs_official.{csv,md}
    python benchmarks/dreamer_vs_official.py --quick              # 5 pairs of 2-step blocks instead of 20 of 3
    python benchmarks/dreamer_vs_official.py --sizes tiny small   # also the paper's `small` (minutes a step here)
    python benchmarks/dreamer_vs_official.py --official-python PATH --official-repo PATH

The official code's GitHub HEAD needs jax 0.4.33 and numpy<2 (our venv has jax 0.10.2), so it runs in its own
venv, in a long-lived subprocess started with `--official-python` on a checkout given by `--official-repo`; nothing
of it is copied here. The venv (Python 3.11; its requirements.txt minus the environment and CUDA packages, which a
train step does not import) and the checkout:

    python3.11 -m venv /work/venvs/dreamerv3-official
    /work/venvs/dreamerv3-official/bin/pip install -U pip
    /work/venvs/dreamerv3-official/bin/pip install "jax[cpu]==0.4.33" "jaxlib==0.4.33" "numpy<2" chex einops \\
        "elements>=3.19.1" "granular>=0.20.3" jaxtyping "ninjax>=3.5.1" optax "portal>=3.5.0" "scope>=0.4.4" \\
        tqdm ruamel.yaml colored_traceback
    git clone https://github.com/danijar/dreamerv3 /work/official/dreamerv3
    git -C /work/official/dreamerv3 checkout e3f02248693a79dc8b0ebd62c93683888ddaccfe

(resolved 2026-11: numpy 1.26.4, chex 0.1.90, optax 0.2.5, elements 3.22.4, ninjax 3.6.3, portal 3.8.3,
granular 0.24.2, scope 0.8.1, einops 0.8.2, ruamel.yaml 0.19.1.) PyPI's `dreamerv3` 1.5.0 is the 2023 code and
does not install; the commit above is the one measured (printed in the table header).

What is timed: one update of world model, actor and critic on a batch already on the device, until its new
parameters are ready, and nothing else on either side. Ours: `jax.jit(functools.partial(train_step, nets),
donate_argnums=0)` as `dreamer/train.py` calls it. Official: the jitted update that `Agent.train(carry, batch)`
calls (`agent._train(donated, policy_params, seed, carry, data)`), called directly, because `Agent.train` also does
host bookkeeping that our timed call does not (hands the policy parameters to the acting devices, fetches the
previous step's outputs and metrics to the host) and the seed and parameter split are made before the clock
starts, as our key is. The update is built from its `configs.yaml` defaults through its own `Agent` class with a
dummy observation space (64x64x3 image, reward, flags) and a 1-dimensional continuous action as for cartpole.
Both float32 (the official default, bfloat16, ran 1.2x slower than its float32 on this CPU: median of 6
alternating pairs at `tiny`), XLA's default CPU thread pool on both sides (all cores), compile time excluded (two
warm-up blocks each). The two sides alternate in blocks of `block` steps, which side goes first alternating too; a
ratio is taken within each adjacent pair of blocks and the median and interquartile range over pairs reported, so
the drifting speed of this shared machine moves both sides of every ratio alike.

How the sizes are matched (rows of the table):
- `tiny` (and `small`): our preset against the official code with its size knobs set to ours, `deter`,
  `rssm.hidden` = `units`, `stoch`, `classes`, `.*.units`, `.*.layers` (reward, continue, actor and critic MLPs),
  `.*.depth` = `cnn_depth`, `bins` 255, `imag_length` 15, batch B x T, `replay_context` 0 (ours trains on sequences
  that start from the initial state; the official default 1 adds one context step), and those of its architecture
  options that reproduce our layer shapes: encoder and decoder `strided` with `kernel` 4 and `mults` 1, 2, 4, 8
  (channels depth, 2, 4, 8 x depth, 64 -> 4 px, as ours), RSSM `blocks` 1 (a dense GRU), `dynlayers` 0, `imglayers` 1.
- `tiny, official architecture`: the same size knobs only; everything else its defaults (block GRU with 8 blocks
  and one block-linear hidden layer, 2 prior layers, stride-1 5x5 convolutions with 2x2 max-pooling and channels
  depth x (2, 3, 4, 4), nearest-neighbour upsampling with 5x5 convolutions in the decoder).

What still differs at the matched size (official HEAD e3f0224 is DreamerV3 as of 2025, our code is the 2023 paper's
version @84ecf19; read from its `dreamerv3/agent.py`, `rssm.py`, `embodied/jax/{nets,heads,outs,opt}.py`):
- Losses and gradients: the official code sums all losses (world model, actor, critic, replay value) into one loss
  with one backward pass and ONE optimizer over all modules; ours takes three value-and-grads (world model, then
  actor, then critic) with three optimizers.
- Actor gradient: ours backpropagates the λ-returns through the imagined dynamics for continuous actions (the
  paper's choice), i.e. a backward pass through the 15-step imagination over B·T starts; the official code uses
  REINFORCE for every action space (imagined states and actions are stop-gradient), so it has no such backward pass.
- Replay value loss: the official critic is also trained on the replayed states (`repval`, λ-returns bootstrapped
  from the imagined ones, scale 0.3): one more critic and slow-critic pass over B·T states; ours has none.
- Optimizer: official LaProp (RMS scaling, then momentum, eps 1e-20) with adaptive per-tensor gradient clipping
  (AGC 0.3) and a 1000-step warm-up; ours Adam with global-norm clipping (1000 / 100). Similar per-parameter cost.
- RSSM: the official GRU input is three Linear-norm-act branches (of h, z and a, each `hidden` units) concatenated
  with h, so its GRU matrix is (deter + 3·hidden) x 3·deter against our (deter + units) x 3·deter after one Linear
  of [z, a]; its initial state is zeros, ours learned (tanh(w) and the prior's mode).
- Decoder input: the official `bspace` 8 maps h through an 8-block block-linear layer and z through a 2·units
  hidden layer to the 4x4 grid (summed, norm, act); ours one Dense of [h, z] (its `bspace` 0, a single Linear,
  fails without vector observations: `rssm.Decoder` reads `kw` before assigning it). Its transposed convolutions are
  zero-insertion plus a stride-1 convolution at the upsampled size, ours Flax `ConvTranspose`; its image output
  goes through a sigmoid, ours is linear + 0.5.
- Layers: official Linear/Conv layers have a bias and RMSNorm (eps 1e-4), ours no bias before a LayerNorm (eps 1e-3).
- Two-hot: official bins are symexp(linspace(-20, 20, 255)) with the two-hot weights and the expectation taken in
  raw space; ours in symlog space (the paper). Same 255 bins, same cost.
- Loss constants (dyn 1.0 vs our 0.5, continue target times γ) and initialisation differ; they cost nothing.
Parameter counts (world model + actor + critic) are printed per row; the official code's is higher at the matched
size because of the three GRU input branches and the decoder's 2·units input layer.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from _results import save_table, stamp
from dreamer.agent import init_state, make_networks, train_step
from dreamer.config import PRESETS, DreamerConfig

ACTION_DIM = 1  # continuous, as dm-control cartpole

# Runs under the official venv's Python: builds the official agent, then times `k` train steps for each line `k`
# read from stdin and answers one JSON line of per-step milliseconds. Its own prints go to stderr.
OFFICIAL_DRIVER = r"""
import json, os, sys, tempfile, time
proto = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)  # everything the official code prints goes to stderr
repo, overrides, batch, length = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
sys.path.insert(0, repo)
import elements, jax, numpy as np, ruamel.yaml as yaml
from dreamerv3.agent import Agent
from embodied.jax import internal
configs = yaml.YAML(typ="safe").load(open(os.path.join(repo, "dreamerv3", "configs.yaml")).read())
config = elements.Config(configs["defaults"])
config = config.update({"jax.platform": "cpu", "jax.compute_dtype": "float32", "jax.prealloc": False,
                        "batch_size": batch, "batch_length": length, "logdir": tempfile.mkdtemp()})
config = config.update(overrides)
obs_space = dict(image=elements.Space(np.uint8, (64, 64, 3)), reward=elements.Space(np.float32),
                 is_first=elements.Space(bool), is_last=elements.Space(bool), is_terminal=elements.Space(bool))
act_space = dict(action=elements.Space(np.float32, (%(action_dim)d,), -1, 1))
agent = Agent(obs_space, act_space, elements.Config(
    **config.agent, logdir=config.logdir, seed=0, jax=dict(config.jax, profiler=False, precompile=False),
    batch_size=batch, batch_length=length, replay_context=config.replay_context,
    report_length=config.report_length, replica=0, replicas=1))
rng = np.random.default_rng(0)
is_first = np.zeros((batch, length), bool)
is_first[:, 0] = True
data = dict(image=rng.integers(0, 256, (batch, length, 64, 64, 3)).astype(np.uint8),
            action=rng.uniform(-1, 1, (batch, length, %(action_dim)d)).astype(np.float32),
            reward=(rng.normal(size=(batch, length)) * 3).astype(np.float32), is_first=is_first,
            is_last=np.zeros((batch, length), bool), is_terminal=np.zeros((batch, length), bool),
            consec=np.zeros((batch, length), np.int32), stepid=np.zeros((batch, length, 20), np.uint8))
data = internal.device_put(data, agent.train_sharded)
carry = agent.init_train(batch)
modules = ("dyn/", "enc/", "dec/", "rew/", "con/", "pol/", "val/")
params = sum(int(v.size) for k, v in agent.params.items() if k.startswith(modules))
from importlib.metadata import version
versions = {m: version(m) for m in ("jax", "numpy", "ninjax", "elements", "optax")}
proto.write(json.dumps(dict(ready=True, params=params, versions=versions)) + "\n")
proto.flush()
count = 0
for line in sys.stdin:
    if not line.strip():
        break
    times = []
    for _ in range(int(line)):
        # Agent.train's own split and call, without its host bookkeeping around them (see the module docstring)
        seed = agent._seeds(count, agent.train_mirrored)
        count += 1
        allo = {k: v for k, v in agent.params.items() if k in agent.policy_keys}
        dona = {k: v for k, v in agent.params.items() if k not in agent.policy_keys}
        start = time.perf_counter()
        agent.params, carry, _, _ = agent._train(dona, allo, seed, carry, data)
        jax.block_until_ready(agent.params)
        times.append((time.perf_counter() - start) * 1e3)
    proto.write(json.dumps(dict(ms=times)) + "\n")
    proto.flush()
""" % dict(action_dim=ACTION_DIM)


def our_config(size: str) -> DreamerConfig:
    return PRESETS[size]


def official_overrides(cfg: DreamerConfig, matched: bool) -> dict:
    """The official config keys (regexes as in its `configs.yaml` size presets) that set our sizes; with `matched`
    also the architecture options that reproduce our layer shapes."""
    stages = int(np.log2(cfg.image_size // 4))  # stride-2 stages down to 4x4, as our encoder
    over = {r".*\.rssm": dict(deter=cfg.deter, hidden=cfg.units, stoch=cfg.stoch, classes=cfg.classes,
                              unimix=cfg.unimix, free_nats=cfg.free_nats),
            r".*\.depth": cfg.cnn_depth, r".*\.units": cfg.units, r".*\.layers": cfg.layers, r".*\.bins": cfg.bins,
            "agent.imag_length": cfg.imag_horizon, "agent.horizon": cfg.horizon, "replay_context": 0}
    if matched:
        cnn = dict(strided=True, kernel=4, mults=[2 ** i for i in range(stages)])
        over.update({"agent.enc.simple": cnn, "agent.dec.simple": cnn,
                     "agent.dyn.rssm.blocks": 1, "agent.dyn.rssm.dynlayers": 0, "agent.dyn.rssm.imglayers": 1})
    return over


def random_batch(cfg: DreamerConfig, seed: int = 0) -> dict:
    """The official driver's batch, in our layout (no is_last/consec/stepid)."""
    rng = np.random.default_rng(seed)
    b, t, s = cfg.batch_size, cfg.batch_length, cfg.image_size
    is_first = np.zeros((b, t), bool)
    is_first[:, 0] = True
    return dict(image=rng.integers(0, 256, (b, t, s, s, 3)).astype(np.uint8),
                action=rng.uniform(-1, 1, (b, t, ACTION_DIM)).astype(np.float32),
                reward=(rng.normal(size=(b, t)) * 3).astype(np.float32), is_first=is_first,
                is_terminal=np.zeros((b, t), bool))


class Ours:
    """Our jitted update with its state, timed `k` steps at a time."""

    def __init__(self, cfg: DreamerConfig):
        nets = make_networks(cfg, ACTION_DIM, discrete=False)
        self.state = init_state(nets, jax.random.PRNGKey(0))
        self.params = sum(x.size for x in jax.tree.leaves((self.state.wm, self.state.actor, self.state.critic)))
        self.update = jax.jit(functools.partial(train_step, nets), donate_argnums=0)
        self.data = jax.device_put(random_batch(cfg))
        self.key, self.count = jax.random.PRNGKey(1), 0

    def run(self, k: int) -> list[float]:
        times = []
        for _ in range(k):
            key = jax.random.fold_in(self.key, self.count)
            self.count += 1
            start = time.perf_counter()
            self.state, _ = self.update(self.state, self.data, key)
            jax.block_until_ready(self.state)
            times.append((time.perf_counter() - start) * 1e3)
        return times


class Official:
    """The official agent in a long-lived subprocess under its own venv."""

    def __init__(self, python: str, repo: Path, cfg: DreamerConfig, overrides: dict):
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", prefix="dreamer_official_")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "XLA_FLAGS")}
        self.proc = subprocess.Popen(
            [python, "-c", OFFICIAL_DRIVER, str(repo), json.dumps(overrides), str(cfg.batch_size),
             str(cfg.batch_length)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
            env=env)

    def _answer(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.log.seek(0)
            tail = "".join(self.log.readlines()[-30:])
            raise RuntimeError(f"the official driver exited ({self.proc.returncode}); its last output:\n{tail}")
        return json.loads(line)

    def ready(self) -> dict:
        return self._answer()

    def run(self, k: int) -> list[float]:
        self.proc.stdin.write(f"{k}\n")
        self.proc.stdin.flush()
        return self._answer()["ms"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        self.log.close()


def commit_of(repo: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-python", default="/work/venvs/dreamerv3-official/bin/python",
                        help="the Python of a venv with the official code's requirements (see above)")
    parser.add_argument("--official-repo", type=Path, default=Path("/work/official/dreamerv3"),
                        help="a checkout of github.com/danijar/dreamerv3")
    parser.add_argument("--sizes", nargs="+", default=["tiny"], choices=sorted(PRESETS),
                        help="our presets to compare at (the official code's layer options matched to ours)")
    parser.add_argument("--no-official-architecture", action="store_true",
                        help="skip the row of the official architecture at tiny's sizes")
    parser.add_argument("--quick", action="store_true", help="5 pairs of 2-step blocks instead of 20 of 3")
    args = parser.parse_args()
    if not (args.official_repo / "dreamerv3" / "agent.py").exists():
        parser.error(f"{args.official_repo} is not a checkout of github.com/danijar/dreamerv3")
    pairs, block = (5, 2) if args.quick else (20, 3)

    rows_todo = [(size, size, True) for size in args.sizes]
    if not args.no_official_architecture:
        rows_todo.append(("tiny, official architecture", "tiny", False))
    rows, info = [], {}
    for name, size, matched in rows_todo:
        cfg = our_config(size)
        official = Official(args.official_python, args.official_repo, cfg, official_overrides(cfg, matched))
        try:
            ours = Ours(cfg)
            info = official.ready()
            k = block if size == "tiny" else 1  # `small` steps take seconds each on a CPU
            for _ in range(2):  # warm-up: compiles both (the first block), then one more each
                ours.run(k), official.run(k)
            a, b = [], []
            for i in range(pairs):
                if i % 2 == 0:
                    x = statistics.mean(ours.run(k))
                    y = statistics.mean(official.run(k))
                else:
                    y = statistics.mean(official.run(k))
                    x = statistics.mean(ours.run(k))
                a.append(x)
                b.append(y)
                print(f"{name}: pair {i + 1}/{pairs}: ours {x:.0f} ms, official {y:.0f} ms, ratio {x / y:.2f}",
                      flush=True)
        finally:
            official.close()
        ratios = [x / y for x, y in zip(a, b)]
        q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
        rows.append(dict(config=name, batch=f"{cfg.batch_size}x{cfg.batch_length}", block=k,
                         ours_params=ours.params, official_params=info["params"],
                         ours_ms=statistics.median(a), official_ms=statistics.median(b),
                         ratio=statistics.median(ratios), q1=q1, q3=q3))
        del ours

    v = info["versions"]
    header = (f"DreamerV3 train step (world model, actor and critic updates), float32, CPU ({os.cpu_count()} cores, "
              f"{platform.processor() or platform.machine()}), XLA's default threads; ours on jax {jax.__version__}, "
              f"official {commit_of(args.official_repo)} (danijar/dreamerv3) on jax {v['jax']}, numpy {v['numpy']}, "
              f"ninjax {v['ninjax']}; {pairs} alternating pairs of blocks after 2 warm-up blocks, the ratio taken "
              f"within each pair; image 64x64x3, {ACTION_DIM} continuous action. Still different in the update "
              f"(benchmarks/dreamer_vs_official.py's docstring): the official code sums all losses into one backward "
              f"pass and one LaProp optimizer (ours: three, Adam), uses REINFORCE where ours backpropagates through "
              f"the imagined dynamics, and adds a replay value loss; its RSSM and decoder inputs are wider. "
              f"{stamp(dict(vars(args), pairs=pairs, block=block, seed=0))}")
    save_table("dreamer_vs_official", header, ["config", "batch B x T", "params ours / official", "ours (ms/step)",
                                               "official (ms/step)", "ours / official, median", "interquartile range"],
               [(r["config"], r["batch"], f"{r['ours_params'] / 1e6:.2f}M / {r['official_params'] / 1e6:.2f}M",
                 f"{r['ours_ms']:.0f}", f"{r['official_ms']:.0f}", f"**{r['ratio']:.2f}x**",
                 f"{r['q1']:.2f}-{r['q3']:.2f}") for r in rows],
               ["config", "batch", "block", "pairs", "ours_params", "official_params", "ours_ms_per_step",
                "official_ms_per_step", "ratio_median", "ratio_q1", "ratio_q3"],
               [(r["config"], r["batch"], r["block"], pairs, r["ours_params"], r["official_params"],
                 f"{r['ours_ms']:.1f}", f"{r['official_ms']:.1f}", f"{r['ratio']:.3f}", f"{r['q1']:.3f}",
                 f"{r['q3']:.3f}") for r in rows])


if __name__ == "__main__":
    main()
