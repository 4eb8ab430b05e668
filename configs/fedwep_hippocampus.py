"""FedWeP on MSD Task04 hippocampus volumes: 4 clients (IID by case), label-at-client.

    jaxseg train --config configs/fedwep_hippocampus.py --workdir /tmp/fedwep_hippo \\
        --config.data.dir=/path/to/msd_hippocampus
    jaxseg eval --workdir /tmp/fedwep_hippo

The 3-D U-Net of ``configs/unet3d_hippocampus.py`` (widths 16..128, patch 32x48x32,
left-right flips), 1/8 of each client's training cases labeled, the rest unlabeled;
each round the server searches the seed pair on random-noise patches (FedWeP-Random)
and every client trains ``local_steps`` RWP steps on patches of its own cases.
``--config.method.name=cps`` is CPS + FedAvg, ``supervised`` with
``--config.method.labeled_fraction=1`` FedAvg with every label (the upper bound).
``:smoke`` — 12 cases, tiny, seconds (writes ``communication.json`` like any run).
Settings: configs/fed_common.py, configs/volume_common.py.
"""

import ml_collections

from configs import unet3d_hippocampus
from configs.fed_common import federated, smoke_fed
from configs.semi_common import METHOD_KWARGS

ARGS = ("smoke",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg is not None and arg not in ARGS:
    raise ValueError(f"configs/fedwep_hippocampus.py: unknown argument {arg!r}; known: {ARGS}.")
  config = federated(unet3d_hippocampus.get_config(arg))
  config.method.update(name="rwp", labeled_fraction=0.125, unlabeled_batch_size=2)
  config.method.kwargs = ml_collections.ConfigDict(METHOD_KWARGS["rwp"])
  config.fed.update(num_clients=4, rounds=65, local_steps=10)  # 650 client steps, as centralized
  config.train.update(eval_every=13, log_every=1)
  if arg == "smoke":
    smoke_fed(config)
    config.fed.num_clients = 2
    config.method.labeled_fraction = 0.5
  return config
