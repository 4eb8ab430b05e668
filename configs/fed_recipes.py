"""Federation recipes side by side: FedAvg, FedProx, robust aggregation, DP,
compressed updates, client sampling, server optimizers — on the built-in
``synthetic_nerve`` with 4 sites (non-IID by acquisition site), supervised.

    jaxseg train --config configs/fed_recipes.py:fedprox --workdir /tmp/fedprox
    jaxseg train --config configs/fed_recipes.py:fedavg,smoke --workdir /tmp/attacked \\
        --config.fed.attack.kind=nan --config.fed.attack.clients=1
    jaxseg sweep --config configs/fed_recipes.py:table --workdir /tmp/fed_recipes

The argument is a recipe name (:data:`RECIPES`), optionally followed by ``,smoke``
(seconds on a CPU); ``table`` (``table,smoke``) sweeps the recipes of the README's
table over 3 seeds; ``dp_scale`` (``dp_scale,smoke``) sweeps :data:`DP_SCALE`, client-
level DP in a federation of 512 virtual clients. Every piece is a ``config.fed`` key
(configs/fed_common.py, jaxseg/fed/recipe.py), so any recipe can be changed on the command line
(``--config.fed.prox_mu=0.1``, ``--config.fed.dp.noise_multiplier=2``).

The CPU budget: 64 px images (256 training, 64 validation, 128 test, 4 sites),
U-Net widths 8..64, 20 rounds of 4 local steps of batch 4 (Adam 3e-3 on the clients;
SGD 0.1 for SCAFFOLD, which is defined for SGD, and for its FedAvg baseline).
"""

import ml_collections

from configs.fed_common import fed_config
from jaxseg.run.sweep import apply_overrides, axis

# Each recipe: the config.fed keys it sets (on top of configs/fed_common.py's FedAvg).
RECIPES = {
  "fedavg": {},
  "fedprox": {"fed.algorithm": "fedprox", "fed.prox_mu": 0.01},
  "fedbn": {"fed.algorithm": "fedbn"},
  # SCAFFOLD corrects plain SGD steps (its control variates divide by the step size).
  "scaffold": {"fed.algorithm": "scaffold", "optim.name": "sgd", "optim.lr": 0.1},
  "fedavg_sgd": {"optim.name": "sgd", "optim.lr": 0.1},  # SCAFFOLD's baseline
  "median": {"fed.aggregator.name": "median"},
  "trimmed_mean": {"fed.aggregator.name": "trimmed_mean", "fed.aggregator.trim": 0.25},
  "krum": {"fed.aggregator.name": "krum", "fed.aggregator.byzantine": 1},
  "dp": {"fed.dp.clip": "fixed", "fed.dp.clip_norm": 1.0, "fed.dp.noise_multiplier": 0.5},
  "dp_adaptive": {
    "fed.dp.clip": "adaptive",
    "fed.dp.clip_norm": 1.0,
    "fed.dp.noise_multiplier": 1.0,
    "fed.dp.count_noise": 0.25,
  },
  "q8": {"fed.compress.kind": "q8"},
  "topk": {"fed.compress.kind": "topk", "fed.compress.fraction": 0.1},
  "topk_ef": {
    "fed.compress.kind": "topk",
    "fed.compress.fraction": 0.1,
    "fed.compress.error_feedback": True,
  },
  "sampled": {"fed.clients_per_round": 2},
  # Server optimizers, as Flower names its strategies (Reddi et al. 2021's settings).
  "fedavgm": {"fed.server_optim.kwargs": {"momentum": 0.9}},
  "fedadam": {"fed.server_optim.name": "adam", "fed.server_optim.lr": 0.01},
  "fedyogi": {"fed.server_optim.name": "yogi", "fed.server_optim.lr": 0.01},
  "fedadagrad": {"fed.server_optim.name": "adagrad", "fed.server_optim.lr": 0.01},
}
# The README's table: the recipes, and the robust rule under 1 of 4 attacking sites.
TABLE = {
  "FedAvg": {},
  "FedProx": RECIPES["fedprox"],
  "FedBN": RECIPES["fedbn"],
  "FedAvg (client SGD)": RECIPES["fedavg_sgd"],
  "SCAFFOLD (client SGD)": RECIPES["scaffold"],
  "FedAvg, 1 of 4 attacking": {"fed.attack.kind": "sign_flip", "fed.attack.clients": 1},
  "median, 1 of 4 attacking": {
    **RECIPES["median"],
    "fed.attack.kind": "sign_flip",
    "fed.attack.clients": 1,
  },
  # Client-level DP at 4 sites: clipping alone (no privacy), then the eps of 20 rounds
  # at delta 1e-5 of z = 0.5 and 2 (81 and 12, dp-accounting's RDP accountant).
  "DP clipping only": {**RECIPES["dp"], "fed.dp.noise_multiplier": 0.0},
  "DP z=0.5 (eps 81)": RECIPES["dp"],
  "DP z=2 (eps 12)": {**RECIPES["dp"], "fed.dp.noise_multiplier": 2.0},
  "FedAvg-8bit": RECIPES["q8"],
  "top-10%": RECIPES["topk"],
  "2 of 4 per round": RECIPES["sampled"],
  "top-10% + error feedback": RECIPES["topk_ef"],
}

# Client-level DP where it is meant to work: 512 virtual clients (the 2,048 training
# images split IID, 4 each), K drawn uniformly a round, clipping norm 1.0 as above. eps
# of 20 rounds at delta 1e-5 (dp-accounting, sampling K/512): K=64 z=1 5.1, z=2 1.5;
# K=16 z=1 1.8 (about K=64 z=2's eps with twice the noise per client, z/K).
DP_SCALE = {
  "K=64, clipping only": {"fed.clients_per_round": 64, "fed.dp.noise_multiplier": 0.0},
  "K=64, z=1 (eps 5.1)": {"fed.clients_per_round": 64, "fed.dp.noise_multiplier": 1.0},
  "K=64, z=2 (eps 1.5)": {"fed.clients_per_round": 64, "fed.dp.noise_multiplier": 2.0},
  "K=16, z=1 (eps 1.8)": {"fed.clients_per_round": 16, "fed.dp.noise_multiplier": 1.0},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  name, _, rest = (arg or "fedavg").partition(",")
  known = (*RECIPES, "table", "dp_scale")
  if name not in known or rest not in ("", "smoke"):
    raise ValueError(
      f"configs/fed_recipes.py: unknown argument {arg!r}; known: a recipe ({', '.join(known)}), "
      "optionally followed by ',smoke'."
    )
  smoke = rest == "smoke"
  config = fed_config("supervised", "synthetic_smoke" if smoke else "synthetic")
  config.method.labeled_fraction = 1.0
  config.fed.partition = "site"
  if not smoke:
    config.data.kwargs.update(image_size=64, num_train=256, num_validation=64, num_test=128)
    config.model.kwargs.widths = (8, 16, 32, 64)
    config.infer.tile = 64
    config.fed.update(rounds=20, local_steps=4)
    config.train.update(batch_size=4, eval_every=5)
  if name == "table":
    return table(
      config, {k: TABLE[k] for k in ("FedAvg", "FedAvg-8bit")} if smoke else TABLE, smoke
    )
  if name == "dp_scale":
    return dp_scale(config, smoke)
  return apply_overrides(config, RECIPES[name].items())


def dp_scale(config, smoke: bool) -> ml_collections.ConfigDict:
  """:data:`DP_SCALE`'s federation (smoke: 16 clients, 4 a round, of 64 images)."""
  clients = 16 if smoke else 512
  config = apply_overrides(config, RECIPES["dp"].items())
  config.data.kwargs.num_train = 4 * clients
  config.fed.update(num_clients=clients, partition="iid")
  rows = DP_SCALE
  if smoke:
    rows = {"K=4, z=1": {"fed.clients_per_round": 4, "fed.dp.noise_multiplier": 1.0}}
  return table(config, rows, smoke)


def table(config, rows: dict, smoke: bool) -> ml_collections.ConfigDict:
  """``rows`` (of :data:`TABLE` or :data:`DP_SCALE`) x seeds 0, 1, 2 (``smoke``: seed
  0): test Dice (per image; the mean and the worst of the 4 acquisition
  sites' Dice: the eval's per-site rows) and what each sends.

  Nothing is chosen from these tables: every recipe runs at its literature setting (FedProx
  mu 0.01, of its paper's grid; top-k 10%; trimmed mean 25%; DP clipping norm 1.0,
  not tuned); each run's checkpoint is its best validation Dice, as in every run."""
  seeds = (0,) if smoke else (0, 1, 2)
  config.sweep = ml_collections.ConfigDict(
    dict(
      axes=(axis("recipe", rows), axis("seed", {str(s): {"seed": s} for s in seeds})),
      average="seed",
      metrics=("dice", "site_dice_mean", "site_dice_worst"),
      headers=("test Dice", "mean of sites", "worst site"),
      collapse=0.05,
    )
  )
  return config
