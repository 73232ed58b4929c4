#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Quick start: install maild into the virtualenv .venv, write a default config into ./data the
# first time (`maild init` refuses to overwrite, so it only runs when data/maild.toml is absent),
# then run the daemon in the foreground (`maild --config data/maild.toml run`), started again after
# an exit 70 (a message that hung its processing).
#
# Environment: PYTHON (default python3) makes the venv; VENV (default .venv);
# MAILD_DATA_DIR (default data).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
DATA_DIR=${MAILD_DATA_DIR:-data}

if [[ ! -x $VENV/bin/python ]] && ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
    # Debian splits venv/ensurepip out of python3: a fresh machine needs python3-venv first
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "==> installing python3-venv"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv
    else
        echo "maild: $PYTHON cannot make a virtualenv; install python3-venv (as root: apt-get install python3-venv)" >&2
        exit 1
    fi
fi
if [[ ! -x $VENV/bin/python ]]; then
    echo "==> creating virtualenv $VENV"
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.maild-run-deps"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $("$VENV/bin/python" -V 2>&1)"
if [[ ! -f $stamp || $(<"$stamp") != "$want" || ! -x $VENV/bin/maild ]]; then
    echo "==> installing maild into $VENV"
    "$VENV/bin/python" -m pip install -q -e .
    echo "$want" >"$stamp"
fi

if [[ ! -f $DATA_DIR/maild.toml ]]; then
    echo "==> writing a default configuration into $DATA_DIR/"
    mkdir -p "$DATA_DIR"
    "$VENV/bin/maild" init "$DATA_DIR"
fi

# A small supervisor, as systemd's Restart=on-failure would be: exit 70 means a message hung its
# processing past [smtp] process_timeout, and a restart counts an attempt (after three the message
# is held as unprocessable). Ctrl-C or SIGTERM is passed on: maild drains and the script ends with it.
while :; do
    echo "==> starting maild with $DATA_DIR/maild.toml"
    "$VENV/bin/maild" run --config "$DATA_DIR/maild.toml" &
    pid=$!
    stopping=0
    trap 'stopping=1; kill -TERM "$pid" 2>/dev/null || true' TERM INT
    code=0
    wait "$pid" || code=$?
    while kill -0 "$pid" 2>/dev/null; do  # a trapped signal ended the wait; the drain goes on
        code=0
        wait "$pid" || code=$?
    done
    trap - TERM INT
    if [[ $code -ne 70 || $stopping -eq 1 ]]; then  # an exit 70 while stopping ends here too
        exit "$code"
    fi
    echo "==> maild exited 70 (a message hung its processing): starting it again" >&2
    sleep 1
done
