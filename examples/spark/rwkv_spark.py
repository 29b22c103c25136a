"""Score or generate over a corpus on Apache Spark, exactly as one machine would.

    spark-submit examples/spark/rwkv_spark.py score --model PATH --input PATH --output DIR \
        [--bin-dir DIR] [--partitions N] [--documents lines|files] [--ship]
    spark-submit examples/spark/rwkv_spark.py generate --model PATH --input PATH --output DIR \
        [--bin-dir DIR] [--partitions N] [--ship] [-- rwkv-gen flags, e.g. -n 50 -t 0 --seed 1]

score: each partition of documents streams through `rwkv-score -q` (one document a line,
or with `--documents files` one file a document); DIR/records.jsonl holds one record a
document in input order, and DIR/summary.json the totals exactly as `rwkv-score --merge`
prints them, which equal one local run's `--summary` byte for byte.

generate: each input line is a prompt, sent as a `rwkv-gen --jsonl` request whose `id` is its
line number (from 1); DIR/results.jsonl holds one result a line in input order. With
`--seed` the results equal one local run's, whatever the partitions.

The model and the binaries must be readable on every executor: a path on shared storage
(local mode, NFS, a container image), or `--ship`, which sends them with the job
(`SparkContext.addFile`; on YARN and Kubernetes this is the usual way). The binaries are
found on PATH unless `--bin-dir` names their folder. The driver runs `rwkv-score --merge`.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading

from pyspark import SparkFiles
from pyspark.sql import SparkSession


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="rwkv_spark.py", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for name in ("score", "generate"):
        p = sub.add_parser(name)
        p.add_argument("--model", required=True, help="the model file")
        p.add_argument("--input", required=True, help="a text file, or a folder of documents")
        p.add_argument("--output", required=True,
                       help="the folder to write (created; one with files in it is refused)")
        p.add_argument("--overwrite", action="store_true",
                       help="write into an --output folder that has files already")
        p.add_argument("--bin-dir", help="the folder of rwkv-score and rwkv-gen (default: PATH)")
        p.add_argument("--partitions", type=int, help="partitions of the input")
        p.add_argument("--ship", action="store_true",
                       help="send the model and binaries with the job (SparkFiles)")
        if name == "score":
            p.add_argument("--documents", choices=["lines", "files"], default="lines",
                           help="one document a line (default), or a file")
    args, extra = ap.parse_known_args(argv)
    if extra and extra[0] == "--":
        extra = extra[1:]
    if args.command == "score" and extra:
        ap.error("score takes no extra flags: " + " ".join(extra))
    args.extra = extra
    if os.path.isdir(args.output) and os.listdir(args.output) and not args.overwrite:
        ap.error(f"--output {args.output} has files already: --overwrite writes over them")
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        ap.error(f"--output {args.output} is not a folder")
    return args


def binary(args, name):
    """The path of tool `name` on the driver."""
    path = os.path.join(args.bin_dir, name) if args.bin_dir else shutil.which(name)
    if not path or not os.access(path, os.X_OK):
        sys.exit(f"rwkv_spark.py: {name} not found (give --bin-dir, or put it on PATH)")
    return os.path.abspath(path)


def run_through(cmd, chunks, cwd=None):
    """Stream `chunks` (bytes) into `cmd`, yield its stdout lines; fail with its error."""
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=cwd)

    def feed():
        try:
            for c in chunks:
                proc.stdin.write(c)
        except BrokenPipeError:
            pass
        finally:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass

    writer = threading.Thread(target=feed)
    writer.start()
    for line in proc.stdout:
        yield line
    writer.join()
    err = proc.stderr.read().decode("utf-8", "replace").strip()
    if proc.wait() != 0:
        raise RuntimeError(f"{os.path.basename(cmd[0])}: {err}")


def with_source(record, source):
    """`record` (an rwkv-score line starting `{"source":...,`) with another source."""
    rest = record[record.index(b",", 1):]
    return b'{"source":' + json.dumps(source).encode() + rest


def main(argv):
    args = parse_args(argv)
    spark = SparkSession.builder.appName(f"rwkv-{args.command}").getOrCreate()
    sc = spark.sparkContext
    tool = binary(args, "rwkv-score" if args.command == "score" else "rwkv-gen")
    model = os.path.abspath(args.model)
    if args.ship:
        sc.addFile(model)
        sc.addFile(tool)
    shipped = args.ship

    def located(path):
        """`path` on an executor: shipped files sit in the task's SparkFiles folder."""
        if not shipped:
            return path
        here = SparkFiles.get(os.path.basename(path))
        if path == tool and not os.access(here, os.X_OK):
            os.chmod(here, 0o755)
        return here

    os.makedirs(args.output, exist_ok=True)
    if args.command == "score" and args.documents == "files":
        records = score_files(sc, args, tool, model, located)
    elif args.command == "score":
        records = score_lines(sc, args, tool, model, located)
    else:
        records = generate(sc, args, tool, model, located)
    name = "records.jsonl" if args.command == "score" else "results.jsonl"
    out_path = os.path.join(args.output, name)
    with open(out_path + ".partial", "wb") as out:
        for line in records.toLocalIterator():
            out.write(line)
    os.replace(out_path + ".partial", out_path)
    if args.command == "score":
        with open(out_path, "rb") as f:
            summary = subprocess.run([tool, "--merge"], stdin=f, capture_output=True)
        if summary.returncode != 0:
            sys.exit(summary.stderr.decode("utf-8", "replace").strip())
        with open(os.path.join(args.output, "summary.json"), "wb") as f:
            f.write(summary.stdout)
    spark.stop()


def numbered_lines(sc, args):
    """The input's lines as (line number from 1, bytes), in order."""
    lines = sc.textFile(args.input, minPartitions=args.partitions, use_unicode=False)
    return lines.zipWithIndex().map(lambda li: (li[1] + 1, li[0]))


def score_lines(sc, args, tool, model, located):
    def part(rows):
        rows = list(rows)
        if not rows:
            return
        cmd = [located(tool), "-m", located(model), "--lines", "-q"]
        out = list(run_through(cmd, (text + b"\n" for _, text in rows)))
        if len(out) != len(rows):
            raise RuntimeError(f"rwkv-score gave {len(out)} records for {len(rows)} lines")
        for (number, _), record in zip(rows, out):
            yield with_source(record, number)

    return numbered_lines(sc, args).mapPartitions(part)


def score_files(sc, args, tool, model, located):
    root = os.path.abspath(args.input)
    files = sc.binaryFiles(root, minPartitions=args.partitions or 2)
    # by name: the order of `rwkv-score DIR/*`; each record's source is the name under DIR
    named = files.map(lambda pb: (os.path.relpath(pb[0].split(":", 1)[-1], root), pb[1]))
    named = named.sortByKey(numPartitions=args.partitions)

    def part(docs):
        docs = list(docs)
        if not docs:
            return
        with tempfile.TemporaryDirectory() as tmp:
            for rel, data in docs:
                os.makedirs(os.path.join(tmp, os.path.dirname(rel)), exist_ok=True)
                with open(os.path.join(tmp, rel), "wb") as f:
                    f.write(data)
            cmd = [located(tool), "-m", located(model), "-q"] + [rel for rel, _ in docs]
            yield from list(run_through(cmd, [], cwd=tmp))

    return named.mapPartitions(part)


def generate(sc, args, tool, model, located):
    extra = list(args.extra)

    def part(rows):
        rows = list(rows)
        if not rows:
            return
        cmd = [located(tool), "-m", located(model), "--jsonl"] + extra
        requests = (
            json.dumps({"id": n, "prompt": text.decode("utf-8", "replace")}).encode() + b"\n"
            for n, text in rows
        )
        yield from run_through(cmd, requests)

    return numbered_lines(sc, args).mapPartitions(part)


if __name__ == "__main__":
    main(sys.argv[1:])
