"""Shared body of the volume configs (3-D, patch-based; the one trainer, with
``jaxseg/run/volume.py`` for what volumes add).

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
  batch centred on foreground, nnU-Net's one third), and the sliding window: ``overlap``,
  ``window_batch`` (windows per call: bounds device memory), ``mirror`` (test-time
  flips), ``bucket`` (volumes padded to a multiple of it: shared executables);
* ``config.augment.volume``: the 3-D augmentation (``jaxseg.data.patches.Augment3d``);
* ``config.method``: ``name`` (any of ``jaxseg.semi``), ``kwargs``, ``labeled_fraction``
  (of the training cases, by case), ``unlabeled_batch_size``;
* ``config.train``, ``config.mesh`` (data-parallel over the devices), ``config.runtime``:
  as for images (``configs/unet_synthetic.py``);
* ``config.eval.nsd_tolerance``: τ (mm) of the normalized surface Dice.
"""

import ml_collections


def volume_config(model: str, dataset: str) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.kind = "segmentation"  # federated: configs/fedwep_hippocampus.py
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
      overlap=0.5,
      window_batch=2,
      mirror=False,
      bucket=16,
    )
  )
  # The 3-D augmentation of every method's views (jaxseg.data.patches.Augment3d).
  config.augment = ml_collections.ConfigDict({"volume": {}})
  # Any method of jaxseg.semi, as in 2-D: supervised on the labeled cases, or a
  # semi-supervised one with the rest (and the dataset's unlabeled cases) unlabeled.
  config.method = ml_collections.ConfigDict(
    dict(name="supervised", kwargs={}, labeled_fraction=1.0, unlabeled_batch_size=2)
  )
  config.loss = ml_collections.ConfigDict(dict(name="bce_dice", kwargs=dict(bce_weight=1.0)))
  config.optim = ml_collections.ConfigDict(
    dict(name="adam", lr=3e-3, schedule="cosine", warmup_steps=50, grad_clip=1.0, kwargs={})
  )
  config.train = ml_collections.ConfigDict(
    dict(
      batch_size=2,
      steps=1000,
      eval_every=100,
      log_every=20,
      early_stopping_patience=0,
      compute_dtype="float32",
      loss_scale=1.0,
      profile_steps=(),
    )
  )
  config.mesh = ml_collections.ConfigDict(dict(devices=0, fsdp=False))
  config.runtime = ml_collections.ConfigDict(dict(distributed=False, deterministic=False))
  config.eval = ml_collections.ConfigDict(dict(nsd_tolerance=1.0))
  return config
