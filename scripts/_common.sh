# Shared by the demo scripts (sourced, not run): their --help, the refusal of arguments they
# do not take, and the interpreter they run. Each script sources it right after
# `set -euo pipefail`:   source "$(dirname "$0")/_common.sh"

# The calling script's header comment (line 2 up to `set -euo pipefail`), without the '#'.
usage() { sed -n '2,/^set -euo pipefail$/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

# The script's own name and a message on stderr, the usage after it, exit status 2.
refuse() { echo "$(basename "$0"): $1" >&2; usage >&2; exit 2; }

# -h or --help anywhere prints the usage and exits 0 (before anything else happens).
help_asked() { for arg in "$@"; do case $arg in -h|--help) usage; exit 0 ;; esac; done; }

# For the scripts whose environment variables are their only settings.
takes_no_arguments() {
    help_asked "$@"
    if [ $# -gt 0 ]; then refuse "takes no arguments, got: $*"; fi
}

# PY: $W2V_PYTHON when it names a ready interpreter, else ./.venv, installed by
# scripts/setup_env.sh (which returns at once when .venv is already complete). Run from the
# repository's root.
python_env() {
    if [ -n "${W2V_PYTHON:-}" ]; then
        PY=$W2V_PYTHON
    else
        echo "== installing into .venv (set W2V_PYTHON to use an existing environment)"
        bash scripts/setup_env.sh
        PY=.venv/bin/python
    fi
}
