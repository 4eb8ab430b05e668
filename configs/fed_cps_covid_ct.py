"""Cross Pseudo Supervision + FedAvg (two networks exchanged: cost 100%).

    jaxseg train --config configs/fed_cps_covid_ct.py --workdir /tmp/fed_cps \\
        --config.data.dir=/path/to/covid_ct
    jaxseg eval --workdir /tmp/fed_cps

3 clients (COVID-19 CT has 50 training slices), IID, label-at-client; other
scenarios and partitions: ``--config.fed.scenario=label_at_server``,
``--config.fed.partition=dirichlet``. ``:synthetic`` runs on the built-in data,
``:smoke`` / ``:synthetic_smoke`` in seconds. Settings: configs/fed_common.py.

Expect (not yet measured here at this scale): the FedWeP paper's CPS + FedAvg, 0.583
(1/16) to 0.727 (1/2) test Dice label-at-client, 0.693-0.765 label-at-server (IID;
``../shared/reference/tables.md``), at the price of sending two networks.
"""

from configs.fed_common import fed_config


def get_config(arg: str | None = None):
  config = fed_config("cps", arg)
  return config
