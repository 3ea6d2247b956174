"""Load on `python -m common.serve`: 1, 4 and 16 concurrent openpi clients, against the same policy called in-process.

    python benchmarks/serve_load.py --checkpoint runs/bc              # -> results/serve_load.{md,csv}
    python benchmarks/serve_load.py --checkpoint runs/pi0 --device cuda --requests 100
    python benchmarks/serve_load.py --quick --out_dir /tmp/serve_load  # a BC smoke checkpoint, 5 requests each

The server runs as its own process (`python -m common.serve --port 0`), as on a robot's inference machine; each
client is a thread holding its own connection through openpi's `WebsocketClientPolicy` (openpi-client from PyPI),
sending real Meta-World observations (rendered at the policy's cameras and image size) one after another: a request
is sent when the previous reply has arrived, as a closed-loop controller does. After 2 warm-up requests per client,
all clients start together and each sends `--requests` requests.

Per concurrency level: latency p50/p99 over every request of every client, throughput (requests / wall clock from
the start to the last reply), error replies, and dropped requests (never answered: the connection failed); both must
be 0. In-process is the same policy in this process, same device and threads, called as the closed-loop evaluator
does (observations -> predict -> the executed actions: `PolicyServer.infer` without a socket), timed before and after
the served runs and pooled. Ratios are served / in-process in time (lower is better; 1 is no overhead): p50
latency, and time per request (1 / throughput). The server holds one model behind a lock, so concurrent clients
queue: their latency grows with the number of clients while the throughput stays about that of one.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from openpi_client.websocket_client_policy import WebsocketClientPolicy  # noqa: E402

from benchmarks._results import RESULTS, REPO, save_table, stamp  # noqa: E402
from common.envs.metaworld import MetaWorldEnv  # noqa: E402
from common.policy import load_policy  # noqa: E402
from common.serve import PolicyServer  # noqa: E402
from common.train import last_checkpoint, read_config, resolve_checkpoint  # noqa: E402

WARMUP = 2  # requests per client before the clock starts


def smoke_checkpoint(run_dir: Path) -> Path:
    """A BC smoke-preset checkpoint (two tasks, 32 px, a few steps), trained once into `run_dir` and reused."""
    if last_checkpoint(run_dir) is None:
        from bc.config import PRESETS
        from bc.train import train
        train(dataclasses.replace(PRESETS["smoke"], run_dir=str(run_dir), eval_episodes=0, threads=1))
    return last_checkpoint(run_dir)


def env_observations(cfg, count: int, seed: int = 1000) -> list[dict]:
    """`count` Meta-World observations as the policy sees them: its tasks in turn, placements of `seed`, a few random
    steps into each episode."""
    rng, observations = np.random.default_rng(seed), []
    envs = [MetaWorldEnv(task, image_size=cfg.demo_image_size, cameras=tuple(cfg.cameras))
            for task in cfg.tasks[:count]]
    for i in range(count):
        env = envs[i % len(envs)]
        obs = env.reset(seed, i)
        for _ in range(int(rng.integers(0, 10))):
            obs, *_ = env.step(rng.uniform(-1, 1, 4))
        observations.append(obs)
    for env in envs:
        env.close()
    return observations


def percentiles(latencies_ms: list[float]) -> tuple[float, float]:
    return float(np.percentile(latencies_ms, 50)), float(np.percentile(latencies_ms, 99))


def in_process(server: PolicyServer, observations: list[dict], requests: int) -> list[float]:
    """Latencies (ms) of the policy called in this process, as the closed-loop evaluator calls it."""
    for obs in observations[:WARMUP]:
        server.infer(obs)
    latencies = []
    for i in range(requests):
        start = time.perf_counter()
        server.infer(observations[i % len(observations)])
        latencies.append((time.perf_counter() - start) * 1e3)
    return latencies


def load(port: int, clients: int, requests: int, observations: list[dict], n_action_steps: int, action_dim: int
         ) -> dict:
    """`clients` connections at once, `requests` each: latencies (ms), wall clock (s), errors, dropped."""
    latencies: list[float] = []
    counts = dict(errors=0, dropped=0)
    lock, ready = threading.Lock(), threading.Barrier(clients + 1)

    def client(k: int) -> None:
        policy = WebsocketClientPolicy("127.0.0.1", port)
        for i in range(WARMUP):
            policy.infer(observations[(k + i) % len(observations)])
        ready.wait()
        mine, errors = [], 0
        for i in range(requests):
            start = time.perf_counter()
            try:
                actions = policy.infer(observations[(k + i) % len(observations)])["actions"]
                ok = actions.shape == (n_action_steps, action_dim) and np.isfinite(actions).all()
            except RuntimeError:  # an error reply
                ok = False
            except Exception:  # the connection failed: this request and the rest are never answered
                with lock:
                    counts["dropped"] += requests - i
                break
            mine.append((time.perf_counter() - start) * 1e3)
            errors += not ok
        with lock:
            latencies.extend(mine)
            counts["errors"] += errors

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    [t.start() for t in threads]
    ready.wait()
    start = time.perf_counter()
    [t.join() for t in threads]
    return dict(latencies=latencies, wall=time.perf_counter() - start, **counts)


def start_server(checkpoint: Path, device: str, threads: int, log: Path) -> tuple[subprocess.Popen, int]:
    """`python -m common.serve` on a free loopback port; returns the process and its port."""
    out = open(log, "w")
    process = subprocess.Popen([sys.executable, "-m", "common.serve", "--checkpoint", str(checkpoint), "--port", "0",
                                "--device", device, "--threads", str(threads)], cwd=REPO, stdout=out,
                               stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    deadline = time.monotonic() + 300
    while not (found := re.search(r"ws://[\d.]+:(\d+)", log.read_text())):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the server did not start:\n{log.read_text()}")
        time.sleep(0.2)
    return process, int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="any method's checkpoint or run directory (default: a BC smoke checkpoint, trained once)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16], help="concurrency levels")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per client")
    parser.add_argument("--device", default="cpu", help="cpu or cuda, for the server and the in-process policy")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads, server and in-process alike")
    parser.add_argument("--observations", type=int, default=8, help="distinct Meta-World observations sent in turn")
    parser.add_argument("--quick", action="store_true", help="5 requests per client (a smoke run)")
    parser.add_argument("--out_dir", type=Path, default=RESULTS, help="where serve_load.{md,csv} go")
    args = parser.parse_args()
    requests = 5 if args.quick else args.requests
    torch.set_num_threads(args.threads)

    checkpoint = resolve_checkpoint(args.checkpoint or smoke_checkpoint(REPO / "runs" / "serve_load_bc"))
    method = read_config(checkpoint)["method"]
    server = PolicyServer(load_policy(checkpoint), args.device, method=method)
    meta = server.metadata
    observations = env_observations(server.policy.cfg, args.observations)
    local = in_process(server, observations, requests)

    log = Path(tempfile.mkdtemp()) / "server.log"
    process, port = start_server(checkpoint, args.device, args.threads, log)
    try:
        served = {c: load(port, c, requests, observations, meta["n_action_steps"], meta["action_dim"])
                  for c in args.clients}
    finally:
        process.terminate()
        process.wait(timeout=30)
    local += in_process(server, observations, requests)

    local_p50, local_p99 = percentiles(local)
    local_per_request = float(np.mean(local))  # ms: one call after another, so 1 / throughput
    rows = [("in-process (no server)", str(len(local)), f"{local_p50:.2f}", f"{local_p99:.2f}",
             f"{1e3 / local_per_request:.1f}", "-", "-", "1", "1")]
    csv_rows = [("in_process", 1, len(local), local_p50, local_p99, 1e3 / local_per_request, 0, 0, 1.0, 1.0)]
    for clients, r in served.items():
        p50, p99 = percentiles(r["latencies"]) if r["latencies"] else (float("nan"), float("nan"))
        throughput = len(r["latencies"]) / r["wall"]
        per_request_ratio = (1e3 / throughput) / local_per_request
        rows.append((f"served, {clients} client{'s' * (clients > 1)}", str(clients * requests), f"{p50:.2f}",
                     f"{p99:.2f}", f"{throughput:.1f}", str(r["errors"]), str(r["dropped"]),
                     f"**{p50 / local_p50:.2f}x**", f"{per_request_ratio:.2f}x"))
        csv_rows.append(("served", clients, clients * requests, p50, p99, throughput, r["errors"], r["dropped"],
                         p50 / local_p50, per_request_ratio))

    config = dict(checkpoint=str(checkpoint), method=method, device=args.device, threads=args.threads,
                  requests_per_client=requests, clients=args.clients, cameras=meta["cameras"],
                  image_size=meta["image_size"], horizon=meta["horizon"], n_action_steps=meta["n_action_steps"])
    header = (f"`common/serve.py` under load: {method} ({meta['cameras']} at {meta['image_size']} px, chunk "
              f"{meta['horizon']}x{meta['action_dim']}, {meta['n_action_steps']} executed), {args.device}, "
              f"{args.threads} torch thread(s) in the server and in-process; openpi-client over loopback, one "
              f"connection per client thread, {requests} requests each after {WARMUP} warm-up; in-process timed "
              f"before and after, pooled. Ratios: served / in-process in time. {stamp(config)}")
    save_table("serve_load", header,
               ["", "requests", "p50 (ms)", "p99 (ms)", "throughput (req/s)", "errors", "dropped",
                "p50 / in-process p50", "time per request / in-process"], rows,
               ["mode", "clients", "requests", "p50_ms", "p99_ms", "throughput_rps", "errors", "dropped",
                "p50_ratio", "time_per_request_ratio"], csv_rows, directory=args.out_dir)


if __name__ == "__main__":
    main()
