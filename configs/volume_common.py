"""Shared body of the volume configs (3-D, patch-based; ``jaxseg/run/volume.py``).

``volume_config(model, dataset)``:

* ``config.data``: ``name`` (``msd`` — a folder in the Medical Segmentation Decathlon
  / nnU-Net raw layout, ``config.data.dir`` required — or the built-in
  ``synthetic_nerve3d``), ``dir``, ``cache_dir`` and the dataset's ``kwargs``
  (``msd``: ``target_spacing`` (empty: the median), ``folds``, ``fold``,
  ``validation_fraction``, ``max_cases``, ``seed``);
* ``config.model``: ``unet``, ``unetpp`` or ``attention_unet`` (``spatial_dims``,
  ``in_channels`` and ``num_classes`` are set from the data; ``pool``: per-level
  pooling windows for anisotropic spacings);
* ``config.volume``: ``patch_size`` (empty: the median case rounded to the model's
  strides, shrunk to ``patch_budget_voxels``; printed), ``oversample`` (share of each
  batch centred on foreground, nnU-Net's one third), ``augment`` (see
  ``jaxseg.data.patches.Augment3d``), and the sliding window: ``overlap``,
  ``window_batch`` (windows per call: bounds device memory), ``mirror`` (test-time
  flips), ``bucket`` (volumes padded to a multiple of it: shared executables);
* ``config.eval.nsd_tolerance``: τ (mm) of the normalized surface Dice.
"""

import ml_collections


def volume_config(model: str, dataset: str) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = ml_collections.ConfigDict(
    dict(name=model, kwargs=ml_collections.ConfigDict(dict(widths=(16, 32, 64, 128))))
  )
  config.data = ml_collections.ConfigDict(
    dict(name=dataset, dir="", cache_dir="", kwargs=ml_collections.ConfigDict())
  )
  config.volume = ml_collections.ConfigDict(
    dict(
      patch_size=(),
      patch_budget_voxels=64**3,
      oversample=0.33,
      augment=ml_collections.ConfigDict(),
      overlap=0.5,
      window_batch=2,
      mirror=False,
      bucket=16,
    )
  )
  config.loss = ml_collections.ConfigDict(dict(name="bce_dice", kwargs=dict(bce_weight=1.0)))
  config.optim = ml_collections.ConfigDict(
    dict(name="adam", lr=3e-3, schedule="cosine", warmup_steps=50, grad_clip=1.0, kwargs={})
  )
  config.train = ml_collections.ConfigDict(
    dict(batch_size=2, steps=1000, eval_every=100, log_every=20, compute_dtype="float32")
  )
  config.eval = ml_collections.ConfigDict(dict(nsd_tolerance=1.0))
  return config
