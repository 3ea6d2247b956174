import numpy as np
import pytest
from highway_env.road.road import Road, RoadNetwork
from highway_env.vehicle.behavior import IDMVehicle
from highway_env.vehicle.kinematics import Vehicle

from common.envs.highway import (ACCELERATION_RANGE, BEV, BEV_CHANNELS, DT, SCENARIOS, STEERING_RANGE, DemoSpec,
                                 EpisodeLog, collect_demos, describe, describe_state, episode_metrics, evaluate,
                                 expert_waypoints, format_results, future_waypoints, make_scenario, seeds,
                                 time_to_collision, to_ego_frame, waypoints_to_controls)
from common.metrics import NUPLAN_COMFORT_LIMITS, comfort_metrics, pdm_style_score

NORTH = -np.pi / 2  # highway-env draws y downwards: heading -90° drives up the screen


def test_unknown_scenario_and_split_are_errors():
    with pytest.raises(ValueError, match="valid scenarios: highway, merge, roundabout, intersection-left"):
        make_scenario("parking")
    with pytest.raises(ValueError, match="splits are"):
        seeds("test", 3)
    assert not set(seeds("train", 100)) & set(seeds("eval", 100))


def test_every_scenario_resets_and_steps():
    before = {k: getattr(IDMVehicle, k) for k in ("DISTANCE_WANTED", "COMFORT_ACC_MAX", "COMFORT_ACC_MIN")}
    for name in SCENARIOS:  # merge-v0 and roundabout-v0 crash in reset() under ContinuousAction without the patch
        env = make_scenario(name, seed=0)
        obs = env.observation()
        assert obs["bev"].shape == (BEV.size, BEV.size, len(BEV_CHANNELS)) and obs["bev"].dtype == np.uint8
        assert obs["state"].shape == (7,) and obs["agents"].shape == (8, 7) and isinstance(obs["text"], str)
        assert obs["bev"][BEV.ego_row, BEV.ego_col, 0] == 255  # the ego stands on the drivable area
        assert obs["agents"][:, 0].sum() >= 1  # someone else is on the road
        for _ in range(3):
            obs, done, info = env.step(np.zeros(2))
        assert env.steps == 3 and not done
    # intersection-v0 assigns IDM constants on the class of its traffic: it must not be IDMVehicle itself
    assert {k: getattr(IDMVehicle, k) for k in before} == before


def test_render_is_not_black():
    env = make_scenario("intersection-left", seed=0, render_size=64)
    image = env.observation()["image"]
    assert image.shape == (64, 64, 3) and image.std() > 10  # SDL_VIDEODRIVER=dummy would give all zeros


def test_episodes_are_reproducible():
    def run(seed):
        env = make_scenario("intersection-straight", seed)
        for _ in range(20):
            env.step(env.expert_action())
        return np.array([v.position for v in env.env.road.vehicles])

    a, b, c = run(3), run(3), run(4)
    np.testing.assert_array_equal(a, b)
    assert a.shape != c.shape or not np.allclose(a, c)


def test_waypoint_labels_in_the_ego_frame():
    t = np.arange(40) * DT
    # heading north (up the screen, world -y) at 10 m/s: the labels lie straight ahead at 10 m/s x 0.5 k
    xy = np.stack([np.full_like(t, 3.0), 50.0 - 10.0 * t], -1)
    waypoints, valid = future_waypoints(xy, np.full_like(t, NORTH))
    np.testing.assert_allclose(waypoints[0], [[5, 0], [10, 0], [15, 0], [20, 0], [25, 0]], atol=1e-9)
    assert valid[:15].all() and valid[15].tolist() == [True] * 4 + [False] and not valid[-1].any()
    # the driver's left, heading north, is west on the render (world -x): y > 0
    np.testing.assert_allclose(to_ego_frame([[-2.0, 40.0]], [0.0, 50.0], NORTH), [[10.0, 2.0]])
    np.testing.assert_allclose(to_ego_frame([[1.0, 1.0]], [0.0, 0.0], 0.0), [[1.0, -1.0]])  # heading east: +y is right


def test_dagger_labels_match_the_expert_rollout_and_leave_the_env_alone():
    env = make_scenario("merge", seed=1)
    for _ in range(10):
        env.step(env.expert_action())
    position, steps = env.ego.position.copy(), env.steps
    labels = expert_waypoints(env)
    np.testing.assert_array_equal(env.ego.position, position)
    assert env.steps == steps
    xy, heading = [position], [env.ego.heading]
    for _ in range(25):
        env.advance(env.expert_action())
        xy.append(env.ego.position.copy()), heading.append(env.ego.heading)
    recorded, valid = future_waypoints(np.array(xy), np.array(heading))
    assert valid[0].all()
    np.testing.assert_allclose(labels, recorded[0], atol=1e-9)  # the copy is exact: same traffic, same expert
    assert 10 < labels[0, 0] < 20 and labels[-1, 0] > 50  # ~20-30 m/s


def _track(radius, speed, steps=150, acceleration=0.0):
    """Drive a bare highway-env Vehicle along a reference (straight if radius is None, else a left-hand circle) with
    pure pursuit on waypoints 0.5 s apart; returns the cross-track errors once settled (2 s)."""
    vehicle = Vehicle(Road(RoadNetwork.straight_road_network(1)), [0.0, 0.0], heading=0.0, speed=speed)

    def ref(s):
        return np.array([s, 0.0]) if radius is None else radius * np.array([np.sin(s / radius),
                                                                            np.cos(s / radius) - 1])

    s, errors = 0.0, []
    for k in range(steps):
        candidates = np.linspace(s - 2, s + 5, 701)
        points = np.array([ref(c) for c in candidates])
        i = np.argmin(np.linalg.norm(points - vehicle.position, axis=1))
        s = candidates[i]
        errors.append(np.linalg.norm(points[i] - vehicle.position))
        v = speed + acceleration * k * DT
        wps = np.array([ref(s + v * 0.5 * j + acceleration * (0.5 * j) ** 2 / 2) for j in range(1, 6)])
        action = waypoints_to_controls(to_ego_frame(wps, vehicle.position, vehicle.heading), vehicle.speed)
        vehicle.act({"acceleration": action[0] * ACCELERATION_RANGE, "steering": action[1] * STEERING_RANGE})
        vehicle.step(DT)
    return np.array(errors[20:]), vehicle


def test_pure_pursuit_follows_straight_and_curved_paths():
    errors, vehicle = _track(None, 25.0)
    assert errors.max() < 0.02 and abs(vehicle.speed - 25) < 0.05
    for radius, speed in [(13.0, 6.0), (60.0, 20.0)]:
        errors, vehicle = _track(radius, speed)
        assert errors.mean() < 0.05 and errors.max() < 0.1, (radius, errors.mean(), errors.max())
        # textbook pure pursuit (curvature 2y/Ld²) on this bicycle model would not hold the circle this closely
    errors, vehicle = _track(None, 10.0, steps=60, acceleration=1.0)
    assert abs(vehicle.speed - 16.0) < 0.2 and errors.max() < 0.02
    # a constant-acceleration plan gives that acceleration at once
    wps = np.array([[10 * t + t * t, 0.0] for t in 0.5 * np.arange(1, 6)])
    np.testing.assert_allclose(waypoints_to_controls(wps, 10.0), [2.0 / ACCELERATION_RANGE, 0.0], atol=1e-9)


def test_pure_pursuit_tracks_the_experts_plan_in_the_env():
    env = make_scenario("highway", seed=0)
    for _ in range(20):
        env.advance(env.expert_action())
    expert = env.clone()
    plan = []
    for _ in range(50):
        expert.advance(expert.expert_action(), record=False)
        plan.append(expert.ego.position.copy())
    plan = np.array(plan)
    for k in range(25):  # re-planned every step from the plan's +0.5 .. +2.5 s points
        env.advance(waypoints_to_controls(to_ego_frame(plan[k + 4:k + 25:5], env.ego.position, env.ego.heading),
                                          env.ego.speed))
        assert np.linalg.norm(env.ego.position - plan[k]) < 0.05, k


def _log(speed, heading=None, collision=False, offroad=False, ttc=None, scenario="highway"):
    speed = np.asarray(speed, dtype=float)
    heading = np.zeros_like(speed) if heading is None else np.asarray(heading, dtype=float)
    x = np.concatenate([[0.0], np.cumsum(speed[:-1] * DT)])
    log = EpisodeLog(scenario, 0, x=list(x), y=[0.0] * len(x), heading=list(heading), speed=list(speed),
                     progress=list(x), offroad=[False] * len(x), ttc=[np.inf] * len(x), collision=collision,
                     arrived=not collision)
    if offroad:
        log.offroad[len(x) // 2] = True
    if ttc is not None:
        log.ttc[len(x) // 2] = ttc
    return log


def test_metrics_on_hand_made_episodes():
    smooth = episode_metrics(_log(np.full(100, 20.0)), expert_progress=198.0)
    assert smooth["score"] == 1.0 and smooth["ep"] == 1.0 and smooth["comfort"] == 1.0
    assert smooth["progress"] == pytest.approx(198.0)
    slower = episode_metrics(_log(np.full(100, 10.0)), expert_progress=198.0)
    assert slower["ep"] == pytest.approx(0.5) and slower["score"] == pytest.approx((5 + 2 + 5 * 0.5) / 12)
    crash = episode_metrics(_log(np.full(50, 20.0), collision=True), expert_progress=198.0)
    assert crash["collision"] == 1.0 and crash["score"] == 0.0 and crash["arrived"] == 0.0
    off = episode_metrics(_log(np.full(100, 20.0), offroad=True), expert_progress=198.0)
    assert off["drivable"] == 0.0 and off["score"] == 0.0
    close = episode_metrics(_log(np.full(100, 20.0), ttc=0.5), expert_progress=198.0)
    assert close["ttc"] == 0.0 and close["min_ttc"] == 0.5 and close["score"] == pytest.approx(7 / 12)
    # a hard brake: 20 -> 0 m/s at -8 m/s² (nuPlan allows -4.05)
    brake = np.concatenate([np.full(30, 20.0), np.maximum(20.0 - 8.0 * DT * np.arange(1, 71), 0.0)])
    hard = episode_metrics(_log(brake), expert_progress=0.0)
    assert hard["comfort"] == 0.0 and hard["min_lon_accel"] < NUPLAN_COMFORT_LIMITS["min_lon_accel"]
    assert hard["min_lon_accel"] == pytest.approx(-8.0, abs=1.5)
    assert hard["ep"] == 1.0  # nobody made 5 m more than the other: progress is not compared (NAVSIM's rule)


def test_comfort_and_score_formulas():
    t = np.arange(200) * DT
    turn = comfort_metrics(0.3 * t, np.full_like(t, 10.0), DT)  # 0.3 rad/s at 10 m/s: 3 m/s² lateral
    assert turn["comfortable"] and turn["max_abs_yaw_rate"] == pytest.approx(0.3)
    assert turn["max_abs_lat_accel"] == pytest.approx(3.0)
    fast = comfort_metrics(1.2 * t, np.full_like(t, 3.0), DT)  # yaw rate 1.2 > 0.95 rad/s
    assert not fast["comfortable"]
    assert pdm_style_score(1, 1, 1, 1, 1) == 1.0 and pdm_style_score(0, 1, 1, 1, 1) == 0.0
    assert pdm_style_score(1, 1, 0, 0, 1) == pytest.approx(5 / 12)
    with pytest.raises(ValueError, match="progress"):
        pdm_style_score(1, 1, 1, 1, 1.5)


def test_time_to_collision():
    ego = np.array([0.0, 0.0, 0.0, 10.0, 0.0, 5.0, 2.0])  # x, y, heading, speed, steering, length, width

    def agent(x, y, heading=0.0, speed=0.0):
        return np.array([[x, y, heading, speed, 0.0, 5.0, 2.0]])

    assert time_to_collision(ego, agent(15.0, 0.0)) == pytest.approx(1.0)  # bumpers 10 m apart at 10 m/s
    assert time_to_collision(ego, agent(15.0, 0.0, speed=10.0)) == np.inf  # same speed: never closer
    assert time_to_collision(ego, agent(-15.0, 0.0, speed=20.0)) == np.inf  # behind: not the ego's to avoid
    assert time_to_collision(ego, agent(15.0, 4.5)) == np.inf  # the next lane
    assert time_to_collision(ego * [1, 1, 1, 0, 1, 1, 1], agent(6.0, 0.0)) == np.inf  # a stopped ego has none


def test_text_describes_state_and_route():
    assert describe_state(12.34, 0.0, 0, np.inf) == "speed 12.3 m/s, heading 90 deg; follow the road"
    assert (describe_state(9.0, NORTH, 1, 23.4, "intersection")
            == "speed 9.0 m/s, heading 0 deg; in 23 m turn left at the intersection")
    assert describe_state(5.0, np.pi, 2, 0.0, "roundabout").endswith("go straight now through the roundabout")
    env = make_scenario("intersection-left", seed=0)
    text = describe(env)
    assert text.startswith(f"speed {env.ego.speed:.1f} m/s, heading 0 deg; in ") and "turn left at" in text
    assert describe(make_scenario("intersection-right", seed=0)).endswith("turn right at the intersection")
    assert describe(make_scenario("roundabout", seed=0)).endswith("go straight through the roundabout")
    assert describe(make_scenario("highway", seed=0)).endswith("follow the road")


def test_bev_puts_the_ego_at_its_pixel_and_others_where_they_are():
    env = make_scenario("intersection-straight", seed=0)  # the ego heads north, up the render
    ego = env.ego
    other = env.env.road.vehicles[0] if env.env.road.vehicles[0] is not ego else env.env.road.vehicles[1]
    env.env.road.vehicles = [ego, other]
    other.position = ego.position + np.array([-4.0, -10.0])  # 10 m ahead, 4 m to the left (west)
    other.heading = ego.heading
    bev = env.bev()
    agents = bev[..., BEV_CHANNELS.index("agents")] > 0
    row, col = BEV.ego_row - 10, BEV.ego_col - 4
    assert agents[row, col] and agents[row - 2, col] and agents[row + 2, col] and not agents[row, col + 2]
    assert agents.sum() == pytest.approx(10, abs=4)  # one 5 x 2 m box at 1 m/px
    assert not agents[BEV.ego_row, BEV.ego_col]  # the ego is not drawn among the others
    route = bev[..., BEV_CHANNELS.index("route")] > 0
    assert route[:BEV.ego_row, BEV.ego_col].all()  # the straight route runs up from the ego


# The expert is not perfect in intersection-v0's dense traffic (measured: ~5% collisions over 60 episodes); these
# train seeds are ones it drives, so a regression shows up here.
EXPERT_SEEDS = {"highway": (0, 1), "merge": (0, 1), "roundabout": (0, 1), "intersection-left": (1,),
                "intersection-straight": (1,), "intersection-right": (1,)}


def test_expert_arrives_without_collision():
    assert set(EXPERT_SEEDS) == set(SCENARIOS)
    for name, expert_seeds in EXPERT_SEEDS.items():
        for seed in expert_seeds:
            env = make_scenario(name, seed, horizon_s=4.0 if name == "highway" else None)  # highway: survive 4 s
            done = False
            while not done:
                done = env.advance(env.expert_action())
            assert not env.log.collision and env.log.arrived, (name, seed, env.steps)
            assert not any(env.log.offroad), (name, seed)


def test_collect_demos_and_evaluate(tmp_path):
    spec = DemoSpec(scenarios=("merge",), episodes_per_scenario=1, horizon_s=3.0, render_size=32)
    ds = collect_demos(spec, cache_dir=tmp_path, progress=False)
    ep = ds.episode(0)
    assert len(ep["action"]) == 30 and ds.episodes[0]["task"] == "merge" and ds.episodes[0]["seed"] == 0
    assert ep["observation.images.top"].shape == (30, 32, 32, 3) and ep["observation.bev"].shape == (30, 64, 64, 5)
    assert ep["waypoints_valid"].all()  # the expert drove on after the episode for the last labels
    assert (np.diff(ep["waypoints"][:, 0::2], axis=1) > 0).all()  # driving forward: x grows along the plan
    assert collect_demos(spec, cache_dir=tmp_path, progress=False).root == ds.root  # cached
    expert = evaluate(None, ["merge"], episodes=1, horizon_s=3.0, progress=False)
    assert expert.rows[0]["ep"] == 1.0 and expert.rows[0]["collision"] == 0.0
    brake = evaluate(lambda obs: np.array([-1.0, 0.0]), ["highway"], episodes=1, horizon_s=3.0, progress=False,
                     render_size=32, gif_dir=tmp_path / "gifs")
    assert 0 < brake.rows[0]["ep"] < 0.8 and brake.rows[0]["comfort"] == 0.0
    assert (tmp_path / "gifs" / "highway_seed1000000.gif").exists()
    assert "| highway | 1 |" in format_results(brake)
    # a reference given by the caller replaces the expert's drive: EP is measured against its progress
    doubled = evaluate(lambda obs: np.array([-1.0, 0.0]), ["highway"], episodes=1, horizon_s=3.0, progress=False,
                       references={("highway", brake.rows[0]["seed"]): {"progress": 2 * brake.rows[0]["progress"]}})
    assert doubled.rows[0]["ep"] == 0.5
