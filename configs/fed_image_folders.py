"""A federation of sites that each hold an ``image_folder`` dataset (``train/images``,
``train/masks``, optionally ``train/unlabeled``): run over Flower, each site a
SuperNode that reads only its folder, or simulated from the same folders.

    jaxseg flower --config configs/fed_image_folders.py --workdir /tmp/fed_sites \\
      --config.data.dir=SERVER --sites SITE_A,SITE_B
    jaxseg train --config configs/fed_image_folders.py --workdir /tmp/fed_sites_sim \\
      --config.data.dir=SERVER --config.fed.client_dirs="('SITE_A', 'SITE_B')"

``config.data.dir`` is the server's own ``image_folder`` (its validation and test
images; label-at-server also its labeled training images); the sites' folders are
read with the same settings. The argument is the method and optionally ``,smoke``
(seconds on a CPU): ``rwp`` (FedWeP-Random, the default), ``cps``, ``mean_teacher``,
``pseudoseg``, ``supervised`` (FedAvg), e.g. ``configs/fed_image_folders.py:cps,smoke``.
Settings: ``configs/fed_common.py``. Both commands end with the same global model,
bit for bit (README, *Running a real federation*).
"""

import ml_collections

from configs.fed_common import fed_config


def get_config(arg: str = "rwp") -> ml_collections.ConfigDict:
  method, _, size = arg.partition(",")
  if size not in ("", "smoke"):
    raise ValueError(f"fed_image_folders: unknown size {size!r}; known: 'smoke'.")
  config = fed_config(method, "synthetic_smoke" if size else "synthetic")
  config.data.name = "image_folder"
  config.data.dir = ""  # required: the server's folder
  config.data.kwargs = ml_collections.ConfigDict(
    {"image_size": (64, 64), "channels": 1, "mask_values": ((0, 0), (255, 1))}
  )
  config.fed.update(num_clients=2, partition="site")
  if size:
    config.model.kwargs.widths = (4, 8)
    config.data.kwargs.image_size = (32, 32)
    config.eval.batch_size = 4
    config.fed.update(unroll=1, client_map="loop")
    config.train.update(eval_every=2, log_every=1)
  return config
