"""``jaxseg sites``: a federation's folders from the built-in dataset, so that a
federation over folders — simulated (``config.fed.client_dirs``) or over Flower
(``jaxseg flower --sites``) — can be tried with no data of one's own.

``OUTPUT/site_k/train/{images,masks}`` (k = 1..N): the training images synthetic
acquisition site k rendered (its own gain, contrast and speckle: non-IID by site);
``OUTPUT/server/{train,validation,test}/{images,masks}``: the server's own — the
training images of one more acquisition site (what a label-at-server federation
trains on; label-at-client reads only the sites') and the validation and test splits
(of every site). PNG, gray images, masks 0/255 — the
``image_folder`` layout (:mod:`jaxseg.data.image_folder`) that
``configs/fed_image_folders.py`` reads.
"""

import copy
import os
import shutil

import numpy as np
from PIL import Image

from jaxseg.data import pipeline
from jaxseg.errors import UserError

FEDERATED = "configs/fed_image_folders.py:cps,smoke"  # the next command's config


def _write(folder: str, records: dict) -> None:
  for sub in ("images", "masks"):
    os.makedirs(os.path.join(folder, sub))
  for i, (image, mask) in enumerate(zip(records["image"], records["mask"], strict=True)):
    Image.fromarray(image[..., 0]).save(os.path.join(folder, "images", f"{i:04d}.png"))
    Image.fromarray((mask > 0).astype(np.uint8) * 255).save(
      os.path.join(folder, "masks", f"{i:04d}.png")
    )


def run(config, sites: int, output: str) -> str:
  """Writes the folders (see the module docstring) and prints the commands that train
  a federation on them; returns ``output``."""
  if config.data.name != "synthetic_nerve":
    raise UserError(
      f"jaxseg sites writes folders of the built-in dataset (config.data.name "
      f"synthetic_nerve, e.g. configs/unet_synthetic.py); found {config.data.name!r}."
    )
  if sites < 1:
    raise UserError(f"--sites: the number of site folders, at least 1; found {sites}.")
  if os.path.exists(output) and os.listdir(output):
    raise UserError(f"--output {output!r} exists and is not empty; choose a new folder.")
  data = copy.deepcopy(config.data)
  with data.unlocked():
    data.kwargs.num_sites = sites + 1  # the last: the server's
  splits = pipeline.load_splits(data)
  partial = output.rstrip("/") + ".partial"
  shutil.rmtree(partial, ignore_errors=True)
  fields = ("image", "mask", "site")
  for split in ("validation", "test"):
    source = splits[split]
    _write(os.path.join(partial, "server", split), source.take(np.arange(len(source)), fields))
  train = splits["train"].take(np.arange(len(splits["train"])), fields)
  for k in range(sites + 1):
    held = {name: v[train["site"] == k] for name, v in train.items()}
    _write(os.path.join(partial, f"site_{k + 1}" if k < sites else "server", "train"), held)
  if os.path.exists(output):
    os.rmdir(output)  # empty (checked above)
  os.rename(partial, output)
  folders = ",".join(os.path.join(output, f"site_{k + 1}") for k in range(sites))
  quoted = ", ".join(f"'{os.path.join(output, f'site_{k + 1}')}'" for k in range(sites))
  server = os.path.join(output, "server")
  print(
    f"Wrote {sites} site folders and {output}/server ({len(train['site'])} training images "
    f"by acquisition site; the server's validation {len(splits['validation'])}, test "
    f"{len(splits['test'])}). Next, a simulated federation of those folders:\n"
    f"  jaxseg train --config {FEDERATED} --config.data.dir={server} "
    f'--config.fed.num_clients={sites} --config.fed.client_dirs="({quoted},)" '
    f"--workdir /tmp/fed_sites_sim\n"
    f"or the same over Flower on this machine:\n"
    f"  jaxseg flower --config {FEDERATED} --config.data.dir={server} "
    f"--config.fed.num_clients={sites} --sites {folders} --workdir /tmp/fed_sites"
  )
  return output
