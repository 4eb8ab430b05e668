"""``supervised`` (centralized) on COVID-19 CT lesions with a labeled fraction.

    jaxseg train --config configs/supervised_covid_ct.py --workdir /tmp/supervised_covid \\
        --config.data.dir=/path/to/covid_ct --config.method.labeled_fraction=0.125

The same method on the built-in data: ``configs/supervised_covid_ct.py:synthetic``
(no data directory needed). See configs/semi_common.py for the settings.

The lower bound of the semi-supervised table: only the labeled fraction is used.
Expect (not yet measured here at this config's scale) a test Dice below the
fully labeled ``configs/unet_covid_ct.py`` and at most that of the semi-supervised
methods at the same fraction. ``:smoke`` checks only that every stage runs.
"""

from configs.semi_common import semi_config


def get_config(arg: str | None = None):
  if arg in ("synthetic", "synthetic_smoke"):
    return semi_config(
      "supervised", "synthetic_nerve", "smoke" if arg == "synthetic_smoke" else None
    )
  return semi_config("supervised", "covid_ct", arg)
