"""Shared body of the federated configs (one experiment per file imports it).

``fed_config(method, arg)``: a method of ``configs/semi_common.py`` run in federation
(``config.fed``) on ``covid_ct_lesion`` (``config.data.dir`` required) or, with the
arguments ``synthetic`` / ``synthetic_smoke``, on the built-in ``synthetic_nerve``
(4 acquisition sites). ``smoke`` variants run in seconds on a CPU.

``config.fed``:

* ``rounds``; ``local_steps`` per client per round (or ``local_epochs`` > 0: passes
  over each client's data, unequal clients masked); ``server_steps`` of server
  training per round (label-at-server);
* ``num_clients``, ``partition`` (``iid``, ``dirichlet`` over ``attribute``
  ``lesion_size`` in ``bins`` quantiles or ``site`` with concentration ``alpha``,
  ``site``), ``scenario`` (``label_at_client``, ``label_at_server``);
* ``server_training`` (label-at-server): where the server trains on its labels in a
  round — ``before_clients`` (the clients start from its model; their average is the
  global model), ``with_clients`` (its model joins the clients' average, weighted by
  its labeled images) or ``after_clients`` (it fine-tunes the clients' average);
* ``sampling``: how a client draws its batches: ``epochs`` (seeded permutations of
  its images, without replacement, continuing across rounds: the rule of centralized
  runs) or ``replacement`` (uniform per step; how docs/federated.md's earlier federated
  tables were drawn);
* ``pool_partition``: how the images without masks (``config.data.unlabeled_dir``, or
  the dataset's own) join the clients: ``iid``, or whole ``patient`` / ``source``
  groups per client (read from the pool's file names: jaxseg/data/unlabeled_folder.py);
* ``client_dirs``: one folder per client (a site's own images, read as
  ``config.data`` reads its folder; ``msd`` volumes prepared as the server's folder
  plans them; partition ``site``): a simulation of the sites of a real federation;
  ``config.data.dir`` is then the server's (validation and test);
* a real federation over Flower (``jaxseg flower``, jaxseg/flower/app.py): a round
  ends with at least ``min_fraction`` of the sites' updates, waiting at most
  ``round_timeout_s`` seconds for the others;
* ``server_optim``: an optimizer of the pseudo-gradient (``sgd`` lr 1.0 is FedAvg;
  ``adam`` is FedAdam), same keys as ``config.optim``;
* ``seed_search`` (FedWeP): ``candidates`` N, ``probe`` (``random`` or ``real``),
  ``probe_size``, ``criterion`` (``most_similar``, ``least_similar``, ``target``),
  ``target``, ``statistics`` (``batch``: the perturbed models normalise the probe
  with its batch statistics, as clients train them; ``running``: inference mode) and
  ``similarity`` of two candidates' predictions (``cosine`` of probabilities,
  ``dice`` of hard labels, ``centred`` logits; jaxseg/semi/rwp/search.py);
* ``unroll``: local steps unrolled in the compiled round (0: all on CPU, where loops
  run convolutions slowly; none elsewhere, for faster compiles);
* ``client_map``: ``vmap`` (all clients in one compiled program), ``scan`` (the same
  program, each device's clients one after another), ``loop`` (one compiled client
  function called per client) or ``auto`` (what measured fastest, docs/performance.md: loop on
  CPU; on accelerators vmap, scan for 3-D networks);
* ``placement``: ``auto`` (client data on the device if it takes at most
  ``device_budget_mib``), ``device`` or ``stream`` (batches sent every round);
  ``shard_clients``: split the client axis over all devices; ``data_devices`` > 1:
  over groups of that many devices, each splitting its client's batches (data
  parallelism inside a client; ``client_map`` vmap).

``config.train.eval_every`` / ``log_every`` count rounds; ``config.train.batch_size``
is the labeled batch of a client (``config.method.unlabeled_batch_size`` the
unlabeled one).
"""

import ml_collections

from configs.semi_common import semi_config
from jaxseg.fed import recipe
from jaxseg.fed.checks import UNUSED

ARGS = ("smoke", "synthetic", "synthetic_smoke")


# The fed section's defaults (see the module docstring).
FED = dict(
  rounds=100,
  local_steps=10,
  local_epochs=0.0,
  server_steps=10,
  num_clients=3,
  partition="iid",
  pool_partition="iid",
  attribute="lesion_size",
  bins=3,
  alpha=0.5,
  scenario="label_at_client",
  server_training="before_clients",
  sampling="epochs",
  client_dirs=(),
  min_fraction=1.0,
  round_timeout_s=600.0,
  server_optim=dict(
    name="sgd", lr=1.0, schedule="constant", warmup_steps=0, grad_clip=0.0, kwargs={}
  ),
  seed_search=dict(
    candidates=8,
    probe="random",
    probe_size=8,
    criterion="most_similar",
    target=0.9,
    statistics="batch",
    similarity="cosine",
  ),
  unroll=0,
  client_map="auto",
  placement="auto",
  device_budget_mib=2048,
  shard_clients=True,
  data_devices=1,
  **recipe.DEFAULTS,
)


def fed_config(method: str, arg: str | None = None) -> ml_collections.ConfigDict:
  if arg is not None and arg not in ARGS:
    raise ValueError(f"federated config: unknown argument {arg!r}; known: {', '.join(ARGS)}.")
  dataset = "synthetic_nerve" if arg and arg.startswith("synthetic") else "covid_ct"
  smoke = arg is not None and arg.endswith("smoke")
  config = federated(semi_config(method, dataset, "smoke" if smoke else None))
  if dataset == "synthetic_nerve":
    config.data.kwargs.num_sites = 4
    config.fed.num_clients = 4
  if smoke:
    smoke_fed(config)
  return config


def federated(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config`` (a segmentation config, of images or volumes) as a federated run: the
  ``fed`` section, a constant client optimizer, rounds instead of steps."""
  config.kind = "federated"
  with config.unlocked():
    del config["mesh"]
    for section, keys in UNUSED.items():
      for key in keys:
        if key in config[section]:
          del config[section][key]
  config.optim.update(schedule="constant", warmup_steps=0)
  config.train.update(eval_every=10, log_every=1)
  config.fed = ml_collections.ConfigDict(FED)
  return config


def smoke_fed(config: ml_collections.ConfigDict) -> None:
  config.fed.update(rounds=2, local_steps=2, server_steps=2, num_clients=3)
  config.fed.seed_search.update(candidates=4, probe_size=2)
  config.train.update(batch_size=2, eval_every=1)
  config.method.unlabeled_batch_size = 2
