"""Federated simulation: partitions, scenarios, invariants, seed search, resume."""

import dataclasses
import glob
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import fed_common
from configs.semi_common import METHOD_KWARGS
from jaxseg import main, perturb
from jaxseg.data import pipeline, resident
from jaxseg.fed import aggregation, backends, cost, layout, partition, simulate, streams
from jaxseg.run import federated
from jaxseg.run.experiment import Experiment
from jaxseg.semi import rwp
from jaxseg.semi.rwp import search

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_fed_config(method="supervised", **fed):
  config = fed_common.fed_config(method, "synthetic_smoke")
  config.model.kwargs.widths = (4, 8)
  config.eval.batch_size = 4
  config.fed.unroll = 1  # tiny shapes: compile time matters, not XLA:CPU loop speed
  config.fed.update(**fed)
  return config


def _params(state):
  return jax.device_get({n: v.params for n, v in state.nets.items()})


# --- partitions and layouts -------------------------------------------------


def test_iid_and_dirichlet_partitions_cover_every_image_once():
  indices = np.arange(40)
  for parts in (
    partition.iid(indices, 3, seed=0),
    partition.dirichlet(indices, indices % 4, 3, alpha=0.1, seed=0),
    partition.by_site(indices, indices % 5, 3),
  ):
    assert sorted(np.concatenate(parts).tolist()) == indices.tolist()
    assert all(len(p) >= 1 for p in parts)
  assert [len(p) for p in partition.iid(indices, 3, seed=0)] == [14, 13, 13]
  assert not np.array_equal(partition.iid(indices, 3, 0)[0], partition.iid(indices, 3, 1)[0])


def test_the_partition_table_sums_up_a_large_federation():
  parts = partition.iid(np.arange(40), 10, seed=0)
  foreground = np.linspace(0.0, 1.0, 40)
  labeled = [p[:1] for p in parts]
  lines = partition.table(parts, foreground, labeled, shown=3).splitlines()
  assert len(lines) == 2 + 3 + 1
  assert lines[2] == f"| 0 | 4 | 1 | {foreground[parts[0]].mean():.4f} |"
  rest = np.concatenate(parts[3:])
  assert lines[-1] == f"| 3..9 (7 more) | 28 (4-4 each) | 7 | {foreground[rest].mean():.4f} |"
  assert len(partition.table(parts, foreground).splitlines()) == 2 + 10


def test_dirichlet_alpha_controls_skew():
  indices, groups = np.arange(400), np.arange(400) % 4

  def skew(alpha):  # mean over clients of the largest group's share
    parts = partition.dirichlet(indices, groups, 4, alpha=alpha, seed=3)
    return np.mean([np.bincount(groups[p], minlength=4).max() / len(p) for p in parts])

  assert skew(0.05) > 0.8 > 0.4 > skew(100.0)


def test_site_partition_needs_enough_sites():
  with pytest.raises(ValueError, match="2 site"):
    partition.by_site(np.arange(10), np.arange(10) % 2, 3)


def test_labeled_counts_keep_the_global_fraction():
  # 1/8 of 52 images: 7 labeled in all (rounding each client up would give 9).
  assert layout.labeled_counts([3, 3, 3, 3, 40], 1 / 8) == [1, 1, 1, 1, 3]
  assert layout.labeled_counts([13, 13, 12], 1 / 2) == [7, 6, 6]  # 19: the tie to the first
  assert layout.labeled_counts([10, 0, 30], 1 / 4) == [3, 0, 7]  # an empty client gets none
  assert layout.labeled_counts([5, 7], 1.0) == [5, 7]


def test_layouts_round_fractions_up_and_keep_labels_where_they_belong():
  fc = tiny_fed_config().fed
  foreground, sites = np.linspace(0, 0.1, 38), np.zeros(38, int)
  at_client = layout.assign(fc, 1 / 16, foreground, sites, seed=0)
  assert [len(lab) for lab in at_client.labeled] == [1, 1, 1]  # at least one each
  for part, lab, unl in zip(at_client.clients, at_client.labeled, at_client.unlabeled, strict=True):
    assert set(lab) | set(unl) == set(part) and not set(lab) & set(unl)
  fc.scenario = "label_at_server"
  at_server = layout.assign(fc, 1 / 16, foreground, sites, seed=0)
  assert len(at_server.server) == 3  # ceil(38 / 16)
  assert all(len(lab) == 0 for lab in at_server.labeled)
  clients = np.concatenate(at_server.clients)
  assert not set(clients) & set(at_server.server) and len(clients) == 35
  fc.partition = "bogus"
  with pytest.raises(ValueError, match="config.fed.partition.*bogus.*iid"):
    layout.assign(fc, 0.5, foreground, sites, seed=0)


def test_communication_cost_follows_what_is_exchanged():
  def relative(method):
    exp = Experiment(tiny_fed_config(method), splits=("validation",))
    return cost.communication(exp.method, exp.abstract_state().nets)

  cps, fedwep, fedavg = relative("cps"), relative("rwp"), relative("supervised")
  assert cps["relative"] == 1.0 and fedavg["relative"] == 0.5
  assert (
    fedwep["down_bytes"] == fedavg["down_bytes"] + 8 and fedwep["up_bytes"] == fedavg["up_bytes"]
  )
  assert 0.5 < fedwep["relative"] < 0.501 and "8 B seeds" in fedwep["text"]


# --- seed search ---------------------------------------------------------------


@pytest.mark.parametrize("statistics", ["batch", "running"])
def test_seed_search_picks_the_most_similar_pair(statistics):
  """The chosen pair against an independent computation, the perturbed models
  normalising the probe with its batch statistics (as clients train them) or with
  the running ones (inference mode)."""
  exp = Experiment(tiny_fed_config("rwp"), splits=("validation",))
  sim_ctx = exp.ctx
  net = exp.init().nets["model"]
  probe = jax.random.uniform(jax.random.key(1), (3, 32, 32, 1))
  settings = search.Settings(candidates=4, statistics=statistics)
  perturbation = rwp.Perturbation(p=0.5, sigma=0.5)
  seeds, info = search.search(sim_ctx, net, probe, jax.random.key(2), settings, perturbation)
  candidates = np.asarray(jax.random.bits(jax.random.key(2), (4,), jnp.uint32))
  maps, apply = [], jax.jit(exp.model.apply, static_argnames=("train", "mutable"))
  for s in candidates:  # independently: perturb, predict, flatten per image
    variables = {"params": perturb.rwp(net.params, s, p=0.5, sigma=0.5)}
    variables["batch_stats"] = net.batch_stats
    if statistics == "batch":
      out, _ = apply(variables, probe, train=True, mutable=("batch_stats",))
    else:
      out = apply(variables, probe)
    maps.append(np.asarray(jax.nn.sigmoid(out)).reshape(3, -1).astype(np.float64))
  c = np.array(
    [
      [
        np.mean([a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(x, y, strict=True)])
        for y in maps
      ]
      for x in maps
    ]
  )
  c_pairs = np.where(np.triu(np.ones((4, 4), bool), 1), c, -np.inf)
  i, j = np.unravel_index(np.argmax(c_pairs), c.shape)
  assert seeds.tolist() == [candidates[i], candidates[j]]
  np.testing.assert_allclose(float(info["similarity"]), c[i, j], rtol=1e-5)
  least, _ = search.search(
    sim_ctx,
    net,
    probe,
    jax.random.key(2),
    dataclasses.replace(settings, criterion="least_similar"),
    perturbation,
  )
  i, j = np.unravel_index(np.argmin(np.where(np.isfinite(c_pairs), c, np.inf)), c.shape)
  assert least.tolist() == [candidates[i], candidates[j]]
  with pytest.raises(ValueError, match="criterion.*nearest"):
    search.choose(jnp.asarray(c), "nearest")


def test_seed_search_similarities_on_constructed_predictions():
  """``dice``: hard-label Dice per probe image (two empty maps agree); ``centred``:
  the correlation of the logit maps, blind to a shared offset that ``cosine`` of
  probabilities counts as agreement; the spread of the pairs ``i < j``."""
  a = jnp.array([[3.0, -1.0], [-2.0, 1.0]])  # one probe image, 2x2, binary
  b = jnp.array([[2.0, 1.0], [-2.0, -1.0]])
  empty = jnp.full((2, 2), -5.0)
  logits = jnp.stack([a, b, empty, a + 10.0])[:, None, ..., None]  # [N=4, X=1, 2, 2, 1]
  d = search.dice(logits)
  # a: {00, 11}, b: {00, 01} -> 2*1/(2+2); a vs empty: 0; empty vs empty: 1.
  np.testing.assert_allclose(d[0, 1], 0.5)
  np.testing.assert_allclose(d[0, 2], 0.0)
  np.testing.assert_allclose(search.dice(jnp.stack([empty, empty])[:, None, ..., None])[0, 1], 1.0)
  c = search.centred(logits)
  np.testing.assert_allclose(c[0, 3], 1.0, rtol=1e-6)  # a and a + 10: the same evidence
  centred_a, centred_b = a - a.mean(), b - b.mean()
  norms = jnp.linalg.norm(centred_a) * jnp.linalg.norm(centred_b)
  expected = jnp.sum(centred_a * centred_b) / norms
  np.testing.assert_allclose(c[0, 1], expected, rtol=1e-6)
  assert float(search.cosine(logits)[0, 3]) < 0.95  # probabilities differ with the offset
  spread = search.spread(jnp.array([[1.0, 0.2, 0.4], [0.2, 1.0, 0.9], [0.4, 0.9, 1.0]]))
  np.testing.assert_allclose(
    [spread[k] for k in ("similarity_mean", "similarity_min", "similarity_max")], [0.5, 0.2, 0.9]
  )
  np.testing.assert_allclose(spread["similarity_std"], np.std([0.2, 0.4, 0.9]), rtol=1e-6)
  with pytest.raises(ValueError, match="seed_search.similarity: unknown 'kl'; known: cosine"):
    search.settings({"similarity": "kl"}, "label_at_client")
  with pytest.raises(ValueError, match="seed_search.probes: unknown setting"):
    search.settings({"probes": "real"}, "label_at_client")


# --- the round: invariants ---------------------------------------------------------


@pytest.fixture(scope="session")
def supervised_fed():
  config = tiny_fed_config("supervised", local_steps=3, num_clients=2)
  config.method.labeled_fraction = 1.0
  # SGD: Adam would turn the rounding noise in the gradients of the conv biases that
  # precede BatchNorm (mathematically zero) into lr-sized steps.
  config.optim.update(name="sgd", lr=0.05)
  exp = Experiment(config)
  sim = federated.simulation(exp)
  return exp, sim, exp.sources["train"]


def _round(exp, sim, source, where, rows, placement="device", client_map="vmap"):
  data, _ = layout.client_data(where, rows, 3, 0.0, 2, 2)
  where = backends.Placement(placement, client_map=client_map)
  run, state_sharding = backends.compile_round(
    sim.fed, data, source, np.zeros(1, np.float32), exp.train_key, where
  )
  return run(jax.device_put(exp.init(), state_sharding))


def test_streams_visit_every_example_once_per_epoch():
  key = jax.random.key(3)
  # Centralized: batches of 3 over 7 examples, 3 epochs, each a permutation.
  stream = np.concatenate([resident.batch_indices(key, s, 7, 3) for s in range(7)])
  assert all(sorted(stream[7 * e : 7 * e + 7]) == list(range(7)) for e in range(3))
  # Over a traced count: the same stream when count == size; over 4 of 7, every
  # index below 4, each once per epoch, and any window a slice of the stream.
  np.testing.assert_array_equal(resident.stream_indices(key, 0, 21, 7, 7), stream)
  full = np.asarray(resident.stream_indices(key, 0, 16, 7, 4))
  assert all(sorted(full[4 * e : 4 * e + 4]) == [0, 1, 2, 3] for e in range(4))
  np.testing.assert_array_equal(resident.stream_indices(key, 2, 12, 7, 4), full[2:14])


def test_federated_clients_draw_by_epochs_across_rounds(supervised_fed):
  # Clients of 5 and 2 images, one local epoch of batch 2 a round: 3 and 1 live steps.
  clients = [np.arange(5), np.arange(5, 7)]
  where = layout.Layout(clients, clients, clients, np.zeros(0, np.int64))
  data, longest = layout.client_data(where, 2, 0, 1.0, 2, 2)
  fed = dataclasses.replace(supervised_fed[1].fed, local_steps=longest, sampling="epochs")
  rounds = [streams.client_indices(fed, data, jax.random.key(0), r) for r in range(5)]
  for c, images in enumerate(clients):
    live = int(data.steps[c])
    drawn = np.concatenate([np.asarray(r["labeled"][c, :live]).ravel() for r in rounds])
    n = len(images)
    assert len(drawn) % n == 0
    for e in range(len(drawn) // n):
      assert sorted(drawn[e * n : (e + 1) * n]) == images.tolist(), (c, e, drawn)
  # With replacement (the earlier rule, a setting): draws from each client's own images.
  fed = dataclasses.replace(fed, sampling="replacement")
  drawn = streams.client_indices(fed, data, jax.random.key(0), 0)["labeled"]
  assert set(np.asarray(drawn[1]).ravel()) <= {5, 6} and np.asarray(drawn[0]).max() < 5


@pytest.mark.parametrize("where", ["with_clients", "after_clients"])
def test_label_at_server_training_joins_or_follows_the_clients(supervised_fed, where):
  exp, sim, source = supervised_fed
  n = len(source)
  clients = [np.arange(4, 10), np.arange(10, n)]
  split = layout.Layout(clients, [np.zeros(0, np.int64)] * 2, clients, np.arange(4))
  data, _ = layout.client_data(split, 2, 3, 0.0, 2, 2)
  fed = dataclasses.replace(sim.fed, scenario="label_at_server", server_training=where)
  arrays = jax.tree.map(
    lambda v: jnp.asarray(v)[None], pipeline.model_inputs(source.take(np.arange(n)))
  )
  keys = {"train": jax.random.key(1), "broadcast": jax.random.key(2), "recipe": jax.random.key(4)}
  server_xs = streams.server_indices(fed, data, jax.random.key(3), 0)
  server = simulate.init(exp.method, fed.ctx, fed.server_tx, jax.random.key(0))
  shared = simulate.Shared(server.nets, None, keys["train"], server.step, {}, keys["recipe"])
  # Two clients' contributions, made up: weights 6 and 10, every value 1 and 3 (their
  # updates from the global weights p: 1 - p and 3 - p).
  params = aggregation.params_of(server.nets)
  summed = {
    "delta": jax.tree.map(lambda p: 6 * (1.0 - p) + 10 * (3.0 - p), params),
    "batch_stats": jax.tree.map(
      lambda v: jnp.full(v.shape, 36.0), aggregation.stats_of(server.nets)
    ),
    "weight": jnp.float32(16),
    "live": jnp.float32(2),
    "metrics": {},
  }
  rows = {"rejected": jnp.array([-1, -1], jnp.int32), "row": jnp.arange(2)}
  part = aggregation.Part(summed, rows, {})  # (FedAvg keeps nothing on the clients)
  side = simulate.ServerSide(server_xs, arrays, jnp.int32(4))
  conclude = jax.jit(lambda *a: simulate.conclude(fed, streams.gather, *a))
  new, metrics = conclude(server, shared, part, {}, side)
  trained, _ = simulate.server_train(fed, streams.gather, server.nets, shared, side)
  got = {k: v.params for k, v in new.nets.items()}
  if where == "with_clients":  # the server's model joins the average with weight 4
    want = jax.tree.map(lambda t: (36.0 + 4 * t) / 20, {k: v.params for k, v in trained.items()})
  else:  # the clients' average (2.25 everywhere), then the server's steps from it
    average = jax.tree.map(lambda v: jnp.full_like(v, 36.0 / 16), server.nets)
    start = {k: v.replace(params=average[k].params) for k, v in server.nets.items()}
    start = {k: v.replace(batch_stats=average[k].batch_stats) for k, v in start.items()}
    after, _ = simulate.server_train(fed, streams.gather, start, shared, side)
    want = {k: v.params for k, v in after.items()}
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want)
  assert "server_loss" in metrics and int(new.step) == 1


def test_a_padded_client_changes_nothing(supervised_fed):
  exp, sim, source = supervised_fed
  two, _ = _round(exp, sim, source, sim.layout, rows=2)
  padded, _ = _round(exp, sim, source, sim.layout, rows=3)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
    _params(two),
    _params(padded),
  )


def test_one_client_equals_centralized_training(supervised_fed):
  exp, sim, source = supervised_fed
  n = len(source)
  one = layout.Layout([np.arange(n)], [np.arange(n)], [np.arange(n)], np.zeros(0, np.int64))
  fed_state, _ = _round(exp, sim, source, one, rows=1)
  # The same local steps, one by one, outside the simulator.
  data, _ = layout.client_data(one, 1, 3, 0.0, 2, 2)
  placed = backends.place(sim.fed, data, source, np.zeros(1), exp.train_key)
  arrays = pipeline.model_inputs(source.take(np.arange(n)))
  keys, data_key = placed.keys, placed.keys["data"]
  idx = streams.client_indices(sim.fed, data, data_key, 0)
  state = simulate.start(sim.fed, exp.init().nets, 0)
  key = jax.random.fold_in(jax.random.fold_in(keys["train"], 0), 0)
  step = jax.jit(lambda s, lab, unl: exp.method.step(sim.fed.ctx, s, lab, unl, key))
  for s in range(3):
    batch = streams.gather(arrays, jax.tree.map(lambda x, s=s: x[0, s], idx))  # no key: images
    state, _ = step(state, batch["labeled"], batch["unlabeled"])
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
    _params(fed_state),
    {n: v.params for n, v in jax.device_get(state.nets).items()},
  )


def test_streamed_scanned_or_looped_rounds_equal_the_vmapped_round_on_device(supervised_fed):
  exp, sim, source = supervised_fed
  results = []
  maps = (("device", "vmap"), ("stream", "vmap"), ("device", "scan"), ("device", "loop"))
  for placement, client_map in maps:
    state, _ = _round(exp, sim, source, sim.layout, 3, placement, client_map)  # 1 padding row
    results.append(_params(state))
  for other in results[1:]:
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), results[0], other
    )


def test_unequal_clients_run_masked_local_epochs():
  exp = Experiment(tiny_fed_config(local_epochs=1.0, partition="dirichlet"))
  where = federated.simulation(exp).layout
  data, longest = layout.client_data(where, 4, 0, 1.0, 2, 2)
  sizes = [
    max(len(lab) / 2, len(unl) / 2) for lab, unl in zip(where.labeled, where.unlabeled, strict=True)
  ]
  assert data.steps.tolist() == [int(np.ceil(s)) for s in sizes] + [0]
  assert longest == max(data.steps)
  # Ramp-ups (Mean Teacher's) span the steps the data makes, not config.fed.local_steps.
  assert federated.federation(exp, longest).ctx.total_steps == exp.config.fed.rounds * longest


# --- end to end: determinism, resume, every config -------------------------------


def test_fedwep_tables_smoke_sweep_writes_the_papers_layout(tmp_path):
  from configs import fedwep_tables

  config = fedwep_tables.get_config("smoke")
  config.data.dir = os.path.join(REPO, "..", "shared", "data", "covid_ct")
  config.model.kwargs.widths = (4, 8)
  config.fed.unroll = 1
  # One cell per scenario (the others train alike): FedWeP-Random label-at-server,
  # FedAvg (supervised) label-at-client.
  config.sweep.exclude += (
    (("partition", "NonIID"),),
    (("scenario", "label_at_client"), ("method", "FedWeP-Random")),
  )
  rows = main.sweep(config, str(tmp_path))
  assert len(rows) == 2 and {r["cost"] for r in rows} == {"50%", "50% + 8 B seeds"}
  server, client = open(tmp_path / "results.md").read().split("scenario = label_at_client")
  assert "| method | IID 1/2 | cost |" in server
  assert "FedWeP-Random" in server and "FedAvg (supervised)" not in server
  assert "| FedAvg (supervised) | 0." in client


def test_the_criteria_sweep_compares_every_seed_search_criterion():
  from configs import fedwep_tables
  from jaxseg.run import sweep

  config = fedwep_tables.get_config("criteria_cpu")
  found = []
  for labels, overrides in sweep.cells(sweep.settings(config.sweep)):
    cell = sweep.apply_overrides(config, overrides)
    found.append((labels["method"], cell.fed.seed_search.criterion, cell.fed.seed_search.probe))
    assert cell.fed.scenario == "label_at_server" and cell.method.labeled_fraction == 1 / 8
  assert sorted(found) == sorted(
    (m, c, "random" if m == "FedWeP-Random" else "real")
    for m in ("FedWeP-Random", "FedWeP-Real")
    for c in fedwep_tables.CRITERIA
    for _seed in (0, 1, 2)
  )


def test_the_pool_sweep_splits_the_real_pool_by_source_and_patient():
  from configs import fedwep_tables
  from jaxseg.run import sweep

  config = fedwep_tables.get_config("pool_cpu")
  found = set()
  for labels, overrides in sweep.cells(sweep.settings(config.sweep)):
    cell = sweep.apply_overrides(config, overrides)
    assert cell.fed.scenario == "label_at_server"
    found.add((labels["partition"], cell.fed.pool_partition, cell.fed.num_clients))
  assert found == {("by source", "source", 2), ("by patient", "patient", 4)}


# FedAvg (supervised) runs in the sweep above and in the sharding test below.
@pytest.mark.parametrize(
  "name", ["fed_mean_teacher_covid_ct", "fed_cps_covid_ct", "fed_pseudoseg_covid_ct"]
)
def test_federated_configs_train_and_evaluate(name, tmp_path):
  module = __import__(f"configs.{name}", fromlist=["get_config"])
  config = module.get_config("synthetic_smoke")
  config.model.kwargs.widths = (4, 8)
  config.fed.update(rounds=1, local_steps=1, partition="site", unroll=1)
  main.train(config, str(tmp_path))
  result = main.evaluate(str(tmp_path))
  assert result["step"] == 1 and 0.0 <= result["dice"]["mean"] <= 1.0


def test_bad_federated_settings_name_the_key(tmp_path):
  config = tiny_fed_config("supervised", scenario="label_at_server")
  with pytest.raises(ValueError, match="supervised.*label_at_server"):
    main.train(config, str(tmp_path))
  config = tiny_fed_config("rwp")
  config.fed.seed_search.probe = "real"
  with pytest.raises(ValueError, match="FedWeP-Real"):
    main.train(config, str(tmp_path))
  config = tiny_fed_config("cps")
  config.optim.warmup_steps = 5
  with pytest.raises(ValueError, match="warmup_steps"):
    main.train(config, str(tmp_path))


def _pool(folder):
  """Unlabeled slices of 4 patients from 2 sources (and one name outside the scheme)."""
  from PIL import Image  # noqa: PLC0415

  names = [f"Data-1_coronacases_org_00{p}_{z}" for p in (1, 2) for z in (1, 2, 3)]
  names += [f"Data-1_radiopaedia_org_case-{p}_1-dcm_{z}" for p in (7, 8) for z in (4, 5)]
  os.makedirs(folder / "images")
  for i, name in enumerate([*names, "odd"]):
    Image.fromarray(np.full((40, 30), 20 * i, np.uint8)).save(folder / "images" / f"{name}.png")
  return str(folder)


def test_an_unlabeled_pool_joins_the_clients_by_patient_or_source(tmp_path):
  from jaxseg.data import unlabeled_folder  # noqa: PLC0415

  pool = _pool(tmp_path / "pool")
  patient, patients, sources = unlabeled_folder.groups(pool)
  assert patients[:2] == ["coronacases_org_001", "coronacases_org_002"] and "odd" in patients
  assert sources == ["coronacases", "coronacases", "odd", "radiopaedia", "radiopaedia"]
  assert patient["Data-1_radiopaedia_org_case-8_1-dcm_5"] == 4
  config = tiny_fed_config("supervised", scenario="label_at_server", num_clients=2)
  config.method.update(name="cps", kwargs=METHOD_KWARGS["cps"])
  config.data.unlabeled_dir = pool
  for by in ("source", "patient"):
    config.fed.pool_partition = by
    exp = Experiment(config)
    assert exp.sources["unlabeled"][0]["image"].shape == exp.sources["train"][0]["image"].shape
    where, first = federated.simulation(exp).layout, len(exp.sources["train"])
    site = exp.sources["unlabeled"].take(np.arange(11), ("site",))["site"]
    ids = unlabeled_folder.source_ids(pool)[site] if by == "source" else site
    for c, held in enumerate(where.unlabeled):
      extra = held[held >= first] - first
      assert len(extra) and set(ids[extra] % 2) == {c}  # whole groups, g -> client g % 2
  config.fed.num_clients = 4
  config.fed.pool_partition = "source"  # 3 sources for 4 clients
  with pytest.raises(ValueError, match="pool_partition.*3 group"):
    federated.simulation(Experiment(config))
  config.data.unlabeled_dir = ""
  with pytest.raises(ValueError, match="pool_partition='source'.*unlabeled_dir"):
    main.train(config, str(tmp_path / "w"))


def test_client_axis_sharded_over_eight_devices_matches_one_device():
  """The client axis over 8 devices, and over 4 groups of 2 that split each client's
  batches (data parallelism inside a client), give one device's round."""
  code = f"""
import sys; sys.path.insert(0, {os.path.join(REPO, "tests")!r})
import jax, numpy as np
jax.config.update("jax_num_cpu_devices", 8)
from test_fed import tiny_fed_config, _params
from jaxseg.run import federated
from jaxseg.run.experiment import Experiment
out = []
# one device; 8 clients' rows over 8 devices; 4 groups of 2 devices splitting each batch
for shard, data_devices in ((False, 1), (True, 1), (True, 2)):
  config = tiny_fed_config(
    "supervised", num_clients=3, shard_clients=shard, client_map="vmap", data_devices=data_devices
  )
  config.optim.update(name="sgd", lr=0.05)  # Adam amplifies rounding noise (see above)
  exp = Experiment(config)
  sim = federated.simulation(exp)
  state, _ = sim.run_round(sim.place_state(exp.init()))
  if shard:
    leaf = jax.tree.leaves(state.nets)[0]
    assert len(leaf.sharding.device_set) == 8, leaf.sharding
  out.append(_params(state))
for other in out[1:]:
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6), out[0], other)
print("devices", len(jax.devices()), "ok")
"""
  env = {**os.environ, "PYTHONPATH": REPO}
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "devices 8 ok" in result.stdout


def test_a_folder_federation_of_rgb_jpeg_sites_needs_only_its_folders(tmp_path, capsys):
  """Sites of RGB JPEG images with lossy JPEG masks (written by ``jaxseg sites``, then
  re-encoded): ``configs/fed_image_folders.py`` reads them with only ``data.dir`` and
  ``client_dirs`` given — channels and mask values inferred from the server's folder."""
  from PIL import Image

  from configs import fed_image_folders, unet_synthetic
  from jaxseg import main
  from jaxseg.run import sites

  root = str(tmp_path / "D")
  config = unet_synthetic.get_config("smoke")
  sites.run(config, 2, root)
  for path in glob.glob(f"{root}/**/*.png", recursive=True):
    pixels = np.asarray(Image.open(path))
    if "/images/" in path:  # colour: the channels differ
      pixels = np.stack([pixels, pixels // 2, 255 - pixels], axis=-1)
    Image.fromarray(pixels).save(path[:-4] + ".jpg", quality=95)
    os.remove(path)
  fed = fed_image_folders.get_config("cps,smoke")
  fed.data.dir = f"{root}/server"
  fed.fed.client_dirs = (f"{root}/site_1", f"{root}/site_2")
  fed.fed.rounds = 1
  main.train(fed, str(tmp_path / "run"))
  saved = json.load(open(tmp_path / "run" / "config.json"))["data"]["kwargs"]
  assert saved["channels"] == 3 and saved["mask_threshold"] > 0, saved
  assert [list(p) for p in saved["mask_values"]] == [[0, 0], [255, 1]], saved


def test_vmap_seeds_trains_three_seeds_as_their_separate_runs(tmp_path):
  """``--vmap_seeds``: FedWeP's 3 seeds of one cell as one compiled program end where
  3 separate runs end (float tolerance: vmapped convolutions round differently), each
  in its own workdir with its own log; the seeds differ from one another."""
  from jaxseg.run import seeds

  config = tiny_fed_config("rwp", rounds=2, local_steps=2)
  config.fed.seed_search.update(candidates=2, probe_size=1)
  config.optim.update(name="sgd", lr=0.05)  # (Adam: see supervised_fed)
  configs = []
  for s in range(3):
    c = config.copy_and_resolve_references()
    c.seed = s
    configs.append(c)
  together = seeds.train(configs, [str(tmp_path / f"v{s}") for s in range(3)])
  for s, c in enumerate(configs):
    alone = main.train(c, str(tmp_path / f"s{s}"))
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5),
      _params(together[s]),
      _params(alone),
    )
    lines = [
      [json.loads(x) for x in open(tmp_path / f"{d}{s}" / "metrics.jsonl")] for d in ("v", "s")
    ]
    assert [x["split"] for x in lines[0]] == [x["split"] for x in lines[1]]
    np.testing.assert_allclose(
      [x["loss"] for x in lines[0]], [x["loss"] for x in lines[1]], rtol=1e-4
    )
  first, second = (jax.tree.leaves(_params(t))[0] for t in together[:2])
  assert not np.allclose(first, second)
