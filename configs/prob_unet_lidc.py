"""Probabilistic U-Net on LIDC-IDRI nodules with four raters (SPEC §5).

    jaxseg train --config configs/prob_unet_lidc.py --workdir /tmp/prob_unet \\
        --config.data.dir=/path/to/lidc_multirater
    jaxseg eval --workdir /tmp/prob_unet

Every step trains on one rater's mask per image drawn at random
(``data.annotator="random"``); the loss is the cross-entropy of the posterior
sample's reconstruction + beta * KL(posterior || prior). ``jaxseg eval`` draws 16
samples from the prior per test image and reports the generalized energy distance
against all four raters and the samples' diversity (``test_samples.png``: image,
raters, samples), beside the usual scores of the prior-mean prediction. Patients
are split 70/10/20 (seeded), so no patient is in two splits.

``:unet`` is the deterministic baseline (the same U-Net, trained the same way; its
single prediction stands for all 16 samples); ``:smoke`` / ``:unet_smoke`` run in
seconds.

Expect (not yet measured here at this config's scale): a lower GED for the
Probabilistic U-Net than for ``:unet`` and a sample diversity above 0 (the
deterministic baseline's is 0 by construction), as in Kohl et al. on the full
LIDC-IDRI (our 4-rater subset is much smaller).
"""

import ml_collections

from configs import unet_synthetic

ARGS = ("smoke", "unet", "unet_smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg is not None and arg not in ARGS:
    raise ValueError(f"configs/prob_unet_lidc.py: unknown argument {arg!r}; known: {ARGS}.")
  config = unet_synthetic.get_config()
  widths = (32, 64, 128, 192)
  if arg is not None and arg.startswith("unet"):
    config.model = ml_collections.ConfigDict(dict(name="unet", kwargs=dict(widths=widths)))
  else:
    config.model = ml_collections.ConfigDict(
      dict(name="prob_unet", kwargs=dict(widths=widths, latent_dim=6, beta=1.0))
    )
  config.data.name = "lidc_multirater"
  config.data.dir = ""  # required: --config.data.dir=/path/to/lidc_multirater
  config.data.kwargs = ml_collections.ConfigDict(
    dict(validation_fraction=0.1, test_fraction=0.2, seed=0)
  )
  config.data.annotator = "random"
  config.loss.name = "bce"
  config.optim.update(lr=1e-3, warmup_steps=50)
  config.train.update(batch_size=16, steps=2000, eval_every=250, log_every=25)
  config.eval.samples = 16
  config.infer.tile = 128
  if arg is not None and arg.endswith("smoke"):
    config.model.kwargs.widths = (4, 8)
    config.train.update(batch_size=4, steps=4, eval_every=2, log_every=2)
    config.eval.update(batch_size=16, samples=4)
  return config
