"""`common/serve.py` driven by openpi's own client (openpi-client from PyPI, unmodified) over loopback: a closed-loop
Meta-World evaluation through the client equals the in-process one, action for action; every bad request is answered
with an error naming its problem and the next good request still is; the CLI binds 127.0.0.1 by default."""

import dataclasses
import re
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import msgpack
import numpy as np
import pytest
import torch
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from websockets.exceptions import ConnectionClosedError
from websockets.sync.client import connect

from common.envs.metaworld import demo_spec, eval_config, evaluate
from common.policy import load_policy
from common.serve import PolicyServer, ServeConfig, packb, unpackb
from common.tests import demo_cache
from common.train import last_checkpoint, rebuild_policy

from bc.config import PRESETS, BCConfig
from bc.model import ClosedLoopPolicy
from bc.train import build_model, train

REPO = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A BC smoke checkpoint (two tasks, 32 px, corner camera), trained in a private demo cache."""
    cfg = dataclasses.replace(PRESETS["smoke"], run_dir=str(tmp_path_factory.mktemp("run")), eval_episodes=0,
                              threads=1)
    with demo_cache.private_cache(tmp_path_factory.mktemp("cache"), demo_spec(cfg)):
        train(cfg)
    return last_checkpoint(cfg.run_dir)


@contextmanager
def running(server: PolicyServer):
    """`server` on a free loopback port, in a background thread; yields the port."""
    websocket_server = server.serve(port=0)
    thread = threading.Thread(target=websocket_server.serve_forever)
    thread.start()
    try:
        yield websocket_server.socket.getsockname()[1]
    finally:
        websocket_server.shutdown()
        thread.join()


@pytest.fixture(scope="module")
def bc_server(checkpoint):
    server = PolicyServer(load_policy(checkpoint), max_message_mb=1.0, method="bc")
    with running(server) as port:
        yield server, port


def test_closed_loop_through_the_client_equals_in_process(checkpoint, bc_server):
    server, port = bc_server
    model, cfg = rebuild_policy(checkpoint, BCConfig, build_model)
    eval_cfg = eval_config(cfg, episodes_per_task=2, max_steps=16, workers=1, video_dir=None)
    local, remote = ClosedLoopPolicy(model), WebsocketClientPolicy("127.0.0.1", port)
    assert remote.get_server_metadata() == dict(
        method="bc", cameras=["corner"], image_size=32, state_key="observation.state", state="state", state_dim=4,
        action_dim=4, horizon=cfg.horizon, n_action_steps=cfg.n_action_steps, max_message_mb=1.0)
    local_actions, remote_actions = [], []

    def in_process(obs):
        local_actions.append(local(obs))
        return local_actions[-1]

    def served(obs):
        reply = remote.infer(obs)
        assert reply["chunk"].shape == (cfg.horizon, 4) and reply["server_timing"]["infer_ms"] > 0
        remote_actions.append(reply["actions"])
        return reply["actions"]

    expected = evaluate(in_process, eval_cfg, progress=False)
    got = evaluate(served, eval_cfg, progress=False)
    assert {t: r.as_dict() for t, r in got.items()} == {t: r.as_dict() for t, r in expected.items()}
    assert sum(r.episodes for r in got.values()) == 4 and len(remote_actions) == len(local_actions) >= 4 * 4
    assert remote_actions[0].shape == (cfg.n_action_steps, 4) and remote_actions[0].dtype == np.float32
    np.testing.assert_allclose(np.stack(remote_actions), np.stack(local_actions), atol=1e-6, rtol=0)


def _good() -> dict:
    g = np.random.default_rng(0)
    return dict(images={"corner": g.integers(0, 256, (32, 32, 3), dtype=np.uint8)}, instruction="reach the goal",
                state=np.array([0.0, 0.6, 0.2, 1.0], np.float32), env_state=np.zeros(39, np.float32))


def _without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


def test_bad_requests_get_an_error_naming_the_problem_and_serving_goes_on(bc_server):
    server, port = bc_server
    good = _good()
    expected = server.infer(*server.read(packb(good)))["actions"]
    bad = {  # request -> what the error reply must say
        "missing instruction": (_without(good, "instruction"), "missing key(s) ['instruction']"),
        "missing images": (_without(good, "images"), "missing key(s) ['images']"),
        "missing state": (_without(good, "state"), "missing key(s) ['state']"),
        "missing camera": (dict(good, images={"gripperPOV": good["images"]["corner"]}),
                           "missing camera(s) ['corner'] in 'images'"),
        "image too small": (dict(good, images={"corner": np.zeros((16, 16, 3), np.uint8)}),
                            "images['corner'] has shape (16, 16, 3); the policy reads (32, 32, 3)"),
        "batched image": (dict(good, images={"corner": np.zeros((1, 32, 32, 3), np.uint8)}),
                          "images['corner'] has shape (1, 32, 32, 3)"),
        "float image": (dict(good, images={"corner": np.zeros((32, 32, 3), np.float32)}),
                        "images['corner'] is an array of shape (32, 32, 3) and dtype float32; expected a uint8"),
        "NaN state": (dict(good, state=np.array([0, np.nan, 0, 1], np.float32)),
                      "non-finite entries (NaN or inf) at indices [1]"),
        "inf state": (dict(good, state=np.array([0, 0, 0, np.inf])), "non-finite entries (NaN or inf) at indices [3]"),
        "short state": (dict(good, state=np.zeros(3, np.float32)), "'state' has shape (3,); the policy reads (4,)"),
        "ragged state": (dict(good, state=[[0.0], [0.6, 0.2]]), "'state' is a list that is no flat array"),
        "instruction not a string": (dict(good, instruction=5), "'instruction' is of type int; expected a str"),
        "bad seed": (dict(good, seed="seven"), "'seed' is 'seven'; expected an integer"),
        "oversized": (dict(good, padding=np.zeros(int(1.5 * 2**20), np.uint8)),
                      "over the server's limit of 1.0 MB (--max_message_mb)"),
    }
    client = WebsocketClientPolicy("127.0.0.1", port)
    for name, (request, message) in bad.items():
        with pytest.raises(RuntimeError, match=re.escape(message)):
            client.infer(request)
        np.testing.assert_array_equal(client.infer(good)["actions"], expected, err_msg=f"after {name}")

    # what openpi's client cannot send: a text message, bytes that are not msgpack, a msgpack list, an object array
    object_array = {"images": {b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "|O", b"shape": [1]}}
    with connect(f"ws://127.0.0.1:{port}") as raw:
        assert unpackb(raw.recv())["method"] == "bc"
        for message, error in [("hello", "a text message"), (b"\xc1\x00", "not a msgpack-numpy message"),
                               (msgpack.packb([1, 2]), "the message is of type list; expected an observation dict"),
                               (msgpack.packb(object_array), "an array of dtype object")]:
            raw.send(message)
            reply = raw.recv()
            assert isinstance(reply, str) and error in reply, (message, reply)
            raw.send(packb(good))
            np.testing.assert_array_equal(unpackb(raw.recv())["actions"], expected)

    # past twice the limit websockets itself closes the connection (1009); the server goes on for new ones. (A raw
    # connection with a timeout: openpi's client waits forever, and once in a CI run the close never reached it.)
    with connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None) as raw:
        raw.recv(timeout=60)  # the metadata
        raw.send(packb(dict(good, padding=np.zeros(3 * 2**20, np.uint8))))
        with pytest.raises(ConnectionClosedError, match="1009"):
            raw.recv(timeout=60)
    fresh = WebsocketClientPolicy("127.0.0.1", port)
    np.testing.assert_array_equal(fresh.infer(good)["actions"], expected)
    # the state as a plain list of numbers is fine; GET /healthz answers 200 (as openpi's server does)
    np.testing.assert_array_equal(fresh.infer(dict(good, state=good["state"].tolist()))["actions"], expected)
    assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10).status == 200


class NoisyPolicy(torch.nn.Module):
    """A stand-in flow policy: its chunk is noise drawn from torch's global generator."""
    cfg = SimpleNamespace(cameras=("corner",), demo_image_size=8, state_key="observation.state", n_action_steps=2)

    def predict(self, obs):
        return torch.randn(len(obs), 3, 4)


def test_a_seed_makes_a_stochastic_policy_reproducible_and_concurrent_clients_are_served():
    server = PolicyServer(NoisyPolicy())
    obs = dict(images={"corner": np.zeros((8, 8, 3), np.uint8)}, state=np.zeros(4, np.float32), instruction="x")
    with running(server) as port:
        client = WebsocketClientPolicy("127.0.0.1", port)
        first, again, other = (client.infer(dict(obs, seed=seed)) for seed in (7, 7, 8))
        np.testing.assert_array_equal(first["chunk"], again["chunk"])
        assert not np.array_equal(first["chunk"], other["chunk"])
        assert first["chunk"].shape == (3, 4) and np.array_equal(first["actions"], first["chunk"][:2])
        assert not np.array_equal(client.infer(obs)["chunk"], client.infer(obs)["chunk"])  # no seed: fresh noise

        replies: dict[int, list] = {}

        def seeded_requests(k: int) -> None:
            own = WebsocketClientPolicy("127.0.0.1", port)
            replies[k] = [own.infer(dict(obs, seed=k))["chunk"] for _ in range(5)]

        threads = [threading.Thread(target=seeded_requests, args=(k,)) for k in range(4)]
        [t.start() for t in threads]
        [t.join() for t in threads]
    for k, chunks in replies.items():  # each seeded call drew its own noise: seed and call held the lock together
        want = torch.randn(3, 4, generator=torch.Generator().manual_seed(k)).numpy()
        assert len(chunks) == 5 and all(np.array_equal(c, want) for c in chunks)
    assert sorted(replies) == [0, 1, 2, 3]


def test_the_command_line_serves_on_127_0_0_1_by_default(checkpoint, tmp_path):
    assert ServeConfig(checkpoint=checkpoint).host == "127.0.0.1"
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "common.serve", "--checkpoint", str(checkpoint),
                                    "--port", "0", "--threads", "1"], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not (found := re.search(r"ws://([\d.]+):(\d+)", log.read_text())):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        host, port = found.group(1), int(found.group(2))
        assert host == "127.0.0.1"
        reply = WebsocketClientPolicy(host, port).infer(
            dict(images={"corner": np.zeros((32, 32, 3), np.uint8)}, state=np.zeros(4, np.float32), instruction="x"))
        assert reply["actions"].shape == (PRESETS["smoke"].n_action_steps, 4) and np.isfinite(reply["actions"]).all()
    finally:
        process.terminate()
        process.wait(timeout=30)
