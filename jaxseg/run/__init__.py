"""The run layer: the only I/O. The run skeleton (workdir, config, checkpoints,
logger, multi-host rules) and one runner per kind of run."""
