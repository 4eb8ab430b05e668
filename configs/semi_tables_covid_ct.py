"""Centralized semi-supervised table on COVID-19 CT: methods x labeled fraction x seed.

    jaxseg sweep --config configs/semi_tables_covid_ct.py:cpu --workdir /tmp/semi_table \\
        --config.data.dir=/path/to/covid_ct

writes ``results.md`` / ``results.json``: test Dice (and IoU) mean ± std over seeds for
supervised, Mean Teacher, CPS, PseudoSeg and RWP at labeled fractions 1/16, 1/8, 1/4,
1/2 of the training slices, with the communication cost each method would have in
federation (two-model methods 100%, one model 50%).

Arguments: none — 128 px, widths 16..256, 3 seeds, 1,500 steps (a GPU run); ``cpu`` —
64 px, widths 8..128, one seed, 300 steps; ``smoke`` — two methods, one fraction.

Expect (not yet measured here): every method at least as good as ``supervised`` at
its fraction, the gap shrinking as the fraction grows; there is no published
centralized table to match (the FedWeP paper's are federated: ``configs/fedwep_tables.py``).
"""

import ml_collections

from configs.semi_common import METHOD_KWARGS, semi_config
from jaxseg.run.sweep import axis

FRACTIONS = {"1/16": 1 / 16, "1/8": 1 / 8, "1/4": 1 / 4, "1/2": 1 / 2}
COST = {
  "supervised": "50%",
  "mean_teacher": "100%",
  "cps": "100%",
  "pseudoseg": "50%",
  "rwp": "≈50%",
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = semi_config("supervised", "covid_ct", "smoke" if arg == "smoke" else None)
  methods, fractions, seeds = list(METHOD_KWARGS), FRACTIONS, (0, 1, 2)
  config.train.update(steps=1500, eval_every=250)
  if arg == "cpu":
    config.data.kwargs.image_size = 64
    config.model.kwargs.widths = (8, 16, 32, 64, 128)
    config.infer.tile = 64
    config.train.update(steps=300, eval_every=100, log_every=50)
    seeds = (0,)
  elif arg == "smoke":
    methods, fractions, seeds = ["supervised", "rwp"], {"1/2": 0.5}, (0,)
    config.train.update(steps=2, eval_every=2)
  elif arg:
    raise ValueError(
      f"configs/semi_tables_covid_ct.py: unknown argument {arg!r}; known: 'cpu', 'smoke'."
    )
  config.sweep = ml_collections.ConfigDict(
    dict(
      axes=(
        axis("method", {m: {"method.name": m, "method.kwargs": METHOD_KWARGS[m]} for m in methods}),
        axis("fraction", {k: {"method.labeled_fraction": v} for k, v in fractions.items()}),
        axis("seed", {str(s): {"seed": s} for s in seeds}),
      ),
      average="seed",
      metrics=("dice", "iou"),
      cost=tuple((m, COST[m]) for m in methods),
    )
  )
  return config
