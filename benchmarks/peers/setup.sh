#!/usr/bin/env bash
# Creates the peers' venvs for benchmarks/peers/wordcount.py, one per engine, under
# .bench-venvs/ at the repository root (SHARDYARD_BENCH_VENVS overrides the folder):
#
#   spark  pyspark[sql] (pandas + pyarrow for Arrow transfers); needs Java 17+ on PATH
#   flink  apache-flink (PyFlink pins its own apache-beam, numpy, pandas, pyarrow)
#   dask   dask[distributed,dataframe]
#
# The Ray baselines (hand-written tasks, ray.util.ActorPool) and multiprocessing run in the
# project's own environment (ray is a dependency of shardyard), so no venv is made for them.
#
# Idempotent: a venv whose recorded requirement equals the one below and whose package
# imports is left alone; otherwise it is (re)made. Prints what it installed and the versions.
#
#   bash benchmarks/peers/setup.sh            # all three
#   bash benchmarks/peers/setup.sh spark      # just one (spark | flink | dask)
#
# PYTHON picks the interpreter the venvs are made from; the default is the base interpreter
# of the python on PATH (the project's venv's base), so every engine runs the same Python.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENVS="${SHARDYARD_BENCH_VENVS:-$ROOT/.bench-venvs}"
if [[ -z "${PYTHON:-}" ]]; then
    PYTHON="$(python3 -c 'import sys, os; print(os.path.join(sys.base_prefix, "bin", "python3"))')"
fi

declare -A SPEC=(
    [spark]="pyspark[sql]==4.1.1"
    [flink]="apache-flink==2.3.0"
    [dask]="dask[distributed,dataframe]==2026.8.0"
)
declare -A MODULE=([spark]=pyspark [flink]=pyflink [dask]=distributed)
declare -A DIST=([spark]=pyspark [flink]=apache-flink [dask]=dask)

engines=("$@")
if [[ ${#engines[@]} -eq 0 ]]; then
    engines=(spark flink dask)
fi

echo "interpreter: $PYTHON ($("$PYTHON" -c 'import sys; print(sys.version.split()[0])'))"
echo "venvs under: $VENVS"
if ! java -version >/dev/null 2>&1; then
    echo "WARNING: no java on PATH: the spark and flink peers will not run" >&2
fi
mkdir -p "$VENVS"

for engine in "${engines[@]}"; do
    spec="${SPEC[$engine]:-}"
    if [[ -z "$spec" ]]; then
        echo "unknown engine '$engine' (spark | flink | dask)" >&2
        exit 2
    fi
    venv="$VENVS/$engine"
    stamp="$venv/.shardyard-bench-spec"
    if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$spec" ]] \
        && "$venv/bin/python" -c "import ${MODULE[$engine]}" >/dev/null 2>&1; then
        status="up to date"
    else
        echo "[$engine] creating $venv and installing $spec ..."
        rm -rf "$venv"
        "$PYTHON" -m venv "$venv"
        log="$venv/.shardyard-bench-install.log"
        if ! { "$venv/bin/python" -m pip install --upgrade pip \
                && "$venv/bin/python" -m pip install "$spec"; } >"$log" 2>&1; then
            grep -v "is ignored: it is neither a file nor a directory" "$log" | tail -30 >&2
            echo "[$engine] FAILED to install $spec (log: $log)" >&2
            exit 1
        fi
        echo "$spec" > "$stamp"
        status="installed"
    fi
    version="$("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('${DIST[$engine]}'))")"
    echo "[$engine] $status: ${DIST[$engine]} $version ($spec) in $venv"
    "$venv/bin/python" - <<'PY'
import importlib.metadata as m
names = ["py4j", "apache-beam", "distributed", "numpy", "pandas", "pyarrow", "cloudpickle"]
found = []
for n in names:
    try:
        found.append(f"{n} {m.version(n)}")
    except m.PackageNotFoundError:
        pass
print("    with " + ", ".join(found))
PY
done
java -version 2>&1 | head -1 | sed 's/^/java: /'
