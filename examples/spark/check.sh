#!/usr/bin/env bash
# The many-machine recipes against one local run, on the demo model: the Spark job in
# local[2] mode (score by lines and by files, and generate) and GNU parallel. Any
# difference fails. Needs spark-submit (pip install pyspark; Java 17) and GNU parallel.
#
#   BIN_DIR=target/release examples/spark/check.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=$(realpath "${BIN_DIR:-target/release}")
M=$PWD/models/shakespeare-rwkv6.safetensors
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT

# A corpus of 60 lines, and the same text as 12 documents of 5 lines.
for i in $(seq 1 60); do
  echo "Line $i: $(sed -n "$((i % 8 + 1))p" tests/data/heldout.txt)"
done >"$W/corpus.txt"
mkdir "$W/docs"
split -l 5 -d "$W/corpus.txt" "$W/docs/doc."

same() { cmp "$1" "$2" && echo "ok: $3"; }

# Score by lines: records and totals against one local run.
"$BIN/rwkv-score" -m "$M" --lines -q --summary "$W/corpus.txt" >"$W/local.jsonl"
head -n -1 "$W/local.jsonl" >"$W/local-records.jsonl"
tail -n 1 "$W/local.jsonl" >"$W/local-summary.json"
spark-submit --master 'local[2]' examples/spark/rwkv_spark.py score --model "$M" \
  --input "$W/corpus.txt" --output "$W/spark" --bin-dir "$BIN" --partitions 3 2>"$W/spark.log" ||
  { tail -20 "$W/spark.log"; exit 1; }
same "$W/spark/records.jsonl" "$W/local-records.jsonl" "spark score records"
same "$W/spark/summary.json" "$W/local-summary.json" "spark score totals"

# An --output folder with files in it is refused (before Spark starts) unless --overwrite.
if python3 examples/spark/rwkv_spark.py score --model "$M" --input "$W/corpus.txt" \
  --output "$W/spark" 2>"$W/refused.log"; then
  echo "an existing --output was written over"; exit 1
fi
grep -q -- "--overwrite writes over them" "$W/refused.log" && echo "ok: spark keeps an existing output"

# Score by files, the model and binary shipped with the job.
(cd "$W/docs" && "$BIN/rwkv-score" -m "$M" -q --summary doc.*) >"$W/local-files.jsonl"
spark-submit --master 'local[2]' examples/spark/rwkv_spark.py score --model "$M" \
  --input "$W/docs" --documents files --output "$W/spark-files" --bin-dir "$BIN" \
  --partitions 4 --ship 2>"$W/spark.log" || { tail -20 "$W/spark.log"; exit 1; }
same "$W/spark-files/records.jsonl" <(head -n -1 "$W/local-files.jsonl") "spark files records"
same "$W/spark-files/summary.json" <(tail -n 1 "$W/local-files.jsonl") "spark files totals"

# Generate: every line a request numbered from 1, sampled with a seed.
python3 -c '
import json, sys
for n, line in enumerate(open(sys.argv[1], "rb"), 1):
    text = line.rstrip(b"\n").decode("utf-8", "replace")
    print(json.dumps({"id": n, "prompt": text}))
' "$W/corpus.txt" | "$BIN/rwkv-gen" -m "$M" --jsonl -n 12 --seed 3 >"$W/local-results.jsonl"
spark-submit --master 'local[2]' examples/spark/rwkv_spark.py generate --model "$M" \
  --input "$W/corpus.txt" --output "$W/spark-gen" --bin-dir "$BIN" --partitions 3 \
  -- -n 12 --seed 3 2>"$W/spark.log" || { tail -20 "$W/spark.log"; exit 1; }
same "$W/spark-gen/results.jsonl" "$W/local-results.jsonl" "spark generate results"

# GNU parallel: blocks of 7 lines in parallel, in order, each numbered from its first line;
# the records as one run's, the totals merged.
parallel --pipe -N 7 --keep-order \
  "'$BIN/rwkv-score' -m '$M' --lines -q --first-line \$(( ({#} - 1) * 7 + 1 ))" \
  <"$W/corpus.txt" >"$W/parallel.jsonl"
"$BIN/rwkv-score" --merge "$W/parallel.jsonl" >"$W/parallel-summary.json"
same "$W/parallel-summary.json" "$W/local-summary.json" "parallel totals"
same "$W/parallel.jsonl" "$W/local-records.jsonl" "parallel records (each source its line)"
