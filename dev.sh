#!/usr/bin/env bash
# The README's two set-up commands:
#   ./dev.sh up   [colony up options]   set up .venv (first time), start the whole cluster here
#   ./dev.sh test [pytest options]      set up .venv with the test tools, run every test ring
#                                       (three pytest-xdist workers; COLONY_TEST_WORKERS=n or -n n to change)
set -euo pipefail
cd "$(dirname "$0")"

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "Colony needs Python 3.11 or newer as '$python' (set PYTHON=/path/to/python3.11)" >&2
  exit 2
fi

ensure_venv() {  # $1: the pyproject extra to install
  local stamp=".venv/.installed-$1"
  if [ ! -x .venv/bin/python ] && ! "$python" -m venv .venv; then
    rm -rf .venv
    echo "could not create .venv with '$python -m venv'; on Debian/Ubuntu: apt-get install python3-venv" >&2
    exit 2
  fi
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[$1]"
    touch "$stamp"
  fi
}

case "${1:-}" in
  up)
    shift
    ensure_venv postgres
    exec .venv/bin/colony up "$@"
    ;;
  test)
    shift
    ensure_venv test
    # Three pytest-xdist workers, on two cores too: most tests wait on servers and timers, not
    # on the CPU (measured on 2 cores with a CPU hog beside: 34.5 min with two, 18.7 with three). A file's
    # tests stay on one worker, in order (module fixtures such as test_client_access's cluster
    # are made once; loadgroup's xdist_group is ignored under pytest 9.2, pytest-xdist #1386).
    # A later -n wins (-n 0: one process).
    exec .venv/bin/python -m pytest -n "${COLONY_TEST_WORKERS:-3}" --dist loadfile "$@"
    ;;
  *)
    echo "usage: ./dev.sh up [colony up options] | ./dev.sh test [pytest options]" >&2
    exit 2
    ;;
esac
