#!/usr/bin/env bash
# One-time setup on a fresh machine: Debian packages for headless MuJoCo rendering, a virtualenv in .venv with the
# pinned requirements, and this repo installed in editable mode. Safe to re-run.
#   bash setup.sh          # torch stack + JAX stack (dreamer/) + simulators + test tools
set -euo pipefail
cd "$(dirname "$0")"

# Headless rendering: MuJoCo renders through EGL on Mesa's software renderer (MUJOCO_GL=egl).
debs="libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri libglu1-mesa"
missing=""
for p in $debs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  echo "installing Debian packages:$missing"
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq $missing >/dev/null
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -r requirements/dev.txt
# openpi's policy client (tests of common/serve.py); --no-deps: it declares numpy<2, yet runs on our numpy 2
.venv/bin/pip install -q --no-deps openpi-client==0.1.2
.venv/bin/pip install -q -r requirements/jax.txt
# RL frameworks for adapters/ (RLinf, verl, EmbodiChain): --no-deps, since their declared requirements conflict
# with our pins (transformers, tensordict, wandb) while the parts the adapters use run on them; see
# requirements/frameworks.txt
.venv/bin/pip install -q --no-deps -r requirements/frameworks.txt
# The Unitree G1 description of the humanoid benchmark (common/envs/humanoid.py) is read out of MuJoCo Playground's
# wheel (Apache-2.0 MJCF, no meshes). --no-deps: it wants mujoco >= 3.6 and JAX's MJX to run; we only read its XML.
.venv/bin/pip install -q --no-deps playground==0.2.0
.venv/bin/pip install -q --no-deps -e .
echo "setup done: activate with  source .venv/bin/activate"
