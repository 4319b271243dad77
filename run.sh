#!/usr/bin/env bash
# Catalyst launcher: ./run.sh MODE [args...]
#   ./run.sh heartbeat|scan|trade|close|day|replay|report|data ...   -> python unified_agent.py --mode MODE [args...]
#   ./run.sh eval --start D --end D --engines rules,claude  -> engines against baselines over history
#   ./run.sh broker-check [--symbol S]             -> a safe smoke test of the configured broker
#   ./run.sh reconcile [--resume REASON]           -> python startup_monitor.py (reconciliation)
#   ./run.sh monitor                               -> python position_monitor_service.py (the daemon)
#   ./run.sh test [pytest args...]                 -> the whole test suite
#   ./run.sh bench NAME                            -> python bench/bench_NAME.py
#   ./run.sh psql [psql args...]                   -> psql on the configured database (the embedded one's own psql)
# Finds Python >= 3.12, keeps .venv in step with the pinned requirements, and hands .env to the agent.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"

MIN_MAJOR=3
MIN_MINOR=12

python_ok() {
    "$1" -c "import sys; sys.exit(0 if sys.version_info >= ($MIN_MAJOR, $MIN_MINOR) else 1)" >/dev/null 2>&1
}

find_python() {
    local cand
    if [ -n "${CATALYST_PYTHON:-}" ] && python_ok "$CATALYST_PYTHON"; then
        echo "$CATALYST_PYTHON"; return 0
    fi
    for cand in python3.14 python3.13 python3.12 python3 python; do
        if command -v "$cand" >/dev/null 2>&1 && python_ok "$(command -v "$cand")"; then
            command -v "$cand"; return 0
        fi
    done
    # pyenv-installed versions that are not on PATH, newest first
    local root="${PYENV_ROOT:-$HOME/.pyenv}"
    for cand in $(ls -d "$root"/versions/3.* 2>/dev/null | sort -V -r); do
        if [ -x "$cand/bin/python3" ] && python_ok "$cand/bin/python3"; then
            echo "$cand/bin/python3"; return 0
        fi
    done
    return 1
}

ensure_venv() {
    local venv="$ROOT/.venv" py stamp want
    if [ ! -x "$venv/bin/python" ] || ! python_ok "$venv/bin/python"; then
        if ! py="$(find_python)"; then
            echo "run.sh: Catalyst needs Python ${MIN_MAJOR}.${MIN_MINOR} or newer, and none was found on PATH or under ${PYENV_ROOT:-$HOME/.pyenv}/versions." >&2
            echo "run.sh: install one, e.g. 'apt-get install python3.12 python3.12-venv' or 'pyenv install 3.12', or set CATALYST_PYTHON=/path/to/python3.12." >&2
            exit 127
        fi
        rm -rf "$venv"
        "$py" -m venv "$venv" || { echo "run.sh: could not create $venv with $py (is the venv module installed? e.g. apt-get install python3.12-venv)" >&2; exit 127; }
    fi
    want="$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)-$("$venv/bin/python" -c 'import sys; print(sys.version.split()[0])')"
    stamp="$venv/.requirements.sha256"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "run.sh: installing pinned requirements into .venv ..." >&2
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2 || true
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt >&2
        echo "$want" > "$stamp"
    fi
    PY="$venv/bin/python"
}

if [ $# -lt 1 ]; then
    echo "usage: ./run.sh heartbeat|scan|trade|close|day|replay|eval|report|data sync|status|import DIR|broker-check|reconcile|monitor|psql|test|bench NAME [args...]" >&2
    exit 64
fi

MODE="$1"; shift
ensure_venv
mkdir -p "$ROOT/var" "$ROOT/logs"

# .env is parsed by the agent itself (python-dotenv), which also refuses one readable by group or others.
if [ -f "$ROOT/.env" ]; then
    export CATALYST_ENV_FILE="$ROOT/.env"
fi

case "$MODE" in
    test)
        exec "$PY" -m pytest "$@"
        ;;
    reconcile)
        exec "$PY" startup_monitor.py "$@"
        ;;
    monitor)
        exec "$PY" position_monitor_service.py "$@"
        ;;
    psql)
        exec "$PY" -m runtime.database psql "$@"
        ;;
    bench)
        name="${1:?usage: ./run.sh bench NAME (e.g. logger)}"; shift
        exec "$PY" "bench/bench_${name}.py" "$@"
        ;;
    *)
        exec "$PY" unified_agent.py --mode "$MODE" "$@"
        ;;
esac
