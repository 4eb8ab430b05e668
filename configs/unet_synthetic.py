"""U-Net on the built-in ``synthetic_nerve`` dataset (generated, no download).

    jaxseg train --config configs/unet_synthetic.py --workdir /tmp/unet_synthetic
    jaxseg eval --workdir /tmp/unet_synthetic

A reduced-width U-Net (the reference recipe at widths 8..128: 591,105 parameters)
on 96x96 images, 1,000 steps of batch 8; on 2 CPU cores it trains in about 4
minutes to a validation Dice above 0.9. The reference widths (32..512, 9,421,569
parameters) are ``--config.model.kwargs.widths='(32,64,128,256,512)'``.
``configs/unet_synthetic.py:smoke`` runs every stage in seconds.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.kind = "segmentation"  # the run: segmentation, federated or gan
  config.seed = 0

  config.model = ml_collections.ConfigDict()
  config.model.name = "unet"
  config.model.kwargs = ml_collections.ConfigDict(dict(widths=(8, 16, 32, 64, 128)))

  config.data = ml_collections.ConfigDict()
  config.data.name = "synthetic_nerve"
  config.data.dir = ""  # synthetic data is generated, not read
  config.data.cache_dir = ""  # default: $JAXSEG_CACHE or ~/.cache/jaxseg
  config.data.folds = 0  # > 0: k-fold cross-validation of the training split
  config.data.fold = 0
  config.data.fold_seed = 0
  config.data.validation_fraction = 0.2  # for datasets without a validation split
  config.data.test_fraction = 0.2  # for datasets without a test split (and no folds)
  # Multi-rater data: train on the dataset's mask ("majority") or, each step, on one
  # rater's mask drawn at random ("random").
  config.data.annotator = "majority"
  config.data.kwargs = ml_collections.ConfigDict(
    dict(
      image_size=96,
      num_train=768,
      num_validation=64,
      num_test=128,
      difficulty=0.5,
      num_sites=1,
      num_annotators=1,
      seed=0,
    )
  )

  # An image_folder dataset (e.g. from `jaxseg synthesize`) added to the training split.
  config.data.extra_train_dir = ""
  # A folder of images without masks: the unlabeled pool of the semi-supervised and
  # federated methods (jaxseg/data/unlabeled_folder.py), in place of the dataset's own.
  config.data.unlabeled_dir = ""

  # Where training batches come from (docs/performance.md, input pipeline): "device" uploads the
  # training split once and draws every batch inside the compiled step; "host" streams
  # grain batches (`workers` processes; "auto": cpu_count // 2 - 1, at most 8),
  # prefetched to the device; "auto": device when the split fits device_budget_mib
  # (0: a quarter of the device's memory, or 1024 MiB where it reports none, as on CPU).
  config.data.placement = "auto"
  config.data.device_budget_mib = 0
  config.data.workers = "auto"

  # The U-Net paper's weight map (w0 > 0 on; computed once, kept with the prepared
  # data) and JPEG weathering (non-empty qualities on; on the host).
  config.data.weight_map = ml_collections.ConfigDict(dict(w0=0.0, sigma=5.0))
  config.data.jpeg = ml_collections.ConfigDict(dict(qualities=(), repeats=1, p=1.0))

  config.augment = ml_collections.ConfigDict({"flip": {}, "rot90": {}})

  config.loss = ml_collections.ConfigDict(dict(name="bce_dice", kwargs={}))

  config.optim = ml_collections.ConfigDict(
    dict(name="adam", lr=3e-3, schedule="cosine", warmup_steps=50, grad_clip=1.0, kwargs={})
  )

  # epochs > 0 sets steps to that many passes over the training split (at the run's start).
  # compute_dtype bfloat16/float16: mixed precision (float32 parameters and optimizer
  # state); loss_scale multiplies the loss (and divides the gradients) for float16.
  config.train = ml_collections.ConfigDict(
    dict(
      batch_size=8,
      steps=1000,
      epochs=0,
      eval_every=250,
      log_every=25,
      early_stopping_patience=0,
      compute_dtype="float32",
      loss_scale=1.0,
      profile_steps=(),  # (first, last): a JAX profiler trace of those steps
    )
  )
  # Devices (docs/performance.md, Scaling): a data-parallel mesh over the first `devices` devices
  # (0: all of every process); fsdp also splits large parameters and optimizer state.
  config.mesh = ml_collections.ConfigDict(dict(devices=0, fsdp=False))
  # distributed: jax.distributed.initialize (multi-host; the launch/ scripts set
  # JAXSEG_DISTRIBUTED=1 instead); deterministic: XLA's deterministic GPU ops.
  config.runtime = ml_collections.ConfigDict(dict(distributed=False, deterministic=False))
  # tiled: evaluate image by image through jaxseg.infer (needed when a valid-conv
  # network cannot take the whole image); topology: add ISBI's Rand and warping errors.
  # samples > 0: `jaxseg eval` also reports the generalized energy distance of that
  # many samples (prob_unet; other models repeat their prediction) against every rater.
  # nsd_tolerance: in pixels, of the normalized surface Dice of `jaxseg eval`.
  config.eval = ml_collections.ConfigDict(
    dict(batch_size=16, tiled=False, topology=False, samples=0, nsd_tolerance=1.0)
  )
  # Prediction on images of any size (jaxseg predict, tiled evaluation).
  config.infer = ml_collections.ConfigDict(
    dict(tile=256, overlap=0.25, tile_batch=4, tta=("identity",))
  )

  if arg == "smoke":
    config.model.kwargs.widths = (4, 8, 16)
    config.data.kwargs.update(image_size=32, num_train=32, num_validation=8, num_test=8)
    config.train.update(steps=20, eval_every=10, log_every=5)
    config.eval.batch_size = 8
  elif arg:
    raise ValueError(f"configs/unet_synthetic.py: unknown argument {arg!r}; known: 'smoke'.")
  return config
