"""The federated round's recipe pieces (jaxseg/fed/recipe.py) on constructed cases, and
in the compiled round: FedProx, robust aggregation, NaN rejection, DP, compression,
client sampling."""

import dataclasses
import math

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import fed_recipes
from jaxseg.errors import UserError
from jaxseg.fed import (
  aggregation,
  algorithms,
  backends,
  compress,
  cost,
  layout,
  privacy,
  recipe,
  robust,
  simulate,
)
from jaxseg.run import federated
from jaxseg.run.experiment import Experiment
from jaxseg.run.sweep import apply_overrides
from tests.test_fed import tiny_fed_config

# --- the pieces, pure ------------------------------------------------------------------


def test_proximal_term_adds_mu_times_the_distance_to_the_global_weights():
  w0 = {"k": jnp.array([1.0, -2.0])}
  tx = optax.chain(algorithms.proximal(0.5), optax.sgd(1.0))
  state = tx.init(w0)  # the anchor: the broadcast weights
  w = {"k": jnp.array([3.0, 0.0])}
  g = {"k": jnp.array([0.1, 0.2])}
  updates, _ = tx.update(g, state, w)
  # -(g + mu (w - w0)) = -(0.1 + 0.5 * 2, 0.2 + 0.5 * 2)
  np.testing.assert_allclose(updates["k"], [-1.1, -1.2], rtol=1e-6)


def _stack(*values):
  return {"w": jnp.asarray(values, jnp.float32)[:, None] * jnp.ones((1, 3))}


@pytest.mark.parametrize(
  "name, kwargs, values, accepted, want",
  [
    ("median", {}, (1, 2, 3, 100, 7), (1, 1, 1, 1, 0), 2.5),  # of 1, 2, 3, 100
    ("median", {}, (1, 2, 3, 4, 100), (1, 1, 1, 1, 1), 3.0),
    ("trimmed_mean", {"trim": 0.25}, (1, 2, 3, 100, 7), (1, 1, 1, 1, 0), 2.5),  # 2, 3
    ("trimmed_mean", {"trim": 0.2}, (1, 2, 3, 4, 100), (1, 1, 1, 1, 1), 3.0),  # 2, 3, 4
    ("trimmed_mean", {"trim": 0.0}, (1, 2, 3, 4, 100), (1, 1, 1, 1, 1), 22.0),
    ("krum", {"byzantine": 1}, (1.0, 1.1, 0.9, 100, 1.05), (1, 1, 1, 1, 1), 1.05),
    ("krum", {"byzantine": 1, "select": 3}, (1.0, 1.1, 0.9, 100, 1.05), (1,) * 5, 1.05),
    ("median", {}, (1, 2, 3), (0, 0, 0), 0.0),  # nothing accepted: no update
  ],
)
def test_robust_aggregators_on_known_updates(name, kwargs, values, accepted, want):
  rc = recipe.Recipe(aggregator=name, **kwargs)
  part = {"stacked": _stack(*values), "accepted": jnp.asarray(accepted, bool)}
  got = recipe.mean_of(rc, part)["w"]
  np.testing.assert_allclose(got, np.full(3, want), rtol=1e-6)


def test_krum_picks_the_update_closest_to_its_neighbours():
  flat = jnp.asarray([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [10.0, 10.0]])
  scores = robust.krum_scores(flat, jnp.ones(4, bool), f=1)  # 4 - 1 - 2 = 1 neighbour
  np.testing.assert_allclose(scores, [1.0, 1.0, 1.0, 181.0])
  masked = robust.krum_scores(flat, jnp.array([True, True, True, False]), f=0)
  assert np.isinf(masked[3]) and np.argmin(masked) == 0  # 0 is 1 from both others


def test_clipping_bounds_the_norm_and_noise_has_the_calibrated_std():
  delta = {"a": jnp.full((3,), 2.0), "b": jnp.full((1,), 2.0)}  # norm 4
  clipped, within = privacy.clipped(delta, 1.0)
  assert float(privacy.global_norm(clipped)) == pytest.approx(1.0) and float(within) == 0.0
  same, within = privacy.clipped(delta, 10.0)
  assert float(within) == 1.0
  jax.tree.map(np.testing.assert_array_equal, same, delta)
  rc = recipe.Recipe(clip="fixed", clip_norm=0.5, noise_multiplier=2.0)
  part = {"delta": {"x": jnp.zeros(200_000)}, "weight": jnp.float32(4)}
  noisy, _ = privacy.server_noise(rc, part, recipe.init(rc), jax.random.key(0))
  assert float(jnp.std(noisy["delta"]["x"])) == pytest.approx(2.0 * 0.5, rel=0.01)


def test_adaptive_clipping_moves_the_norm_geometrically_towards_the_quantile():
  rc = recipe.Recipe(clip="adaptive", clip_norm=1.0, clip_lr=0.2, target_quantile=0.5, clients=4)
  part = {"delta": {"x": jnp.zeros(3)}, "unclipped": jnp.float32(4.0)}  # all within
  _, state = privacy.server_noise(rc, part, recipe.init(rc), jax.random.key(0))
  assert float(state["clip_norm"]) == pytest.approx(math.exp(-0.2 * (1.0 - 0.5)))
  part["unclipped"] = jnp.float32(0.0)  # all clipped: the norm grows
  _, state = privacy.server_noise(rc, part, recipe.init(rc), jax.random.key(0))
  assert float(state["clip_norm"]) == pytest.approx(math.exp(0.2 * 0.5))
  # The updates' noise grows so that the count's release keeps the total at z.
  z, sigma_b = privacy.noise_multipliers(
    dataclasses.replace(rc, noise_multiplier=1.0, count_noise=1)
  )
  assert sigma_b == 4.0 and z == pytest.approx((1.0 - 1 / 64) ** -0.5)


def test_the_accountant_is_dp_accountings_own_call():
  rc = recipe.Recipe(clip="fixed", noise_multiplier=1.1, delta=1e-5, clients_per_round=10)
  accountant = dp_accounting.rdp.RdpAccountant()
  event = dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(1.1))
  accountant.compose(event, 30)
  assert privacy.epsilon(rc, 30, 100) == accountant.get_epsilon(1e-5)
  full = dataclasses.replace(rc, clients_per_round=0)
  accountant = dp_accounting.rdp.RdpAccountant()
  accountant.compose(dp_accounting.GaussianDpEvent(1.1), 30)
  assert privacy.epsilon(full, 30, 100) == accountant.get_epsilon(1e-5)
  assert privacy.epsilon(full, 31, 100) > privacy.epsilon(full, 30, 100)
  assert privacy.epsilon(recipe.Recipe(), 5, 100) == math.inf


@pytest.mark.parametrize("arg", ["table", "dp_scale"])
def test_the_dp_tables_state_the_accountants_epsilon(arg):
  """Each DP row of configs/fed_recipes.py names the eps that its federation's 20
  rounds spend (dp-accounting, at the row's clients per round of its clients)."""
  config = fed_recipes.get_config(arg)
  (rows,) = [values for name, values in config.sweep.axes if name == "recipe"]
  named = 0
  for label, overrides in rows:
    if "eps " not in label:
      continue
    fc = apply_overrides(config, overrides).fed
    eps = privacy.epsilon(recipe.from_config(fc), fc.rounds, fc.num_clients)
    assert f"eps {eps:.2g}" in label or f"eps {eps:.1f}" in label, (label, eps)
    named += 1
  assert named >= 2


def test_q8_is_unbiased_within_one_step_and_topk_keeps_the_largest():
  x = jax.random.normal(jax.random.key(0), (500,))
  step = (x.max() - x.min()) / 255
  draws = jax.vmap(lambda k: compress.quantized(x, k))(jax.random.split(jax.random.key(1), 400))
  assert float(jnp.max(jnp.abs(draws - x))) <= float(step) * (1 + 1e-5)
  assert len(np.unique(np.asarray(draws[0]))) <= 256
  np.testing.assert_allclose(draws.mean(0), x, atol=float(step) * 0.15)
  kept = compress.top_k(jnp.array([0.1, -5.0, 2.0, 0.3, -0.2]), 0.4)
  np.testing.assert_array_equal(kept, [0.0, -5.0, 2.0, 0.0, 0.0])
  params = {"conv": {"k": jnp.zeros((10, 10)), "b": jnp.zeros(10)}, "bn": {"scale": jnp.ones(4)}}
  stats = {"bn": {"mean": jnp.zeros(4), "var": jnp.ones(4)}}
  assert cost.up_bytes(recipe.Recipe(), params, stats) == 4 * 114 + 32
  assert cost.up_bytes(recipe.Recipe(compress="q8"), params, stats) == 108 + 18 + 12 + 32
  topk = recipe.Recipe(compress="topk", fraction=0.1)
  assert cost.up_bytes(topk, params, stats) == 8 * (10 + 1 + 1) + 32
  # FedBN sends neither BatchNorm parameters nor statistics; SCAFFOLD adds c_i+ - c_i.
  assert cost.up_bytes(recipe.Recipe(algorithm="fedbn"), params, stats) == 4 * 110
  assert cost.up_bytes(recipe.Recipe(algorithm="scaffold"), params, stats) == 8 * 114 + 32
  assert cost.down_bytes(recipe.Recipe(algorithm="scaffold"), params, stats) == 4 * 114


def test_error_feedback_sends_over_the_rounds_what_top_k_dropped():
  """With error feedback a client's residual is exactly what top-k left out, and it
  joins the next update: over two rounds the sent updates and the last residual add up
  to the two updates (Stich et al. 2018, Alg. 1); the residual starts at zero."""
  rc = recipe.Recipe(compress="topk", fraction=0.25, error_feedback=True)
  params = {"w": jnp.zeros(8)}
  local = recipe.local_init(rc, params, {})
  np.testing.assert_array_equal(local["residual"]["w"], np.zeros(8))
  d1 = {"w": jnp.array([4.0, -1, 0.5, 3, -0.25, 0.1, 2, -6])}
  d2 = {"w": jnp.array([0.5, 2, -1, 0.2, 0.3, -0.1, 1, 0.4])}
  key = jax.random.key(0)
  s1, _, _, r1 = recipe.client_update(rc, d1, {}, key, 0, local)
  np.testing.assert_array_equal(s1["w"], [4, 0, 0, 0, 0, 0, 0, -6])
  np.testing.assert_array_equal(r1["w"], d1["w"] - s1["w"])  # exactly what was dropped
  s2, _, _, r2 = recipe.client_update(rc, d2, {}, key, 0, {"residual": r1})
  np.testing.assert_allclose(s2["w"], [0, 0, 0, 3.2, 0, 0, 3, 0], rtol=1e-6)  # d2 + r1's largest
  np.testing.assert_allclose(s1["w"] + s2["w"] + r2["w"], d1["w"] + d2["w"], rtol=1e-6)
  plain = dataclasses.replace(rc, error_feedback=False)
  assert recipe.client_update(plain, d2, {}, key, 0, {})[3] is None
  fc = fed_recipes.get_config("topk_ef,smoke").fed
  fc.dp.clip = "fixed"
  with pytest.raises(UserError, match="error_feedback .* no DP"):
    recipe.from_config(fc)


def test_fedbn_keeps_exactly_the_batchnorm_layers():
  params = {
    "c0": {"conv": {"kernel": 1, "bias": 2}, "bn": {"scale": 3, "bias": 4}},
    "out": {"k": 5},
  }
  stats = {"c0": {"bn": {"mean": 0, "var": 1}}}
  mask = algorithms.bn_mask(params, stats)
  assert mask == {
    "c0": {"conv": {"kernel": False, "bias": False}, "bn": {"scale": True, "bias": True}},
    "out": {"k": False},
  }


def test_scaffold_control_variates_follow_option_ii():
  rc = recipe.Recipe(algorithm="scaffold", client_lr=0.5)
  c, c_i, delta = {"w": jnp.array([1.0])}, {"w": jnp.array([3.0])}, {"w": jnp.array([-2.0])}
  new, dc = algorithms.scaffold_local(rc, c, c_i, delta, jnp.int32(4))
  # c_i - c + (x - y) / (K lr) = 3 - 1 + 2 / (4 * 0.5) = 3
  np.testing.assert_allclose(new["w"], [3.0])
  np.testing.assert_allclose(dc["w"], [0.0])
  tx = optax.chain(algorithms.scaffold_correction(), optax.sgd(1.0))
  state = tx.init(c)
  state = (state[0]._replace(correction={"w": jnp.array([-2.0])}), *state[1:])  # c - c_i
  updates, _ = tx.update({"w": jnp.array([0.5])}, state, c)
  np.testing.assert_allclose(updates["w"], [1.5])  # -(g - c_i + c)


def test_sampling_draws_k_distinct_live_clients_from_the_key():
  size = jnp.array([5, 0, 3, 8, 1, 0, 2, 9])
  rc = recipe.Recipe(clients_per_round=3)
  drawn = [tuple(np.asarray(recipe.sample(rc, jax.random.key(s), size))) for s in range(50)]
  assert all(len(set(d)) == 3 and not {1, 5} & set(d) for d in drawn)
  assert drawn[0] == tuple(np.asarray(recipe.sample(rc, jax.random.key(0), size)))
  assert len(set(drawn)) > 10
  by_size = dataclasses.replace(rc, client_sampling="size")
  counts = np.zeros(8)
  for s in range(300):
    counts[np.asarray(recipe.sample(by_size, jax.random.key(s), size))] += 1
  assert counts[1] == counts[5] == 0 and counts[7] > counts[4]
  np.testing.assert_array_equal(recipe.sample(recipe.Recipe(), jax.random.key(0), size), range(8))


# --- in the compiled round -------------------------------------------------------------


@pytest.fixture(scope="module")
def two_clients():
  """A tiny supervised federation of two clients of 4 images each (a power of two:
  weighting by size or by 1 then gives the same bits)."""
  config = tiny_fed_config("supervised", local_steps=2, num_clients=2)
  config.method.labeled_fraction = 1.0
  config.optim.update(name="sgd", lr=0.05)
  exp = Experiment(config)
  sim = federated.simulation(exp)
  clients = [np.arange(0, 4), np.arange(4, 8)]
  where = layout.Layout(clients, clients, [np.zeros(0, np.int64)] * 2, np.zeros(0, np.int64))
  return exp, sim, where


def _run(two_clients, rc, rows=2, client_map="vmap", where=None):
  exp, sim, default = two_clients
  fed = dataclasses.replace(
    sim.fed,
    recipe=rc,
    ctx=dataclasses.replace(sim.fed.ctx, tx=algorithms.client_tx(rc, exp.ctx.tx)),
  )
  where = where or default
  rc = dataclasses.replace(rc, num_clients=len(where.clients))
  fed = dataclasses.replace(fed, recipe=rc)
  data, _ = layout.client_data(where, rows, 2, 0.0, 2, 2)
  where = backends.Placement(client_map=client_map)
  run, sharding = backends.compile_round(
    fed, data, exp.sources["train"], np.zeros(1, np.float32), exp.train_key, where
  )
  state = simulate.init(exp.method, fed.ctx, fed.server_tx, jax.random.key(0), rc)
  return run, jax.device_put(state, sharding)


def _params(state):
  return jax.device_get(aggregation.params_of(state.nets))


def test_fedprox_at_mu_0_and_dp_without_clipping_or_noise_equal_fedavg_bit_for_bit(two_clients):
  run, state = _run(two_clients, recipe.FEDAVG)
  fedavg, _ = run(state)
  for rc in (
    recipe.Recipe(algorithm="fedprox", prox_mu=0.0),
    recipe.Recipe(clip="fixed", clip_norm=1e30, noise_multiplier=0.0),
  ):
    run, state = _run(two_clients, rc)
    other, _ = run(state)
    jax.tree.map(np.testing.assert_array_equal, _params(other), _params(fedavg))
  run, state = _run(two_clients, recipe.Recipe(algorithm="fedprox", prox_mu=1.0))
  start = _params(state)  # (the round donates its state)
  prox, _ = run(state)
  moved = lambda p: sum(
    float(np.sum((a - b) ** 2)) for a, b in zip(*map(jax.tree.leaves, (p, start)), strict=True)
  )  # noqa: E501, E731
  assert moved(_params(prox)) < moved(_params(fedavg))  # the term pulls towards w_global


@pytest.mark.parametrize("aggregator", ["mean", "median"])
def test_a_nan_update_is_rejected_and_named_never_averaged_in(two_clients, aggregator):
  rc = recipe.Recipe(attack="nan", attackers=1, aggregator=aggregator)
  run, state = _run(two_clients, rc, rows=3)  # one padding row
  new, metrics = run(state)
  assert np.asarray(metrics["rejected"]).tolist() == [0, -1, -1]
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(new.nets)))
  # The other client alone made the update: as if client 0 had had no data.
  exp, sim, where = two_clients
  alone = layout.Layout(
    [np.zeros(0, np.int64), where.clients[1]], [np.zeros(0, np.int64), where.labeled[1]],
    where.unlabeled, where.server,
  )  # fmt: skip
  run, state = _run(two_clients, dataclasses.replace(rc, attack="none"), rows=3, where=alone)
  want, _ = run(state)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
    _params(new),
    _params(want),
  )


def test_looped_and_vmapped_rounds_agree_with_every_piece(two_clients):
  rc = recipe.Recipe(clip="fixed", clip_norm=0.05, noise_multiplier=0.5, compress="q8")
  results = []
  for client_map in ("vmap", "loop"):
    run, state = _run(two_clients, rc, rows=2, client_map=client_map)
    new, _ = run(state)
    results.append(_params(new))
  # The two programs' updates differ by float rounding; 8-bit stochastic rounding turns
  # a rounding difference at a level's threshold into one level (a step of the
  # tensor's range / 255), so a few values may differ by that, no more.
  vmapped, looped = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(r)]) for r in results)
  off = ~np.isclose(vmapped, looped, rtol=1e-6, atol=1e-7)
  assert off.mean() < 0.01 and np.abs(vmapped - looped).max() < 1e-4, (off.sum(), off.size)


def test_k_of_n_rounds_take_memory_of_k_not_n(two_clients):
  """4 of N clients per round: the compiled round's temporaries do not grow from
  N = 100 to 10,000 (beyond the draw itself: N floats)."""
  exp, sim, _ = two_clients
  rc = recipe.Recipe(clients_per_round=4)
  temps = {}
  for n in (100, 10_000):
    clients = [np.arange(c % 8, c % 8 + 1) for c in range(n)]  # 1 image each
    where = layout.Layout(clients, clients, [np.zeros(0, np.int64)] * n, np.zeros(0, np.int64))
    run, state = _run(two_clients, rc, rows=n, where=where)
    temps[n] = run.lower(state).compile().memory_analysis().temp_size_in_bytes
  assert temps[10_000] - temps[100] <= 64 * 10_000, temps


def _nets(state):
  return jax.device_get(state.nets)


def test_fedbn_keeps_each_sites_batchnorm_and_averages_the_rest(two_clients):
  run, state = _run(two_clients, recipe.FEDAVG)
  fedavg, _ = run(state)
  run, state = _run(two_clients, recipe.Recipe(algorithm="fedbn"))
  start = _nets(state)
  fedbn, _ = run(state)
  fedbn, fedavg = jax.device_get(fedbn), _nets(fedavg)
  mask = algorithms.bn_mask(aggregation.params_of(start), aggregation.stats_of(start))
  for n in start:
    for got, avg, init, m in zip(
      *map(jax.tree.leaves, (fedbn.nets[n].params, fedavg[n].params, start[n].params, mask[n])),
      strict=True,
    ):
      # Round 1 starts every client from the initial BatchNorm: the averaged layers
      # are FedAvg's, bit for bit; the global BatchNorm is never moved.
      np.testing.assert_array_equal(got, init if m else avg)
    jax.tree.map(np.testing.assert_array_equal, fedbn.nets[n].batch_stats, start[n].batch_stats)
  # Each site kept its own statistics (they differ), and its own BatchNorm parameters.
  means = [x for x in jax.tree.leaves(fedbn.clients["batch_stats"])]
  assert all(x.shape[0] == 2 for x in means)
  assert any(not np.array_equal(x[0], x[1]) for x in means)


def test_scaffold_starts_as_fedavg_and_learns_the_clients_drift(two_clients):
  run, state = _run(two_clients, recipe.FEDAVG)
  start = _params(state)
  fedavg, _ = run(state)
  rc = recipe.Recipe(algorithm="scaffold", client_lr=0.05)
  run, state = _run(two_clients, rc)
  scaffold, _ = run(state)
  # Round 1: c = c_i = 0, no correction: FedAvg's weights.
  jax.tree.map(np.testing.assert_array_equal, _params(scaffold), _params(fedavg))
  # c_i+ = -(y_i - x) / (K lr) (K = 2 steps); c = their mean (both clients trained).
  scaffold = jax.device_get(scaffold)
  c_i, c = scaffold.clients["c"], scaffold.recipe["c"]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b.mean(0), rtol=1e-5, atol=1e-6), c, c_i)
  # The clients' mean drift equals the averaged update (equal sizes): -(x+ - x) / (K lr).
  want = jax.tree.map(lambda new, old: -(new - old) / (2 * 0.05), _params(scaffold), start)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), c, want)


def test_fedbn_eval_scores_every_site_with_its_own_batchnorm(tmp_path):
  """``jaxseg eval`` of a FedBN run (the reviewer's command): per-site rows of the
  global model and of each site's own BatchNorm; the sites' mean and worst are of the
  model each site uses, its own (the global BatchNorm is never trained)."""
  from configs import fed_recipes  # noqa: PLC0415
  from jaxseg import main  # noqa: PLC0415
  from jaxseg.run import evaluate  # noqa: PLC0415

  main.train(fed_recipes.get_config("fedbn,smoke"), str(tmp_path))
  result = evaluate.run(str(tmp_path))
  sites = result["sites"]
  assert len(sites) == 4 and all({"dice", "dice_local"} <= set(r) for r in sites.values())
  local = [r["dice_local"] for r in sites.values()]
  assert result["site_dice_mean"]["mean"] == pytest.approx(np.mean(local))
  assert result["site_dice_worst"]["mean"] == pytest.approx(min(local))
  assert sum(r["images"] for r in sites.values()) == result["cases"]
