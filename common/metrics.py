"""Metrics shared by the benchmarks."""

from __future__ import annotations

import math

import numpy as np


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% for z = 1.96).

    Preferred over the normal approximation because it stays inside [0, 1] and is sensible at 0/n and n/n, which is
    where small evaluation budgets often land (Wilson, 1927; Brown, Cai & DasGupta, 2001).
    """
    if n <= 0:
        raise ValueError(f"need at least one trial, got n={n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


# ------------------------------------------------------------------------------------------------ driving
# nuPlan's comfort limits, as used by its closed-loop `ego_is_comfortable` metric and copied by NAVSIM's PDM score
# (navsim/planning/simulation/planner/pdm_planner/scoring/pdm_comfort_metrics.py). Longitudinal acceleration has
# asymmetric bounds; the others are bounds on absolute values.
NUPLAN_COMFORT_LIMITS = dict(
    min_lon_accel=-4.05,  # [m/s^2]
    max_lon_accel=2.40,  # [m/s^2]
    max_abs_lat_accel=4.89,  # [m/s^2]
    max_abs_yaw_rate=0.95,  # [rad/s]
    max_abs_yaw_accel=1.93,  # [rad/s^2]
    max_abs_lon_jerk=4.13,  # [m/s^3]
    max_abs_mag_jerk=8.37,  # [m/s^3]
)


def comfort_metrics(heading, speed, dt: float, window_s: float = 0.7) -> dict[str, float | bool]:
    """Extremes of an ego trajectory's longitudinal/lateral acceleration, jerk and yaw motion, and whether all of them
    are within `NUPLAN_COMFORT_LIMITS`.

    `heading` [rad] and `speed` [m/s] are sampled every `dt` seconds. Derivatives follow nuPlan/NAVSIM: Savitzky-Golay
    filters of polynomial order 2 (order 3 for the yaw acceleration) on the unwrapped heading and on the speed; lateral
    acceleration is speed x yaw rate, and the "magnitude" jerk is the derivative of |(a_lon, a_lat)| (as NAVSIM's
    `_extract_ego_jerk(..., "magnitude")`). nuPlan's windows are 15 samples at 20 Hz; `window_s` keeps their ~0.7 s
    at other rates. A trajectory of fewer than 5 samples is too short to judge and counts as comfortable.
    """
    from scipy.signal import savgol_filter  # scipy comes with the simulator stack (requirements/sim.txt), not base

    heading, speed = np.unwrap(np.asarray(heading, dtype=np.float64)), np.asarray(speed, dtype=np.float64)
    if heading.shape != speed.shape or heading.ndim != 1:
        raise ValueError(f"heading and speed must be 1-D and equally long, got {heading.shape} and {speed.shape}")
    names = ("max_lon_accel", "min_lon_accel", "max_abs_lat_accel", "max_abs_yaw_rate", "max_abs_yaw_accel",
             "max_abs_lon_jerk", "max_abs_mag_jerk")
    if len(speed) < 5:
        return {**dict.fromkeys(names, 0.0), "comfortable": True}
    window = min(len(speed), max(5, int(round(window_s / dt)) | 1))  # odd, at least 5 (order-3 fit), at most T
    window -= 1 - window % 2

    def deriv(y, order=1, poly=2):
        return savgol_filter(y, window_length=window, polyorder=poly, deriv=order, delta=dt)

    lon_accel = deriv(speed)
    yaw_rate = deriv(heading)
    lat_accel = speed * yaw_rate
    values = dict(
        max_lon_accel=lon_accel.max(), min_lon_accel=lon_accel.min(), max_abs_lat_accel=np.abs(lat_accel).max(),
        max_abs_yaw_rate=np.abs(yaw_rate).max(), max_abs_yaw_accel=np.abs(deriv(heading, 2, 3)).max(),
        max_abs_lon_jerk=np.abs(deriv(lon_accel)).max(),
        max_abs_mag_jerk=np.abs(deriv(np.hypot(lon_accel, lat_accel))).max())
    values = {k: float(v) for k, v in values.items()}
    lim = NUPLAN_COMFORT_LIMITS
    comfortable = (lim["min_lon_accel"] <= values["min_lon_accel"] and values["max_lon_accel"] <= lim["max_lon_accel"]
                   and all(values[k] <= lim[k] for k in names[2:]))
    return {**values, "comfortable": bool(comfortable)}


def pdm_style_score(no_collision: float, drivable: float, ttc: float, comfort: float, progress: float) -> float:
    """NC · DAC · (5·TTC + 2·C + 5·EP) / 12: the weighting of NAVSIM's PDM score (Dauner et al., 2024, eq. 1;
    `PDMScorerConfig`: progress 5, ttc 5, comfortable 2), for episodes scored by another simulator. Each input is in
    [0, 1]. It is a "PDM-style" score, not NAVSIM's PDMS: the sub-metrics are computed differently (see the caller)."""
    inputs = dict(no_collision=no_collision, drivable=drivable, ttc=ttc, comfort=comfort, progress=progress)
    for name, v in inputs.items():
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {v}")
    return float(no_collision * drivable * (5 * ttc + 2 * comfort + 5 * progress) / 12)
