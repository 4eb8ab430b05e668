"""Mean Teacher + FedAvg (student and teacher exchanged: cost 100%).

    jaxseg train --config configs/fed_mean_teacher_covid_ct.py --workdir /tmp/fed_mean_teacher \\
        --config.data.dir=/path/to/covid_ct
    jaxseg eval --workdir /tmp/fed_mean_teacher

3 clients (COVID-19 CT has 50 training slices), IID, label-at-client; other
scenarios and partitions: ``--config.fed.scenario=label_at_server``,
``--config.fed.partition=dirichlet``. ``:synthetic`` runs on the built-in data,
``:smoke`` / ``:synthetic_smoke`` in seconds. Settings: configs/fed_common.py.

Expect (not yet measured here at this scale): the FedWeP paper's MT + FedAvg, 0.437
(1/16) to 0.714 (1/2) test Dice label-at-client, 0.24-0.44 label-at-server (IID;
``../shared/reference/tables.md``).
"""

from configs.fed_common import fed_config


def get_config(arg: str | None = None):
  config = fed_config("mean_teacher", arg)
  return config
