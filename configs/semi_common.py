"""Shared body of the semi-supervised configs (one experiment per file imports it).

``semi_config(method, dataset, arg)``: the FedWeP paper's methods in centralized form
(``config.method``: ``name``, ``kwargs``, ``labeled_fraction``, ``unlabeled_batch_size``)
on ``covid_ct_lesion`` (``config.data.dir`` required) or ``synthetic_nerve``.
"""

import ml_collections

from configs import unet_covid_ct, unet_synthetic

METHOD_KWARGS = {
  "supervised": {},
  "mean_teacher": dict(decay=0.99, weight=1.0, ramp_up_steps=0, input_noise=0.05),
  "cps": dict(weight=1.5),
  "pseudoseg": dict(temperature=0.5, weight=1.0, noise=0.05),
  "rwp": dict(p=0.5, sigma=0.1, weight=1.0, seed_period=1),
}


def semi_config(method: str, dataset: str = "covid_ct", arg: str | None = None):
  base = unet_covid_ct if dataset == "covid_ct" else unet_synthetic
  config = base.get_config("smoke" if arg == "smoke" else None)
  config.method = ml_collections.ConfigDict(
    dict(name=method, kwargs=METHOD_KWARGS[method], labeled_fraction=0.25, unlabeled_batch_size=8)
  )
  if arg == "smoke":
    config.method.unlabeled_batch_size = 4
    config.train.batch_size = 4
    config.method.labeled_fraction = 0.5
  elif arg:
    raise ValueError(f"{method}_{dataset}: unknown argument {arg!r}; known: 'smoke'.")
  return config
