"""PySpark ``local[2]`` (its own venv: ``.bench-venvs/spark``; Java 17).

Start-up: ``SparkSession.builder.master("local[2]")...getOrCreate()`` (the JVM through py4j);
the Python workers Spark forks on first use are in the first job (``1st job s``), as users
see them. Variants:

- ``rdd-paths`` (word count): ``sc.parallelize(paths, 16).flatMap(read_words)
  .map(lambda w: (w, 1)).reduceByKey(add).collectAsMap()``: Python workers read the files.
- ``rdd-wholeTextFiles``: ``sc.wholeTextFiles(links, 16)`` (the JVM reads and decodes the
  files), ``.flatMap(lambda kv: kv[1].split())`` ... as above.
- ``dataframe-binaryFile``: ``spark.read.format("binaryFile")`` then ``decode(content,
  "UTF-8")`` (malformed bytes replaced: ``spark.sql.legacy.codingErrorAction``),
  ``explode(split(text, <Python's whitespace as a Java regex>))``, empty tokens dropped,
  ``groupBy("word").count()``, ``toPandas()`` (Arrow) into a dict: no Python on the workers.
- ``dataframe-text``: the same from ``spark.read.text(links)`` (lines). Hadoop's line reader
  drops a UTF-8 byte-order mark at the start of a file, so two files' first words differ
  from Python's reading (``'\ufeff#'`` becomes ``'#'``): not equal, kept for its speed.

The JVM readers read ``links/``, the files as symlinks named ``00000.py`` ...: Hadoop's input
formats skip files whose names start with ``_`` or ``.`` (every ``__init__.py``).
- ``rdd-reduceByKey`` (keyed): ``sc.parallelize(zip(keys, values), 16).reduceByKey(add)
  .collect()`` (Python ints, pickled).
- ``dataframe-arrow`` (keyed): ``createDataFrame(pandas)`` through Arrow,
  ``groupBy("k").sum("v")``, ``toPandas()``.
"""

# ruff: noqa: E402  (imports after T_PROCESS: their time is reported as import_s)

from __future__ import annotations

import time

T_PROCESS = time.perf_counter()

import operator
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyspark
from common import (
    JAVA_SPLIT_REGEX,
    NUM_WORKERS,
    check_counts,
    digest_sums,
    emit,
    load_workload,
    parse_args,
    read_lines,
    read_words,
    row,
)
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

IMPORT_S = time.perf_counter() - T_PROCESS
PARTITIONS = 16


def main() -> None:
    args = parse_args()
    exp = load_workload(args.workload)
    w = Path(args.workload)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    t0 = time.perf_counter()
    spark = (
        SparkSession.builder.master(f"local[{NUM_WORKERS}]")
        .appName("shardyard-peers")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", "4g")
        .config("spark.sql.shuffle.partitions", str(PARTITIONS))
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.adaptive.enabled", "true")
        .config("spark.ui.showConsoleProgress", "false")
        # List the 1,790 files in the driver, not in a Spark job of 1,790 tasks.
        .config("spark.sql.sources.parallelPartitionDiscovery.threshold", "1000000")
        # decode(): replace malformed UTF-8 (as Python's errors="replace") instead of failing.
        .config("spark.sql.legacy.codingErrorAction", "true")
        .getOrCreate()
    )
    sc = spark.sparkContext
    sc.setLogLevel("ERROR")
    startup = time.perf_counter() - t0
    v = args.variant
    jobs: list[float] = []
    result: Any = None

    if args.task == "wordcount":
        paths = read_lines(w / "files.txt")
        links = str(w / "links")
        for _ in range(args.repeats):
            t = time.perf_counter()
            if v == "rdd-paths":
                result = (
                    sc.parallelize(paths, PARTITIONS)
                    .flatMap(read_words)
                    .map(lambda x: (x, 1))
                    .reduceByKey(operator.add)
                    .collectAsMap()
                )
            elif v == "rdd-wholeTextFiles":
                result = (
                    sc.wholeTextFiles(links, PARTITIONS)
                    .flatMap(lambda kv: kv[1].split())
                    .map(lambda x: (x, 1))
                    .reduceByKey(operator.add)
                    .collectAsMap()
                )
            elif v in ("dataframe-binaryFile", "dataframe-text"):
                if v == "dataframe-binaryFile":
                    df = spark.read.format("binaryFile").load(links)
                    text = F.decode(F.col("content"), "UTF-8")
                else:
                    df = spark.read.text(links)
                    text = F.col("value")
                words = df.select(F.explode(F.split(text, JAVA_SPLIT_REGEX)).alias("word"))
                pdf = words.where(F.col("word") != "").groupBy("word").count().toPandas()
                result = dict(zip(pdf["word"], pdf["count"].astype("int64"), strict=True))
            else:
                raise SystemExit(f"unknown variant {v}")
            jobs.append(time.perf_counter() - t)
        expected = exp["wordcount"]["digest"]
        digest, diff = check_counts(w, result, expected)
        items = exp["wordcount"]["words"]
        notes = {
            "rdd-paths": f"parallelize(paths, {PARTITIONS}), Python reads",
            "rdd-wholeTextFiles": "JVM reads (links/), Python splits",
            "dataframe-binaryFile": "JVM reads (links/), decodes, splits (regex); Arrow",
            "dataframe-text": "JVM reads lines (links/), splits (regex); Arrow; drops BOMs",
        }
        note = notes[v] + (f"; {diff}" if diff else "")
    else:
        keys = np.load(w / "keys.npy")
        values = np.load(w / "values.npy")
        num_keys = exp["keyed"]["num_keys"]
        for _ in range(args.repeats):
            t = time.perf_counter()
            if v == "rdd-reduceByKey":
                pairs = (
                    sc.parallelize(zip(keys.tolist(), values.tolist(), strict=True), PARTITIONS)
                    .reduceByKey(operator.add)
                    .collect()
                )
                sums = np.zeros(num_keys, dtype=np.int64)
                k, s = zip(*pairs, strict=True)
                sums[np.asarray(k)] = np.asarray(s)
            elif v == "dataframe-arrow":
                df = spark.createDataFrame(pd.DataFrame({"k": keys, "v": values}))
                pdf = df.groupBy("k").agg(F.sum("v").alias("s")).toPandas()
                sums = np.zeros(num_keys, dtype=np.int64)
                sums[pdf["k"].to_numpy()] = pdf["s"].to_numpy()
            else:
                raise SystemExit(f"unknown variant {v}")
            result = sums
            jobs.append(time.perf_counter() - t)
        digest, expected = digest_sums(result), exp["keyed"]["digest"]
        items = len(keys)
        note = {
            "rdd-reduceByKey": f"parallelize(zip(keys, values), {PARTITIONS}): Python ints",
            "dataframe-arrow": "createDataFrame(pandas) via Arrow, groupBy sum, toPandas",
        }[v]
    emit(
        **row(
            "pyspark",
            v,
            args.task,
            startup,
            jobs,
            items,
            digest,
            expected,
            note=note,
            version=f"pyspark {pyspark.__version__}",
            import_s=IMPORT_S,
        )
    )
    spark.stop()


if __name__ == "__main__":
    main()
