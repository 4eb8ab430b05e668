"""The user-error type: mistakes in a config, on the command line or in the data.

Everything a user can cause (an unknown name or setting, a bad value, a missing or
unreadable file, masks with unexpected values, too few examples) raises
:class:`UserError`, naming the key or file, what was expected and what was found.
The CLI prints it as one line (``jaxseg: error: ...``) and exits with status 2; any
other exception is a bug and keeps its traceback.
"""


class UserError(ValueError):
  """A mistake in the config, command line or data (not a bug in jaxseg)."""
