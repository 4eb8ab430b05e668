"""``cps`` (centralized) on COVID-19 CT lesions with a labeled fraction.

    jaxseg train --config configs/cps_covid_ct.py --workdir /tmp/cps_covid \\
        --config.data.dir=/path/to/covid_ct --config.method.labeled_fraction=0.125

The same method on the built-in data: ``configs/cps_covid_ct.py:synthetic``
(no data directory needed). See configs/semi_common.py for the settings.

Expect (not yet measured here at this config's scale): a test Dice above the
``supervised`` config's at the same labeled fraction. The FedWeP paper's anchor is
federated, not centralized: CPS + FedAvg 0.693 at 1/16 to 0.765 at 1/2 (IID,
label-at-server; ``../shared/reference/tables.md``). ``:smoke`` checks only that
every stage runs (its Dice means nothing).
"""

from configs.semi_common import semi_config


def get_config(arg: str | None = None):
  if arg in ("synthetic", "synthetic_smoke"):
    return semi_config("cps", "synthetic_nerve", "smoke" if arg == "synthetic_smoke" else None)
  return semi_config("cps", "covid_ct", arg)
