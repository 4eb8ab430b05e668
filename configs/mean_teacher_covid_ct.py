"""``mean_teacher`` (centralized) on COVID-19 CT lesions with a labeled fraction.

    jaxseg train --config configs/mean_teacher_covid_ct.py --workdir /tmp/mean_teacher_covid \\
        --config.data.dir=/path/to/covid_ct --config.method.labeled_fraction=0.125

The same method on the built-in data: ``configs/mean_teacher_covid_ct.py:synthetic``
(no data directory needed). See configs/semi_common.py for the settings.

Expect (not yet measured here at this config's scale): a test Dice near the
``supervised`` config's at the same labeled fraction; in the FedWeP paper Mean
Teacher is the weakest baseline (MT + FedAvg 0.242-0.441, label-at-server, IID;
``../shared/reference/tables.md``). ``:smoke`` checks only that every stage runs.
"""

from configs.semi_common import semi_config


def get_config(arg: str | None = None):
  if arg in ("synthetic", "synthetic_smoke"):
    return semi_config(
      "mean_teacher", "synthetic_nerve", "smoke" if arg == "synthetic_smoke" else None
    )
  return semi_config("mean_teacher", "covid_ct", arg)
