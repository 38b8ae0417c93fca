"""torchvision models as users save them, searched by qsearch-worker on Fashion-MNIST.

resnet18, mobilenet_v2 and squeezenet1_1 (num_classes=10, random init), each saved with
torch.jit.script and with torch.jit.trace (in eval mode, as models are traced for export),
searched on real Fashion-MNIST padded to 3x32x32: TRAIN training images, VAL for the
search's validation split, and the first TEST images of the official test set. Prints one
markdown row per model (time per phase, layers quantized, float and quantized test
accuracy) and appends it to --table, skipping models already there (resumable).

  /usr/bin/python3 bench/torchvision_bench.py --worker build/search/qsearch-worker
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
import torchvision

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "pytorch"))
import user_models as um  # noqa: E402


def archive(path, train, test):
    """Training images first, then the test images as the archive's last sixth."""
    images, labels = um.fashion_mnist(train)
    test_images = um.read_idx(os.path.join(um.FASHION_MNIST, "t10k-images-idx3-ubyte.gz"))[:test]
    test_labels = um.read_idx(os.path.join(um.FASHION_MNIST, "t10k-labels-idx1-ubyte.gz"))[:test]
    x = torch.cat([torch.from_numpy(images), torch.from_numpy(test_images.copy())]).float().div(255).unsqueeze(1)
    x = F.pad(x, (2, 2, 2, 2)).repeat(1, 3, 1, 1)
    y = torch.cat([torch.from_numpy(labels), torch.from_numpy(test_labels.astype("int64"))])
    torch.save({"images": x, "labels": y}, path)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--worker", required=True)
    p.add_argument("--train", type=int, default=8000)
    p.add_argument("--val", type=int, default=1000)
    p.add_argument("--epochs", default="3,1,1,2", help="pre-train, QSS, QPL, fine-tune")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--table", default="torchvision_bench.md")
    args = p.parse_args()
    pre, qss, qpl, ft = (int(e) for e in args.epochs.split(","))
    # The archive's test split is its last sixth: 1/5 of the training part.
    total_train = args.train + args.val
    test = total_train // 5
    work = tempfile.mkdtemp(prefix="qsearch_tv_bench_")
    data = os.path.join(work, "fashion32.pt")
    archive(data, total_train, test)
    done = open(args.table).read() if os.path.exists(args.table) else ""
    header = ("| model | saved with | layers quantized | avg weight bits | float acc | quantized acc | "
              "pre-train s | QSS s | QPL s | fine-tune s | total s |")
    if not done:
        with open(args.table, "w") as f:
            f.write(f"train {args.train}, validation {args.val}, test {test} (official test set); epochs {args.epochs}; "
                    f"average 3 weight bits, 4-bit activations; {args.threads} threads\n\n{header}\n"
                    + "|---" * 11 + "|\n")
    print(header)
    for arch in ["resnet18", "mobilenet_v2", "squeezenet1_1"]:
        for how in ["script", "trace"]:
            if f"| {arch} | {how} |" in done:
                continue
            torch.manual_seed(0)
            model = getattr(torchvision.models, arch)(num_classes=10)
            path = os.path.join(work, f"{arch}_{how}.pt")
            if how == "script":
                torch.jit.script(model).save(path)
            else:
                model.eval()
                torch.jit.trace(model, torch.zeros(2, 3, 32, 32)).save(path)
            spec = {"modelPath": path,
                    "dataset": {"kind": "archive", "path": data, "trainSize": args.train, "valSize": args.val},
                    "budget": {"averageWeightBits": 3}, "qpl": {"activationBits": 4, "epochs": qpl},
                    "qss": {"epochs": qss}, "pretrainEpochs": pre, "finetuneEpochs": ft, "batchSize": 128,
                    "seed": 1}
            spec_path = os.path.join(work, f"{arch}_{how}.json")
            with open(spec_path, "w") as f:
                json.dump(spec, f)
            out = os.path.join(work, f"out_{arch}_{how}")
            start = time.time()
            proc = subprocess.run([args.worker, "--spec", spec_path, "--out", out, "--threads", str(args.threads)],
                                  capture_output=True, text=True)
            wall = time.time() - start
            if proc.returncode != 0:
                print(f"{arch} {how} failed: {proc.stderr[-2000:]}", file=sys.stderr)
                continue
            with open(os.path.join(out, "result.json")) as f:
                r = json.load(f)
            layers = [l for l in r["policy"]["layers"] if not l.get("excluded")]
            s = r.get("phaseSeconds", {})
            row = (f"| {arch} | {how} | {len(layers)} / {len(um.conv_linear_names(model))} | "
                   f"{r['policy']['cost']['averageWeightBits']:.3f} | {r.get('floatAccuracy', 0):.2f} | "
                   f"{r.get('quantizedAccuracy', 0):.2f} | {s.get('pretrain', 0):.0f} | {s.get('qss', 0):.0f} | "
                   f"{s.get('qpl', 0):.0f} | {s.get('finetune', 0):.0f} | {wall:.0f} |")
            print(row, flush=True)
            with open(args.table, "a") as f:
                f.write(row + "\n")
            for w in r.get("warnings", []):
                print(f"  warning: {w}", flush=True)


if __name__ == "__main__":
    main()
