"""PyFlink, parallelism 2, local mini-cluster (own venv: ``.bench-venvs/flink``; Java 17).

Start-up: the execution / table environment (the JVM gateway through py4j). Variants:

- ``datastream-keyBy`` (``--task sample``, the 50k-word sample only): BATCH runtime mode,
  ``from_collection(paths).flat_map(read_words).map(lambda w: (w, 1))
  .key_by(lambda t: t[0]).reduce(lambda a, b: (a[0], a[1] + b[1]))``,
  ``execute_and_collect()`` into a dict. Every record crosses into the Python workers: about
  a thousand words/s here, so the full 2.77M words would take most of an hour; its rate is
  reported and only extrapolated. One run (``--repeats`` is ignored) unless
  ``SHARDYARD_BENCH_FLINK_DS_REPEATS`` says more.
- ``table-sql`` (word count, full data): the filesystem connector (``format = raw``) over
  ``links/`` (the files as symlinks named ``00000.py`` ...: Flink's file enumerator skips
  names starting with ``_`` or ``.``, every ``__init__.py``), then
  ``SELECT w, COUNT(*) FROM lines CROSS JOIN UNNEST(REGEXP_EXTRACT_ALL(line, <a run of
  non-whitespace, Python's definition, as a Java regex>)) GROUP BY w``, ``to_pandas()``
  (Arrow) into a dict: no Python on the workers.
- ``table-sql`` (keyed): ``from_pandas(DataFrame(k, v))``, ``GROUP BY k``, ``SUM(v)``,
  ``to_pandas()``.
"""

# ruff: noqa: E402  (imports after T_PROCESS: their time is reported as import_s)

from __future__ import annotations

import time

T_PROCESS = time.perf_counter()

import importlib.metadata
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from common import (
    JAVA_WORD_REGEX,
    NUM_WORKERS,
    check_counts,
    digest_counts,
    digest_sums,
    emit,
    load_workload,
    parse_args,
    read_lines,
    read_words,
    row,
)
from pyflink.common import Configuration, Types
from pyflink.datastream import RuntimeExecutionMode, StreamExecutionEnvironment
from pyflink.table import DataTypes, EnvironmentSettings, TableEnvironment

IMPORT_S = time.perf_counter() - T_PROCESS
VERSION = importlib.metadata.version("apache-flink")


def datastream_env() -> StreamExecutionEnvironment:
    conf = Configuration()
    conf.set_string("python.executable", sys.executable)
    conf.set_string("python.client.executable", sys.executable)
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(NUM_WORKERS)
    env.set_runtime_mode(RuntimeExecutionMode.BATCH)
    return env


def table_env() -> TableEnvironment:
    t_env = TableEnvironment.create(EnvironmentSettings.in_batch_mode())
    cfg = t_env.get_config()
    cfg.set("parallelism.default", str(NUM_WORKERS))
    cfg.set("python.executable", sys.executable)
    cfg.set("python.client.executable", sys.executable)
    return t_env


def main() -> None:
    args = parse_args()
    exp = load_workload(args.workload)
    w = Path(args.workload)
    v = args.variant
    jobs: list[float] = []
    result: Any = None
    t0 = time.perf_counter()

    if args.task == "sample" and v == "datastream-keyBy":
        env = datastream_env()
        startup = time.perf_counter() - t0
        # A local job starts its own MiniCluster: the cost of an empty job, for reference.
        t = time.perf_counter()
        with env.from_collection([1], type_info=Types.INT()).execute_and_collect() as it:
            list(it)
        empty_job_s = time.perf_counter() - t
        paths = read_lines(w / "sample_files.txt")
        str_int = Types.TUPLE([Types.STRING(), Types.INT()])
        for _ in range(int(os.environ.get("SHARDYARD_BENCH_FLINK_DS_REPEATS", "1"))):
            t = time.perf_counter()
            ds = (
                env.from_collection(paths, type_info=Types.STRING())
                .flat_map(read_words, output_type=Types.STRING())
                .map(lambda x: (x, 1), output_type=str_int)
                .key_by(lambda t: t[0], key_type=Types.STRING())
                .reduce(lambda a, b: (a[0], a[1] + b[1]))
            )
            with ds.execute_and_collect() as it:
                result = {word: count for word, count in it}
            jobs.append(time.perf_counter() - t)
        expected, items = exp["sample"]["digest"], exp["sample"]["words"]
        digest, diff = sample_check(result, expected)
        rate = items / min(jobs)
        note = (
            f"SAMPLE {items:,} words ({len(paths)} files), extrapolated rate only: the full "
            f"{exp['wordcount']['words'] / 1e6:.2f}M words would take ~"
            f"{exp['wordcount']['words'] / rate / 60:.0f} min; BATCH mode"
        )
    elif v == "table-sql":
        t_env = table_env()
        startup = time.perf_counter() - t0
        t = time.perf_counter()
        t_env.sql_query("SELECT 1").to_pandas()
        empty_job_s = time.perf_counter() - t
        if args.task == "wordcount":
            t_env.execute_sql(
                "CREATE TEMPORARY TABLE lines (line STRING) WITH ('connector' = 'filesystem', "
                f"'path' = 'file://{w / 'links'}', 'format' = 'raw')"
            )
            query = (
                "SELECT w, COUNT(*) AS c FROM lines CROSS JOIN UNNEST(REGEXP_EXTRACT_ALL("
                f"line, '{JAVA_WORD_REGEX}', 0)) AS T(w) GROUP BY w"
            )
            for _ in range(args.repeats):
                t = time.perf_counter()
                pdf = t_env.sql_query(query).to_pandas()
                result = dict(zip(pdf["w"], pdf["c"].astype("int64"), strict=True))
                jobs.append(time.perf_counter() - t)
            expected, items = exp["wordcount"]["digest"], exp["wordcount"]["words"]
            digest, diff = check_counts(w, result, expected)
            note = "filesystem raw (links/), SQL REGEXP_EXTRACT_ALL + UNNEST, GROUP BY; Arrow"
        else:
            keys = np.load(w / "keys.npy")
            values = np.load(w / "values.npy")
            num_keys = exp["keyed"]["num_keys"]
            schema = DataTypes.ROW(
                [DataTypes.FIELD("k", DataTypes.BIGINT()), DataTypes.FIELD("v", DataTypes.BIGINT())]
            )
            for _ in range(args.repeats):
                t = time.perf_counter()
                tab = t_env.from_pandas(pd.DataFrame({"k": keys, "v": values}), schema)
                t_env.create_temporary_view("pairs", tab)
                pdf = t_env.sql_query("SELECT k, SUM(v) AS s FROM pairs GROUP BY k").to_pandas()
                t_env.drop_temporary_view("pairs")
                result = np.zeros(num_keys, dtype=np.int64)
                result[pdf["k"].to_numpy()] = pdf["s"].to_numpy()
                jobs.append(time.perf_counter() - t)
            expected, items = exp["keyed"]["digest"], len(keys)
            digest, diff = digest_sums(result), ""
            note = "from_pandas (Arrow), SQL GROUP BY k SUM(v), to_pandas"
    else:
        raise SystemExit(f"unknown task/variant {args.task}/{v}")
    emit(
        **row(
            "pyflink",
            v,
            args.task,
            startup,
            jobs,
            items,
            digest,
            expected,
            note=note + (f"; {diff}" if diff else "") + f"; an empty job: {empty_job_s:.1f} s",
            version=f"apache-flink {VERSION}",
            import_s=IMPORT_S,
            empty_job_s=empty_job_s,
        )
    )


def sample_check(result: dict[str, int], expected: str) -> tuple[str, str]:
    digest = digest_counts(result)
    return digest, "" if digest == expected else f"DIFF: {len(result):,} distinct words"


if __name__ == "__main__":
    main()
