"""One job across several processes: qsearch-worker with world_size 2 over c10d Gloo.

The same resnet20 job on real Fashion-MNIST runs in one process and in two processes (1
thread each, sandboxed: their own loopback network, nothing else) with the same global
batch: the first step's loss is the one process's, and the whole search lands within 3
points of a one-process run (1 or 2 threads). Then what a careless or hostile spec does
(world sizes out of range), and that the other ranks never outlive rank 0 (kill -9,
cancel).

Run by ctest as: python3 data_parallel_test.py (QSEARCH_WORKER names the worker binary).
"""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

import torch

WORKER = os.environ.get("QSEARCH_WORKER", "qsearch-worker")
MNIST = "/usr/share/datasets/fashion-mnist"

# Small enough for CI (well under a minute per run on 2 cores). At 1024 images one process
# moves by about as much with its thread count as two processes do, and the band below
# stops telling them apart: keep 2048.
SPEC = {
    "model": "resnet20",
    "dataset": {"trainSize": 2048, "valSize": 512, "testSize": 10000},
    "batchSize": 128,
    "pretrainEpochs": 3,
    "finetuneEpochs": 1,
    "budget": {"averageWeightBits": 3},
    "seed": 1,
}


def peers_of(out_dir):
    """PIDs of qsearch-worker processes whose command line names `out_dir`."""
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if out_dir.encode() in args and any(a.endswith(b"qsearch-worker") for a in args[:1]):
            pids.append(int(pid))
    return pids


def wait_gone(pids, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        alive = []
        for p in pids:
            try:
                with open(f"/proc/{p}/stat") as f:
                    if f.read().split()[2] != "Z":
                        alive.append(p)
            except OSError:
                pass
        if not alive:
            return []
        time.sleep(0.1)
    return alive


class DataParallelTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="qsearch_dp_")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def write_spec(self, name, **changes):
        spec = json.loads(json.dumps(SPEC))
        spec.update(changes)
        path = os.path.join(self.dir, name + ".json")
        with open(path, "w") as f:
            json.dump(spec, f)
        return path

    def run_worker(self, name, threads, sandbox, float64=False, **changes):
        out = os.path.join(self.dir, name)
        args = [WORKER, "--spec", self.write_spec(name, **changes), "--out", out, "--threads", str(threads)]
        if sandbox:
            args.append("--sandbox")
        if float64:
            args.append("--float64")
        started = time.time()
        proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
        return out, proc, time.time() - started

    def test_first_step_is_the_one_process_step(self):
        # One batch of pre-training: the epoch's loss is the first batch's, computed before
        # any update, so the shares summed over Gloo (with batch norm over the whole batch)
        # must give the one-process figure; after that one step the models agree closely.
        one_out, one, _ = self.run_worker("step1", threads=2, sandbox=False, dataset={
            "trainSize": 128, "valSize": 128, "testSize": 10000}, pretrainEpochs=1, finetuneEpochs=0,
            searchMode="sensitivity")
        self.assertEqual(one.returncode, 0, one.stdout + one.stderr)
        two_out, two, _ = self.run_worker("step2", threads=2, sandbox=True, worldSize=2, dataset={
            "trainSize": 128, "valSize": 128, "testSize": 10000}, pretrainEpochs=1, finetuneEpochs=0,
            searchMode="sensitivity")
        self.assertEqual(two.returncode, 0, two.stdout + two.stderr)
        loss = lambda out: [l.split("loss")[1].split()[0] for l in out.splitlines() if "PHASE_PRETRAIN" in l
                            and "epoch done" in l]
        self.assertEqual(len(loss(one.stdout)), 1, one.stdout)
        self.assertEqual(loss(one.stdout), loss(two.stdout))
        with open(os.path.join(one_out, "result.json")) as f:
            a = json.load(f)
        with open(os.path.join(two_out, "result.json")) as f:
            b = json.load(f)
        self.assertLessEqual(abs(a["floatAccuracy"] - b["floatAccuracy"]), 0.3)

    def test_two_processes_search_like_one(self):
        # The whole search: in float32 a different summation order (two processes, or just
        # one process with another thread count) sends training along another path, so the
        # reference for "the same up to floating-point order" is how far one process moves
        # when only its thread count changes.
        runs = {}
        for name, world, threads, sandbox in [("t2", 1, 2, False), ("t1", 1, 1, False), ("dp", 2, 2, True)]:
            out, proc, seconds = self.run_worker("search_" + name, threads=threads, sandbox=sandbox,
                                                 worldSize=world)
            self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
            with open(os.path.join(out, "result.json")) as f:
                runs[name] = (out, proc, seconds, json.load(f))
        two_out, two, _, b = runs["dp"]
        a = runs["t2"][3]
        # Both ranks were confined, with the job's own loopback rather than no network.
        self.assertEqual(two.stderr.count("qsearch-worker: sandbox:"), 2, two.stderr)
        self.assertNotIn("no TCP", two.stderr)
        self.assertGreater(b["quantizedAccuracy"], 60)
        self.assertEqual(b["devices"], ["cpu", "cpu"])  # where each rank ran
        self.assertEqual(a["devices"], ["cpu"])
        # How far the two processes land from the nearer one-process run. Splitting every
        # batch sum in two sends training along another float32 path sooner than a
        # thread-count change does: over 8 seeds on an AMD EPYC (docs/benchmarks.md, "Two
        # processes against one") two processes were -0.37 +- 0.32 points from one (no
        # measurable difference) with the nearer one-process run at most 1.40 away; this
        # seed was the farthest. The first step, where no path has parted yet, is held to
        # the one process's in the test above.
        q = {k: v[3]["quantizedAccuracy"] for k, v in runs.items()}
        self.assertLessEqual(min(abs(q["dp"] - q["t2"]), abs(q["dp"] - q["t1"])), 3.0, q)
        layers = lambda r: [(l["name"], l["weight"]["spec"], l["activation"]["spec"], l["weightBits"])
                            for l in r["policy"]["layers"]]
        self.assertEqual([l[0] for l in layers(a)], [l[0] for l in layers(b)])
        self.assertLessEqual(b["policy"]["cost"]["averageWeightBits"], 3.0 + 1e-9)

        # One set of artifacts, written by rank 0, that a user loads; the checkpoint is gone.
        self.assertFalse(os.path.exists(os.path.join(two_out, "checkpoint.pt")))
        one_state = torch.load(os.path.join(runs["t2"][0], "quantized.pt"))
        two_state = torch.load(os.path.join(two_out, "quantized.pt"))
        self.assertEqual(sorted(one_state.keys()), sorted(two_state.keys()))
        with open(os.path.join(two_out, "policy.json")) as f:
            self.assertEqual(layers({"policy": json.load(f)}), layers(b))
        self.assertEqual(peers_of(two_out), [])
        for k, (_, _, seconds, r) in runs.items():
            print(f"\n  {k}: {seconds:.1f}s float {r['floatAccuracy']:.2f} quantized {r['quantizedAccuracy']:.2f}",
                  end="")

    def test_in_float64_two_processes_choose_the_one_process_policy(self):
        # The acceptance's "same policy up to floating-point order", with the order's effect
        # made small: the same search in float64 (--float64: data, model, search parameters,
        # gradients and collectives), where splitting a sum in two moves it by about 1e-16
        # instead of float32's 1e-7. Two processes must then follow the one process's path
        # through pre-training and QSS (every epoch's loss and accuracy as printed; each
        # step's loss agreed to 1e-14 when this was written) and choose the same policy.
        # Fine-tuning is held to the accuracy band only: its quantizers keep their scales in
        # float32 tables, and a 1e-16 difference can move one of them by a float32 step,
        # which rounds some weight to the next level (seen once, at its 15th step).
        runs = {}
        for name, world, sandbox in [("one", 1, False), ("two", 2, True)]:
            out, proc, seconds = self.run_worker("f64_" + name, threads=2, sandbox=sandbox, float64=True,
                                                 worldSize=world)
            self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
            with open(os.path.join(out, "result.json")) as f:
                runs[name] = (proc, seconds, json.load(f))
        epochs = lambda out: [l.split("]", 1)[1].split("eta")[0].split() for l in out.splitlines()
                              if ("PHASE_PRETRAIN" in l and "epoch done" in l) or "PHASE_QSS" in l]
        one, two = runs["one"][2], runs["two"][2]
        self.assertEqual(len(epochs(runs["one"][0].stdout)), 4, runs["one"][0].stdout)  # 3 pre-training + QSS
        self.assertEqual(epochs(runs["one"][0].stdout), epochs(runs["two"][0].stdout))
        layers = lambda r: [(l["name"], l["weight"]["spec"], l["activation"]["spec"], l["weightBits"],
                             l.get("activationBits")) for l in r["policy"]["layers"]]
        self.assertEqual(layers(one), layers(two))
        self.assertEqual(two["devices"], ["cpu", "cpu"])
        self.assertLessEqual(abs(one["floatAccuracy"] - two["floatAccuracy"]), 0.3)
        self.assertLessEqual(abs(one["quantizedAccuracy"] - two["quantizedAccuracy"]), 0.3)
        self.assertGreater(two["quantizedAccuracy"], 60)
        for k, (_, seconds, r) in runs.items():
            print(f"\n  float64 {k}: {seconds:.1f}s float {r['floatAccuracy']:.2f} quantized "
                  f"{r['quantizedAccuracy']:.2f}", end="")

    def test_script_model_batch_norms_are_named(self):
        # A user's TorchScript model runs its batch norms in its own code, where the
        # processes cannot combine their statistics: the job runs and says so.
        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
                self.bn = torch.nn.BatchNorm2d(8)
                self.fc = torch.nn.Linear(8, 10)

            def forward(self, x):
                return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))

        model = os.path.join(self.dir, "bn_net.pt")
        torch.jit.script(Net()).save(model)
        small = dict(dataset={"trainSize": 128, "valSize": 128, "testSize": 1000}, pretrainEpochs=1,
                     finetuneEpochs=0, searchMode="sensitivity", modelPath=model, model="")
        warned = lambda r: [w for w in r.get("warnings", []) if "batch norm" in w and "share of the batch" in w]
        two_out, two, _ = self.run_worker("script_bn2", threads=2, sandbox=True, worldSize=2, **small)
        self.assertEqual(two.returncode, 0, two.stdout + two.stderr)
        with open(os.path.join(two_out, "result.json")) as f:
            self.assertEqual(len(warned(json.load(f))), 1)
        one_out, one, _ = self.run_worker("script_bn1", threads=2, sandbox=True, **small)
        self.assertEqual(one.returncode, 0, one.stdout + one.stderr)
        with open(os.path.join(one_out, "result.json")) as f:
            self.assertEqual(warned(json.load(f)), [])

    def test_world_sizes_out_of_range_are_refused(self):
        for size, message in [(9, "world_size must be in 1..8"), (-1, "world_size must be in 1..8"),
                              (200, "world_size must be in 1..8")]:
            out, proc, _ = self.run_worker(f"bad{size}", threads=1, sandbox=False, worldSize=size,
                                           pretrainEpochs=0)
            self.assertEqual(proc.returncode, 1, proc.stderr)
            self.assertIn(message, proc.stderr)
            self.assertIn("INVALID_ARGUMENT", proc.stderr)
        out, proc, _ = self.run_worker("bigworld", threads=1, sandbox=False, worldSize=4, batchSize=2)
        self.assertEqual(proc.returncode, 1, proc.stderr)
        self.assertIn("world_size must not exceed batch_size", proc.stderr)
        self.assertEqual(wait_gone(peers_of(out), 20), [])

    def test_other_ranks_die_with_rank_zero(self):
        spec = self.write_spec("killed", worldSize=2, pretrainEpochs=50)
        out = os.path.join(self.dir, "killed")
        rank0 = subprocess.Popen([WORKER, "--spec", spec, "--out", out, "--threads", "2", "--sandbox"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.time() + 60
            while time.time() < deadline and len(peers_of(out)) < 2:
                time.sleep(0.1)
            pids = peers_of(out)
            self.assertEqual(len(pids), 2)
            time.sleep(3)  # training
            rank0.kill()
            rank0.wait(timeout=30)
            self.assertEqual(wait_gone([p for p in pids if p != rank0.pid], 20), [])
        finally:
            if rank0.poll() is None:
                rank0.kill()
                rank0.wait()

    def test_cancel_stops_every_rank(self):
        spec = self.write_spec("cancelled", worldSize=2, pretrainEpochs=50)
        out = os.path.join(self.dir, "cancelled")
        rank0 = subprocess.Popen([WORKER, "--spec", spec, "--out", out, "--threads", "2"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.time() + 60
            while time.time() < deadline and len(peers_of(out)) < 2:
                time.sleep(0.1)
            pids = peers_of(out)
            time.sleep(3)
            rank0.send_signal(signal.SIGTERM)
            _, err = rank0.communicate(timeout=60)
            self.assertEqual(rank0.returncode, 3, err)
            self.assertIn("CANCELLED", err)
            self.assertEqual(wait_gone(pids, 20), [])
        finally:
            if rank0.poll() is None:
                rank0.kill()
                rank0.wait()


if __name__ == "__main__":
    unittest.main(verbosity=2)
