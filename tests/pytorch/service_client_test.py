"""A PyTorch user's own script against the real service: Python gRPC stubs generated from
proto/ at test time (python3-grpcio), a torchvision model and a tensor archive uploaded,
the job watched to the end, the artifacts downloaded, checked and used in PyTorch.

Run by ctest with QSEARCH_SERVER, QSEARCH_WORKER, QSEARCH_CLI and QSEARCH_PROTO_DIR set.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import service_fixture as sf  # noqa: E402
import user_models as um  # noqa: E402

CLI = os.environ.get("QSEARCH_CLI", "qsearch")


class ServiceClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="qsearch_pyclient_")
        sf.generate_stubs(os.path.join(cls.dir, "stubs"))
        cls.server = sf.Server(os.path.join(cls.dir, "data"), "--workers", "1", "--threads-per-worker", "2")
        cls.address = cls.server.address
        cls.client = sf.Client(cls.address)
        cls.pb, cls.job_pb, cls.stub = cls.client.pb, cls.client.job_pb, cls.client.stub
        cls.data = um.save_padded_archive(os.path.join(cls.dir, "fashion32.pt"), 600)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.server.stop()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def upload(self, rpc, path):
        return self.client.upload(rpc, path)

    def download(self, name, kind, path):
        return self.client.download(name, kind, path)

    def watch(self, name):
        return self.client.watch(name)

    def create(self, model_ref, data_ref, request_id):
        spec = self.job_pb.JobSpec(model_path=model_ref, pretrain_epochs=1, finetune_epochs=1, batch_size=100,
                                        seed=1)
        spec.dataset.path = data_ref
        spec.dataset.train_size = 300
        spec.dataset.val_size = 100
        spec.budget.average_weight_bits = 3
        spec.qpl.activation_bits = 4
        spec.qpl.epochs = 1
        spec.qss.epochs = 1
        return self.stub.CreateSearchJob(self.pb.CreateSearchJobRequest(request_id=request_id, spec=spec), timeout=60)

    def test_upload_search_watch_download_use(self):
        torch.manual_seed(0)
        model = torchvision.models.resnet18(num_classes=10).eval()
        model_path = os.path.join(self.dir, "resnet18.pt")
        torch.jit.trace(model, self.data["images"][:2]).save(model_path)
        model_ref = self.upload(self.stub.UploadModel, model_path)
        data_ref = self.upload(self.stub.UploadDataset, os.path.join(self.dir, "fashion32.pt"))
        job = self.create(model_ref, data_ref, "resnet18-traced")
        snapshot, events = self.watch(job.name)
        job = self.stub.GetSearchJob(self.pb.GetSearchJobRequest(name=job.name), timeout=30)
        self.assertEqual(self.pb.JobState.Name(job.state), "SUCCEEDED", job.error_message)
        # The trace froze batch norm: the user hears it as a warning event.
        warnings = [e.message for e in events if e.warning]
        self.assertTrue(any("traced in eval mode" in w for w in warnings), warnings)
        self.assertEqual(list(job.result.warnings), [w[len("warning: "):] for w in warnings])
        # Progress and policy speak the model's own layer names.
        with_policy = [e for e in events if e.policy.layers]
        self.assertTrue(with_policy)
        self.assertEqual(sorted(l.name for l in with_policy[-1].policy.layers), sorted(um.conv_linear_names(model)))

        ts = torch.jit.load(self.download(job.name, "torchscript", os.path.join(self.dir, "q.pt")))
        ts.eval()
        x, y = um.archive_test_split(self.data)
        with torch.no_grad():
            acc = um.accuracy(ts(x), y)
        self.assertLessEqual(abs(acc - job.result.quantized_accuracy), 100.0 / len(y) + 1e-6)
        ckpt = torch.load(self.download(job.name, "checkpoint", os.path.join(self.dir, "quantized.pt")))
        torchvision.models.resnet18(num_classes=10).load_state_dict(ckpt["state"], strict=True)

    def image_folder(self, name, count=240):
        """A user's image folder: train/ and test/ of class folders of PNG files."""
        from PIL import Image
        root = os.path.join(self.dir, name)
        images, labels = um.fashion_mnist(count)
        for i, (pixels, label) in enumerate(zip(images, labels)):
            folder = os.path.join(root, "test" if i >= count * 3 // 4 else "train", um.CLASS_NAMES[label])
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(pixels).save(os.path.join(folder, f"{i:05d}.png"))
        return root

    def test_zipped_image_folder_through_the_service(self):
        root = self.image_folder("zipped")
        zipped = shutil.make_archive(os.path.join(self.dir, "images"), "zip", root_dir=self.dir, base_dir="zipped")
        data_ref = self.upload(self.stub.UploadDataset, zipped)
        model_path = os.path.join(self.dir, "small1.pt")
        torch.manual_seed(6)
        torch.jit.script(um.SmallNet(channels=1, classes=10)).save(model_path)
        spec = self.job_pb.JobSpec(model_path=self.upload(self.stub.UploadModel, model_path), pretrain_epochs=1,
                                   finetune_epochs=1, batch_size=60, seed=1)
        spec.dataset.kind = "image_folder"
        spec.dataset.path = data_ref
        spec.dataset.height = spec.dataset.width = 32
        spec.dataset.val_size = 30
        spec.budget.average_weight_bits = 3
        spec.qpl.activation_bits = 4
        spec.qpl.epochs = spec.qss.epochs = 1
        job = self.stub.CreateSearchJob(self.pb.CreateSearchJobRequest(request_id="zipped", spec=spec), timeout=60)
        self.watch(job.name)
        job = self.stub.GetSearchJob(self.pb.GetSearchJobRequest(name=job.name), timeout=30)
        self.assertEqual(self.pb.JobState.Name(job.state), "SUCCEEDED", job.error_message)
        present = sorted(os.listdir(os.path.join(root, "train")))
        self.assertEqual(list(job.result.class_names), present)

    def test_cli_packs_a_folder(self):
        root = self.image_folder("for_cli")
        model_path = os.path.join(self.dir, "small2.pt")
        torch.manual_seed(7)
        torch.jit.script(um.SmallNet(channels=3, classes=10)).save(model_path)
        cli = [CLI, "--server", self.address]
        proc = subprocess.run(cli + ["submit", "--model-file", model_path, "--data", root, "--image-size", "32",
                                     "--channels", "3", "--mean", "0.3", "--std", "0.35", "--epochs", "0,1,1,1",
                                     "--val-size", "30", "--avg-bits", "3", "--watch"],
                              capture_output=True, text=True, timeout=600)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        self.assertIn("packed 240 images", proc.stderr)
        jobs = [line for line in subprocess.run(cli + ["list"], capture_output=True, text=True).stdout.split()
                if line.startswith("jobs/")]
        for name in jobs:
            job = self.stub.GetSearchJob(self.pb.GetSearchJobRequest(name=name), timeout=30)
            if job.spec.dataset.kind == "image_folder" and job.spec.dataset.channels == 3:
                self.assertEqual(self.pb.JobState.Name(job.state), "SUCCEEDED")
                self.assertEqual(list(job.result.policy.input_mean), [0.3, 0.3, 0.3])
                self.assertEqual((job.spec.dataset.height, job.spec.dataset.width), (32, 32))
                break
        else:
            self.fail(f"the CLI's job is not listed: {jobs}")

    def test_cli_sensitivity_mode_with_every_quantized_baseline(self):
        model_path = os.path.join(self.dir, "small3.pt")
        torch.manual_seed(8)
        torch.jit.script(um.SmallNet(channels=3, classes=10)).save(model_path)
        cli = [CLI, "--server", self.address]
        proc = subprocess.run(cli + ["submit", "--model-file", model_path, "--data",
                                     os.path.join(self.dir, "fashion32.pt"), "--epochs", "1,0,0,1", "--val-size", "60",
                                     "--avg-bits", "3", "--act-bits", "4", "--search-mode", "sensitivity",
                                     "--baselines", "uniform,uniform_first_last_8,sensitivity", "--watch"],
                              capture_output=True, text=True, timeout=600)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        for name in ("uniform", "sensitivity"):
            self.assertRegex(proc.stdout, rf"baseline {name}: \d+\.\d\d% at \d\.\d{{3}} average weight bits")
        job_name = re.search(r"submitted (jobs/\S+)", proc.stdout).group(1)
        job = self.stub.GetSearchJob(self.pb.GetSearchJobRequest(name=job_name), timeout=30)
        self.assertEqual(job.spec.search_mode, "sensitivity")
        ran = [b.name for b in job.result.baselines]
        # First/last 8-bit may not fit 3 bits on this net; then the job warns and skips it.
        if "uniform_first_last_8" not in ran:
            self.assertTrue(any("uniform_first_last_8 skipped" in w for w in job.result.warnings))
        self.assertEqual([n for n in ran if n != "uniform_first_last_8"], ["uniform", "sensitivity"])
        for b in job.result.baselines:
            self.assertLessEqual(b.policy.cost.average_weight_bits, 3 + 1e-9)
            self.assertEqual(b.policy.quantized_accuracy, b.accuracy)
        quantized = [l for l in job.result.policy.layers if not l.excluded]
        self.assertTrue(quantized)
        for layer in quantized:
            self.assertGreater(layer.sensitivity, 0, layer.name)
        self.assertLessEqual(job.result.policy.cost.average_weight_bits, 3 + 1e-9)
        self.assertIn("allocate", job.result.phase_seconds)
        report = os.path.join(self.dir, "sensitivity-report.html")
        proc = subprocess.run(cli + ["report", job_name, "-o", report], capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        with open(report) as f:
            html = f.read()
        self.assertIn('data-kind="sensitivity"', html)
        self.assertIn('id="best-baseline"', html)

    def test_model_the_worker_cannot_run_fails_the_job_with_the_reason(self):
        model_path = os.path.join(self.dir, "tuple.pt")
        torch.jit.script(um.TupleOut()).save(model_path)
        model_ref = self.upload(self.stub.UploadModel, model_path)
        data_ref = self.upload(self.stub.UploadDataset, os.path.join(self.dir, "fashion32.pt"))
        job = self.create(model_ref, data_ref, "tuple-out")
        self.watch(job.name)
        job = self.stub.GetSearchJob(self.pb.GetSearchJobRequest(name=job.name), timeout=30)
        self.assertEqual(self.pb.JobState.Name(job.state), "FAILED")
        self.assertIn("returns a Tuple", job.error_message)
        # The server is still serving.
        self.assertEqual(self.stub.GetSearchJob(self.pb.GetSearchJobRequest(name=job.name), timeout=30).name, job.name)


if __name__ == "__main__":
    unittest.main(verbosity=2)
