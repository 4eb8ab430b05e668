"""A federation of sites that each hold an ``image_folder`` dataset (``train/images``,
``train/masks``, optionally ``train/unlabeled``): run over Flower, each site a
SuperNode that reads only its folder, or simulated from the same folders.

    jaxseg flower --config configs/fed_image_folders.py --workdir /tmp/fed_sites \\
      --config.data.dir=SERVER --sites SITE_A,SITE_B
    jaxseg train --config configs/fed_image_folders.py --workdir /tmp/fed_sites_sim \\
      --config.data.dir=SERVER --config.fed.client_dirs="('SITE_A', 'SITE_B')"

``config.data.dir`` is the server's own ``image_folder`` (its validation and test
images; label-at-server also its labeled training images); the sites' folders are
read with the same settings: every setting of ``image_folder`` (mask values and channels
``auto``: inferred from the server's folder, as ``configs/unet_folder.py`` does), e.g.
``--config.data.kwargs.mask_threshold=128``. Every mask a site holds is a label
(``method.labeled_fraction`` 1.0; a smaller fraction labels that share of each site's
images and treats the rest as unlabeled); images in a site's ``train/unlabeled`` are
its unlabeled images. The argument is the method and optionally ``,smoke``
(seconds on a CPU): ``rwp`` (FedWeP-Random, the default), ``cps``, ``mean_teacher``,
``pseudoseg``, ``supervised`` (FedAvg), e.g. ``configs/fed_image_folders.py:cps,smoke``.
Settings: ``configs/fed_common.py``. Both commands end with the same global model,
bit for bit (docs/flower.md).
"""

import dataclasses

import ml_collections

from configs.fed_common import fed_config
from jaxseg.data import image_folder


def get_config(arg: str = "rwp") -> ml_collections.ConfigDict:
  method, _, size = arg.partition(",")
  if size not in ("", "smoke"):
    raise ValueError(f"fed_image_folders: unknown size {size!r}; known: 'smoke'.")
  config = fed_config(method, "synthetic_smoke" if size else "synthetic")
  config.data.name = "image_folder"
  config.data.dir = ""  # required: the server's folder
  # Every image_folder setting at its default, as configs/unet_folder.py: mask values
  # and channels ``auto`` (read from the server's folder; the sites are read alike).
  settings = dataclasses.asdict(image_folder.Settings())
  settings["image_size"] = "(64, 64)"
  config.data.kwargs = ml_collections.ConfigDict(settings)
  config.fed.update(num_clients=2, partition="site")
  # A site's masks are its labels: every one is used. A smaller fraction hides the
  # rest (a scarcity study on real folders; per site: jaxseg flower --fractions).
  config.method.labeled_fraction = 1.0
  if size:
    config.model.kwargs.widths = (4, 8)
    config.data.kwargs.image_size = "(32, 32)"
    config.eval.batch_size = 4
    config.fed.update(unroll=1, client_map="loop")
    config.train.update(eval_every=2, log_every=1)
  return config
