import dataclasses
import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from common.config import merge
from common.envs import highway as hw
from common.text import train_bpe_tokenizer
from common.train import last_checkpoint, read_config, read_metrics

from driving_vla import adapters, rollouts
from driving_vla import eval as dv_eval
from driving_vla import train as dv_train
from driving_vla.config import PRESETS, DrivingVLAConfig
from driving_vla.model import (EGO_DIM, K, DrivingPolicy, Shield, ego_state_from_observation, euler_times,
                               flow_targets, observation_batch, policy_from_meta, process_ego_state, process_route,
                               regression_loss, route_sentence, sample_time, waypoints_to_controls)

PROMPTS = ["speed 9.0 m/s; in 23 m turn left at the intersection", "speed 30.0 m/s; follow the road",
           "speed 4.2 m/s; go straight now through the roundabout"]


def unit_stats(mean: float = 0.0, std: float = 1.0) -> dict:
    stat = lambda n: dict(mean=[mean] * n, std=[std] * n, q01=[-1.0] * n, q99=[1.0] * n, min=[-1.0] * n,  # noqa
                          max=[1.0] * n)
    return dict(ego=stat(EGO_DIM), waypoints=stat(2 * K))


def small(**overrides) -> DrivingVLAConfig:
    return merge(PRESETS["smoke"], overrides)


def make_policy(cfg: DrivingVLAConfig, stats: dict | None = None) -> DrivingPolicy:
    torch.manual_seed(0)
    tokenizer = train_bpe_tokenizer(PROMPTS, vocab_size=300) if cfg.model == "vla" else None
    return DrivingPolicy(cfg, stats or unit_stats(), tokenizer)


def random_batch(n: int = 6, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(bev=torch.randint(0, 256, (n, 64, 64, 5), dtype=torch.uint8, generator=g),
                ego=torch.randn(n, EGO_DIM, generator=g), prompt=[PROMPTS[i % 3] for i in range(n)],
                waypoints=torch.randn(n, 2 * K, generator=g))


# ------------------------------------------------------------------------------------------------ the model
VARIANTS = [dict(model="bc"), dict(model="vla", head="mlp"), dict(model="vla", head="flow"),
            dict(model="vla", head="mlp", mlp_loss="gaussian_nll")]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(v.values()))
def test_shapes_and_loss_decreases_on_a_fixed_batch(variant):
    cfg = small(**variant)
    policy = make_policy(cfg)
    batch = random_batch()
    assert policy.predict_waypoints(batch).shape == (6, K, 2)
    g = torch.Generator().manual_seed(1)
    noise, time = torch.randn(6, K, 2, generator=g), sample_time(6, cfg, g)  # fixed: the loss is then a function
    optimizer = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = policy(batch, noise, time)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0] if variant.get("mlp_loss") != "gaussian_nll" else losses[-1] < losses[0] - 0.5


def test_padding_of_the_prompt_is_not_attended():
    """Right-padding tokens are never attended: garbage under the padding mask changes nothing."""
    cfg = small(model="vla", max_text_tokens=64)
    policy = make_policy(cfg).eval()
    batch, noise = random_batch(2), torch.randn(2, K, 2)  # the flow head's starting noise, the same for both calls
    out = policy.predict_waypoints(batch, noise)
    from common.text import tokenize
    tokens = tokenize(policy.tokenizer, batch["prompt"], 64)
    tokens["input_ids"][:, -1] = 7  # garbage under the padding mask (the prompts are shorter than 24 tokens)
    assert not tokens["attention_mask"][:, -1].any()
    assert torch.allclose(policy.predict_waypoints({**batch, **tokens}, noise), out, atol=1e-6)


def test_flow_targets_and_loss_match_a_hand_computed_case():
    """x_τ = τ·ε + (1 − τ)·a, u = ε − a (π0 Eq. 1), loss = mean (v − u)²: with a = (1, 2), ε = (3, −1), τ = 0.25,
    x_τ = (1.5, 1.25), u = (2, −3); a head that answers v = 2·x_τ = (3, 2.5) has loss ((3−2)² + (2.5+3)²)/2 = 15.625."""
    a, eps, tau = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, -1.0]]), torch.tensor([0.25])
    x_t, u = flow_targets(a, eps, tau)
    assert torch.allclose(x_t, torch.tensor([[1.5, 1.25]])) and torch.allclose(u, torch.tensor([[2.0, -3.0]]))
    cfg = small(model="vla", head="flow")
    policy = make_policy(cfg)  # identity normalisation: targets in metres = normalised
    policy.net.head.forward = lambda x_t, time, cond: 2 * x_t
    target = torch.zeros(1, K, 2)
    target[0, :] = a
    noise = torch.zeros(1, K, 2)
    noise[0, :] = eps
    batch = dict(random_batch(1), waypoints=target.view(1, -1))
    assert torch.allclose(policy(batch, noise, tau), torch.tensor(15.625))


def test_flow_sampling_is_deterministic_and_integrates_from_noise_to_data():
    cfg = small(model="vla", head="flow")
    policy = make_policy(cfg).eval()
    batch = random_batch(3)
    noise = torch.randn(3, K, 2, generator=torch.Generator().manual_seed(5))
    first, again = policy.predict_waypoints(batch, noise), policy.predict_waypoints(batch, noise.clone())
    assert torch.equal(first, again)
    assert not torch.allclose(first, policy.predict_waypoints(batch, noise + 1))
    # a head answering the exact velocity of a straight path, v = ε − a, brings x from ε at τ = 1 to a at τ = 0
    target = torch.randn(3, K, 2)
    policy.net.head.forward = lambda x_t, time, cond: noise - target
    assert torch.allclose(policy.predict_waypoints(batch, noise), target, atol=1e-5)
    assert torch.allclose(euler_times(10), torch.linspace(1.0, 0.1, 10))


def test_time_distribution():
    """τ = Beta(1.5, 1)·0.999 + 0.001: in (0.001, 1], mean 0.6·0.999 + 0.001."""
    t = sample_time(20_000, PRESETS["tiny"], torch.Generator().manual_seed(0))
    assert t.min() >= 0.001 and t.max() <= 1.0 and abs(t.mean().item() - 0.6004) < 0.01


def test_gaussian_nll_matches_a_hand_computed_case():
    """½·(log σ² + (a − μ)²/σ²) per coordinate: μ = (0, 1), log σ = (0, log 2), a = (1, 1) →
    (½·(0 + 1) + ½·(log 4 + 0)) / 2."""
    out = torch.tensor([[0.0, 1.0, 0.0, math.log(2.0)]])
    expected = (0.5 * 1.0 + 0.5 * math.log(4.0)) / 2
    assert torch.allclose(regression_loss(out, torch.tensor([[1.0, 1.0]]), "gaussian_nll"), torch.tensor(expected))
    assert torch.allclose(regression_loss(out, torch.tensor([[1.0, 1.0]]), "l1"), torch.tensor(0.5))


# ------------------------------------------------------------------------------------------------ the interface
def test_route_text_and_ego_state():
    text = "speed 9.0 m/s, heading 270 deg; in 23 m turn left at the intersection"
    assert process_route(text) == "speed 9.0 m/s; in 23 m turn left at the intersection"
    assert process_route("Speed 12.0 m/s, heading -5 deg;  follow the road") == "speed 12.0 m/s; follow the road"
    assert route_sentence(4.0, 3, None, "intersection") == "speed 4.0 m/s; turn right now at the intersection"
    assert route_sentence(4.0, 1, 30.2, "roundabout") == "speed 4.0 m/s; in 30 m turn left at the roundabout"
    ego = process_ego_state(10.0, 0.1, -0.05, 1.5, 2)
    assert ego.shape == (EGO_DIM,) and ego.dtype == np.float32
    assert np.allclose(ego, [10.0, 0.1, -0.05, 1.5, 0, 0, 1, 0])
    with pytest.raises(ValueError, match="command"):
        process_ego_state(1.0, 0.0, 0.0, 0.0, 4)
    # the benchmark's raw state is right-positive: a right turn becomes a negative (clockwise) yaw rate and steering
    obs = dict(state=np.array([5, 6, 0.3, 12.0, 0.2, 0.1, -1.0], dtype=np.float32), command=3)
    assert np.allclose(ego_state_from_observation(obs), [12.0, -0.2, -0.1, -1.0, 0, 0, 0, 1])


def test_interface_on_a_benchmark_observation():
    env = hw.make_scenario("intersection-left", seed=0)
    obs = env.observation()
    batch = observation_batch(obs)
    assert batch["bev"].shape == (1, 64, 64, 5) and batch["ego"].shape == (1, EGO_DIM)
    assert "heading" not in batch["prompt"][0] and "turn left" in batch["prompt"][0]
    wp = hw.expert_waypoints(env)
    assert np.allclose(waypoints_to_controls(wp, float(obs["state"][3])), hw.waypoints_to_controls(wp, obs["state"][3]))


# ------------------------------------------------------------------------------------------------ DAgger
class ConstantPolicy:
    """A 'learner' that always brakes gently and steers a little left: far from the expert."""
    action = np.array([-0.3, -0.01])

    def reset(self, seed=0):
        pass

    def __call__(self, obs):
        return self.action.copy()


def test_dagger_relabels_learner_visited_states_with_the_expert(monkeypatch):
    monkeypatch.setattr(rollouts, "_worker_policy", ConstantPolicy())
    ep = rollouts.dagger_episode(("highway", 3, 2.0, 0.0, 5, 0))  # 20 steps, relabel every 5th
    assert ep["steps"] == 20 and ep["expert_steps"] == 0
    labels = ep["frames"]["waypoints"].reshape(-1, K, 2)
    assert len(labels) == 4
    # replay the learner to each relabelled state: the label is the expert's plan from there, not the learner's
    env = hw.make_scenario("highway", 3, horizon_s=2.0)
    for j in range(4):
        expected = hw.expert_waypoints(env)
        assert np.allclose(labels[j], expected, atol=1e-4)
        obs = env.observation()
        assert np.array_equal(ep["frames"]["observation.bev"][j], obs["bev"])
        assert np.allclose(ep["frames"]["observation.state"][j], obs["state"])
        for _ in range(5):
            env.step(ConstantPolicy.action)
    # the learner slows down; the expert keeps ~25 m/s: its label runs far ahead of the learner's future
    assert labels[-1, -1, 0] > 50.0 and env.ego.speed < 25.0
    mixed = rollouts.dagger_episode(("highway", 3, 2.0, 1.0, 5, 0))  # β = 1: the expert drives every step
    assert mixed["expert_steps"] == mixed["steps"]


# ------------------------------------------------------------------------------------------------ the shield
def agent_row(x, y, vx, present=1.0):
    return [present, x, y, vx, 0.0, 1.0, 0.0]


def test_shield_brakes_for_an_imminent_collision_and_clamps():
    shield = Shield(ttc=1.5, max_accel=3.0, max_brake=5.0, max_steer=0.5)
    agents = np.zeros((hw.NUM_AGENTS, hw.AGENT_FEATURES))
    agents[0] = agent_row(15.0, 0.3, 5.0)  # 10 m gap, closing at 15 m/s: TTC 0.67 s
    assert shield.time_to_collision(20.0, agents) == pytest.approx(10 / 15)
    assert np.allclose(shield([0.8, 0.0], 20.0, agents), [-1.0, 0.0])  # full brake (−5 m/s²)
    agents[0] = agent_row(40.0, 0.3, 15.0)  # 35 m gap at 5 m/s: 7 s — only the clamps act
    assert np.allclose(shield([0.8, 0.9], 20.0, agents), [3.0 / 5.0, 0.5 / (math.pi / 4)])
    assert np.allclose(shield([-0.2, -0.1], 20.0, agents), [-0.2, -0.1])
    agents[0] = agent_row(12.0, 3.5, 0.0)  # stopped, but in the next lane
    agents[1] = agent_row(-8.0, 0.0, 30.0)  # close, but behind
    agents[2] = agent_row(9.0, 0.0, 0.0, present=0.0)  # an empty row
    assert shield.time_to_collision(20.0, agents) == math.inf
    assert shield.triggered == 1


# ------------------------------------------------------------------------------------------------ adapters
class FakePolicy(torch.nn.Module):
    """Answers fixed waypoints and records what it was given."""

    def __init__(self, waypoints):
        super().__init__()
        self.waypoints, self.seen = torch.as_tensor(waypoints, dtype=torch.float32), []

    def predict_waypoints(self, batch, noise=None):
        self.seen.append(batch)
        return self.waypoints[None]


@dataclasses.dataclass
class FakeTrajectory:  # navsim.common.dataclasses.Trajectory: poses (8, 3), local coordinates
    poses: np.ndarray


class FakeSensorConfig(SimpleNamespace):
    @classmethod
    def build_no_sensors(cls):
        return cls(**{name: False for name in ("cam_f0", "cam_l0", "cam_l1", "cam_l2", "cam_r0", "cam_r1", "cam_r2",
                                               "cam_b0", "lidar_pc")})


FAKE_NAVSIM = SimpleNamespace(Trajectory=FakeTrajectory, SensorConfig=FakeSensorConfig)


def navsim_input(lidar_points):
    """An AgentInput: 4 history frames of EgoStatus (pose relative to the current one, velocity, acceleration,
    driving command one-hot [left, straight, right, unknown]) and a merged LiDAR cloud (6, n)."""
    statuses = [SimpleNamespace(ego_pose=np.array([-3.0 * (3 - i), 0.0, 0.05 * (3 - i)]),
                                ego_velocity=np.array([6.0, 0.0]), ego_acceleration=np.array([0.5, 0.0]),
                                driving_command=np.array([1, 0, 0, 0])) for i in range(4)]
    pc = np.zeros((6, len(lidar_points)), dtype=np.float32)
    pc[:3] = np.asarray(lidar_points, dtype=np.float32).T
    return SimpleNamespace(ego_statuses=statuses, cameras=[None] * 4,
                           lidars=[SimpleNamespace(lidar_pc=None)] * 3 + [SimpleNamespace(lidar_pc=pc)])


def test_navsim_adapter_frames_inputs_and_trajectory():
    plan = np.array([[3.0, 0.2], [6.0, 0.8], [9.0, 1.8], [12.0, 3.2], [15.0, 5.0]])
    agent = adapters.NavSimAgent(policy=FakePolicy(plan), navsim=FAKE_NAVSIM)
    agent.initialize()
    assert agent.name() == "driving_vla" and agent.get_sensor_config().lidar_pc is True
    # an obstacle 10 m ahead and 3 m to the left (NAVSIM: x forward, y left), 1 m up; a ground return; one too high
    trajectory = agent.compute_trajectory(navsim_input([[10.0, 3.0, 1.0], [5.0, -2.0, 0.05], [20.0, 0.0, 8.0]]))
    batch = agent.policy.seen[-1]
    agents_channel = batch["bev"][0, ..., hw.BEV_CHANNELS.index("agents")].numpy()
    row, col = hw.BEV.ego_row - 10, hw.BEV.ego_col - 3  # ahead = up the raster, left = left of the ego's column
    assert agents_channel[row, col] == 255 and agents_channel.sum() == 255  # only the obstacle
    assert np.allclose(hw.bev_to_rgb(batch["bev"][0].numpy())[row, col], hw.BEV_COLOURS[4])
    assert batch["bev"][0, ..., :4].sum() == 0  # no map in AgentInput
    # ego state: speed 6, yaw rate from the previous pose (heading 0.05 rad back then → turning right at 0.1 rad/s)
    assert np.allclose(batch["ego"][0, :4].numpy(), [6.0, -0.1, adapters.steering_from_yaw_rate(-0.1, 6.0), 0.5])
    assert batch["ego"][0, 4:].tolist() == [0, 1, 0, 0] and batch["prompt"] == ["speed 6.0 m/s; turn left now at the "
                                                                                "intersection"]
    poses = trajectory.poses
    assert poses.shape == (8, 3) and np.allclose(poses[:5, :2], plan)
    assert np.allclose(poses[5:, :2], plan[-1] + np.arange(1, 4)[:, None] * (plan[-1] - plan[-2]))
    assert np.allclose(poses[0, 2], math.atan2(0.2, 3.0)) and np.all(np.diff(poses[:5, 2]) > 0)  # turning left


def test_navsim_adapter_needs_the_devkit_or_a_stand_in():
    agent = adapters.NavSimAgent(policy=FakePolicy(np.zeros((K, 2))))
    try:
        import navsim.common.dataclasses  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="autonomousvision/navsim"):
            agent.get_sensor_config()


def carla_gps(x: float, y: float, lat_ref: float = 42.0, lon_ref: float = 2.0) -> tuple[float, float]:
    """CARLA's forward geo-projection (`carla.Map.transform_to_geolocation` about (lat_ref, lon_ref))."""
    r, scale = adapters.EARTH_RADIUS_EQUA, math.cos(math.radians(lat_ref))
    mx = scale * lon_ref * math.pi * r / 180.0 + x
    my = scale * r * math.log(math.tan((90.0 + lat_ref) * math.pi / 360.0)) - y
    return 360.0 * math.atan(math.exp(my / (r * scale))) / math.pi - 90.0, mx * 180.0 / (math.pi * r * scale)


class FakeControl(SimpleNamespace):  # carla.VehicleControl
    steer = throttle = brake = 0.0


def test_carla_frames():
    # the ego at (100, 50) facing east (yaw 0): a point 10 m east and 3 m north (−y in CARLA) is ahead-left
    assert np.allclose(adapters.carla_world_to_ego([[110.0, 47.0]], [100.0, 50.0], 0.0), [[10.0, 3.0]])
    # facing south (yaw +90°, clockwise): east is on the driver's left
    assert np.allclose(adapters.carla_world_to_ego([[105.0, 50.0]], [100.0, 50.0], math.pi / 2), [[0.0, 5.0]])
    assert np.allclose(adapters.carla_lidar_to_ego([[4.0, 2.0, 1.0, 0.9]]), [[4.0, -2.0, 1.0]])  # y right → left
    assert np.allclose(adapters.gps_to_carla(*carla_gps(123.4, -56.7)), [123.4, -56.7], atol=1e-3)
    assert adapters.compass_to_carla_yaw(math.pi / 2) == pytest.approx(0.0)  # east
    assert adapters.compass_to_carla_yaw(0.0) == pytest.approx(-math.pi / 2)  # north = −y


def test_bench2drive_adapter_on_fake_inputs():
    agent = adapters.Bench2DriveAgent(policy=FakePolicy(np.zeros((K, 2))), control_cls=FakeControl)
    agent.setup("unused")
    assert {s["id"] for s in agent.sensors()} == {"gps", "imu", "speed", "lidar"}
    # a route east along y = 50, then a left turn (north, −y) at x = 130
    transform = lambda x, y: SimpleNamespace(location=SimpleNamespace(x=x, y=y, z=0.0))  # noqa: E731
    plan = [(transform(x, 50.0), 4) for x in np.arange(90.0, 130.0, 2.0)]
    plan += [(transform(130.0, 50.0), 1)] + [(transform(130.0, y), 4) for y in np.arange(48.0, 10.0, -2.0)]
    agent.set_global_plan([None] * len(plan), plan)
    lat, lon = carla_gps(100.0, 50.0)
    data = dict(gps=(0, np.array([lat, lon, 0.0])), imu=(0, np.array([0.5, 0, 9.8, 0, 0, -0.1, math.pi / 2])),
                speed=(0, {"speed": 8.0}), lidar=(0, np.array([[10.0, -3.0, -1.5, 1.0]])))  # 10 m ahead, 3 m left
    batch, speed = agent.build_inputs(data)
    bev = batch["bev"][0].numpy()
    route = bev[..., hw.BEV_CHANNELS.index("route")]
    assert route[hw.BEV.ego_row - 20, hw.BEV.ego_col] == 255  # the route runs ahead ...
    assert route[hw.BEV.ego_row - 30, hw.BEV.ego_col - 15] == 255  # ... then turns left (north)
    assert route[hw.BEV.ego_row - 30, hw.BEV.ego_col + 15] == 0
    assert bev[hw.BEV.ego_row - 10, hw.BEV.ego_col - 3, hw.BEV_CHANNELS.index("agents")] == 255
    assert batch["prompt"] == ["speed 8.0 m/s; in 30 m turn left at the intersection"]
    assert np.allclose(batch["ego"][0].numpy(), [8.0, 0.1, adapters.steering_from_yaw_rate(0.1, 8.0), 0.5, 0, 1, 0, 0])
    # controls: in range, and the right sign for a plan to the left / a plan to stop
    left_plan = np.array([[4.0, 0.5], [8.0, 2.0], [12.0, 4.5], [15.0, 8.0], [17.0, 12.0]])
    agent.policy = FakePolicy(left_plan)
    control = agent.run_step(data, 0.0)
    assert -1.0 <= control.steer < 0.0 and 0.0 <= control.throttle <= 0.75 and control.brake == 0.0
    stop = agent.control(np.zeros((K, 2)), 8.0)
    assert stop.brake == 1.0 and stop.throttle == 0.0
    straight = agent.control(np.array([[5.0 * (i + 1), 0.0] for i in range(K)]), 8.0)
    assert straight.steer == pytest.approx(0.0) and straight.throttle > 0.0 and straight.brake == 0.0


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private demo/expert cache for the module's training runs."""
    old = os.environ.get("EMBODIED_CACHE")
    os.environ["EMBODIED_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        del os.environ["EMBODIED_CACHE"]
    else:
        os.environ["EMBODIED_CACHE"] = old


def smoke(tmp_path, **overrides) -> DrivingVLAConfig:
    return dataclasses.replace(PRESETS["smoke"], run_dir=str(tmp_path / "run"), **overrides)


def test_training_view_of_the_benchmark_demos(cache):
    """The training samples rebuild from the stored demo frames exactly what the policy gets in closed loop from
    the live observation (ego features, prompt), and the label is the expert's own next 2.5 s."""
    demos = hw.collect_demos(dv_train.demo_spec(PRESETS["smoke"]), progress=False)
    tokenizer = train_bpe_tokenizer(rollouts.prompts_of([demos]), vocab_size=300)
    data = rollouts.WaypointDataset([demos], tokenizer, max_text_tokens=48)
    assert len(data) == demos.num_frames == 2 * 40  # 4 s at 10 Hz; the expert drove on past the end for labels
    env = hw.make_scenario("highway", 0, horizon_s=4.0)
    for t in range(3):
        obs = env.observation()
        item = data[t]
        assert torch.equal(item["bev"], torch.as_tensor(obs["bev"]))
        assert np.allclose(item["ego"], ego_state_from_observation(obs), atol=1e-6)
        assert rollouts.prompts_of([demos])[t] == process_route(obs["text"])
        assert np.allclose(item["waypoints"].view(K, 2), hw.expert_waypoints(env), atol=1e-3)
        env.step(env.expert_action())
    stats = rollouts.ego_and_waypoint_stats(demos)
    labels = torch.stack([data[i]["waypoints"] for i in range(len(data))])
    assert np.allclose(stats["waypoints"]["mean"], labels.mean(0), atol=1e-4)


@pytest.mark.parametrize("variant", [dict(model="vla", head="flow"), dict(model="bc")], ids=["vla-flow", "bc"])
def test_train_evaluate_reload(cache, tmp_path, variant, monkeypatch):
    cfg = smoke(tmp_path, **variant)
    saved = {}
    save = dv_train.save_checkpoint

    def keep_the_live_policy(run_dir, step, policy, *args, **kwargs):  # the trained module itself, not a copy
        saved[step] = policy
        return save(run_dir, step, policy, *args, **kwargs)

    monkeypatch.setattr(dv_train, "save_checkpoint", keep_the_live_policy)
    results = dv_train.train(cfg)
    run = Path(cfg.run_dir)
    assert set(results) == {"expert", dv_train.method_name(cfg)}
    assert results[dv_train.method_name(cfg)]["highway"]["episodes"][0] == 1
    assert len(read_metrics(run)) == dv_train.total_steps(cfg) // cfg.log_every
    assert (run / "dagger" / "round1" / "meta.json").exists() and (run / "eval.md").exists()
    assert (run / "phase0" / "model.safetensors").exists() and (run / "phase1" / "config.json").exists()
    assert len(list(run.glob("*.gif"))) == 1
    checkpoint = last_checkpoint(run)
    assert checkpoint.name == f"{dv_train.total_steps(cfg):08d}"
    # checkpoint round trip: the policy rebuilt from the last checkpoint alone has the trained policy's weights,
    # buffers (normalisation statistics) and plans
    meta, weights = read_config(checkpoint), load_file(checkpoint / "model.safetensors")
    trained, policy = saved[dv_train.total_steps(cfg)].eval(), policy_from_meta(meta, weights)
    assert trained.state_dict().keys() == policy.state_dict().keys()
    assert all(torch.equal(trained.state_dict()[k], v) for k, v in policy.state_dict().items())
    batch, noise = random_batch(2), torch.randn(2, K, 2)
    assert torch.equal(trained.predict_waypoints(batch, noise), policy.predict_waypoints(batch, noise))
    # eval.py on the checkpoint: the same episodes, the same metrics (the flow noise is seeded per episode)
    out = dv_eval.main(dv_eval.EvalArgs(checkpoint=checkpoint, workers=1, out_dir=tmp_path / "eval"))
    assert out["rows"] == json.loads((run / "eval.json").read_text())
    assert (tmp_path / "eval" / "highway_seed1000000.gif").exists()


def test_resume_is_exact(cache, tmp_path, monkeypatch):
    """A run killed right after its step-9 checkpoint (inside the DAgger round) and resumed ends with bit-identical
    weights to an uninterrupted one."""
    straight = smoke(tmp_path / "a", eval_seeds=0, log_every=1)
    dv_train.train(straight)
    interrupted = smoke(tmp_path / "b", eval_seeds=0, log_every=1)
    save = dv_train.save_checkpoint

    def save_then_die(run_dir, step, *args, **kwargs):
        save(run_dir, step, *args, **kwargs)
        if step == 9:
            raise KeyboardInterrupt

    monkeypatch.setattr(dv_train, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        dv_train.train(interrupted)
    monkeypatch.setattr(dv_train, "save_checkpoint", save)
    dv_train.train(dataclasses.replace(interrupted, resume=True))
    a = load_file(last_checkpoint(straight.run_dir) / "model.safetensors")
    b = load_file(last_checkpoint(interrupted.run_dir) / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_metrics(straight.run_dir) == read_metrics(interrupted.run_dir)  # the same losses at every step


def test_readme_table_is_regenerated_from_its_episode_rows():
    """`results/eval_tiny.md` is exactly what `tools/eval_table.py` computes from `results/eval_tiny.json`, and an
    edit of one episode's result changes the table (so the table cannot drift from its rows)."""
    import importlib.util
    results = Path(__file__).parents[1] / "results"
    spec = importlib.util.spec_from_file_location("eval_table", Path(__file__).parents[1] / "tools" / "eval_table.py")
    eval_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(eval_table)
    rows = json.loads((results / "eval_tiny.json").read_text())
    assert eval_table.render(rows) == (results / "eval_tiny.md").read_text()
    rows["BC"][0]["score"] += 0.5
    assert eval_table.render(rows) != (results / "eval_tiny.md").read_text()
