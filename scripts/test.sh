#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# The test command (README quick start; .ci/run calls it). On a fresh Debian machine as root it
# installs the servers the tests start (PostgreSQL, Dovecot, openssl), creates or reuses the
# virtualenv .venv, then runs ruff, mypy and pytest, failing on the first failure. Not as root it
# reports missing packages and carries on; their tests skip (or fail when CI=true).
# Extra arguments go to pytest: bash scripts/test.sh -k relay
#
# Environment: PYTHON (default python3) makes the venv; VENV (default .venv).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
DEB_PACKAGES=(postgresql dovecot-imapd openssl)

section() { printf '\n==> %s\n' "$*"; }

missing_packages() {
    local pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || echo "$pkg"
    done
}

# Install Debian packages without starting their system services: a policy-rc.d that answers 101
# makes invoke-rc.d/deb-systemd-invoke skip the start (the tests run their own instances on
# 127.0.0.1), and a postinst that still fails to start something in a container is tolerated.
apt_install() {
    local policy=/usr/sbin/policy-rc.d ours=""
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\n# temporary, from maild scripts/test.sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        ours=1
    fi
    local status=0
    apt-get update -q || status=$?
    if ((status == 0)); then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" || {
            echo "warning: apt-get install exited non-zero (a service may have failed to start); continuing"
            DEBIAN_FRONTEND=noninteractive dpkg --configure -a || true
        }
    else
        echo "warning: apt-get update failed ($status); cannot install $*"
    fi
    if [[ -n $ours ]]; then rm -f "$policy"; fi
}

section "System packages: ${DEB_PACKAGES[*]}"
wanted=("${DEB_PACKAGES[@]}")
if [[ ! -x $VENV/bin/python ]] && ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
    wanted+=(python3-venv)  # Debian splits venv/ensurepip out of python3
fi
mapfile -t missing < <(missing_packages "${wanted[@]}")
if ((${#missing[@]} == 0)); then
    echo "all installed"
elif [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "installing: ${missing[*]}"
    apt_install "${missing[@]}"
    mapfile -t missing < <(missing_packages "${wanted[@]}")
    if ((${#missing[@]} > 0)); then echo "warning: still missing: ${missing[*]}"; fi
else
    echo "missing: ${missing[*]}"
    echo "not root (or no apt-get), so not installing them; the tests that need them will skip"
    echo "(under CI=true they fail). To install: sudo apt-get install --no-install-recommends ${missing[*]}"
fi

section "Python virtualenv: $VENV"
if [[ ! -x $VENV/bin/python ]]; then
    "$PYTHON" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: $VENV has Python $("$VENV/bin/python" -V 2>&1); maild needs 3.11+." \
        "Remove $VENV or set PYTHON=python3.11" >&2
    exit 1
fi
stamp="$VENV/.maild-test-deps"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $("$VENV/bin/python" -V 2>&1)"
if [[ -f $stamp && $(<"$stamp") == "$want" ]] && "$VENV/bin/python" -c 'import importlib.metadata as m; m.version("maild")' 2>/dev/null; then
    echo "pyproject.toml unchanged since the last install; skipping pip install"
else
    "$VENV/bin/python" -m pip install -q -e '.[test]'
    echo "$want" >"$stamp"
    echo "installed maild (editable) with the [test] extra"
fi

section "ruff check maild tests"
"$VENV/bin/ruff" check maild tests

section "mypy maild"
"$VENV/bin/mypy" maild

section "pytest"
"$VENV/bin/python" -m pytest -q "$@"

section "All checks passed"
