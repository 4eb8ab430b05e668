"""What ``jaxseg`` says about its commands: the usage of each, its flags, and the
answer to a misspelt command (strings only; :mod:`jaxseg.main` prints them)."""

import difflib

USAGE = """\
jaxseg train --config FILE[:ARG] --workdir DIR [--config.key=value ...]
jaxseg eval  --workdir DIR [--split test]
jaxseg predict --workdir DIR [--workdir DIR2 ...] --input FILE_OR_DIR --output DIR
jaxseg sweep --config FILE[:ARG] --workdir DIR [--cells 0,1 | --tabulate] [--config.key=value ...]
jaxseg synthesize --workdir GAN_RUN --num N --output DIR
jaxseg sites --config FILE[:ARG] --sites N --output DIR
jaxseg flower --config FILE[:ARG] --workdir DIR --sites DIR0,DIR1 [--fractions F0,F1]
jaxseg flower --config FILE[:ARG] --workdir DIR --superlink HOST:PORT [--root_certificates CA]
jaxseg flower --serve HOST:PORT --certificates DIR --workdir DIR [--operator_port 9093]
jaxseg flower --register KEY.pub[,KEY2.pub] --workdir DIR
jaxseg flower --site NAME --sites DIR --key KEY --superlink HOST:PORT --root_certificates CA
              --workdir DIR [--fractions F]
jaxseg inspect --config FILE[:ARG] [--config.data.key=value ...] [--json FILE]
jaxseg config --config FILE[:ARG] [--config.key=value ...]
jaxseg bench --models unet,unetpp:mode=l2,... --input NxCxHxW [--batch N]
             [--dtype float32|bfloat16] [--repeats N] [--json FILE] [--profile DIR]
jaxseg bench --versus_torch --input NxCxHxW [--dtype float32|bfloat16] [--repeats N]
             [--json FILE]
jaxseg bench --clients 4,16,64 --config FILE[:ARG] [--repeats N] [--json FILE]
jaxseg bench --pipeline [--config FILE[:ARG]] [--input BxCxHxW] [--json FILE]
jaxseg bench --suite accelerator [--json FILE]

`jaxseg COMMAND --help` shows a command's flags. Mistakes in the config, command line
or data are printed as one line (`jaxseg: error: ...`, exit status 2); --verbose or
JAXSEG_DEBUG=1 shows their traceback."""

# Each command's own flags, in the order its help lists them (--verbose: every command).
FLAGS = {
  "train": ("config", "workdir"),
  "eval": ("workdir", "split"),
  "predict": ("workdir", "input", "output"),
  "sweep": ("config", "workdir", "cells", "tabulate"),
  "synthesize": ("workdir", "num", "output"),
  "sites": ("config", "sites", "output"),
  "flower": (
    "config",
    "workdir",
    "sites",
    "fractions",
    "superlink",
    "root_certificates",
    "serve",
    "certificates",
    "operator_port",
    "register",
    "site",
    "key",
  ),  # fmt: skip
  "inspect": ("config", "json"),
  "config": ("config",),
  "bench": (
    "models",
    "input",
    "batch",
    "dtype",
    "repeats",
    "json",
    "profile",
    "versus_torch",
    "clients",
    "pipeline",
    "suite",
    "config",
  ),  # fmt: skip
}
COMMANDS = tuple(FLAGS)
CONFIG_KEYS = (
  "--config.KEY=VALUE sets any key of the config (e.g. --config.train.steps=100); "
  "`jaxseg config --config FILE` prints every key with its value."
)


def help_text(command: str, flags) -> str:
  """``jaxseg COMMAND --help``: its usage lines and its flags (``flags``: absl's
  ``FLAGS``, for each flag's help and default)."""
  usage = [line for line in USAGE.splitlines() if line.startswith(f"jaxseg {command} ")]
  lines = [*_with_continuations(usage), "", "flags:"]
  for name in (*FLAGS[command], "verbose"):
    flag = flags[name]
    default = "" if flag.default in (None, False) else f" (default: {flag.default_as_str})"
    lines.append(f"  --{name}: {flag.help}{default}")
  if "config" in FLAGS[command]:
    lines += ["", CONFIG_KEYS]
  return "\n".join(lines)


def _with_continuations(usage: list[str]) -> list[str]:
  """The usage lines of a command with their indented continuation lines."""
  all_lines, out = USAGE.splitlines(), []
  for line in usage:
    i = all_lines.index(line)
    out.append(line)
    while i + 1 < len(all_lines) and all_lines[i + 1].startswith(" "):
      i += 1
      out.append(all_lines[i])
  return out


def unknown(command: str) -> str:
  """The one line for a command jaxseg does not have."""
  near = difflib.get_close_matches(command, COMMANDS, n=1)
  hint = f" (did you mean {near[0]}?)" if near else ""
  return f"unknown command {command!r}{hint}; commands: {', '.join(COMMANDS)} (jaxseg --help)."
