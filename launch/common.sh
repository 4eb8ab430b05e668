# Shared by the launch scripts: argument parsing, quoting and dry runs.
# Usage of every script: launch/<name> [--dry-run] CONFIG [jaxseg train args ...]

parse_args() {
  DRY_RUN=0
  if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
  if [[ $# -lt 1 || "$1" == -* ]]; then
    echo "usage: $(basename "$0") [--dry-run] CONFIG [--workdir DIR] [--config.key=value ...]" >&2
    exit 2
  fi
  CONFIG="$1"; shift
  ARGS=("$@")
  REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
}

# The jaxseg command line, shell-quoted.
train_command() {
  local quoted
  quoted="$(printf ' %q' "${ARGS[@]}")"
  echo "jaxseg train --config $(printf '%q' "$CONFIG")${ARGS:+$quoted}"
}

# $1 in single quotes, for a command run by a remote shell.
squote() {
  local escaped="${1//\'/\'\\\'\'}"
  printf "'%s'" "$escaped"
}

# Prints the command (dry run) or runs it.
run() {
  echo "+ $1"
  if [[ $DRY_RUN -eq 0 ]]; then bash -c "$1"; fi
}
