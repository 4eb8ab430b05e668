"""FedAvg, fully supervised (the upper bound): every client labels all its images.

    jaxseg train --config configs/fedavg_covid_ct.py --workdir /tmp/fedavg \\
        --config.data.dir=/path/to/covid_ct
    jaxseg eval --workdir /tmp/fedavg

3 clients (COVID-19 CT has 50 training slices), IID, every client labels all its
images (label-at-client); non-IID: ``--config.fed.partition=dirichlet``; FedAdam:
``--config.fed.server_optim.name=adam --config.fed.server_optim.lr=0.01``.
``:synthetic`` runs on the built-in data, ``:smoke`` / ``:synthetic_smoke`` in
seconds. Settings: configs/fed_common.py.

Expect (not yet measured here at this scale): the upper bound of the FedWeP paper's
label-at-client table, test Dice 0.744 IID and 0.742 non-IID
(``../shared/reference/tables.md``).
"""

from configs.fed_common import fed_config


def get_config(arg: str | None = None):
  config = fed_config("supervised", arg)
  config.method.labeled_fraction = 1.0
  return config
