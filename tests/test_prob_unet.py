"""Probabilistic U-Net, multi-rater training and GED evaluation."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg import main, models
from jaxseg.data import augment
from jaxseg.models.prob_unet import kl_diagonal

SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")


def test_kl_matches_the_closed_form():
  assert float(kl_diagonal(jnp.zeros(6), jnp.zeros(6), jnp.zeros(6), jnp.zeros(6))) == 0.0
  mu = jnp.array([0.5, -1.0])
  np.testing.assert_allclose(kl_diagonal(mu, jnp.zeros(2), 0.0, 0.0), 0.5 * 1.25, rtol=1e-6)
  sq, sp = 0.5, 2.0  # KL(N(0, sq^2) || N(0, sp^2)) = log(sp/sq) + sq^2 / (2 sp^2) - 1/2
  expected = np.log(sp / sq) + sq**2 / (2 * sp**2) - 0.5
  np.testing.assert_allclose(
    kl_diagonal(jnp.zeros(1), jnp.log(jnp.full(1, sq)), 0.0, jnp.log(sp)), expected, rtol=1e-6
  )
  # Monte Carlo check of a general pair.
  q_mu, q_ls, p_mu, p_ls = 0.3, -0.4, -0.2, 0.1
  z = q_mu + np.exp(q_ls) * np.random.default_rng(0).standard_normal(400_000)
  log_q = -0.5 * ((z - q_mu) / np.exp(q_ls)) ** 2 - q_ls
  log_p = -0.5 * ((z - p_mu) / np.exp(p_ls)) ** 2 - p_ls
  np.testing.assert_allclose(
    kl_diagonal(jnp.array([q_mu]), jnp.array([q_ls]), p_mu, p_ls), np.mean(log_q - log_p), atol=5e-3
  )


def test_prior_samples_share_one_unet_pass_and_follow_the_key():
  model = models.get_model("prob_unet", widths=(4, 8), latent_dim=3)
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 1))
  variables = jax.jit(model.init)({"params": jax.random.key(1), "dropout": jax.random.key(2)}, x)
  assert {"unet", "prior", "posterior", "fcomb"} <= set(variables["params"])
  sample = jax.jit(
    lambda key: model.apply(variables, x, num_samples=4, rngs={"sample": key})["samples"]
  )
  a, b = sample(jax.random.key(3)), sample(jax.random.key(4))
  assert a.shape == (4, 2, 16, 16, 1)
  np.testing.assert_array_equal(a, sample(jax.random.key(3)))
  assert not np.allclose(a, b) and not np.allclose(a[0], a[1])
  out, _ = model.apply(
    variables,
    x,
    jnp.ones((2, 16, 16), jnp.int32),
    train=True,
    rngs={"dropout": jax.random.key(5)},
    mutable=["batch_stats"],
  )
  assert out["kl"] >= 0 and out["regularizer"] == out["kl"]  # beta = 1


def test_each_example_trains_on_one_drawn_rater():
  raters = jnp.stack([jnp.full((3, 2, 2), r) for r in range(4)], axis=1)  # [B=3, A=4, 2, 2]
  batch = {"image": jnp.zeros((3, 2, 2, 1)), "labels": jnp.zeros((3, 2, 2)), "annotators": raters}
  picked = augment.pick_annotator(jax.random.key(0), batch)
  assert "annotators" not in picked
  chosen = [int(picked["labels"][i, 0, 0]) for i in range(3)]
  assert all(np.all(picked["labels"][i] == c) for i, c in enumerate(chosen))
  draws = {
    tuple(int(v) for v in augment.pick_annotator(jax.random.key(k), batch)["labels"][:, 0, 0])
    for k in range(20)
  }
  assert len(draws) > 5  # the draw follows the key


def test_prob_unet_and_baseline_train_on_lidc_and_report_ged(tmp_path):
  from configs import prob_unet_lidc

  results = {}
  for arg in ("smoke", "unet_smoke"):
    config = prob_unet_lidc.get_config(arg)
    config.data.dir = os.path.join(SHARED, "lidc_multirater")
    config.train.update(steps=2, eval_every=2)
    workdir = str(tmp_path / arg)
    main.train(config, workdir)
    results[arg] = main.evaluate(workdir, "validation")  # fewer images than test
    assert os.path.exists(os.path.join(workdir, "validation_samples.png"))
  for result in results.values():
    assert 0.0 <= result["ged"]["mean"] <= 2.0
  assert results["unet_smoke"]["sample_diversity"]["mean"] == 0.0  # one prediction, repeated
  assert results["smoke"]["sample_diversity"]["mean"] >= 0.0
  saved = json.load(open(tmp_path / "smoke" / "validation_metrics.json"))
  assert saved["ged"] == results["smoke"]["ged"]
