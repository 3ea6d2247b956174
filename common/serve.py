"""Serve any method's checkpoint to a robot over openpi's websocket policy protocol, so openpi's own client
(`pip install openpi-client`) drives it unmodified.

    python -m common.serve --checkpoint runs/bc                   # ws://127.0.0.1:8000, this machine only
    python -m common.serve --checkpoint runs/pi0 --host 0.0.0.0 --device cuda   # open to the robot's network

    from openpi_client.websocket_client_policy import WebsocketClientPolicy
    client = WebsocketClientPolicy("127.0.0.1", 8000)
    actions = client.infer(obs)["actions"]     # obs: a MetaWorldEnv observation dict; run these, then ask again

The protocol is openpi's (its server: src/openpi/serving/websocket_policy_server.py; its client:
openpi_client/websocket_client_policy.py and msgpack_numpy.py):
  1. on connect the server sends one binary message, the metadata dict;
  2. each binary message from the client is then one observation, answered by one binary message; a text reply is
     an error, which openpi's client raises as RuntimeError.
Every message is msgpack with NumPy arrays as the map {b"__ndarray__": True, b"data": raw bytes, b"dtype":
dtype.str, b"shape": shape} and NumPy scalars as {b"__npgeneric__": True, b"data": value, b"dtype": dtype.str}.

Request (one observation, no batch dimension; the keys of `MetaWorldEnv.observation()`, extra keys are ignored):
    images       {camera: uint8 (S, S, 3)}  every camera of the metadata's `cameras`, S = its `image_size`, upright
    state        float (4,)                 hand xyz + gripper; or `env_state` float (39,) when the metadata's
                                            `state` says so (a policy trained on the privileged state)
    instruction  str
    seed         int, optional              seeds torch and NumPy before the policy call: a flow policy's noise,
                                            and so its chunk, is then reproducible
Reply:
    actions        float32 (n_action_steps, A)  what the closed-loop evaluator executes before asking again
    chunk          float32 (H, A)               the whole predicted chunk, environment units
    server_timing  {infer_ms: the policy call, wait_ms: waiting for the model (other connections' calls),
                    prev_total_ms: the previous request's time in the server, as openpi reports it}
Metadata: method, checkpoint, cameras, image_size, state_key, state (the request key), state_dim, action_dim,
horizon, n_action_steps, max_message_mb.

Where this differs from openpi's server: it binds 127.0.0.1 unless told otherwise (openpi: 0.0.0.0); a bad request
(a missing key, a wrong image shape or dtype, a NaN state, an oversized or undecodable message) is answered with a
text error naming the problem and the connection stays open (openpi sends a traceback and closes it); connections
are served concurrently, one thread each, sharing the model under one lock.
"""

from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import torch
import tyro
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection, serve

from common.policy import Policy, load_policy, observations
from common.train import read_config, resolve_checkpoint


@dataclass
class ServeConfig:
    checkpoint: Path  # a checkpoint directory, a run directory or its checkpoints/last pointer, of any method
    host: str = "127.0.0.1"  # bind address: this machine only; 0.0.0.0 opens the port to every network interface
    port: int = 8000  # TCP port (openpi's default); 0 picks a free one (printed at start)
    max_message_mb: float = 16.0  # a larger request is answered with an error and dropped, the connection stays
    #                               open; one over twice this closes the connection (websockets' limit, code 1009)
    device: str = "auto"  # "auto" (CUDA when present), "cpu" or "cuda"
    method: str | None = None  # the method's name, for a checkpoint whose config.json names none
    threads: int = 0  # torch CPU threads (0: torch's default)


class BadRequest(ValueError):
    """A request the server refuses; its message, sent back as the error reply, names the problem."""


# ------------------------------------------------------------------------------------------------ msgpack-numpy
ARRAY_KINDS = "biuf"  # booleans, integers, floats: the dtypes a request's arrays may have (never objects)


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    return obj


def _decode(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        dtype = np.dtype(obj[b"dtype"])
        if dtype.kind not in ARRAY_KINDS:
            raise BadRequest(f"an array of dtype {dtype}: only boolean, integer and float arrays are accepted")
        return np.ndarray(buffer=obj[b"data"], dtype=dtype, shape=obj[b"shape"])
    if b"__npgeneric__" in obj:
        dtype = np.dtype(obj[b"dtype"])
        if dtype.kind not in ARRAY_KINDS + "U":
            raise BadRequest(f"a scalar of dtype {dtype}: only boolean, integer, float and string scalars")
        return dtype.type(obj[b"data"])
    return obj


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, default=_encode)


def unpackb(data: bytes) -> Any:
    return msgpack.unpackb(data, object_hook=_decode)


# ------------------------------------------------------------------------------------------------ the server
def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    return f"of type {type(value).__name__}"


class PolicyServer:
    """A contract `Policy` (common/policy.py) answering openpi-protocol requests; `serve` puts it on a socket."""

    def __init__(self, policy: Policy, device: str = "cpu", max_message_mb: float = 16.0, **metadata: Any):
        self.policy, self.device, self.max_message_mb = policy, torch.device(device), max_message_mb
        if isinstance(policy, torch.nn.Module):
            policy.to(self.device).eval()
        cfg = policy.cfg
        self.cameras, self.image_size, self.state_key = tuple(cfg.cameras), cfg.demo_image_size, cfg.state_key
        self.state, self.state_dim = {"observation.state": ("state", 4),
                                      "observation.environment_state": ("env_state", 39)}[cfg.state_key]
        self.lock = threading.Lock()  # one model, shared by every connection's thread
        # one call on a blank observation: warms the model up and gives the chunk's shape
        blank = dict(images={c: np.zeros((self.image_size, self.image_size, 3), np.uint8) for c in self.cameras},
                     instruction="warm up", **{self.state: np.zeros(self.state_dim, np.float32)})
        horizon, action_dim = self.predict(blank)[0].shape
        self.n_action_steps = min(getattr(cfg, "n_action_steps", 0) or horizon, horizon)
        self.metadata = dict(metadata, cameras=list(self.cameras), image_size=self.image_size,
                             state_key=self.state_key, state=self.state, state_dim=self.state_dim,
                             action_dim=action_dim, horizon=horizon, n_action_steps=self.n_action_steps,
                             max_message_mb=max_message_mb)

    def read(self, message: bytes | str) -> tuple[dict[str, Any], int | None]:
        """A request as the environment observation `common.policy.observations` reads, and its seed; BadRequest
        naming the first problem found."""
        if isinstance(message, str):
            raise BadRequest("a text message: send the observation as a binary msgpack-numpy message")
        if len(message) > self.max_message_mb * 2**20:
            raise BadRequest(f"the message has {len(message) / 2**20:.2f} MB, over the server's limit of "
                             f"{self.max_message_mb} MB (--max_message_mb)")
        try:
            obs = unpackb(message)
        except BadRequest:
            raise
        except Exception as error:
            raise BadRequest(f"not a msgpack-numpy message ({type(error).__name__}: {error})") from error
        if not isinstance(obs, dict):
            raise BadRequest(f"the message is {_describe(obs)}; expected an observation dict (a msgpack map)")
        missing = [key for key in ("images", self.state, "instruction") if key not in obs]
        if missing:
            raise BadRequest(f"missing key(s) {missing}; the observation has {sorted(map(str, obs))}")
        images = obs["images"]
        if not isinstance(images, dict):
            raise BadRequest(f"'images' is {_describe(images)}; expected a dict {{camera: uint8 image}}")
        missing = [c for c in self.cameras if c not in images]
        if missing:
            raise BadRequest(f"missing camera(s) {missing} in 'images'; it has {sorted(map(str, images))}")
        size = (self.image_size, self.image_size, 3)
        for camera in self.cameras:
            image = images[camera]
            if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
                raise BadRequest(f"images[{camera!r}] is {_describe(image)}; expected a uint8 array {size}")
            if image.shape != size:
                raise BadRequest(f"images[{camera!r}] has shape {image.shape}; the policy reads {size} (one "
                                 f"observation, no batch dimension)")
        state = obs[self.state]
        if isinstance(state, list):  # a msgpack array of numbers
            try:
                state = np.asarray(state)
            except ValueError as error:
                raise BadRequest(f"{self.state!r} is a list that is no flat array of numbers ({error})") from error
        if not isinstance(state, np.ndarray) or state.dtype.kind not in "iuf":
            raise BadRequest(f"{self.state!r} is {_describe(state)}; expected a float array ({self.state_dim},)")
        if state.shape != (self.state_dim,):
            raise BadRequest(f"{self.state!r} has shape {state.shape}; the policy reads ({self.state_dim},)")
        if not np.isfinite(state).all():
            bad = np.flatnonzero(~np.isfinite(state)).tolist()
            raise BadRequest(f"{self.state!r} has non-finite entries (NaN or inf) at indices {bad}")
        if not isinstance(obs["instruction"], str):
            raise BadRequest(f"'instruction' is {_describe(obs['instruction'])}; expected a str")
        seed = obs.get("seed")
        if seed is not None:
            if isinstance(seed, np.integer):
                seed = int(seed)
            if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
                raise BadRequest(f"'seed' is {seed!r}; expected an integer in [0, 2**32)")
        request = dict(images={c: images[c] for c in self.cameras}, instruction=obs["instruction"],
                       **{self.state: state.astype(np.float32)})
        return request, seed

    def predict(self, obs: dict[str, Any], seed: int | None = None) -> tuple[np.ndarray, dict[str, float]]:
        """The chunk (H, A) for one observation (what `read` returns), and how long the call took and waited."""
        batch = observations([obs], self.cameras, self.state_key, self.device)
        waited = time.perf_counter()
        with self.lock, torch.no_grad():
            started = time.perf_counter()
            if seed is not None:
                torch.manual_seed(seed)
                np.random.seed(seed)
            chunk = self.policy.predict(batch)[0].float().cpu().numpy()
            finished = time.perf_counter()
        return chunk, dict(infer_ms=(finished - started) * 1e3, wait_ms=(started - waited) * 1e3)

    def infer(self, obs: dict[str, Any], seed: int | None = None) -> dict[str, Any]:
        """One observation -> the reply: {"actions": (n_action_steps, A), "chunk": (H, A), "server_timing"}."""
        chunk, timing = self.predict(obs, seed)
        return dict(actions=chunk[: self.n_action_steps], chunk=chunk, server_timing=timing)

    def handle(self, connection: ServerConnection) -> None:
        """One connection: the metadata, then a reply to every message until the client leaves."""
        connection.send(packb(self.metadata))
        previous_ms = None
        try:
            for message in connection:
                start = time.perf_counter()
                try:
                    reply = self.infer(*self.read(message))
                except BadRequest as error:
                    connection.send(f"bad request: {error}")
                    continue
                except Exception:  # the policy failed: the client gets the traceback, the server goes on
                    connection.send(f"policy error:\n{traceback.format_exc()}")
                    continue
                if previous_ms is not None:
                    reply["server_timing"]["prev_total_ms"] = previous_ms
                connection.send(packb(reply))
                previous_ms = (time.perf_counter() - start) * 1e3
        except ConnectionClosed:  # a client that went away without a clean close
            pass

    def serve(self, host: str = "127.0.0.1", port: int = 8000) -> Server:
        """The websocket server (not yet serving: call its `serve_forever()`, stop it with `shutdown()`)."""
        return serve(self.handle, host, port, compression=None, max_size=int(2 * self.max_message_mb * 2**20),
                     process_request=_health_check)


def _health_check(connection: ServerConnection, request: Any) -> Any:
    """`GET /healthz` answers 200 OK (as openpi's server does); any other path goes on to the websocket handshake."""
    return connection.respond(HTTPStatus.OK, "OK\n") if request.path == "/healthz" else None


def main(cfg: ServeConfig) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = cfg.device if cfg.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    checkpoint = resolve_checkpoint(cfg.checkpoint)
    method = cfg.method or read_config(checkpoint).get("method")
    server = PolicyServer(load_policy(checkpoint, cfg.method), device, cfg.max_message_mb, method=method,
                          checkpoint=str(checkpoint))
    with server.serve(cfg.host, cfg.port) as websocket_server:
        host, port = websocket_server.socket.getsockname()[:2]
        print(f"serving {method} from {checkpoint} on ws://{host}:{port} ({device}); metadata {server.metadata}",
              flush=True)
        try:
            websocket_server.serve_forever()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main(tyro.cli(ServeConfig, description=__doc__))
