"""Federated 3-D table on MSD hippocampus: 4 clients (IID by case), label-at-client.

    jaxseg sweep --config configs/fed_tables_hippocampus.py --workdir /tmp/fed3d \\
        --config.data.dir=/path/to/msd_hippocampus

writes ``results.md`` / ``results.json``: per-class test Dice and the measured bytes per
client per round (``communication.json`` of each cell) of FedAvg with every label (the
upper bound), FedWeP-Random (RWP + seed search) and CPS + FedAvg, both with 1/8 of
each client's cases labeled — 65 rounds of 10 local steps (650 client steps, the
centralized budget of ``configs/unet3d_hippocampus.py``). One seed; ``:smoke`` tiny.

Expect (measured on one H200 with ``--config.fed.sampling=replacement``, docs/volumes.md):
mean test Dice 0.872 FedAvg every label, 0.870 FedWeP-Random, 0.871
CPS + FedAvg; 7,015,436 B each way per client per round (CPS twice); 2-4 minutes a
cell on the GPU.
``--cells`` splits the cells over processes (see ``configs/semi_tables_hippocampus.py``).
Settings: configs/fedwep_hippocampus.py.
"""

import ml_collections

from configs import fedwep_hippocampus
from configs.semi_common import METHOD_KWARGS
from jaxseg.run.sweep import axis

ARGS = ("smoke",)
METHODS = {  # label: (method, labeled fraction)
  "FedAvg-every-label": ("supervised", 1.0),
  "FedWeP-Random": ("rwp", 0.125),
  "CPS+FedAvg": ("cps", 0.125),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg is not None and arg not in ARGS:
    raise ValueError(f"configs/fed_tables_hippocampus.py: unknown argument {arg!r}; known: {ARGS}.")
  config = fedwep_hippocampus.get_config(arg)
  fraction = 0.5 if arg == "smoke" else None
  variants = {
    label: {
      "method.name": m,
      "method.kwargs": METHOD_KWARGS[m],
      "method.labeled_fraction": fraction or f,
    }
    for label, (m, f) in METHODS.items()
  }
  config.sweep = ml_collections.ConfigDict(
    dict(
      axes=(axis("method", variants), axis("seed", {"0": {"seed": 0}})),
      average="seed",
      metrics=("dice_1", "dice_2", "dice"),
      headers=("anterior", "posterior", "mean"),
    )
  )
  return config
