"""The FedWeP paper's Tables 1 and 2: methods x {IID, non-IID} x labeled fraction,
with the communication cost, for label-at-server and label-at-client.

    jaxseg sweep --config configs/fedwep_tables.py:cpu --workdir /tmp/fedwep_tables \\
        --config.data.dir=/path/to/covid_ct

writes ``results.md`` (one table per scenario, test Dice, the paper's layout) and
``results.json``. Rows: MT, CPS and PS + FedAvg, FedWeP-Random and FedWeP-Real
(label-at-server only: the server's images are the probe), and the fully supervised
FedAvg upper bound (label-at-client; one column: every image labeled). Non-IID is
Dirichlet(0.5) over lesion size (3 quantile bins) on COVID-19 CT, the acquisition
site on ``synthetic_nerve``. The cost column is measured from what each method
sends (``communication.json`` of each cell). Cells that differ only in partition or
fraction share their compiled round (persistent compilation cache).

Arguments: none — COVID-19 CT, 128 px, widths 16..256, 3 clients, 100 rounds of 10
local steps, 3 seeds (a GPU run); ``cpu`` — 64 px, widths 8..64, 15 rounds of 4
local steps, one seed; ``synthetic`` / ``synthetic_cpu`` — the same on the built-in
``synthetic_nerve`` (4 sites, 4 clients); ``smoke`` — two methods, one fraction,
tiny (seconds per cell); ``criteria_cpu`` — the seed search's criteria
(``most_similar``, ``least_similar``, ``target``) compared for FedWeP-Random and -Real
(label-at-server, 1/8, IID, the ``cpu`` budget); ``client_cpu`` — the evidence run of
docs/federated.md: label-at-client, fractions 1/8 and 1/2, IID and non-IID, 3 seeds, the
``cpu`` model at twice its rounds (30: supervised FedAvg's validation Dice levels off
from round ~22 there), validation every 2 rounds (each cell's curve); ``pool_cpu`` —
label-at-server with the real unlabeled pool ``covid_ct_unlabeled``
(``--config.data.unlabeled_dir=/path/to/covid_ct_unlabeled``), clients by source or
by patient, 3 seeds (:func:`pool_sweep`).

Expect (the published tables, ``../shared/reference/tables.md``): CPS + FedAvg the
best baseline (0.69-0.77 label-at-server), FedWeP close to it at half its
communication, MT and PS + FedAvg far below label-at-server. Measured here (docs/federated.md,
*Evidence*; test Dice, mean over seeds 0-2, 2 CPU cores): ``client_cpu`` (54 cells,
2-5 min each) supervised FedAvg 0.571 / 0.549 (IID / non-IID), CPS 0.495-0.557, PS
0.430-0.525, MT 0.387-0.496, FedWeP-Random with today's defaults 0.432-0.556 (0 of 12
runs collapse; with weight 1.0: 0.285-0.463, 2 collapsed); ``pool_cpu`` (60 cells,
~1.5 min each) CPS 0.294-0.332, PS 0.310-0.375, MT 0.133-0.216, FedWeP at
``LABEL_AT_SERVER_RWP``: Random 0.251-0.378, Real 0.253-0.394 (best at 1/8; seed 2
collapses in the four 1/2 cells).
"""

import ml_collections

from configs.fed_common import fed_config
from configs.semi_common import METHOD_KWARGS
from jaxseg.run.sweep import axis

FRACTIONS = {"1/16": 1 / 16, "1/8": 1 / 8, "1/4": 1 / 4, "1/2": 1 / 2}
ARGS = ("cpu", "synthetic", "synthetic_cpu", "smoke", "criteria_cpu", "client_cpu", "pool_cpu")
CRITERIA = ("most_similar", "least_similar", "target")
# FedWeP label-at-server: the winner of configs/fedwep_ablation.py:server's declared rule
# (mean best validation Dice 0.283 against the shared default's 0.242; docs/fedwep_study.md).
LABEL_AT_SERVER_RWP = {"ramp_up": 0.4, "weight": 0.1875}


def _method(name, **extra):
  return {"method.name": name, "method.kwargs": METHOD_KWARGS[name], **extra}


METHODS = {
  "FedAvg (supervised)": _method("supervised", **{"method.labeled_fraction": 1.0}),
  "MT + FedAvg": _method("mean_teacher"),
  "CPS + FedAvg": _method("cps"),
  "PS + FedAvg": _method("pseudoseg"),
  "FedWeP-Random": _method("rwp", **{"fed.seed_search.probe": "random"}),
  "FedWeP-Real": _method("rwp", **{"fed.seed_search.probe": "real"}),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg is not None and arg not in ARGS:
    raise ValueError(f"configs/fedwep_tables.py: unknown argument {arg!r}; known: {ARGS}.")
  synthetic = arg is not None and arg.startswith("synthetic")
  config = fed_config(
    "supervised", "synthetic" if synthetic else ("smoke" if arg == "smoke" else None)
  )
  methods, fractions, seeds = list(METHODS), FRACTIONS, (0, 1, 2)
  non_iid = {"fed.partition": "site"} if synthetic else {"fed.partition": "dirichlet"}
  if arg in ("cpu", "synthetic_cpu", "criteria_cpu", "client_cpu", "pool_cpu"):
    config.data.kwargs.image_size = 64
    config.model.kwargs.widths = (8, 16, 32, 64)
    config.infer.tile = 64
    config.fed.update(rounds=15, local_steps=4, server_steps=4)
    config.train.update(batch_size=4, eval_every=5)
    config.method.unlabeled_batch_size = 4
    seeds = (0,)
  if synthetic:
    config.data.kwargs.update(num_train=256, num_validation=32, num_test=64)
  if arg == "client_cpu":
    fractions = {k: FRACTIONS[k] for k in ("1/8", "1/2")}
    config.fed.rounds = 30
    config.train.eval_every = 2
    seeds = (0, 1, 2)
  if arg == "smoke":
    methods, fractions, seeds = ["FedAvg (supervised)", "FedWeP-Random"], {"1/2": 0.5}, (0,)
    config.fed.update(rounds=1, local_steps=1, server_steps=1)
  exclude = [
    {"scenario": "label_at_client", "method": "FedWeP-Real"},
    {"scenario": "label_at_server", "method": "FedAvg (supervised)"},
  ]
  # The supervised upper bound labels every image: one column is enough.
  exclude += [{"method": "FedAvg (supervised)", "fraction": f} for f in list(fractions)[1:]]
  if arg == "criteria_cpu":
    return criteria_sweep(config)
  if arg == "pool_cpu":
    return pool_sweep(config)
  scenarios = (
    ("label_at_client",) if arg == "client_cpu" else ("label_at_server", "label_at_client")
  )
  config.sweep = ml_collections.ConfigDict(
    dict(
      axes=(
        axis("scenario", {s: {"fed.scenario": s} for s in scenarios}),
        # fraction before method: the supervised bound's own fraction (1.0) wins.
        axis("fraction", {k: {"method.labeled_fraction": v} for k, v in fractions.items()}),
        axis("method", {m: METHODS[m] for m in methods}),
        axis("partition", {"IID": {"fed.partition": "iid"}, "NonIID": non_iid}),
        axis("seed", {str(s): {"seed": s} for s in seeds}),
      ),
      exclude=tuple(tuple(e.items()) for e in exclude),
      average="seed",
      metrics=("dice", "iou"),
      pivot=("partition", "fraction"),
      sections="scenario",
      collapse=0.05,
    )
  )
  return config


def criteria_sweep(config) -> ml_collections.ConfigDict:
  """``criteria_cpu``: the seed search's criteria side by side (the paper only says
  "appropriate" seeds), FedWeP-Random and -Real, label-at-server, 1/8 labeled, IID,
  at the ``cpu`` budget, seeds 0, 1, 2. Its base method is ``rwp``, so the command
  line can set FedWeP's settings in every cell (``--config.method.kwargs.ramp_up=0.33``)."""
  config.method.update(name="rwp", kwargs=METHOD_KWARGS["rwp"])
  config.fed.update(scenario="label_at_server", partition="iid")
  config.method.labeled_fraction = 1 / 8
  config.sweep = ml_collections.ConfigDict(
    dict(
      axes=(
        axis("method", {m: METHODS[m] for m in ("FedWeP-Random", "FedWeP-Real")}),
        axis("criterion", {c: {"fed.seed_search.criterion": c} for c in CRITERIA}),
        axis("seed", {str(s): {"seed": s} for s in (0, 1, 2)}),
      ),
      average="seed",
      metrics=("dice", "iou"),
      pivot=("criterion",),
      collapse=0.05,
    )
  )
  return config


def pool_sweep(config) -> ml_collections.ConfigDict:
  """``pool_cpu``: label-at-server with a real unlabeled pool — the server holds 1/8 or
  1/2 of COVID-19 CT's labeled training slices, the clients the rest of them and the
  1,600 slices of ``config.data.unlabeled_dir`` (``covid_ct_unlabeled``), whole sources
  per client (2 clients) or whole patients (4 clients); MT, CPS, PS, FedWeP-Random
  and -Real; the ``cpu`` budget, seeds 0, 1, 2."""
  config.fed.scenario = "label_at_server"
  fractions = {k: FRACTIONS[k] for k in ("1/8", "1/2")}
  partitions = {
    "by source": {"fed.pool_partition": "source", "fed.num_clients": 2},
    "by patient": {"fed.pool_partition": "patient", "fed.num_clients": 4},
  }
  methods = {
    m: METHODS[m] for m in ("MT + FedAvg", "CPS + FedAvg", "PS + FedAvg")
  } | {  # FedWeP at the setting configs/fedwep_ablation.py:server chose for label-at-server
    m: {**METHODS[m], "method.kwargs": METHOD_KWARGS["rwp"] | LABEL_AT_SERVER_RWP}
    for m in ("FedWeP-Random", "FedWeP-Real")
  }
  config.sweep = ml_collections.ConfigDict(
    dict(
      axes=(
        axis("fraction", {k: {"method.labeled_fraction": v} for k, v in fractions.items()}),
        axis("method", methods),
        axis("partition", partitions),
        axis("seed", {str(s): {"seed": s} for s in (0, 1, 2)}),
      ),
      average="seed",
      metrics=("dice", "iou"),
      pivot=("partition", "fraction"),
      collapse=0.05,
    )
  )
  return config
