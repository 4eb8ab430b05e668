"""``pseudoseg`` (centralized) on COVID-19 CT lesions with a labeled fraction.

    jaxseg train --config configs/pseudoseg_covid_ct.py --workdir /tmp/pseudoseg_covid \\
        --config.data.dir=/path/to/covid_ct --config.method.labeled_fraction=0.125

The same method on the built-in data: ``configs/pseudoseg_covid_ct.py:synthetic``
(no data directory needed). See configs/semi_common.py for the settings.

Expect (not yet measured here at this config's scale): a test Dice near the
``supervised`` config's at the same labeled fraction; the FedWeP paper's federated
anchor is PS + FedAvg 0.601 (1/16) to 0.693 (1/2), label-at-client, IID
(``../shared/reference/tables.md``). ``:smoke`` checks only that every stage runs.
"""

from configs.semi_common import semi_config


def get_config(arg: str | None = None):
  if arg in ("synthetic", "synthetic_smoke"):
    return semi_config(
      "pseudoseg", "synthetic_nerve", "smoke" if arg == "synthetic_smoke" else None
    )
  return semi_config("pseudoseg", "covid_ct", arg)
