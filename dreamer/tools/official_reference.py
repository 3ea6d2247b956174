"""The official DreamerV3's side of dreamer's parity test: its own functions, imported from a checkout of
github.com/danijar/dreamerv3 at run time, evaluated on fixed inputs and written with them to an .npz fixture.

    /work/venvs/dreamerv3-official/bin/python dreamer/tools/official_reference.py \\
        --official-repo /work/official/dreamerv3          # -> dreamer/tests/fixtures/official_functions.npz

Checked against commit e3f0224 ("Fix Atari frame maxpooling on reset (#213)", the repository's HEAD, the 2025
version), in a venv with jax 0.4.33 and numpy 1.26.4 (plus ninjax, elements, chex, optax: the official
requirements). Run on the CPU in float32. The test, `dreamer/tests/test_official_parity.py`, reads only the
fixture, so it needs neither the checkout nor that venv; this script imports nothing from our repository. Nothing
from the official code is copied here: every output below is computed by the official function itself.

What is run (inputs: numpy arrays drawn from `np.random.default_rng(SEED)` plus hand-picked edge values):
* `embodied.jax.nets.symlog` / `symexp`.
* `embodied.jax.outs.TwoHot(logits, bins, squash=nets.symlog, unsquash=nets.symexp)` with
  bins = linspace(−20, 20, 255): the official class configured as the 2023 paper's two-hot (bins uniform in
  symlog space), our convention; `.pred()` and `.loss(y)`. The two-hot encoding itself is not exposed, so it is
  read off the loss's gradient: at logits = 0, ∂loss/∂logits = softmax(0) − twohot(y).
* The same class as HEAD's reward/critic head builds it (`embodied.jax.heads.Head(..., 'symexp_twohot',
  bins=255)`: its own symexp-spaced bins, no squash): two-hot in raw space. Recorded to document the difference
  from ours (dreamer/README.md, "Which DreamerV3"), not to match it.
* `embodied.jax.outs.OneHot(logits, unimix=0.01).dist.logits`: the unimix categorical of the RSSM and the policy.
* `dreamerv3.rssm.RSSM.loss` (free_nats 1.0, unimix 0.01) with its networks replaced by fixed logits: the
  instance's `observe` returns given posterior logits and its `_prior` given prior logits, so the official
  `_dist` (unimix → OneHot → sum over the latents), its stop-gradients and its per-step free-nats clip all run
  as written. Recorded: the dyn and rep losses (B, T) and the gradients of their sums w.r.t. both raw logits.
* `dreamerv3.agent.lambda_return(last, term, rew, val, boot, disc, lam)` as `imag_loss` calls it
  (last = 0, boot = val), batch-major (B, H + 1), with disc = 1 − 1/333, λ = 0.95 and continuation flags that are
  mostly 0/1 with some fractional (HEAD's imag_loss passes the continue head's probability with disc = 1 and the
  discount folded into it; the same maths).
* `embodied.jax.utils.Normalize('perc', ...)` with HEAD's `retnorm` config (rate 0.01, limit 1.0, percentiles
  5/95, debias False), updated on a sequence of return batches: lo, hi and the returned scale after each update.

Every setting used is stored in the fixture next to the arrays (the scalar `setting_*` entries), together with
the official commit and the jax/numpy versions.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import numpy as np  # noqa: E402

FIXTURE = Path(__file__).parents[1] / "tests" / "fixtures" / "official_functions.npz"
SEED = 0
BINS = 255
UNIMIX = 0.01
FREE_NATS = 1.0
HORIZON = 333
LAMBDA = 0.95
RETNORM = dict(rate=0.01, limit=1.0, perclo=5.0, perchi=95.0, debias=False)  # HEAD configs.yaml `retnorm`


def inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Every input array, float32."""
    f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
    edges = np.array([0.0, 1e-6, 0.5, 1.0, 10.0, 1e3, 1e6, 1e8])
    symlog_in = np.concatenate([edges, -edges[1:], rng.normal(size=48) * np.exp(rng.uniform(-5, 10, 48))])
    edges = np.array([0.0, 1e-6, 0.5, 1.0, 5.0, 15.0, 20.0])
    symexp_in = np.concatenate([edges, -edges[1:], rng.uniform(-20, 20, 40)])

    bins = np.linspace(-20, 20, BINS).astype(np.float32)
    on_bin = np.sign(bins[[10, 126, 140, 200]]) * np.expm1(np.abs(bins[[10, 126, 140, 200]]))  # symexp(B_k)
    twohot_y = np.concatenate([[0.0, 1.0, -1.0, 0.3, -2.5, 1e3, -1e3, 1e9, -1e9, 4e8], on_bin,
                               rng.normal(size=6) * np.exp(rng.uniform(0, 12, 6))])
    twohot_logits = rng.normal(size=(len(twohot_y), BINS)) * 3.0
    twohot_logits[:4, 230] += 25.0  # a few sharply peaked rows: large predictions of either sign
    twohot_logits[4:6, 20] += 25.0

    unimix_in = rng.normal(size=(3, 4, 32)) * 2.0
    unimix_in[0, 0] = np.where(np.arange(32) == 3, 50.0, -50.0)  # near one-hot: the uniform floor shows

    b, t, stoch, classes = 2, 6, 4, 8
    kl_prior = rng.normal(size=(b, t, stoch, classes)) * 1.5
    spread = np.linspace(0.1, 2.0, b * t).reshape(b, t, 1, 1)  # KLs from well below to well above 1 nat
    kl_post = kl_prior + rng.normal(size=kl_prior.shape) * spread

    b, h = 3, 15
    lam_rew = rng.normal(size=(b, h + 1))
    lam_val = rng.normal(size=(b, h + 1)) * 5.0
    u = rng.uniform(size=(b, h + 1))
    con = np.where(u < 0.1, 0.0, np.where(u < 0.3, rng.uniform(size=(b, h + 1)), 1.0))
    lam_term = 1.0 - con

    scales, offsets = [0.5, 200.0, 1.0, 300.0, 5.0, 0.1, 80.0], [0.0, 10.0, -3.0, 50.0, 0.0, 1.0, -20.0]
    retnorm_batches = np.stack([rng.normal(size=(4, 15)) * s + o for s, o in zip(scales, offsets)])
    return {k: f32(v) for k, v in dict(
        symlog_in=symlog_in, symexp_in=symexp_in, twohot_bins=bins, twohot_y=twohot_y,
        twohot_logits=twohot_logits, unimix_in=unimix_in, kl_post_logits=kl_post, kl_prior_logits=kl_prior,
        lam_rew=lam_rew, lam_val=lam_val, lam_term=lam_term, retnorm_batches=retnorm_batches).items()}


def official_outputs(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import elements
    import jax
    import jax.numpy as jnp
    import ninjax as nj
    from dreamerv3 import agent, rssm
    from embodied.jax import heads, nets, outs, utils

    out = {"symlog_out": nets.symlog(jnp.asarray(x["symlog_in"])),
           "symexp_out": nets.symexp(jnp.asarray(x["symexp_in"]))}

    # --- two-hot: the official class with the paper's (our) bins and squashing, and HEAD's own head
    y, logits = jnp.asarray(x["twohot_y"]), jnp.asarray(x["twohot_logits"])

    def twohot_outputs(bins, **kw):
        dist = outs.TwoHot(logits, bins, **kw)
        grad = jax.grad(lambda lg: outs.TwoHot(lg, bins, **kw).loss(y).sum())(jnp.zeros_like(logits))
        return dist.pred(), dist.loss(y), jax.nn.softmax(jnp.zeros_like(logits), -1) - grad

    bins = jnp.asarray(x["twohot_bins"])
    out["twohot_pred"], out["twohot_loss"], out["twohot_encoding"] = twohot_outputs(
        bins, squash=nets.symlog, unsquash=nets.symexp)

    def head_bins(feat):
        head = heads.Head(elements.Space(np.float32, ()), "symexp_twohot", bins=BINS, name="rew")
        return head(feat).bins

    _, out["head_bins"] = nj.pure(head_bins)({}, jnp.zeros((1, 4), nets.COMPUTE_DTYPE), create=True, seed=SEED)
    out["head_pred"], out["head_loss"], out["head_encoding"] = twohot_outputs(out["head_bins"])

    # --- unimix categorical
    out["unimix_out"] = outs.OneHot(jnp.asarray(x["unimix_in"]), UNIMIX).dist.logits

    # --- KL balancing: RSSM.loss with the networks replaced by the fixed logits
    b, t, stoch, classes = x["kl_post_logits"].shape

    def kl_terms(post, prior):
        act_space = {"action": elements.Space(np.float32, (2,))}
        model = rssm.RSSM(act_space, deter=8, hidden=8, stoch=stoch, classes=classes, unimix=UNIMIX,
                          free_nats=FREE_NATS, name="dyn")
        model.observe = lambda carry, tokens, acts, reset, training: (
            carry, {}, dict(deter=jnp.zeros((b, t, 8)), logit=post))
        model._prior = lambda deter: prior
        _, _, losses, _, _ = model.loss({}, None, None, None, True)
        return losses["dyn"], losses["rep"]

    kl = lambda post, prior: nj.pure(kl_terms)({}, post, prior)[1]  # noqa: E731
    post, prior = jnp.asarray(x["kl_post_logits"]), jnp.asarray(x["kl_prior_logits"])
    out["kl_dyn"], out["kl_rep"] = kl(post, prior)
    out["kl_dyn_grad_post"], out["kl_dyn_grad_prior"] = jax.grad(lambda *a: kl(*a)[0].sum(), (0, 1))(post, prior)
    out["kl_rep_grad_post"], out["kl_rep_grad_prior"] = jax.grad(lambda *a: kl(*a)[1].sum(), (0, 1))(post, prior)

    # --- λ-returns as imag_loss calls them: last = 0, boot = val
    rew, val, term = (jnp.asarray(x[k]) for k in ("lam_rew", "lam_val", "lam_term"))
    out["lam_returns"] = agent.lambda_return(jnp.zeros_like(term), term, rew, val, val, 1 - 1 / HORIZON, LAMBDA)

    # --- return normaliser: HEAD's retnorm, several updates from its zero state
    def norm_step(batch):
        return utils.Normalize("perc", **RETNORM, name="retnorm")(batch, True)

    state, rows = {}, []
    for batch in x["retnorm_batches"]:
        state, (offset, scale) = nj.pure(norm_step)(state, jnp.asarray(batch), create=not state)
        rows.append((state["retnorm/lo/value"], state["retnorm/hi/value"], offset, scale))
    for name, column in zip(("lo", "hi", "offset", "scale"), zip(*rows)):
        out[f"retnorm_{name}"] = jnp.stack(column)
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-repo", type=Path, required=True, help="a checkout of danijar/dreamerv3")
    parser.add_argument("--out", type=Path, default=FIXTURE)
    args = parser.parse_args()
    repo = args.official_repo.resolve()
    sys.path.insert(0, str(repo))
    import jax

    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    x = inputs(np.random.default_rng(SEED))
    settings = dict(
        seed=SEED, bins=BINS, bins_low=-20.0, bins_high=20.0, unimix=UNIMIX, free_nats=FREE_NATS,
        lam_disc=1 - 1 / HORIZON, lam_lambda=LAMBDA, retnorm_rate=RETNORM["rate"], retnorm_limit=RETNORM["limit"],
        retnorm_perclo=RETNORM["perclo"], retnorm_perchi=RETNORM["perchi"], retnorm_debias=RETNORM["debias"])
    meta = dict(official_commit=commit, jax_version=jax.__version__, numpy_version=np.__version__)
    arrays = {**x, **official_outputs(x), **{f"setting_{k}": np.asarray(v) for k, v in settings.items()},
              **{k: np.asarray(v) for k, v in meta.items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.1f} KiB, {len(arrays)} arrays) from {commit[:7]}")


if __name__ == "__main__":
    main()
