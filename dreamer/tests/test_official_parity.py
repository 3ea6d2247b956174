"""Parity with the official DreamerV3 (danijar/dreamerv3 @e3f0224): our functions against the official ones'
outputs on the same inputs, read from `fixtures/official_functions.npz`. The fixture is written by the official
code itself, in its own venv (no official code is needed or copied here):

    /work/venvs/dreamerv3-official/bin/python dreamer/tools/official_reference.py --official-repo <checkout>

Our side runs with our config's defaults, which each test first checks against the official settings stored in
the fixture. Where the official conventions differ from ours only in layout (batch- vs time-major, termination
flags vs continuation, unimix inside the KL vs on stored logits), our call is adapted below.
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dreamer.agent import ReturnNorm, kl_losses, lambda_returns, update_return_norm
from dreamer.config import DreamerConfig
from dreamer.networks import symexp, symlog, twohot, twohot_bins, twohot_loss, twohot_mean, unimix_logits

F = dict(np.load(Path(__file__).parent / "fixtures" / "official_functions.npz"))
CFG = DreamerConfig()
TOL = dict(rtol=1e-5, atol=1e-6)  # float32 on both sides


def close(ours, official, **tol):
    np.testing.assert_allclose(np.asarray(ours), F[official], **{**TOL, **tol}, err_msg=official)


def test_fixture_is_from_the_official_commit():
    assert str(F["official_commit"]).startswith("e3f0224")


def test_symlog_symexp_match_official():
    close(symlog(F["symlog_in"]), "symlog_out", rtol=1e-6, atol=0)  # relative: inputs down to 1e-6
    close(symexp(F["symexp_in"]), "symexp_out", rtol=1e-6, atol=0)


def test_twohot_matches_official():
    """The official `outs.TwoHot` configured with our bins (linspace(−20, 20, 255), symlog squash)."""
    assert CFG.bins == F["setting_bins"]
    close(twohot_bins(CFG.bins), "twohot_bins")  # numpy's linspace there: within 1 ulp of ours
    bins = F["twohot_bins"]  # the same bins on both sides: a 1-ulp shift of a bin moves a weight by ~1e-5
    close(twohot(F["twohot_y"], bins), "twohot_encoding")
    close(twohot_mean(F["twohot_logits"], bins), "twohot_pred")
    close(twohot_loss(F["twohot_logits"], F["twohot_y"], bins), "twohot_loss")


def test_twohot_differs_from_official_head_as_readme_says():
    """HEAD's reward/critic head puts the two-hot in raw space on symexp-spaced bins (README, "Which DreamerV3"):
    its bins are symexp(ours), its encoding's raw-space mean is y, its prediction softmax·symexp(B). The same two
    neighbouring bins get the weight, but not the same weights, and the predictions differ."""
    bins = twohot_bins(CFG.bins)
    raw_bins = symexp(bins)
    close(raw_bins, "head_bins")
    inside = np.abs(F["twohot_y"]) < raw_bins[-1]
    np.testing.assert_allclose((F["head_encoding"] @ F["head_bins"])[inside], F["twohot_y"][inside], rtol=1e-4)
    close(jax.nn.softmax(F["twohot_logits"]) @ raw_bins, "head_pred", rtol=1e-4, atol=1e-2)
    encoding = np.asarray(twohot(F["twohot_y"], F["twohot_bins"]))
    np.testing.assert_array_equal(encoding > 1e-4, F["head_encoding"] > 1e-4)  # 1e-4: rounding on bin centres
    assert np.abs(encoding - F["head_encoding"]).max() > 0.01
    assert np.abs(twohot_mean(F["twohot_logits"], bins) - F["head_pred"]).max() > 1e6


def test_unimix_matches_official():
    """`OneHot(logits, unimix).dist.logits`: log((1 − u)·softmax + u/K), compared as logits and as probabilities."""
    assert CFG.unimix == F["setting_unimix"]
    logits = unimix_logits(F["unimix_in"], CFG.unimix)
    close(logits, "unimix_out")
    np.testing.assert_allclose(jax.nn.softmax(logits), np.exp(F["unimix_out"]), **TOL)


def test_kl_balancing_matches_official():
    """`RSSM.loss`'s dyn/rep terms (free nats per step, after the sum over latents); it mixes unimix into the raw
    logits inside the KL, we store unimixed logits, so our call gets unimix_logits(raw)."""
    assert (CFG.unimix, CFG.free_nats) == (F["setting_unimix"], F["setting_free_nats"])

    def ours(post, prior):
        mix = lambda logits: {"logits": unimix_logits(logits, CFG.unimix)}  # noqa: E731
        return kl_losses(mix(post), mix(prior), CFG.free_nats)

    post, prior = F["kl_post_logits"], F["kl_prior_logits"]
    dyn, rep = ours(post, prior)
    close(dyn, "kl_dyn")
    close(rep, "kl_rep")
    for i, name in enumerate(("dyn", "rep")):
        grad_post, grad_prior = jax.grad(lambda *a: ours(*a)[i].sum(), (0, 1))(post, prior)
        close(grad_post, f"kl_{name}_grad_post")
        close(grad_prior, f"kl_{name}_grad_prior")


def test_lambda_returns_match_official():
    """`lambda_return(last=0, term, rew, val, boot=val, disc, lam)`, batch-major over H + 1 steps; ours is
    time-major, takes rewards and continuations of steps 1..H and all H + 1 values."""
    discount = 1 - 1 / CFG.horizon
    assert (discount, CFG.return_lambda) == (F["setting_lam_disc"], F["setting_lam_lambda"])
    rew, val, term = F["lam_rew"], F["lam_val"], F["lam_term"]
    returns = lambda_returns(rew[:, 1:].T, (1 - term[:, 1:]).T, val.T, discount, CFG.return_lambda)
    close(returns.T, "lam_returns")


def test_return_norm_matches_official():
    """`Normalize('perc')` with HEAD's retnorm config over several updates: EMAs of the percentiles from 0 and
    the scale max(limit, hi − lo); ours hard-codes limit 1 and no debiasing."""
    assert (F["setting_retnorm_limit"], F["setting_retnorm_debias"]) == (1.0, False)
    assert (CFG.retnorm_decay, CFG.retnorm_low, CFG.retnorm_high) == (
        1 - F["setting_retnorm_rate"], F["setting_retnorm_perclo"], F["setting_retnorm_perchi"])
    norm, rows = ReturnNorm(jnp.zeros(()), jnp.zeros(())), []
    for batch in F["retnorm_batches"]:
        norm, scale = update_return_norm(norm, batch, CFG)
        rows.append((norm.low, norm.high, scale))
    low, high, scale = np.array(rows).T
    close(low, "retnorm_lo")
    close(high, "retnorm_hi")
    close(scale, "retnorm_scale")
