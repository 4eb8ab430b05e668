"""The user-error type: mistakes in a config, on the command line or in the data.

Everything a user can cause (an unknown name or setting, a bad value, a missing or
unreadable file, masks with unexpected values, too few examples) raises
:class:`UserError`, naming the key or file, what was expected and what was found.
The CLI prints it as one line (``jaxseg: error: ...``) and exits with status 2; any
other exception is a bug and keeps its traceback.
"""


class UserError(ValueError):
  """A mistake in the config, command line or data (not a bug in jaxseg)."""


class Preempted(Exception):  # noqa: N818 (a stop, not an error)
  """A run stopped by SIGTERM or SIGINT after checkpointing the step it had reached;
  the CLI prints it as one line and exits with :data:`PREEMPTED_STATUS`. Running the
  same command again resumes from that checkpoint."""


PREEMPTED_STATUS = 3
