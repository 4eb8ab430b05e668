"""Cross Pseudo Supervision + FedAvg (two networks exchanged: cost 100%).

    jaxseg train --config configs/fed_cps_covid_ct.py --workdir /tmp/fed_cps \\
        --config.data.dir=/path/to/covid_ct
    jaxseg eval --workdir /tmp/fed_cps

3 clients (COVID-19 CT has 50 training slices), IID, label-at-client; other
scenarios and partitions: ``--config.fed.scenario=label_at_server``,
``--config.fed.partition=dirichlet``. ``:synthetic`` runs on the built-in data,
``:smoke`` / ``:synthetic_smoke`` in seconds. Settings: configs/fed_common.py.
"""

from configs.fed_common import fed_config


def get_config(arg: str | None = None):
  config = fed_config("cps", arg)
  return config
