"""Semi-supervised 3-D table on MSD hippocampus: methods x fold, 1/8 of the cases labeled.

    jaxseg sweep --config configs/semi_tables_hippocampus.py --workdir /tmp/semi3d \\
        --config.data.dir=/path/to/msd_hippocampus

writes ``results.md`` / ``results.json``: per-class test Dice (anterior, posterior, their
mean) of supervised training on the labeled cases against Mean Teacher, CPS, RWP and
PseudoSeg, which also train on the other 7/8 of the training cases without labels, at the
budget of ``configs/unet3d_hippocampus.py`` (650 steps, patch 32x48x32, batch 2 labeled
+ 2 unlabeled patches). One fold (fold 0, the test split of 52 cases); ``:folds`` all 5
(mean ± std over folds); ``:smoke`` two methods at tiny sizes. The cells are
independent: ``--cells 0,2`` runs some of them (e.g. one process per GPU), a last run
without ``--cells`` writes the table.

Expect (measured on one H200, docs/volumes.md; one fold, one seed): mean test Dice
0.863 supervised, 0.860 Mean Teacher, 0.861 CPS, 0.859 RWP, 0.859 PseudoSeg — no
semi-supervised gain at this budget on these small, regular structures; each cell
70-100 s on the GPU, about 26 minutes (supervised) to 2 hours on 2 CPU cores.
"""

import ml_collections

from configs import unet3d_hippocampus
from configs.semi_common import METHOD_KWARGS
from jaxseg.run.sweep import axis

ARGS = ("folds", "smoke")
METHODS = ("supervised", "mean_teacher", "cps", "rwp", "pseudoseg")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg is not None and arg not in ARGS:
    raise ValueError(
      f"configs/semi_tables_hippocampus.py: unknown argument {arg!r}; known: {ARGS}."
    )
  config = unet3d_hippocampus.get_config("smoke" if arg == "smoke" else None)
  config.method.update(labeled_fraction=0.125, unlabeled_batch_size=2)
  methods, folds = METHODS, (0,)
  if arg == "folds":
    folds = tuple(range(config.data.kwargs.folds))
  elif arg == "smoke":
    methods = ("supervised", "cps")
    config.method.labeled_fraction = 0.5
  config.sweep = ml_collections.ConfigDict(
    dict(
      axes=(
        axis("method", {m: {"method.name": m, "method.kwargs": METHOD_KWARGS[m]} for m in methods}),
        axis("fold", {str(k): {"data.kwargs.fold": k} for k in folds}),
      ),
      average="fold",
      metrics=("dice_1", "dice_2", "dice"),
      headers=("anterior", "posterior", "mean"),
    )
  )
  return config
