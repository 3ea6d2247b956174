"""The embedded driving benchmark: closed-loop scenarios from highway-env 1.12.1 (Leurent, 2018), for driving VLAs.

Scenarios (`SCENARIOS`, built by `make_scenario(name, seed)`), each ending at a collision, on arrival or at its horizon:
    highway                 highway-v0: 4 lanes, 30 IDM/MOBIL vehicles (highway-env's default is 50; the ego only
                            meets the nearest, and each costs ~1 ms a step); arrival = no collision for 20 s
    merge                   merge-v0: a ramp merges from the right; arrive at x = 370 m (the env's own end), 20 s
    roundabout              roundabout-v0: enter from the south, leave to the north (the env's own route); arrive 25 m
                            into the exit road, 25 s
    intersection-left       intersection-v0 from the south to the west (the env's default destination "o1"),
    intersection-straight   ... to the north ("o2"), or
    intersection-right      ... to the east ("o3"); arrive 25 m into the exit road (the env's `has_arrived`), 20 s
The ego drives with highway-env's ContinuousAction: [acceleration, steering] in [-1, 1]² mapped to ±5 m/s² and ±45°,
`speed_range` [0, 40] m/s (it cannot reverse), simulated and controlled at 10 Hz. Changes to highway-env, each
explained where it is made: merge-v0 and roundabout-v0 reset under ContinuousAction (`_MergeEnv`,
`_RoundaboutEnv`); intersection-v0's traffic constants stay off IDMVehicle (`_IntersectionIDMVehicle`) and its spawn
rate is kept per second at 10 Hz; the ego's route is planned with `road.network.shortest_path` (ContinuousAction's
plain Vehicle has none); the roundabout's ring lanes get priority over its entries; vehicles that crash into each
other (highway-env's traffic does, mostly at intersections) are removed at once, else they block the junction for the
rest of the episode. Seeds fix everything: `seeds("train", n)` and `seeds("eval", n)` are disjoint.

Frames. highway-env's world is drawn with y pointing down the screen; traffic drives on the right and a heading grows
clockwise on screen, so a positive steering angle turns right. Ego-frame quantities here use x forward and y to the
driver's LEFT (nuPlan/NAVSIM), in metres: for a world offset d and ego heading h, x = d·(cos h, sin h) and
y = d·(sin h, -cos h) (`to_ego_frame`).

Observation (`DrivingEnv.observation()`), a dict:
    bev      uint8 (64, 64, 5) ego-aligned bird's-eye raster, our own (highway-env renders world-aligned only):
             1 m/px, ego centre at pixel (row 48, col 32) heading up: 48 m ahead, 16 m behind, 32 m to each side.
             Channels `BEV_CHANNELS`: drivable area (lane surfaces), lane markings (255 solid, 128 dashed), lane
             centrelines, the route (the surface of the planned route's roads), other agents' boxes (vehicles and
             obstacles); 0 elsewhere.
    image    uint8 (S, S, 3) highway-env's top-down render around the ego (80 m across, world-aligned), drawn at 2S px
             and averaged down; only for `make_scenario(..., render_size=S)` (~10 ms a frame).
    text     str, e.g. "speed 9.0 m/s, heading 0 deg; in 23 m turn left at the intersection" (`describe`); the
             heading is a compass angle on the render (0 = up, 90 = right).
    state    float32 (7,) the raw ego state in highway-env's world frame: x, y [m], heading [rad], speed [m/s], yaw
             rate [rad/s], and the steering angle [rad] and acceleration [m/s²] last applied (positive = right turn).
    agents   float32 (8, 7) the 8 nearest other agents in the ego frame, nearest first, zero rows when absent:
             presence, x, y, vx, vy, cos and sin of their heading relative to the ego's.
    command  int, the route command (`COMMANDS`): 0 follow the road, 1 turn left, 2 go straight, 3 turn right.

Expert (`DrivingEnv.expert_action()`): highway-env's IDM + MOBIL vehicle (`IDMVehicle`) as a "shadow" of the ego: each
step it takes the ego's state, swaps into the ego's place in the road and decides with highway-env's lane-keeping
controller, IDM car following, MOBIL lane changes and route following; at junctions it yields by the road's
priorities (`RegulatedRoad.respect_priorities`). It is tuned for nuPlan's comfort limits (`_ExpertVehicle`,
`_ShadowExpert`). Its [acceleration, steering] comes normalised as ContinuousAction expects.

Labels: `future_waypoints` (from a recorded episode) and `expert_waypoints` (DAgger relabelling: copy the env, roll the
expert 25 steps) give the expert's positions +0.5, 1.0, ..., 2.5 s ahead in the current ego frame;
`waypoints_to_controls` tracks waypoints with pure pursuit fitted to highway-env's bicycle model.

Metrics (`episode_metrics`, aggregated by `evaluate`): collision, drivable-area compliance (the ego's corners on a
lane), TTC (violation below 1 s against an agent ahead), progress along the route relative to the expert's on the
same seed, nuPlan comfort, arrival, and a PDM-style score NC·DAC·(5·TTC + 2·C + 5·EP)/12 — NAVSIM's weighting on
highway-env, not NAVSIM's PDMS (see `episode_metrics` for the differences).

    collect_demos(spec)       expert demonstrations (observations, actions, waypoint labels), cached on disk
    evaluate(policy, ...)     closed-loop episodes of a policy: per-episode rows and mean ± std per scenario
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterable, Mapping

# highway-env disables drawing when SDL_VIDEODRIVER is "dummy" (every frame comes back black, silently); pygame's
# "offscreen" driver draws headless. Must be set before pygame is first imported.
if os.environ.get("SDL_VIDEODRIVER") == "dummy":
    warnings.warn("SDL_VIDEODRIVER=dummy makes highway-env render black frames; using 'offscreen' instead")
    os.environ["SDL_VIDEODRIVER"] = "offscreen"
os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")

import numpy as np  # noqa: E402
from highway_env import utils as hw_utils  # noqa: E402
from highway_env.envs.common.abstract import AbstractEnv  # noqa: E402
from highway_env.envs.highway_env import HighwayEnv  # noqa: E402
from highway_env.envs.intersection_env import IntersectionEnv  # noqa: E402
from highway_env.envs.merge_env import MergeEnv  # noqa: E402
from highway_env.envs.roundabout_env import RoundaboutEnv  # noqa: E402
from highway_env.road.lane import AbstractLane, LineType, StraightLane  # noqa: E402
from highway_env.road.regulation import RegulatedRoad  # noqa: E402
from highway_env.vehicle.behavior import IDMVehicle  # noqa: E402
from highway_env.vehicle.controller import ControlledVehicle  # noqa: E402
from highway_env.vehicle.graphics import VehicleGraphics  # noqa: E402
from highway_env.vehicle.kinematics import Vehicle  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from common.data import EpisodeDataset, EpisodeWriter, default_cache_dir  # noqa: E402
from common.metrics import comfort_metrics, pdm_style_score  # noqa: E402

FREQUENCY = 10  # [Hz] simulation = policy frequency
DT = 1.0 / FREQUENCY
ACCELERATION_RANGE = 5.0  # [m/s²] ContinuousAction.ACCELERATION_RANGE: action[0] = ±1 <-> ±5 m/s²
STEERING_RANGE = np.pi / 4  # [rad] ContinuousAction.STEERING_RANGE: action[1] = ±1 <-> ±45°
SPEED_RANGE = (0.0, 40.0)  # [m/s] ContinuousAction's speed_range
WAYPOINT_STEPS = (5, 10, 15, 20, 25)  # +0.5 ... +2.5 s at 10 Hz
STATE_DIM, AGENT_FEATURES, NUM_AGENTS = 7, 7, 8
BEV_CHANNELS = ("drivable", "markings", "centrelines", "route", "agents")
COMMANDS = ("follow the road", "turn left", "go straight", "turn right")
TTC_LIMIT = 1.0  # [s] a TTC below this is a violation (NAVSIM projects 0, 0.3, 0.6, 0.9 s)


# ------------------------------------------------------------------------------------------------ scenarios
class _MergeEnv(MergeEnv):
    """merge-v0 that resets under ContinuousAction.

    `MergeEnv._rewards` scores a lane change as `action in [0, 2]` (DiscreteMetaAction's LANE_LEFT/LANE_RIGHT
    indices); with a continuous action (an ndarray) that comparison raises "truth value of an array is ambiguous", and
    `AbstractEnv.reset` computes it (through `_info`) with a sampled action. Rewards are not used by this benchmark, so
    they are computed as for "no action"."""

    def _rewards(self, action):
        return super()._rewards(None)


class _RoundaboutEnv(RoundaboutEnv):
    """roundabout-v0 that resets under ContinuousAction (the same `action in [0, 2]` crash as `_MergeEnv`), and
    whose ring lanes have priority over the entries: its lanes carry none, so `RegulatedRoad.respect_priorities`
    (which the expert yields by) would rank entering and circulating cars alike. The env's own vehicles ignore
    priorities (the road is not a RegulatedRoad)."""

    def _rewards(self, action):
        return super()._rewards(None)

    def _make_road(self) -> None:
        super()._make_road()
        for f, t, i in _lane_indices(self.road.network):
            if f in _RING_NODES and t in _RING_NODES:
                self.road.network.get_lane((f, t, i)).priority = 1


class _IntersectionIDMVehicle(IDMVehicle):
    """intersection-v0's traffic. `IntersectionEnv._make_vehicles` assigns DISTANCE_WANTED, COMFORT_ACC_MAX and
    COMFORT_ACC_MIN on the *class* of its other vehicles, i.e. on `IDMVehicle` itself by default, which changes the
    traffic of every env made later in the process. Given this subclass as `other_vehicles_type`, the assignment
    lands here and IDMVehicle keeps its values."""


@dataclass(frozen=True)
class Scenario:
    """A benchmark scenario: a highway-env environment, its configuration, route and arrival rule."""
    name: str
    env_class: type[AbstractEnv]
    config: dict  # highway-env configuration on top of `_BASE_CONFIG`
    horizon_s: float  # episode limit [s]
    destination: str | None  # road-network node the route leads to (None: keep to the current road)
    goal: tuple[str, str, float] | None  # arrival: this far [m] along this road (from, to); None: survive the horizon
    place: str  # where the route's manoeuvre happens, for the text ("intersection", "roundabout", "")
    junction: frozenset  # nodes of the junction: roads between two of them are in it (yielding, TTC, text)
    expert_speed: float | None  # the expert's desired speed [m/s]; None: the ego's initial speed


_BASE_CONFIG = dict(
    action=dict(type="ContinuousAction", speed_range=list(SPEED_RANGE)),
    observation=dict(type="AttributesObservation", attributes=[]),  # ours is computed by DrivingEnv (free here)
    simulation_frequency=FREQUENCY, policy_frequency=FREQUENCY,
    offscreen_rendering=True, centering_position=[0.5, 0.5])


# Junction nodes. Intersection: o = outer, ir/il = inner in/out, digits 0..3 = south, west, north, east (the ego
# enters from o0). Roundabout: the ring, (s)outh/(e)ast/(n)orth/(w)est (e)ntry/e(x)it.
_INTERSECTION_NODES = frozenset({f"i{s}{k}" for s in "rl" for k in range(4)})
_RING_NODES = frozenset({"se", "ex", "ee", "nx", "ne", "wx", "we", "sx"})


def _intersection(name: str, exit_node: int) -> Scenario:
    # IntersectionEnv spawns a vehicle with probability `spawn_probability` (0.6) every *step*; its default of one
    # step a second becomes ten at 10 Hz, so the probability is divided by ten to keep highway-env's traffic density
    return Scenario(name, IntersectionEnv, dict(
        destination=f"o{exit_node}", other_vehicles_type=f"{__name__}._IntersectionIDMVehicle",
        spawn_probability=0.6 / FREQUENCY),
        horizon_s=20.0, destination=f"o{exit_node}", goal=(f"il{exit_node}", f"o{exit_node}", 25.0),
        place="intersection", junction=_INTERSECTION_NODES, expert_speed=None)


SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario("highway", HighwayEnv, dict(vehicles_count=30), horizon_s=20.0, destination=None, goal=None, place="",
             junction=frozenset(), expert_speed=30.0),
    Scenario("merge", _MergeEnv, {}, horizon_s=20.0, destination="d", goal=("c", "d", 60.0), place="",
             junction=frozenset(), expert_speed=None),
    Scenario("roundabout", _RoundaboutEnv, {}, horizon_s=25.0, destination="nxr", goal=("nx", "nxs", 25.0),
             place="roundabout", junction=_RING_NODES, expert_speed=None),
    _intersection("intersection-left", 1),
    _intersection("intersection-straight", 2),
    _intersection("intersection-right", 3),
]}

_SEED_SPLITS = {"train": 0, "eval": 1_000_000}


def seeds(split: str, n: int) -> list[int]:
    """The first `n` seeds of a split; "train" (demonstrations, DAgger) and "eval" (closed-loop evaluation) are
    disjoint (they start 10^6 apart)."""
    if split not in _SEED_SPLITS:
        raise ValueError(f"unknown split {split!r}; splits are {sorted(_SEED_SPLITS)}")
    if not 0 <= n <= 1_000_000:
        raise ValueError(f"n must be in [0, 10^6], got {n}")
    return [_SEED_SPLITS[split] + i for i in range(n)]


def make_scenario(name: str, seed: int = 0, render_size: int | None = None, horizon_s: float | None = None
                  ) -> DrivingEnv:
    """A `DrivingEnv` for scenario `name` (see `SCENARIOS`), reset to `seed`. `render_size` adds highway-env's
    top-down render (S x S px) to the observation; `horizon_s` overrides the scenario's episode limit."""
    if name not in SCENARIOS:
        raise ValueError(f"unknown driving scenario {name!r}; valid scenarios: {', '.join(SCENARIOS)}")
    env = DrivingEnv(SCENARIOS[name], render_size=render_size, horizon_s=horizon_s)
    env.reset(seed)
    return env


# ------------------------------------------------------------------------------------------------ geometry
def to_ego_frame(points, ego_xy, ego_heading: float) -> np.ndarray:
    """World points (..., 2) in the ego frame: x forward, y to the driver's left (see the module docstring)."""
    d = np.asarray(points, dtype=np.float64) - np.asarray(ego_xy, dtype=np.float64)
    c, s = np.cos(ego_heading), np.sin(ego_heading)
    return np.stack([d[..., 0] * c + d[..., 1] * s, d[..., 0] * s - d[..., 1] * c], axis=-1)


def from_ego_frame(points, ego_xy, ego_heading: float) -> np.ndarray:
    """Inverse of `to_ego_frame`."""
    p = np.asarray(points, dtype=np.float64)
    c, s = np.cos(ego_heading), np.sin(ego_heading)
    return np.asarray(ego_xy, dtype=np.float64) + np.stack(
        [p[..., 0] * c + p[..., 1] * s, p[..., 0] * s - p[..., 1] * c], axis=-1)


def _lane_samples(lane: AbstractLane, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre points (N, 2) and headings (N,) of a lane at longitudinal positions `s`."""
    if isinstance(lane, StraightLane):  # includes SineLane: their position()/heading_at() broadcast over arrays
        return lane.position(s[:, None], 0.0), np.broadcast_to(lane.heading_at(s), s.shape).astype(np.float64)
    return (np.array([lane.position(x, 0.0) for x in s]).reshape(-1, 2),
            np.array([lane.heading_at(x) for x in s], dtype=np.float64))


def _lateral(heading: np.ndarray) -> np.ndarray:
    """highway-env's lateral lane axis at `heading`: +90° in world coordinates (the driver's right on the render)."""
    return np.stack([-np.sin(heading), np.cos(heading)], axis=-1)


@dataclass
class Route:
    """The planned route as a polyline sampled every `ds` metres along the centre of its lanes.

    Lane ids left open by the planner (`(from, to, None)`) are resolved the way highway-env's `next_lane` does:
    the same id where both roads have as many lanes, else the lane closest to where the previous one ends."""
    lanes: list[tuple[str, str, int]]
    points: np.ndarray  # (N, 2) world
    headings: np.ndarray  # (N,) unwrapped [rad]
    curvature: np.ndarray  # (N,) [1/m]; a kink where two lanes meet (roundabout-v0's entries and exits meet the
    # ring 6 m apart at ~47°) is spread over the `KINK` metres before and after it
    ds: float
    goal_s: float | None  # arc length [m] at which the ego has arrived
    manoeuvre: tuple[float, float] | None  # arc lengths [m] where the route's manoeuvre starts and ends
    command: int  # index into COMMANDS for the whole route
    KINK = 4.0  # [m]

    @classmethod
    def plan(cls, network, lanes, start_s: float, length: float, goal, junction: frozenset = frozenset(),
             ds: float = 0.5) -> Route:
        """Sample `lanes` (the first from `start_s` - 50 m) for `length` + 50 m and at least to the goal, or to their
        end. `goal` (from, to, s) gives `goal_s`; the manoeuvre is the stretch on roads between two `junction` nodes,
        or, without one, where the heading bends."""
        resolved = [lanes[0]]
        for _from, _to, _id in lanes[1:]:
            prev = resolved[-1]
            end = network.get_lane(prev).position(network.get_lane(prev).length, 0)
            if _id is None:
                _id, _ = network.next_lane_given_next_road(*prev, _to, None, end)
            resolved.append((_from, _to, _id))
        points, headings, curvature, starts, total, spans = [], [], [], {}, 0.0, []
        for i, index in enumerate(resolved):
            lane = network.get_lane(index)
            s0 = max(0.0, start_s - 50.0) if i == 0 else 0.0  # 50 m behind the start is enough for the raster
            s1 = min(lane.length, s0 + length + 50.0) if i == 0 else lane.length
            s = np.arange(s0, s1, ds)
            starts[index[:2]] = total - s0
            if index[0] in junction and index[1] in junction:
                spans += [total, total + len(s) * ds]
            p, h = _lane_samples(lane, s)
            points.append(p), headings.append(h)
            curvature.append(np.gradient(np.unwrap(h), ds) if len(s) > 1 else np.zeros(len(s)))
            total += len(s) * ds
            if total >= length + 50.0 and (goal is None or goal[:2] in starts):
                break
        points, headings = np.concatenate(points), np.unwrap(np.concatenate(headings))
        curvature, joints = np.concatenate(curvature), np.cumsum([len(h) for h in curvature])[:-1]
        for j in joints:
            kink = abs(headings[j] - headings[j - 1]) / (2 * cls.KINK)
            near = slice(max(0, j - int(cls.KINK / ds)), j + int(cls.KINK / ds))
            curvature[near] = np.maximum(np.abs(curvature[near]), kink)
        goal_s = None
        if goal is not None:
            if goal[:2] not in starts:
                raise RuntimeError(f"the route {resolved} does not reach the goal road {goal[:2]}")
            goal_s = starts[goal[:2]] + goal[2]
        route = cls(resolved, points, headings, curvature, ds, goal_s, None, 0)
        route.manoeuvre = (min(spans), max(spans)) if spans else route._bend()
        if route.manoeuvre is not None:
            turn = -(headings[-1] - headings[0])  # left-positive net turn
            route.command = 1 if turn > np.radians(45) else 3 if turn < -np.radians(45) else 2
        return route

    def _bend(self, threshold: float = np.radians(10)) -> tuple[float, float] | None:
        """Where the heading departs from the start heading and settles on the final one; None if it never does."""
        off_start = np.abs(self.headings - self.headings[0]) > threshold
        if not off_start.any():
            return None
        off_end = np.abs(self.headings - self.headings[-1]) > threshold
        return np.argmax(off_start) * self.ds, (len(off_end) - np.argmax(off_end[::-1])) * self.ds

    def project(self, xy, hint: int, window: int = 60) -> int:
        """Index of the route point nearest to `xy`, searched near `hint` (so a route that comes back near itself
        is not short-cut)."""
        lo, hi = max(0, hint - window // 4), min(len(self.points), hint + window)
        return lo + int(np.argmin(np.sum((self.points[lo:hi] - xy) ** 2, axis=1)))


# ------------------------------------------------------------------------------------------------ BEV raster
@dataclass(frozen=True)
class BEVSpec:
    size: int = 64  # pixels per side
    metres_per_pixel: float = 1.0
    ego_row: int = 48  # the ego's centre pixel (row, col); heading up: 48 m ahead, 16 m behind
    ego_col: int = 32

    def grid(self) -> np.ndarray:
        """Ego-frame (x, y) [m] of every pixel centre, (size, size, 2)."""
        i, j = np.meshgrid(np.arange(self.size), np.arange(self.size), indexing="ij")
        return np.stack([(self.ego_row - i) * self.metres_per_pixel, (self.ego_col - j) * self.metres_per_pixel], -1)


BEV = BEVSpec()


class _WorldRaster:
    """The static BEV channels (drivable, markings, centrelines, route) drawn once per episode on a world-aligned
    0.5 m grid around where the ego can get within the horizon; each step's BEV samples it (nearest pixel)."""

    RES = 0.5  # [m/px]

    def __init__(self, network, route_roads: set, centre: np.ndarray, reach: float):
        lanes = [(index, network.get_lane(index)) for index in _lane_indices(network)]
        lo, hi = np.full(2, np.inf), np.full(2, -np.inf)
        for _, lane in lanes:  # bounding box of the road, clipped to the reachable square
            p, _ = _lane_samples(lane, np.array([0.0, lane.length / 2, lane.length]))
            lo, hi = np.minimum(lo, p.min(0) - 30), np.maximum(hi, p.max(0) + 30)
        lo, hi = np.maximum(lo, centre - reach), np.minimum(hi, centre + reach)
        self.origin = lo
        self.shape = tuple(np.ceil((hi - lo) / self.RES).astype(int)[::-1] + 1)  # (rows = y, cols = x)
        self.layers = np.zeros((4, *self.shape), dtype=np.uint8)
        for index, lane in lanes:
            s = self._visible_range(lane, lo, hi)
            if s is None:
                continue
            centre_pts, heading = _lane_samples(lane, s)
            normal = _lateral(heading)
            half = lane.width_at(0) / 2
            surface = centre_pts[:, None] + np.arange(-half, half + 1e-6, self.RES / 2)[None, :, None] * normal[:, None]
            self._draw(0, surface, 255)
            if index[:2] in route_roads:
                self._draw(3, surface, 255)
            self._draw(2, centre_pts[:, None] + np.array([-0.25, 0.25])[None, :, None] * normal[:, None], 255)
            for side, line in enumerate(lane.line_types):  # side 0 at lateral -w/2, as highway-env's RoadGraphics
                if line == LineType.NONE:
                    continue
                r = (side - 0.5) * 2 * half + np.array([-0.25, 0.25])
                self._draw(1, centre_pts[:, None] + r[None, :, None] * normal[:, None],
                           128 if line == LineType.STRIPED else 255)

    def _visible_range(self, lane: AbstractLane, lo, hi) -> np.ndarray | None:
        s0, s1 = 0.0, lane.length
        if isinstance(lane, StraightLane):  # only the part inside the box (the highway is 10 km long)
            corners = np.array([[lo[0], lo[1]], [lo[0], hi[1]], [hi[0], lo[1]], [hi[0], hi[1]]])
            along = (corners - lane.start) @ lane.direction
            s0, s1 = max(s0, along.min() - 10), min(s1, along.max() + 10)
        return np.arange(s0, s1 + 1e-6, self.RES / 2) if s1 > s0 else None

    def _draw(self, layer: int, points: np.ndarray, value: int) -> None:
        ij = np.floor((points.reshape(-1, 2) - self.origin) / self.RES).astype(int)
        ok = (ij[:, 0] >= 0) & (ij[:, 0] < self.shape[1]) & (ij[:, 1] >= 0) & (ij[:, 1] < self.shape[0])
        rows, cols = ij[ok, 1], ij[ok, 0]
        self.layers[layer, rows, cols] = np.maximum(self.layers[layer, rows, cols], value)

    def sample(self, world: np.ndarray) -> np.ndarray:
        """Layers at world points (H, W, 2) -> (H, W, 4), zero outside the raster."""
        ij = np.floor((world - self.origin) / self.RES).astype(int)
        ok = (ij[..., 0] >= 0) & (ij[..., 0] < self.shape[1]) & (ij[..., 1] >= 0) & (ij[..., 1] < self.shape[0])
        out = self.layers[:, np.where(ok, ij[..., 1], 0), np.where(ok, ij[..., 0], 0)]
        return np.moveaxis(out * ok, 0, -1).astype(np.uint8)


def _lane_indices(network) -> list[tuple[str, str, int]]:
    return [(f, t, i) for f, tos in network.graph.items() for t, lanes in tos.items() for i in range(len(lanes))]


def _agents(env: AbstractEnv) -> list:
    """Every other road user: vehicles and static obstacles (merge-v0's end-of-ramp block)."""
    return [v for v in env.road.vehicles if v is not env.vehicle] + [o for o in env.road.objects if o.solid]


def _agent_array(agents: list) -> np.ndarray:
    """(N, 7): x, y, heading, speed, steering, length, width."""
    return np.array([[*a.position, a.heading, a.speed, getattr(a, "action", {}).get("steering", 0.0), a.LENGTH,
                      a.WIDTH] for a in agents], dtype=np.float64).reshape(-1, 7)


def _box_mask(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Which ego-frame points (P, 2) lie in any ego-frame box (K, 5: x, y, heading, length, width)."""
    d = points[:, None, :] - boxes[None, :, :2]
    c, s = np.cos(boxes[:, 2]), np.sin(boxes[:, 2])
    lon, lat = d[..., 0] * c + d[..., 1] * s, -d[..., 0] * s + d[..., 1] * c
    return ((np.abs(lon) <= boxes[:, 3] / 2) & (np.abs(lat) <= boxes[:, 4] / 2)).any(axis=1)


# ------------------------------------------------------------------------------------------------ the environment
class DrivingEnv:
    """One scenario: highway-env underneath, our observation, the shadow expert, and the episode log for metrics."""

    def __init__(self, scenario: Scenario, render_size: int | None = None, horizon_s: float | None = None):
        self.scenario, self.render_size = scenario, render_size
        self.horizon = int(round((horizon_s or scenario.horizon_s) * FREQUENCY))
        config = {**_BASE_CONFIG, **scenario.config}
        if render_size:  # rendered at 2x and averaged down; the view spans 80 m
            config.update(screen_width=2 * render_size, screen_height=2 * render_size, scaling=2 * render_size / 80)
        self.env = scenario.env_class(config=config, render_mode="rgb_array")
        self._grid = BEV.grid()
        self.seed: int | None = None

    # -- episode
    def reset(self, seed: int) -> dict[str, Any]:
        self.seed = seed
        self.env.reset(seed=seed)
        network = self.env.road.network
        ego = self.env.vehicle
        ego.color = VehicleGraphics.EGO_COLOR  # drawn green like highway-env's MDPVehicle egos (else as traffic)
        self.expert = _ShadowExpert(self)
        reach = SPEED_RANGE[1] * self.horizon * DT + 100.0
        start_s = ego.lane.local_coordinates(ego.position)[0]
        self.route = Route.plan(network, self.expert.planned, start_s, reach, self.scenario.goal,
                                self.scenario.junction)
        self.raster = _WorldRaster(network, {lane[:2] for lane in self.route.lanes}, ego.position.copy(), reach)
        self._route_index = self.route.project(ego.position, 0, window=len(self.route.points))
        self.start_s = self._route_index * self.route.ds
        self.steps = 0
        self.log = EpisodeLog(self.scenario.name, seed)
        self._prev_heading = ego.heading
        self._record()
        return self.observation()

    def step(self, action) -> tuple[dict[str, Any], bool, dict[str, Any]]:
        """Apply a normalised [acceleration, steering] (clipped to [-1, 1]); returns (observation, done, info)."""
        done = self.advance(action)
        return self.observation(), done, dict(collision=self.log.collision, arrived=self.log.arrived,
                                              steps=self.steps)

    def advance(self, action, record: bool = True) -> bool:
        """`step` without computing the observation (for expert rollouts). Returns done."""
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        self._prev_heading = self.env.vehicle.heading
        self.env.step(action)
        if not self.env.vehicle.crashed:  # clear traffic-only crash sites (they would block the road for good)
            self.env.road.vehicles = [v for v in self.env.road.vehicles if not v.crashed]
        self.steps += 1
        self.expert.shadow.timer += DT  # the shadow never steps itself; its lane-change clock runs with the ego
        self._route_index = self.route.project(self.env.vehicle.position, self._route_index)
        if record:
            self._record()
        else:  # keep what `done` needs
            self.log.collision |= bool(self.env.vehicle.crashed)
            self.log.arrived |= self._arrived()
        return self.log.collision or self.log.arrived or self.steps >= self.horizon

    @property
    def ego(self) -> Vehicle:
        return self.env.vehicle

    @property
    def progress(self) -> float:
        """Distance [m] made good along the route since the start."""
        return self._route_index * self.route.ds - self.start_s

    def _arrived(self) -> bool:
        """Reached the goal along the route, or, where the scenario has none (highway), survived the horizon."""
        if self.route.goal_s is None:
            return self.steps >= self.horizon and not self.env.vehicle.crashed
        return self._route_index * self.route.ds >= self.route.goal_s

    def _record(self) -> None:
        ego, log = self.env.vehicle, self.log
        log.x.append(ego.position[0]), log.y.append(ego.position[1])
        log.heading.append(ego.heading), log.speed.append(ego.speed)
        log.progress.append(self.progress)
        log.offroad.append(not all(_on_road(self.env.road.network, p) for p in ego.polygon()[:4]))
        log.ttc.append(time_to_collision(np.array([*ego.position, ego.heading, ego.speed, ego.action["steering"],
                                                   ego.LENGTH, ego.WIDTH]), _agent_array(_agents(self.env)),
                                         junction=self._on_junction()))
        log.collision |= bool(ego.crashed)
        log.arrived |= self._arrived()

    def _on_junction(self) -> bool:
        f, t, _ = self.env.vehicle.lane_index
        return f in self.scenario.junction and t in self.scenario.junction

    # -- observation
    def observation(self) -> dict[str, Any]:
        obs = dict(bev=self.bev(), text=describe(self), state=self.ego_state(), agents=self.agent_features(),
                   command=self.command()[0])
        if self.render_size:
            obs["image"] = self.render()
        return obs

    def ego_state(self) -> np.ndarray:
        ego = self.env.vehicle
        yaw_rate = hw_utils.wrap_to_pi(ego.heading - self._prev_heading) / DT
        return np.array([*ego.position, ego.heading, ego.speed, yaw_rate, ego.action["steering"],
                         ego.action["acceleration"]], dtype=np.float32)

    def bev(self) -> np.ndarray:
        """The ego-aligned raster (BEV.size, BEV.size, 5), see the module docstring."""
        ego = self.env.vehicle
        static = self.raster.sample(from_ego_frame(self._grid, ego.position, ego.heading))
        agents = _agent_array(_agents(self.env))
        near = np.hypot(*(agents[:, :2] - ego.position).T) < BEV.size * BEV.metres_per_pixel * 1.5
        boxes = agents[near]
        local = np.concatenate([to_ego_frame(boxes[:, :2], ego.position, ego.heading),
                                (ego.heading - boxes[:, 2:3]), boxes[:, 5:7]], axis=1)  # left-positive heading
        mask = _box_mask(self._grid.reshape(-1, 2), local).reshape(BEV.size, BEV.size)
        return np.concatenate([static, (mask * 255).astype(np.uint8)[..., None]], axis=-1)

    def agent_features(self) -> np.ndarray:
        ego = self.env.vehicle
        agents = _agent_array(_agents(self.env))
        order = np.argsort(np.hypot(*(agents[:, :2] - ego.position).T))[:NUM_AGENTS]
        a = agents[order]
        out = np.zeros((NUM_AGENTS, AGENT_FEATURES), dtype=np.float32)
        rel = ego.heading - a[:, 2]  # left-positive relative heading
        velocity = to_ego_frame(ego.position + a[:, 3:4] * np.stack([np.cos(a[:, 2]), np.sin(a[:, 2])], -1),
                                ego.position, ego.heading)
        out[:len(a)] = np.concatenate([np.ones((len(a), 1)), to_ego_frame(a[:, :2], ego.position, ego.heading),
                                       velocity, np.cos(rel)[:, None], np.sin(rel)[:, None]], axis=1)
        return out

    def command(self) -> tuple[int, float]:
        """(route command, distance [m] to where its manoeuvre starts); 0 / inf when none lies ahead."""
        s = self._route_index * self.route.ds
        span = self.route.manoeuvre
        if span is None or s > span[1]:
            return 0, float("inf")
        return self.route.command, max(0.0, span[0] - s)

    def render(self) -> np.ndarray:
        """highway-env's top-down view around the ego, (render_size, render_size, 3) uint8."""
        if not self.render_size:
            raise RuntimeError("make the scenario with render_size=S to render")
        image = self.env.render().astype(np.float32)
        s = self.render_size
        return image.reshape(s, 2, s, 2, 3).mean((1, 3)).round().astype(np.uint8)

    # -- expert
    def expert_action(self) -> np.ndarray:
        return self.expert.act(self)

    def clone(self) -> DrivingEnv:
        """An independent copy of the current state (highway-env's deep copy, which leaves the viewer out). The
        static raster and route are shared; the log is copied."""
        new = copy.copy(self)
        new.env, new.expert = copy.deepcopy((self.env, self.expert))
        new.log = copy.deepcopy(self.log)
        return new

    def close(self) -> None:
        self.env.close()


DRIVABLE_MARGIN = 1.0  # [m] see `_on_road`


def _on_road(network, point: np.ndarray) -> bool:
    """Whether a point is on highway-env's drivable surface: on a lane, widened by `DRIVABLE_MARGIN` (highway-env's
    lanes are its only road surface, and roundabout-v0's entries end up to ~1 m outside the ring's lanes, so a car
    entering on the entry's centre has its outer corners there)."""
    lane = network.get_lane(network.get_closest_lane_index(point))
    return lane.on_lane(point, margin=DRIVABLE_MARGIN)


def describe(env: DrivingEnv) -> str:
    """The ego's state and route as text, e.g. "speed 12.3 m/s, heading 90 deg; in 40 m turn left at the
    intersection". The heading is a compass angle on highway-env's render: 0 = up the screen, 90 = right."""
    command, distance = env.command()
    return describe_state(env.env.vehicle.speed, env.env.vehicle.heading, command, distance, env.scenario.place,
                          arrived=env.log.arrived)


def describe_state(speed: float, heading: float, command: int, distance: float, place: str = "",
                   arrived: bool = False) -> str:
    """`describe` from stored numbers (what `collect_demos` records), so the text of any frame can be rebuilt."""
    compass = (np.degrees(heading) + 90.0) % 360.0
    text = f"speed {speed:.1f} m/s, heading {compass:.0f} deg; "
    if arrived:
        return text + "destination reached"
    if command == 0:
        return text + "follow the road"
    where = f" {'at' if command in (1, 3) else 'through'} the {place}" if place else ""
    if distance < 1.0:
        return text + f"{COMMANDS[command]} now{where}"
    return text + f"in {distance:.0f} m {COMMANDS[command]}{where}"


# ------------------------------------------------------------------------------------------------ expert
class _ExpertVehicle(IDMVehicle):
    """highway-env's IDM + MOBIL vehicle, tuned to drive within nuPlan's comfort limits (`NUPLAN_COMFORT_LIMITS`):

    - IDM's comfortable acceleration is 2 m/s² (highway-env: 3, above nuPlan's 2.40), its time gap 1 s (1.5 s);
      emergency braking is kept.
    - Above its desired speed (a lower speed limit ahead, a curve) it slows at no more than `SLOW_DOWN`: IDM's free-road
      term 1 - (v/v0)^δ would brake at up to ACC_MAX (merge-v0 starts the ego at 30 m/s on 20 m/s lanes).
    - In a lane change its lateral speed is capped at `MAX_LATERAL_SPEED` (`steering_control`): highway-env
      changes lane at a lateral speed of (4 m)/τ_lateral = 6.7 m/s, a lateral acceleration of ~KP_HEADING x 6.7
      ≈ 30 m/s²; the cap gives ~KP_HEADING x 0.8 = 4 m/s² and a lane change of ~5 s."""

    COMFORT_ACC_MAX = 2.0  # [m/s²]
    COMFORT_ACC_MIN = -3.5  # [m/s²]
    TIME_WANTED = 1.0  # [s] (highway-env: 1.5 s, which brakes at ~4 m/s² behind merge-v0's initial traffic)
    SLOW_DOWN = 2.0  # [m/s²]
    MAX_LATERAL_SPEED = 0.8  # [m/s]

    def steering_control(self, target_lane_index) -> float:
        """`ControlledVehicle.steering_control` (lateral position -> lateral speed -> heading -> heading rate ->
        steering), with the lateral speed command of a lane change capped at `MAX_LATERAL_SPEED`."""
        target_lane = self.road.network.get_lane(target_lane_index)
        lane_coords = target_lane.local_coordinates(self.position)
        lane_future_heading = target_lane.heading_at(lane_coords[0] + self.speed * self.TAU_PURSUIT)
        lateral_speed_command = -self.KP_LATERAL * lane_coords[1]
        if target_lane_index[:2] == self.lane_index[:2] and target_lane_index != self.lane_index:  # a lane change
            lateral_speed_command = np.clip(lateral_speed_command, -self.MAX_LATERAL_SPEED, self.MAX_LATERAL_SPEED)
        heading_command = np.arcsin(np.clip(lateral_speed_command / hw_utils.not_zero(self.speed), -1, 1))
        heading_ref = lane_future_heading + np.clip(heading_command, -np.pi / 4, np.pi / 4)
        heading_rate_command = self.KP_HEADING * hw_utils.wrap_to_pi(heading_ref - self.heading)
        slip_angle = np.arcsin(np.clip(self.LENGTH / 2 / hw_utils.not_zero(self.speed) * heading_rate_command, -1, 1))
        return float(np.clip(np.arctan(2 * np.tan(slip_angle)), -self.MAX_STEERING_ANGLE, self.MAX_STEERING_ANGLE))

    def acceleration(self, ego_vehicle, front_vehicle=None, rear_vehicle=None) -> float:
        a = super().acceleration(ego_vehicle, front_vehicle, rear_vehicle)
        if ego_vehicle is not self:  # MOBIL also asks about the neighbours: leave their model alone
            return a
        free = self._idm_free_road()
        return a - free + max(free, -self.SLOW_DOWN)

    def _idm_free_road(self) -> float:
        """IDM's free-road term as `IDMVehicle.acceleration` computes it for this vehicle."""
        limit = self.lane.speed_limit if self.lane and self.lane.speed_limit is not None else np.inf
        v0 = float(np.clip(self.target_speed, 0, limit))
        return self.COMFORT_ACC_MAX * (1 - (max(self.speed, 0) / max(v0, 1e-2)) ** self.DELTA)

    def stop_acceleration(self, gap: float) -> float:
        """IDM's acceleration behind a stopped car `gap` metres ahead (centre to centre, as IDM measures)."""
        stopped = SimpleNamespace(velocity=np.zeros(2))
        free = max(self._idm_free_road(), -self.SLOW_DOWN)
        return free - self.COMFORT_ACC_MAX * (self.desired_gap(self, stopped) / max(gap, 0.1)) ** 2


class _ShadowExpert:
    """The rule-based expert: an `_ExpertVehicle` that mirrors the ego and decides in its place (module docstring).

    Beyond highway-env's own behaviour it (1) caps its speed for the route's curvature (lateral acceleration
    `LAT_ACCEL` [m/s²], so the tight intersection turns stay within nuPlan's comfort bounds; IDM only knows lane speed
    limits), (2) brakes for vehicles cutting into its lane, (3) yields like highway-env's `RegulatedRoad` (the
    conflict test and `respect_priorities`), except that it predicts its own motion as if it went now, decides
    before entering the junction only, and brakes with IDM towards a virtual stopped car at the predicted conflict
    instead of setting its target speed to 0, and (4) limits its jerk and steering rate."""

    LAT_ACCEL = 2.5  # [m/s²]
    JERK = 3.0  # [m/s³] nuPlan's limit is 4.13
    EMERGENCY = 4.5  # [m/s²] braking harder than this is not jerk-limited
    YAW_ACCEL = 1.5  # [rad/s²] nuPlan's limit is 1.93
    STEER_SPEED = 2.0  # [m/s] below it, steering is computed as if moving at this speed
    HORIZON = np.arange(0.25, 6.0, 0.25)  # [s] conflict prediction times (RegulatedRoad uses 0.25 .. 2.75 s)
    TIME_MARGIN = 1.5  # [s] a conflict is two vehicles in the same place within this time of each other
    IMMINENT = 2.0  # [s] yielding to a later conflict brakes no harder than COMFORT_ACC_MIN

    def __init__(self, denv: DrivingEnv):
        ego = denv.env.vehicle
        self.junction = denv.scenario.junction
        speed = denv.scenario.expert_speed or ego.speed
        self.shadow = _ExpertVehicle(denv.env.road, ego.position.copy(), ego.heading, ego.speed, target_speed=speed)
        self.desired_speed = speed
        self.planned = [self.shadow.lane_index]  # the route, its first lane id included (for `Route.plan`)
        if denv.scenario.destination is not None:
            self.shadow.plan_route_to(denv.scenario.destination)  # ControlledVehicle: road.network.shortest_path
            self.planned = list(self.shadow.route)
        # plan_route_to pins the current lane id, and MOBIL never leaves a pinned lane: free it like the others'
        self.shadow.route = [(*self.shadow.route[0][:2], None), *self.shadow.route[1:]] if self.shadow.route else None

    def act(self, denv: DrivingEnv) -> np.ndarray:
        shadow = self.shadow
        ego, road = denv.env.vehicle, denv.env.road
        shadow.position, shadow.heading, shadow.speed = ego.position.copy(), ego.heading, ego.speed
        shadow.lane_index, shadow.lane = ego.lane_index, ego.lane
        target = road.network.get_lane(shadow.target_lane_index)
        s, r = target.local_coordinates(ego.position)
        on_target = 0 <= s <= target.length and abs(r) <= target.width_at(s) / 2
        if ego.lane_index[:2] != shadow.target_lane_index[:2] and on_target:
            # where lanes start together (the three turns at an intersection entry) the closest lane flips between
            # them: the shadow keeps to its own while it is on it
            shadow.lane_index, shadow.lane = shadow.target_lane_index, target
        inside = self._in_junction(ego.lane_index) or (on_target and self._in_junction(shadow.target_lane_index))
        shadow.target_speed = min(self.desired_speed, self._curve_speed(denv.route, denv._route_index))
        # decide in the ego's place: the others see neither the ego nor the shadow twice
        i = road.vehicles.index(ego)
        road.vehicles[i] = shadow
        try:
            shadow.act()
            following = min(shadow.action["acceleration"], self._cut_in_acceleration(road))  # real vehicles ahead
            yielding = self._yield_acceleration(road) if denv.scenario.junction and not inside else np.inf
            acceleration = min(following, yielding)
            steering = shadow.action["steering"]
            if ego.speed < self.STEER_SPEED:  # highway-env's steering law divides by the speed: it saturates at rest
                shadow.speed = self.STEER_SPEED
                steering = np.clip(shadow.steering_control(shadow.target_lane_index), -np.pi / 3, np.pi / 3)
                shadow.speed = ego.speed
        finally:
            road.vehicles[i] = ego
        # rate limits for comfort: jerk (except to brake hard: an emergency) and steering (yaw acceleration ≈
        # v/L · dδ/dt)
        previous = ego.action["acceleration"]
        if acceleration > -self.EMERGENCY:
            acceleration = np.clip(acceleration, previous - self.JERK * DT, previous + self.JERK * DT)
        acceleration = max(acceleration, -max(ego.speed, 0.0) / DT)  # never brake below a stop
        steering_rate = self.YAW_ACCEL * ego.LENGTH / max(ego.speed, self.STEER_SPEED)
        steering = np.clip(steering, ego.action["steering"] - steering_rate * DT,
                           ego.action["steering"] + steering_rate * DT)
        return np.clip([acceleration / ACCELERATION_RANGE, steering / STEERING_RANGE], -1, 1)

    def _in_junction(self, lane_index) -> bool:
        return lane_index[0] in self.junction and lane_index[1] in self.junction

    def _cut_in_acceleration(self, road) -> float:
        """IDM behind vehicles ahead that are changing into the shadow's lane (IDM alone sees them only once they are
        in it, and must then brake hard: merge-v0's ramp traffic, highway cut-ins)."""
        shadow, acceleration = self.shadow, np.inf
        for v in road.vehicles:
            if (v is not shadow and isinstance(v, ControlledVehicle) and v.target_lane_index == shadow.lane_index
                    and v.lane_index != v.target_lane_index and 0 < shadow.lane_distance_to(v) < 60):
                acceleration = min(acceleration, shadow.acceleration(shadow, front_vehicle=v))
        return acceleration

    def _curve_speed(self, route: Route, k: int) -> float:
        """The highest speed from which the curves ahead of route point `k` can be taken at `LAT_ACCEL`, braking at
        `_ExpertVehicle.SLOW_DOWN`."""
        ahead = slice(k, min(len(route.points), k + int(60 / route.ds)))
        curvature = np.abs(route.curvature[ahead])
        distance = np.arange(len(curvature)) * route.ds
        limit = np.sqrt(self.LAT_ACCEL / np.maximum(curvature, 1e-6) + 2 * _ExpertVehicle.SLOW_DOWN * distance)
        return float(limit.min()) if len(limit) else self.desired_speed

    def _yield_acceleration(self, road) -> float:
        """IDM's acceleration towards a stopped car at the nearest conflict with a vehicle that has priority.

        It decides before entering (the caller asks only then), as highway-env's regulation does (enlarged boxes,
        `respect_priorities`) but over `HORIZON`, long enough to cross, and with a time margin. Once inside it has
        committed and clears the junction (its lane's IDM still applies): stopping there stands in the way of the
        traffic it yielded to, which then hits it or waits for it."""
        shadow = self.shadow
        # "if I go now": from its speed, accelerating at COMFORT_ACC_MAX up to its target speed, along its route
        v0, a, v1 = max(shadow.speed, 0.0), shadow.COMFORT_ACC_MAX, max(shadow.target_speed, shadow.speed, 1.0)
        t_max = (v1 - v0) / a
        t = self.HORIZON
        ahead = np.where(t < t_max, v0 * t + a * t ** 2 / 2, v0 * t_max + a * t_max ** 2 / 2 + v1 * (t - t_max))
        mine = _predict(shadow, t, ahead)
        first = None
        for other in road.vehicles:
            if other is shadow or np.linalg.norm(other.position - shadow.position) > 80:
                continue
            k = _first_conflict(mine, _predict(other, t), shadow, other, margin=int(self.TIME_MARGIN / 0.25))
            if k is not None and RegulatedRoad.respect_priorities(shadow, other) is shadow:
                first = k if first is None else min(first, k)
        if first is None:
            return np.inf
        stop = shadow.stop_acceleration(ahead[first])  # brake comfortably for a conflict that is not yet imminent
        return stop if t[first] <= self.IMMINENT else max(stop, shadow.COMFORT_ACC_MIN)


def _predict(vehicle: Vehicle, times: np.ndarray, distances: np.ndarray | None = None):
    """Positions and headings at `times` along the vehicle's route, at constant speed or `distances` ahead: what
    `ControlledVehicle.predict_trajectory_constant_speed` computes for `RegulatedRoad`, with two fixes. (1) A vehicle
    pops the lane it is on from its route 2.5 m before that lane ends (`follow_road`), after which highway-env
    measures its current position along the *next* lane, placing it tens of metres ahead: blind to conflicts right
    where a junction starts; here the current lane is put back in front. (2) highway-env resolves an open lane id of
    the route with the lane count of the *current* road, which fails leaving the roundabout's two-lane ring for a
    one-lane exit (IndexError); here each open id is clipped to its own road's lanes."""
    graph, lane_id = vehicle.road.network.graph, vehicle.lane_index[2]
    route = getattr(vehicle, "route", None) or [vehicle.lane_index]
    if route[0][:2] != vehicle.lane_index[:2]:
        route = [vehicle.lane_index, *route]
    route = [(f, t, i if i is not None else min(lane_id, len(graph[f][t]) - 1)) for f, t, i in route]
    s = vehicle.lane.local_coordinates(vehicle.position)[0]
    ahead = vehicle.speed * np.asarray(times) if distances is None else distances
    return tuple(zip(*[vehicle.road.network.position_heading_along_route(route, s + d, 0, vehicle.lane_index)
                       for d in ahead]))


def _first_conflict(mine, theirs, v1, v2, margin: int = 0) -> int | None:
    """Index of the first of v1's predicted poses that overlaps one of v2's predicted within `margin` steps of the
    same time, None if none: `RegulatedRoad.is_conflict_possible`'s test (boxes 1.5 x length by 0.9 x width, which
    returns only a yes/no) with a time margin."""
    p1, p2 = np.asarray(mine[0]), np.asarray(theirs[0])
    k1, k2 = np.nonzero((np.linalg.norm(p1[:, None] - p2[None], axis=-1) <= 0.75 * (v1.LENGTH + v2.LENGTH) + 1)
                        & (np.abs(np.subtract.outer(np.arange(len(p1)), np.arange(len(p2)))) <= margin))
    for i, j in zip(k1, k2):  # candidate pairs in time order of v1's poses
        if hw_utils.rotated_rectangles_intersect((p1[i], 1.5 * v1.LENGTH, 0.9 * v1.WIDTH, mine[1][i]),
                                                 (p2[j], 1.5 * v2.LENGTH, 0.9 * v2.WIDTH, theirs[1][j])):
            return int(i)
    return None


# ------------------------------------------------------------------------------------------------ waypoints
def future_waypoints(xy: np.ndarray, heading: np.ndarray, steps: Iterable[int] = WAYPOINT_STEPS
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Labels from a recorded trajectory (T, 2) / (T,): for each frame t, the positions at t + k (k in `steps`) in
    the ego frame at t, (T, K, 2), and whether they exist (t + k < T), (T, K) bool (missing ones repeat the last
    recorded position)."""
    xy, heading = np.asarray(xy, dtype=np.float64), np.asarray(heading, dtype=np.float64)
    t = np.arange(len(xy))[:, None] + np.asarray(list(steps))[None, :]
    valid = t < len(xy)
    future = xy[np.minimum(t, len(xy) - 1)]  # (T, K, 2)
    return np.stack([to_ego_frame(future[i], xy[i], heading[i]) for i in range(len(xy))]), valid


def expert_waypoints(env: DrivingEnv, steps: Iterable[int] = WAYPOINT_STEPS) -> np.ndarray:
    """DAgger relabelling: the expert's positions `steps` ahead of the env's current state, in the current ego frame
    (K, 2). The env is copied (`DrivingEnv.clone`) and the copy is rolled with the expert; `env` is untouched. If the
    copy's episode ends first, the expert keeps driving the copy (its traffic too) until the last step."""
    steps = list(steps)
    sim = env.clone()
    sim.horizon = sim.steps + max(steps) + 1
    sim.log.arrived = False  # arrival must not stop the copy
    ego = sim.env.vehicle
    origin, heading = ego.position.copy(), ego.heading
    out = []
    for k in range(1, max(steps) + 1):
        sim.advance(sim.expert_action(), record=False)
        sim.log.arrived = False
        if k in steps:
            out.append(ego.position.copy())
    return to_ego_frame(np.array(out), origin, heading)


def waypoints_to_controls(waypoints, speed: float, lookahead_time: float = 0.7, min_lookahead: float = 3.0,
                          waypoint_dt: float = 0.5) -> np.ndarray:
    """Track ego-frame waypoints (K, 2), `waypoint_dt` seconds apart, from the current `speed`: the normalised
    ContinuousAction [acceleration, steering].

    Steering: pure pursuit towards the point `max(min_lookahead, lookahead_time·speed)` metres along the waypoint
    polyline, solved for highway-env's bicycle model rather than the textbook one (curvature 2y/Ld², which oversteers
    it). `Vehicle.step` moves the centre at slip angle β = atan(tan δ / 2) off the heading and turns at v·sin β / (L/2),
    L = 5 m, so the centre runs on a circle of radius (L/2)/sin β; that circle reaches a point at distance d and
    bearing α when tan β = L·sin α / (d + L·cos α); then δ = atan(2·tan β).
    Speed: the arc lengths of the first two waypoints fix s(t) = v·t + a·t²/2 + j·t³/6; the command is its mean
    acceleration over the next step, a + j·DT/2 (a constant-acceleration fit lags the expert's braking).
    With the default lookahead (0.7 s, at least 3 m) it follows circles of 13-60 m radius at 6-20 m/s within ~2 cm
    on average (common/tests/test_highway.py), and the expert's own 2.5 s plans within ~3 cm on the highway, ~0.1 m
    on average and 0.6 m at worst where the expert brakes and turns hard (intersections, roundabout kinks)."""
    wp = np.asarray(waypoints, dtype=np.float64).reshape(-1, 2)
    path = np.concatenate([np.zeros((1, 2)), wp])
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(path, axis=0).T))])
    t = waypoint_dt * np.arange(1, 3)
    a0, jerk = np.linalg.solve(np.stack([t ** 2 / 2, t ** 3 / 6], -1), arc[1:3] - speed * t)
    acceleration = float(a0 + jerk * DT / 2)
    steering = 0.0
    if arc[-1] > 0.5:  # a stopped plan has no direction to steer to
        lookahead = min(max(min_lookahead, lookahead_time * speed), arc[-1])
        target = np.array([np.interp(lookahead, arc, path[:, 0]), np.interp(lookahead, arc, path[:, 1])])
        alpha, d = np.arctan2(target[1], target[0]), np.hypot(*target)
        length = Vehicle.LENGTH
        beta = np.arctan2(length * np.sin(alpha), d + length * np.cos(alpha))
        steering = -np.arctan(2 * np.tan(beta))  # left-positive geometry -> highway-env's right-positive steering
    return np.clip([acceleration / ACCELERATION_RANGE, steering / STEERING_RANGE], -1.0, 1.0)


# ------------------------------------------------------------------------------------------------ metrics
@dataclass
class EpisodeLog:
    """What an episode leaves for its metrics, one entry per recorded state (the reset state included)."""
    scenario: str
    seed: int
    x: list = field(default_factory=list)
    y: list = field(default_factory=list)
    heading: list = field(default_factory=list)
    speed: list = field(default_factory=list)
    progress: list = field(default_factory=list)  # [m] along the route
    offroad: list = field(default_factory=list)  # a corner of the ego outside every lane
    ttc: list = field(default_factory=list)  # [s], inf when no projected collision within `TTC_HORIZON`
    collision: bool = False
    arrived: bool = False


TTC_HORIZON = np.arange(0.0, 3.0 + 1e-9, 0.1)  # [s]
STOPPED_SPEED = 5e-3  # [m/s] NAVSIM's PDMScorerConfig.stopped_speed_threshold: a stopped ego has no TTC


def time_to_collision(ego: np.ndarray, agents: np.ndarray, junction: bool = False) -> float:
    """Time [s] until the ego's box first overlaps an agent's box, sampled on `TTC_HORIZON`; inf if none within it.

    `ego` (7,) and `agents` (N, 7): x, y, heading, speed, steering, length, width (highway-env's world frame). All
    move on at constant speed and steering through highway-env's bicycle model (`Vehicle.step`), as highway-env's
    own "constant_steering" prediction does: NAVSIM projects the ego along its heading and checks the agents' logged
    futures, which a closed loop does not know. As nuPlan/NAVSIM, only agents ahead count (bearing within ±30° of
    the ego's heading, nuPlan's `is_agent_ahead`), or on a junction any agent not behind (within ±150°), and a
    stopped ego has none."""
    ego = np.asarray(ego, dtype=np.float64)
    if ego[3] < STOPPED_SPEED or len(agents) == 0:
        return float("inf")
    d = agents[:, :2] - ego[:2]
    bearing = np.abs(hw_utils.wrap_to_pi(np.arctan2(d[:, 1], d[:, 0]) - ego[2]))
    relevant = (bearing < np.radians(150 if junction else 30)) & (np.hypot(*d.T) < 40.0 + 3 * ego[3])
    agents = agents[relevant]
    if len(agents) == 0:
        return float("inf")
    ego_at, ego_heading = _project(ego[None], TTC_HORIZON)  # (T, 1, 2), (T, 1)
    agent_at, agent_heading = _project(agents, TTC_HORIZON)  # (T, N, 2), (T, N)
    hit = _boxes_overlap(ego_at, ego_heading, ego[5], ego[6], agent_at, agent_heading, agents[:, 5], agents[:, 6])
    times = np.nonzero(hit.any(axis=1))[0]
    return float(TTC_HORIZON[times[0]]) if len(times) else float("inf")


def _project(states: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions (T, N, 2) and headings (T, N) of states (N, 7) after times `t` at constant speed and steering:
    highway-env's kinematic bicycle (slip β = atan(tan δ / 2), yaw rate v·sin β / (L/2)), integrated exactly."""
    x, y, h, v, delta, length = (states[:, i] for i in range(6))
    beta = np.arctan(0.5 * np.tan(delta))
    omega = v * np.sin(beta) / (length / 2)
    t = t[:, None]
    course0, course = h + beta, h + beta + omega * t
    turning = np.abs(omega) > 1e-6
    w = np.where(turning, omega, 1.0)
    dx = np.where(turning, v / w * (np.sin(course) - np.sin(course0)), v * t * np.cos(course0))
    dy = np.where(turning, v / w * (np.cos(course0) - np.cos(course)), v * t * np.sin(course0))
    return np.stack([x + dx, y + dy], -1), h + omega * t


def _boxes_overlap(c1, h1, l1, w1, c2, h2, l2, w2) -> np.ndarray:
    """Separating-axis test of oriented boxes, broadcast over centres (..., 2) and scalar/array sizes."""
    axes = [np.broadcast_to(np.stack([np.cos(h), np.sin(h)], -1), np.broadcast(c1, c2).shape) for h in (h1, h2)]
    axes += [np.stack([-a[..., 1], a[..., 0]], -1) for a in axes]
    d = c2 - c1
    separated = np.zeros(np.broadcast(c1, c2).shape[:-1], dtype=bool)
    for axis in axes:
        r1 = _half_extent(axis, h1, l1, w1)
        r2 = _half_extent(axis, h2, l2, w2)
        separated |= np.abs(np.sum(d * axis, -1)) > r1 + r2
    return ~separated


def _half_extent(axis, heading, length, width):
    """Half the projection of a box (heading, length, width) on unit `axis`."""
    c, s = np.cos(heading), np.sin(heading)
    return (np.abs(axis[..., 0] * c + axis[..., 1] * s) * length / 2
            + np.abs(-axis[..., 0] * s + axis[..., 1] * c) * width / 2)


PROGRESS_THRESHOLD = 5.0  # [m] NAVSIM's progress_distance_threshold: below it progress is not compared


def episode_metrics(log: EpisodeLog, expert_progress: float) -> dict[str, Any]:
    """One episode's metrics (a flat dict). "PDM-style on highway-env": NAVSIM's aggregation
    NC·DAC·(5·TTC + 2·C + 5·EP)/12 of sub-metrics computed here, not NAVSIM's PDMS. Differences: NC counts any
    collision (NAVSIM: at-fault ones only, 0.5 for static objects); DAC checks the ego's corners against highway-env's
    lanes, widened by `DRIVABLE_MARGIN`; TTC (`time_to_collision`, each step) projects the agents too, at constant
    speed and steering, and fails below `TTC_LIMIT`; EP is progress along the planned route over the expert's on the
    same seed, normalised as NAVSIM does against the best of the two, and 1 when neither made 5 m; the whole closed-loop
    episode is scored, not a 4 s plan. Comfort uses nuPlan's limits on the whole episode (`comfort_metrics`).
    `min_ttc` is capped at the end of `TTC_HORIZON` (3 s: none within it)."""
    collision = bool(log.collision)
    drivable = not any(log.offroad)
    ttc = np.asarray(log.ttc, dtype=np.float64)
    min_ttc = float(min(ttc.min(), TTC_HORIZON[-1])) if len(ttc) else float(TTC_HORIZON[-1])
    progress = max(0.0, float(np.max(log.progress)))
    best = max(progress, expert_progress)
    ep = 0.0 if collision or not drivable else (progress / best if best > PROGRESS_THRESHOLD else 1.0)
    comfort = comfort_metrics(log.heading, log.speed, DT)
    ttc_ok = min_ttc >= TTC_LIMIT
    score = pdm_style_score(float(not collision), float(drivable), float(ttc_ok), float(comfort["comfortable"]), ep)
    return dict(scenario=log.scenario, seed=log.seed, steps=len(log.x) - 1, collision=float(collision),
                drivable=float(drivable), min_ttc=min_ttc, ttc=float(ttc_ok), progress=progress,
                expert_progress=float(expert_progress), ep=ep, comfort=float(comfort["comfortable"]),
                arrived=float(log.arrived),
                score=score, **{k: v for k, v in comfort.items() if k != "comfortable"})


def aggregate(rows: list[dict[str, Any]]) -> dict[str, dict[str, tuple[float, float]]]:
    """Mean and standard deviation of every numeric metric per scenario, and over all episodes ("all")."""
    out = {}
    groups = {s: [r for r in rows if r["scenario"] == s] for s in dict.fromkeys(r["scenario"] for r in rows)}
    for name, group in [*groups.items(), ("all", rows)]:
        keys = [k for k, v in group[0].items() if isinstance(v, float) and k not in ("seed",)]
        out[name] = {k: (float(np.mean([r[k] for r in group])), float(np.std([r[k] for r in group]))) for k in keys}
        out[name]["episodes"] = (float(len(group)), 0.0)
    return out


# ------------------------------------------------------------------------------------------------ visualisation
BEV_COLOURS = np.array([[70, 70, 70], [255, 255, 255], [120, 120, 255], [60, 160, 60], [230, 120, 30]])  # per channel


def bev_to_rgb(bev: np.ndarray, waypoints=None) -> np.ndarray:
    """A picture of a BEV raster (H, W, 5) with optional ego-frame waypoints (K, 2) drawn as red dots."""
    rgb = np.zeros((*bev.shape[:2], 3), dtype=np.float32)
    for c in range(bev.shape[-1]):  # later channels paint over earlier ones
        alpha = bev[..., c:c + 1].astype(np.float32) / 255
        rgb = rgb * (1 - alpha) + BEV_COLOURS[c] * alpha
    rgb = rgb.astype(np.uint8)
    rgb[BEV.ego_row - 2:BEV.ego_row + 3, BEV.ego_col - 1:BEV.ego_col + 2] = (255, 255, 0)  # the ego
    if waypoints is not None:
        for x, y in np.asarray(waypoints).reshape(-1, 2):
            i = int(round(BEV.ego_row - x / BEV.metres_per_pixel))
            j = int(round(BEV.ego_col - y / BEV.metres_per_pixel))
            if 0 <= i < bev.shape[0] and 0 <= j < bev.shape[1]:
                rgb[i, j] = (255, 0, 0)
    return rgb


def episode_frame(env: DrivingEnv, obs: dict[str, Any], waypoints=None) -> np.ndarray:
    """One GIF frame: the top-down render (if the env renders) beside the BEV picture, waypoints drawn on both."""
    bev = bev_to_rgb(obs["bev"], waypoints)
    if "image" not in obs:
        return bev
    image = obs["image"].copy()
    if waypoints is not None:  # world -> render pixels: the view is 80 m across, centred on the ego
        scale = env.render_size / 80.0
        for p in from_ego_frame(np.asarray(waypoints).reshape(-1, 2), env.ego.position, env.ego.heading):
            col, row = ((p - env.ego.position) * scale + env.render_size / 2).astype(int)
            image[max(0, row - 1):row + 2, max(0, col - 1):col + 2] = (255, 0, 0)
    index = np.arange(image.shape[0]) * bev.shape[0] // image.shape[0]  # nearest-pixel resize to the image's size
    pad = np.zeros((image.shape[0], 4, 3), dtype=np.uint8)
    return np.concatenate([image, pad, bev[index][:, index]], axis=1)


def save_gif(frames: list[np.ndarray], path: str | Path, fps: int = FREQUENCY) -> Path:
    import imageio.v3 as iio
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, np.stack(frames), duration=1000 / fps, loop=0)
    return path


# ------------------------------------------------------------------------------------------------ demonstrations
@dataclass(frozen=True)
class DemoSpec:
    """Everything that determines a demonstration set; its hash names the cache directory."""
    scenarios: tuple[str, ...] = tuple(SCENARIOS)
    episodes_per_scenario: int = 10  # expert episodes on seeds("train", n) of each scenario
    render_size: int | None = None  # add highway-env's top-down image (S x S) to the frames
    horizon_s: float | None = None  # None: each scenario's own

    def key(self) -> str:
        """The fields and the benchmark's source version: an edited benchmark collects its demonstrations again."""
        fields = json.dumps(dict(asdict(self), benchmark=source_version()), sort_keys=True)
        return hashlib.sha1(fields.encode()).hexdigest()[:12]


def source_version() -> str:
    """A hash of this module's source: part of the key of every cache of its episodes (demonstrations, expert
    references), so that results from an older version of the benchmark are never mixed with the current one's."""
    return hashlib.sha1(Path(__file__).read_bytes()).hexdigest()[:10]


def collect_demos(spec: DemoSpec = DemoSpec(), cache_dir: str | Path | None = None, progress: bool = True
                  ) -> EpisodeDataset:
    """Expert demonstrations of `spec` as an episode dataset (common/data.py), collected once and cached on disk.

    Frame features: `observation.bev` (64, 64, 5) uint8, `observation.images.top` (S, S, 3) uint8 (with
    `render_size`), `observation.state` (7,), `observation.agents` (8, 7), `observation.command` (2,) = (route command,
    metres to its manoeuvre, capped at 1000), `action` (2,) the expert's normalised [acceleration, steering],
    `waypoints` (10,) its positions +0.5 .. +2.5 s ahead in the ego frame (x1, y1, ..., x5, y5) and
    `waypoints_valid` (5,) uint8. The text of a frame is `describe_state(state[3], state[2], *command, place)`.
    Each episode records its scenario (task), seed, route instruction, and whether it arrived. After the episode ends
    the expert drives on (unrecorded) so that its last frames have waypoints too; episodes where the expert collided
    are left out and counted in the dataset's info (`expert_collisions`).
    """
    for name in spec.scenarios:
        if name not in SCENARIOS:
            raise ValueError(f"unknown driving scenario {name!r}; valid scenarios: {', '.join(SCENARIOS)}")
    root = Path(cache_dir or default_cache_dir()) / f"highway-{spec.key()}"
    if (root / "meta.json").exists():
        return EpisodeDataset(root)
    features = {"observation.bev": ((BEV.size, BEV.size, len(BEV_CHANNELS)), "uint8"),
                "observation.state": ((STATE_DIM,), "float32"),
                "observation.agents": ((NUM_AGENTS, AGENT_FEATURES), "float32"),
                "observation.command": ((2,), "float32"), "action": ((2,), "float32"),
                "waypoints": ((2 * len(WAYPOINT_STEPS),), "float32"),
                "waypoints_valid": ((len(WAYPOINT_STEPS),), "uint8")}
    if spec.render_size:
        features["observation.images.top"] = ((spec.render_size, spec.render_size, 3), "uint8")
    jobs = [(name, seed) for name in spec.scenarios for seed in seeds("train", spec.episodes_per_scenario)]
    collisions = []
    with EpisodeWriter(root, features, fps=FREQUENCY, info=dict(spec=asdict(spec), source="highway-env shadow expert")
                       ) as writer:
        for name, seed in tqdm(jobs, desc="expert demos", disable=not progress):
            frames, arrived, instruction = _demo_episode(name, seed, spec)
            if frames is None:
                collisions.append([name, seed])
                continue
            writer.add_episode(frames, task=name, instruction=instruction, seed=seed, arrived=arrived)
        writer.info.update(expert_collisions=collisions)
    return EpisodeDataset(root)


def _demo_episode(name: str, seed: int, spec: DemoSpec):
    env = make_scenario(name, seed, render_size=spec.render_size, horizon_s=spec.horizon_s)
    obs, rows, done = env.observation(), [], False
    while not done:
        action = env.expert_action()
        command, distance = env.command()
        row = {"observation.bev": obs["bev"], "observation.state": obs["state"],
               "observation.agents": obs["agents"], "observation.command": np.array([command, min(distance, 1e3)]),
               "action": action}
        if spec.render_size:
            row["observation.images.top"] = obs["image"]
        rows.append(row)
        obs, done, _ = env.step(action)
    if env.log.collision:
        return None, False, ""
    arrived = env.log.arrived
    xy, heading = np.stack([env.log.x, env.log.y], -1), np.array(env.log.heading)
    extra = []  # the expert drives on so that the last frames have labels
    env.horizon = env.steps + max(WAYPOINT_STEPS)
    env.log.arrived = False
    for _ in range(max(WAYPOINT_STEPS)):
        if env.advance(env.expert_action(), record=False) and env.log.collision:
            break
        env.log.arrived = False
        extra.append(env.ego.position.copy())
    if extra:
        xy = np.concatenate([xy, np.array(extra)])
    waypoints, valid = future_waypoints(xy, np.concatenate([heading, np.zeros(len(extra))]))
    frames = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    frames["waypoints"] = waypoints[:len(rows)].reshape(len(rows), -1)
    frames["waypoints_valid"] = valid[:len(rows)].astype(np.uint8)
    command = env.route.command
    instruction = COMMANDS[command] + (f" {'at' if command in (1, 3) else 'through'} the {env.scenario.place}"
                                       if command and env.scenario.place else "")
    env.close()
    return frames, arrived, instruction


# ------------------------------------------------------------------------------------------------ evaluation
Policy = Callable[[dict[str, Any]], np.ndarray]


@dataclass
class EvalResult:
    rows: list[dict[str, Any]]  # one per episode (`episode_metrics`)
    summary: dict[str, dict[str, tuple[float, float]]]  # mean, std per scenario and "all" (`aggregate`)


@lru_cache(maxsize=None)
def expert_reference(name: str, seed: int, horizon_s: float | None = None) -> dict[str, Any]:
    """The expert's own episode metrics on (scenario, seed): the progress that a policy's EP is measured against."""
    env = make_scenario(name, seed, horizon_s=horizon_s)
    done = False
    while not done:
        done = env.advance(env.expert_action())
    env.close()
    return episode_metrics(env.log, env.progress)


def evaluate(policy: Policy | None, scenarios: Iterable[str] = tuple(SCENARIOS), episodes: int = 10,
             horizon_s: float | None = None, render_size: int | None = None, gif_dir: str | Path | None = None,
             gif_episodes: int = 1, progress: bool = True,
             references: Mapping[tuple[str, int], dict[str, Any]] | None = None) -> EvalResult:
    """Closed-loop episodes of `policy` on seeds("eval", episodes) of each scenario.

    `policy(obs)` gets `DrivingEnv.observation()` and returns either a normalised action (2,) or ego-frame waypoints
    (K, 2) at +0.5 s spacing, which `waypoints_to_controls` tracks. If it has a `reset()` method it is called at the
    start of every episode. `policy=None` drives the expert (the reference: its EP is 1). `render_size` adds the
    top-down image to the observations (and to the GIFs); `gif_dir` saves the first `gif_episodes` episodes of each
    scenario with the policy's waypoints drawn. `references` maps (scenario, seed) to the expert's `expert_reference`
    metrics where the caller has them already (e.g. cached on disk); the others are driven here."""
    rows = []
    jobs = [(name, seed) for name in scenarios for seed in seeds("eval", episodes)]
    for name, _ in jobs:
        if name not in SCENARIOS:
            raise ValueError(f"unknown driving scenario {name!r}; valid scenarios: {', '.join(SCENARIOS)}")
    bar = tqdm(jobs, desc="closed-loop eval", disable=not progress)
    for k, (name, seed) in enumerate(bar):
        reference = (references or {}).get((name, seed)) or expert_reference(name, seed, horizon_s)
        if policy is None:
            rows.append(reference)
            continue
        record = gif_dir is not None and k % episodes < gif_episodes
        env = make_scenario(name, seed, render_size=render_size, horizon_s=horizon_s)
        if hasattr(policy, "reset"):
            policy.reset()
        obs, done, frames = env.observation(), False, []
        while not done:
            out = np.asarray(policy(obs), dtype=np.float64)
            waypoints = out.reshape(-1, 2) if out.size != 2 else None
            action = waypoints_to_controls(waypoints, env.ego.speed) if waypoints is not None else out
            if record:
                frames.append(episode_frame(env, obs, waypoints))
            obs, done, _ = env.step(action)
        if record:
            save_gif(frames, Path(gif_dir) / f"{name}_seed{seed}.gif")
        rows.append(episode_metrics(env.log, reference["progress"]))
        env.close()
        bar.set_postfix(score=f"{np.mean([r['score'] for r in rows]):.2f}")
    return EvalResult(rows, aggregate(rows))


TABLE_METRICS = ("score", "collision", "drivable", "ttc", "comfort", "ep", "arrived")


def format_results(result: EvalResult) -> str:
    """A markdown table of the mean ± std of the main metrics per scenario (rates in [0, 1])."""
    lines = ["| scenario | episodes | " + " | ".join(TABLE_METRICS) + " |", "|---" * (len(TABLE_METRICS) + 2) + "|"]
    for name, m in result.summary.items():
        cells = [f"{m[k][0]:.2f} ± {m[k][1]:.2f}" for k in TABLE_METRICS]
        lines.append(f"| {name} | {m['episodes'][0]:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
