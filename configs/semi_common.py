"""Shared body of the semi-supervised configs (one experiment per file imports it).

``semi_config(method, dataset, arg)``: the FedWeP paper's methods in centralized form
(``config.method``: ``name``, ``kwargs``, ``labeled_fraction``, ``unlabeled_batch_size``)
on ``covid_ct_lesion`` (``config.data.dir`` required) or ``synthetic_nerve``.
"""

import ml_collections

from configs import unet_covid_ct, unet_synthetic
from jaxseg import semi

# Every method's settings at their defaults (from the method's factory, where they
# are defined), so that each can be overridden: --config.method.kwargs.weight=2.
METHOD_KWARGS = {name: semi.default_settings(name) for name in semi.METHODS}


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
