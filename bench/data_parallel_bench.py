"""One resnet20 search on Fashion-MNIST in one process and in two (c10d Gloo, world_size 2),
same global batch, side by side: seconds per training step in pre-training (float) and
QSS, accuracies, and how many layers' choices differ from the one-process run that uses
both cores (what a user runs without data parallelism).

With --seeds, the three arms run once per seed and a second table sets how far two
processes land from the one-process run against how far one process lands from itself
when only its thread count changes (float32's summation order, nothing else): the
reference for "the same search up to floating-point order".

With --float64 every arm runs the job in float64 (qsearch-worker --float64), where a
different summation order moves a sum by about 1e-16 rather than 1e-7: how far the arms
then land from each other is what is left once floating-point order is taken out.

Usage: python3 bench/data_parallel_bench.py WORKER [TRAIN_IMAGES] [--seeds 1,2,3] [--float64]
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

args = [a for a in sys.argv[1:]]
seeds = [1]
if "--seeds" in args:
    i = args.index("--seeds")
    seeds = [int(s) for s in args[i + 1].split(",")]
    del args[i:i + 2]
float64 = "--float64" in args
if float64:
    args.remove("--float64")
worker = args[0]
train = int(args[1]) if len(args) > 1 else 4096
batch = 128
spec = {"model": "resnet20", "dataset": {"trainSize": train, "valSize": 512, "testSize": 10000},
        "batchSize": batch, "pretrainEpochs": 3, "finetuneEpochs": 1, "budget": {"averageWeightBits": 3}}
steps = (train + batch - 1) // batch
arms = [("1 process, 2 threads", 1, 2), ("1 process, 1 thread", 1, 1), ("2 processes x 1 thread (Gloo)", 2, 2)]
tmp = tempfile.mkdtemp(prefix="qsearch_dp_bench_")


def run(seed, world, threads):
    path = os.path.join(tmp, f"{seed}_{world}_{threads}.json")
    with open(path, "w") as f:
        json.dump(dict(spec, worldSize=world, seed=seed), f)
    out = os.path.join(tmp, f"out_{seed}_{world}_{threads}")
    started = time.time()
    subprocess.run([worker, "--spec", path, "--out", out, "--threads", str(threads), "--sandbox"] +
                   (["--float64"] if float64 else []), check=True, capture_output=True)
    wall = time.time() - started
    with open(os.path.join(out, "result.json")) as f:
        return wall, json.load(f)


choices = lambda r: [(l["weight"]["spec"], l["weightBits"]) for l in r["policy"]["layers"]]
try:
    runs = {seed: [run(seed, world, threads) for _, world, threads in arms] for seed in seeds}
finally:
    shutil.rmtree(tmp, ignore_errors=True)

print(f"resnet20, {train} training images, batch {batch}, 3 pre-training + 1 QSS + 1 fine-tuning epochs, "
      f"2 cores, {'float64' if float64 else 'float32'}; one run per arm and seed\n")
print("| seed | arm | pretrain s/step | QSS s/step | step throughput vs 1 process, 2 threads | wall s | float % | "
      "quantized % | layers choosing otherwise |")
print("|---|---|---|---|---|---|---|---|---|")
for seed, rows in runs.items():
    base = rows[0][1]
    for (name, _, _), (wall, r) in zip(arms, rows):
        p = r["phaseSeconds"]
        pre, qss = p["pretrain"] / (3 * steps), p["qss"] / steps
        ratio = (base["phaseSeconds"]["pretrain"] / (3 * steps)) / pre
        differ = sum(a != b for a, b in zip(choices(base), choices(r)))
        print(f"| {seed} | {name} | {pre:.3f} | {qss:.3f} | {ratio:.2f}x | {wall:.0f} | {r['floatAccuracy']:.2f} | "
              f"{r['quantizedAccuracy']:.2f} | {differ} of {len(choices(r))} |")

if len(seeds) > 1:
    q = lambda seed, arm: runs[seed][arm][1]["quantizedAccuracy"]
    threads = [q(s, 1) - q(s, 0) for s in seeds]
    two = [q(s, 2) - q(s, 0) for s in seeds]
    print(f"\nQuantized accuracy against 1 process with 2 threads, {len(seeds)} seeds (points)\n")
    print("| | mean | standard error | median absolute |")
    print("|---|---|---|---|")
    for name, d in [("1 process, 1 thread (summation order only)", threads), ("2 processes x 1 thread (Gloo)", two)]:
        se = statistics.stdev(d) / len(d) ** 0.5
        print(f"| {name} | {statistics.mean(d):+.2f} | {se:.2f} | {statistics.median(abs(x) for x in d):.2f} |")
