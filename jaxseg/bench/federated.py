"""``jaxseg bench --clients 4,16,64``: rounds per second of one federated round with
the clients vmapped in one compiled program against a Python loop over clients.

Both run the same local steps of the same model on the same batches
(:func:`jaxseg.fed.backends.compile_round` with ``client_map`` ``vmap`` and ``loop``).
The data are random images (8 per client) of the config's size; the method, model,
batch sizes and local steps come from the config (e.g.
``configs/fedavg_covid_ct.py:synthetic_smoke``).
"""

import statistics
import time

import jax
import numpy as np

from jaxseg.data import arrays
from jaxseg.errors import UserError
from jaxseg.fed import backends, layout
from jaxseg.run import federated
from jaxseg.run.experiment import Experiment

IMAGES_PER_CLIENT = 8


def federation(config, num_clients: int):
  """``(experiment, Federation, ClientData, source)`` of ``num_clients`` IID clients
  on random data."""
  if config.fed.scenario != "label_at_client":
    raise UserError(
      f"jaxseg bench --clients times client training: needs config.fed.scenario="
      f"'label_at_client', found {config.fed.scenario!r}."
    )
  exp = Experiment(config, splits=("validation",))
  size = config.data.kwargs.image_size
  n = num_clients * IMAGES_PER_CLIENT
  key = jax.random.key(0)
  image = jax.random.randint(key, (n, size, size, exp.image_shape[-1]), 0, 256)
  mask = jax.random.bernoulli(jax.random.fold_in(key, 1), 0.1, (n, size, size))
  source = arrays.InMemory({"image": np.asarray(image, np.uint8), "mask": np.asarray(mask, "u1")})
  parts = np.array_split(np.arange(n), num_clients)
  where = layout.Layout(parts, parts, parts, np.zeros(0, np.int64))
  fc = config.fed
  data, longest = layout.client_data(
    where,
    num_clients,
    fc.local_steps,
    0.0,
    config.train.batch_size,
    config.method.unlabeled_batch_size,
  )
  fed = federated.federation(exp, longest)
  return exp, fed, data, source


def _time(run_round, state, repeats: int) -> tuple[float, float]:
  """``(first call incl. compile, median later call)`` in seconds."""
  times = []
  for _ in range(repeats + 1):
    start = time.perf_counter()
    state, _ = run_round(state)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - start)
  return times[0], statistics.median(times[1:])


def run(config, client_counts: list[int], repeats: int) -> list[dict]:
  records = []
  for count in client_counts:
    exp, fed, data, source = federation(config, count)
    timings = {}
    for client_map in ("vmap", "loop"):
      where = backends.Placement(client_map=client_map)
      run_round, state_sharding = backends.compile_round(
        fed, data, source, np.zeros(1, np.float32), exp.train_key, where
      )
      state = jax.jit(exp.init, out_shardings=state_sharding)()
      timings[client_map] = _time(run_round, state, repeats)
    (first_v, vmap_s), (first_l, loop_s) = timings["vmap"], timings["loop"]
    records.append(
      {
        "clients": count,
        "vmap_rounds_s": 1 / vmap_s,
        "loop_rounds_s": 1 / loop_s,
        "speedup": loop_s / vmap_s,
        "vmap_first_s": first_v,
        "loop_first_s": first_l,
        "device": jax.devices()[0].device_kind,
      }
    )
    print(f"{count} clients: done", flush=True)
  cfg = config
  print(
    f"\n{cfg.method.name}, {cfg.model.name} widths {tuple(cfg.model.kwargs.widths)}, "
    f"{cfg.data.kwargs.image_size} px, {cfg.fed.local_steps} local steps of batch "
    f"{cfg.train.batch_size}+{cfg.method.unlabeled_batch_size}, {records[0]['device']}, "
    f"median of {repeats} rounds after the first (first = compile + run).\n"
  )
  print(markdown(records))
  return records


def markdown(records) -> str:
  lines = [
    "| clients | vmap rounds/s | loop rounds/s | speedup | vmap first call s | loop first call s |",
    "|---|---|---|---|---|---|",
  ]
  for r in records:
    lines.append(
      f"| {r['clients']} | {r['vmap_rounds_s']:.2f} | {r['loop_rounds_s']:.2f} | "
      f"{r['speedup']:.1f}x | {r['vmap_first_s']:.1f} | {r['loop_first_s']:.1f} |"
    )
  return "\n".join(lines)
