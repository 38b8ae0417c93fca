"""One resnet20 search on Fashion-MNIST in one process and in two (c10d Gloo, world_size 2),
same global batch, one run each, side by side: seconds per training step in pre-training
(float) and QSS, accuracies, and how many layers' choices differ from the one-process run
that uses both cores (what a user runs without data parallelism).

Usage: python3 bench/data_parallel_bench.py WORKER [TRAIN_IMAGES]
"""
import json
import os
import subprocess
import sys
import tempfile
import time

worker = sys.argv[1]
train = int(sys.argv[2]) if len(sys.argv) > 2 else 4096
batch = 128
spec = {"model": "resnet20", "dataset": {"trainSize": train, "valSize": 512, "testSize": 10000},
        "batchSize": batch, "pretrainEpochs": 3, "finetuneEpochs": 1, "budget": {"averageWeightBits": 3}, "seed": 1}
steps = (train + batch - 1) // batch
arms = [("1 process, 2 threads", 1, 2), ("1 process, 1 thread", 1, 1), ("2 processes x 1 thread (Gloo)", 2, 2)]
tmp = tempfile.mkdtemp(prefix="qsearch_dp_bench_")
rows = []
for name, world, threads in arms:
    s = dict(spec, worldSize=world)
    path = os.path.join(tmp, f"{world}_{threads}.json")
    with open(path, "w") as f:
        json.dump(s, f)
    out = os.path.join(tmp, f"out_{world}_{threads}")
    started = time.time()
    subprocess.run([worker, "--spec", path, "--out", out, "--threads", str(threads), "--sandbox"], check=True,
                   capture_output=True)
    wall = time.time() - started
    with open(os.path.join(out, "result.json")) as f:
        r = json.load(f)
    rows.append((name, wall, r))

base = rows[0][2]
choices = lambda r: [(l["weight"]["spec"], l["weightBits"]) for l in r["policy"]["layers"]]
print(f"resnet20, {train} training images, batch {batch}, 3 pre-training + 1 QSS + 1 fine-tuning epochs, "
      f"2 cores; one run each\n")
print("| arm | pretrain s/step | QSS s/step | step throughput vs 1 process, 2 threads | wall s | float % | "
      "quantized % | layers choosing otherwise |")
print("|---|---|---|---|---|---|---|---|")
for name, wall, r in rows:
    p = r["phaseSeconds"]
    pre, qss = p["pretrain"] / (3 * steps), p["qss"] / steps
    ratio = (base["phaseSeconds"]["pretrain"] / (3 * steps)) / pre
    differ = sum(a != b for a, b in zip(choices(base), choices(r)))
    print(f"| {name} | {pre:.3f} | {qss:.3f} | {ratio:.2f}x | {wall:.0f} | {r['floatAccuracy']:.2f} | "
          f"{r['quantizedAccuracy']:.2f} | {differ} of {len(choices(r))} |")
