"""FedWeP: randomized weight perturbation + FedAvg with server-side seed search.

    jaxseg train --config configs/fedwep_covid_ct.py --workdir /tmp/fedwep \\
        --config.data.dir=/path/to/covid_ct
    jaxseg eval --workdir /tmp/fedwep

Label-at-server (the server keeps the labeled fraction and trains on it first in
every round), 3 IID clients with unlabeled slices, FedWeP-Random (noise probe
images, 8 candidate seeds, the most similar pair). FedWeP-Real:
``--config.fed.seed_search.probe=real``; label-at-client:
``--config.fed.scenario=label_at_client``. Each round logs the chosen seeds and their
similarity in ``metrics.jsonl``. ``:synthetic`` runs on the built-in data, ``:smoke``
/ ``:synthetic_smoke`` in seconds. Settings: configs/fed_common.py.

Expect (not yet measured here at this scale): the FedWeP paper's FedWeP-Random,
label-at-server, IID: test Dice 0.557 (1/16) to 0.694 (1/2); FedWeP-Real 0.470 to
0.737 (``../shared/reference/tables.md``), at about half the communication of the
two-model methods.
"""

from configs.fed_common import fed_config


def get_config(arg: str | None = None):
  config = fed_config("rwp", arg)
  config.fed.scenario = "label_at_server"
  return config
