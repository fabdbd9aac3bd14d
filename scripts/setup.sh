#!/usr/bin/env bash
# Create .venv (if absent) and install the project with its test extras into it.
# Idempotent: reinstalls only when pyproject.toml changed since the last successful run.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-python3}
VENV=$ROOT/.venv
STAMP=$VENV/.ganeti-dispatcher-setup

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    if /usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        PYTHON=/usr/bin/python3
    else
        echo "setup: need Python >= 3.11 (set PYTHON=...)" >&2
        exit 1
    fi
fi

if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PYTHON" -m venv "$VENV" >/dev/null 2>&1; then
        # Debian's own python3 needs python3-venv for ensurepip.
        rm -rf "$VENV"
        if [ "$PYTHON" = /usr/bin/python3 ] && [ "$(id -u)" = 0 ]; then
            apt-get update -q >/dev/null
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
                python3-venv >/dev/null
        fi
        "$PYTHON" -m venv "$VENV"
    fi
fi

# tmux: the tests drive `dispatcher top` in a real terminal (send keys, capture the pane)
if ! command -v tmux >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends tmux >/dev/null
    else
        echo "setup: tmux is missing (the tests of \`dispatcher top\` need it)" >&2
    fi
fi

want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ] \
    && "$VENV/bin/python" -I -c 'import dispatcher, pytest' 2>/dev/null; then
    exit 0
fi

rm -f "$STAMP"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "setup: pip install failed" >&2
    exit 1
fi
echo "$want" >"$STAMP"
echo "setup: installed ganeti-dispatcher[test] into .venv"
