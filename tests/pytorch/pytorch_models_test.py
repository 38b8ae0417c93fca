"""Models a PyTorch user saves, searched by qsearch-worker, outputs loaded back in Python.

Every model is made here with Debian's python3-torch / python3-torchvision (random init,
nothing downloads), saved the way users save them, and searched on real Fashion-MNIST
padded to 3x32x32 (a few hundred images). What each job exports is then used as a user
would: torch.jit.load on raw images, load_state_dict(strict=True) into a fresh model.

Run by ctest as: python3 pytorch_models_test.py (QSEARCH_WORKER names the worker binary).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import user_models as um  # noqa: E402

WORKER = os.environ.get("QSEARCH_WORKER", "qsearch-worker")
TORCHVISION = ["resnet18", "mobilenet_v2", "squeezenet1_1"]
IMAGES = 900  # 750 to train on (train + validation), the last 150 to test on


class Job:
    """One qsearch-worker run and what it wrote."""

    def __init__(self, out, proc):
        self.out, self.proc = out, proc
        self.ok = proc.returncode == 0
        self.log = proc.stdout + proc.stderr
        if self.ok:
            with open(os.path.join(out, "result.json")) as f:
                self.result = json.load(f)
            self.policy = self.result["policy"]
            self.quantized = [l for l in self.policy["layers"] if not l.get("excluded")]

    def names(self):
        return [l["name"] for l in self.quantized]

    def exported(self):
        model = torch.jit.load(os.path.join(self.out, "quantized_model.pt"))
        model.eval()
        return model

    def checkpoint(self):
        return torch.load(os.path.join(self.out, "quantized.pt"))


class PyTorchModelsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="qsearch_pytorch_")
        cls.archive = os.path.join(cls.dir, "fashion32.pt")
        cls.data = um.save_padded_archive(cls.archive, IMAGES)
        cls.test_x, cls.test_y = um.archive_test_split(cls.data)
        cls.jobs = 0

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def path(self, name):
        return os.path.join(self.dir, name)

    def run_job(self, model_path, **overrides):
        """Runs a small search of `model_path` and returns the Job."""
        spec = {"modelPath": model_path,
                "dataset": {"kind": "archive", "path": self.archive, "trainSize": 400, "valSize": 100},
                "budget": {"averageWeightBits": 3}, "qpl": {"activationBits": 4, "epochs": 1},
                "qss": {"epochs": 1}, "pretrainEpochs": 1, "finetuneEpochs": 1, "batchSize": 100, "seed": 1}
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(spec.get(key), dict):
                spec[key] = {**spec[key], **value}
            else:
                spec[key] = value
        type(self).jobs += 1
        out = self.path(f"job{self.jobs}")
        spec_path = out + ".json"
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        # Sandboxed as the server runs it: the models must work confined.
        proc = subprocess.run([WORKER, "--spec", spec_path, "--out", out, "--threads", "2", "--sandbox"],
                              capture_output=True, text=True, timeout=600)
        return Job(out, proc)

    def assert_succeeded(self, job):
        self.assertTrue(job.ok, f"job failed:\n{job.log[-3000:]}")

    def assert_reproduces_accuracy(self, job, images, labels):
        """The exported TorchScript, on raw images, scores what the job reported."""
        with torch.no_grad():
            acc = um.accuracy(job.exported()(images), labels)
        one_image = 100.0 / len(labels)
        self.assertLessEqual(abs(acc - job.result["quantizedAccuracy"]), one_image + 1e-6,
                             f"exported model {acc:.2f}% vs job {job.result['quantizedAccuracy']:.2f}%")

    def check_torchvision(self, arch, how):
        torch.manual_seed(0)
        model = getattr(torchvision.models, arch)(num_classes=10)
        expected = um.conv_linear_names(model)
        path = self.path(f"{arch}_{how}.pt")
        if how == "script":
            torch.jit.script(model).save(path)
        else:
            model.eval()  # how models are usually traced for export
            torch.jit.trace(model, self.test_x[:2]).save(path)
        job = self.run_job(path)
        self.assert_succeeded(job)
        # Every nn.Conv2d / nn.Linear is a quantized layer, named as named_modules() names it.
        self.assertEqual(sorted(job.names()), sorted(expected))
        self.assertEqual(len(job.policy["layers"]), len(expected))
        self.assertLessEqual(job.policy["cost"]["averageWeightBits"], 3 + 1e-9)
        self.assertEqual(len(job.policy["inputMean"]), 3)
        has_bn = any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        traced_eval = [w for w in job.result.get("warnings", []) if "traced in eval mode" in w]
        self.assertEqual(bool(traced_eval), how == "trace" and has_bn, job.result.get("warnings"))

        self.assert_reproduces_accuracy(job, self.test_x, self.test_y)

        if has_bn:
            # Batch norms learned statistics, traced or not (a trace in eval mode froze them).
            stats = [v for k, v in job.checkpoint()["state"].items() if k.endswith("running_mean")]
            self.assertGreater(sum(int(bool(t.abs().sum() > 0)) for t in stats), len(stats) // 2)
        # quantized.pt's state loads strictly into a fresh torchvision model; with the
        # checkpoint's input quantizers as pre-hooks and its normalisation, the plain model
        # gives the exported model's logits.
        ckpt = job.checkpoint()
        fresh = getattr(torchvision.models, arch)(num_classes=10)
        fresh.load_state_dict(ckpt["state"], strict=True)
        fresh.eval()
        um.add_input_quantizers(fresh, ckpt)
        mean, std = ckpt["input_mean"].view(1, -1, 1, 1), ckpt["input_std"].view(1, -1, 1, 1)
        exported = job.exported()
        with torch.no_grad():
            ours = fresh((self.test_x - mean) / std)
            theirs = exported(self.test_x)
        self.assertTrue(torch.allclose(ours, theirs, rtol=1e-4, atol=1e-4),
                        f"max difference {(ours - theirs).abs().max().item()}")
        # The state's weights are the exported model's, each on at most 2^bits levels per
        # output channel, and the codes decode to them.
        exported_params = dict(exported.named_parameters())
        for layer in job.quantized:
            w = ckpt["state"][layer["name"] + ".weight"]
            self.assertTrue(torch.equal(w, exported_params[layer["name"] + ".weight"]), layer["name"])
            codes = ckpt["layers"][layer["name"]]
            decoded = codes["levels"].gather(1, codes["codes"].reshape(w.shape[0], -1).long())
            decoded = (decoded * codes["scale"].unsqueeze(1)).reshape(w.shape)
            self.assertTrue(torch.allclose(decoded, w, atol=1e-6), layer["name"])
            levels = max(len(torch.unique(row)) for row in w.reshape(w.shape[0], -1))
            self.assertLessEqual(levels, 2 ** int(layer["weightBits"]), layer["name"])

    def test_resnet18_scripted(self):
        self.check_torchvision("resnet18", "script")

    def test_resnet18_traced(self):
        self.check_torchvision("resnet18", "trace")

    def test_mobilenet_v2_scripted(self):
        self.check_torchvision("mobilenet_v2", "script")

    def test_mobilenet_v2_traced(self):
        self.check_torchvision("mobilenet_v2", "trace")

    def test_squeezenet1_1_scripted(self):
        self.check_torchvision("squeezenet1_1", "script")

    def test_squeezenet1_1_traced(self):
        self.check_torchvision("squeezenet1_1", "trace")

    def check_everything(self, how):
        torch.manual_seed(1)
        model = um.EverythingNet()
        path = self.path(f"everything_{how}.pt")
        calls = dict(um.EVERYTHING_CALLS)
        if how == "script":
            torch.jit.script(model).save(path)
        else:
            model.train()
            torch.jit.trace(model, self.test_x[:2], check_trace=False).save(path)
            del calls["right"]  # tracing keeps the branch taken: `right` is not in the model's graph
        self.assertTrue(all(p.requires_grad for p in model.parameters()))
        job = self.run_job(path)
        self.assert_succeeded(job)
        self.assertEqual(sorted(job.names()), sorted(calls))
        # A module called twice, or in a loop, is one layer whose cost counts every call.
        macs = {l["name"]: int(l.get("macs", 0)) for l in job.quantized}
        weights = dict(model.named_parameters())
        for name, n_calls in calls.items():
            w = weights[name if name in ("w_conv", "fc_w") else name + ".weight"]
            out_channels = w.shape[0]
            spatial = {"stem": 32 * 32, "shared.conv": 32 * 32, "fc_w": 1}.get(name, 16 * 16)
            self.assertEqual(macs[name], n_calls * out_channels * spatial * w[0].numel(), name)
        if how == "trace":
            self.assertTrue(any("traced in train mode" in w for w in job.result["warnings"]))
        self.assert_reproduces_accuracy(job, self.test_x, self.test_y)
        fresh = um.EverythingNet()
        fresh.load_state_dict(job.checkpoint()["state"], strict=True)

    def test_everything_a_forward_does_scripted(self):
        self.check_everything("script")

    def test_everything_a_forward_does_traced(self):
        self.check_everything("trace")

    def test_a_trained_model_is_searched_as_given(self):
        # The user trained the model on inputs normalised with their own mean and std and
        # brings it with pretrainEpochs 0: the float accuracy the job reports is the model's.
        torch.manual_seed(2)
        n_train = IMAGES - len(self.test_y)
        mean, std = 0.3, 0.35
        model = um.train_briefly(um.SmallNet(), self.data["images"][:n_train], self.data["labels"][:n_train], mean, std)
        with torch.no_grad():
            own = um.accuracy(model((self.test_x - mean) / std), self.test_y)
        self.assertGreater(own, 50)
        path = self.path("trained.pt")
        torch.jit.script(model).save(path)
        job = self.run_job(path, pretrainEpochs=0, dataset={"mean": [mean], "std": [std]})
        self.assert_succeeded(job)
        self.assertLessEqual(abs(job.result["floatAccuracy"] - own), 100.0 / len(self.test_y) + 1e-6)
        self.assertEqual(job.policy["inputMean"], [mean] * 3)
        self.assert_reproduces_accuracy(job, self.test_x, self.test_y)

    def test_unsupported_layer_is_named_and_can_be_kept_float(self):
        torch.manual_seed(3)
        path = self.path("deconv.pt")
        torch.jit.script(um.Deconv()).save(path)
        job = self.run_job(path)
        self.assertFalse(job.ok)
        self.assertIn("INVALID_ARGUMENT", job.log)
        self.assertIn("layer 'up' is a aten::conv_transpose2d", job.log)
        self.assertIn('add "up" to excludeOpNames', job.log)
        job = self.run_job(path, excludeOpNames=["up"])
        self.assert_succeeded(job)
        self.assertEqual(sorted(job.names()), ["down", "fc"])
        up = [l for l in job.policy["layers"] if l["name"] == "up"]
        self.assertEqual(len(up), 1)
        self.assertTrue(up[0]["excluded"])
        self.assertIn("conv_transpose2d", up[0]["note"])

    def test_layer_filters_take_module_paths(self):
        torch.manual_seed(4)
        path = self.path("mobilenet_filters.pt")
        torch.jit.script(torchvision.models.mobilenet_v2(num_classes=10)).save(path)
        # NNI's op_names name modules; a module's path covers the layers below it.
        job = self.run_job(path, excludeOpNames=["features.0", "classifier.1"], qss={"epochs": 0},
                           qpl={"epochs": 0}, pretrainEpochs=0, finetuneEpochs=0)
        self.assert_succeeded(job)
        excluded = {l["name"]: l["note"] for l in job.policy["layers"] if l.get("excluded")}
        self.assertEqual(sorted(excluded), ["classifier.1", "features.0.0"])
        self.assertIn("exclude_op_names", excluded["features.0.0"])
        with open(os.path.join(job.out, "config_list.json")) as f:
            config = json.load(f)
        self.assertEqual([c["op_names"][0] for c in config], job.names())
        self.assertIn("features.18.0", job.names())

    def test_models_it_cannot_run_get_clear_errors(self):
        cases = [
            (um.TupleOut(), "returns a Tuple"),
            (um.TwoInputs(), "qsearch calls it with one batch of images"),
            (um.SmallNet(classes=5), "returns shape [2, 5]"),
            (um.SmallNet(channels=1), "does not accept 3x32x32 images"),
        ]
        for i, (model, message) in enumerate(cases):
            path = self.path(f"bad{i}.pt")
            torch.jit.script(model).save(path)
            job = self.run_job(path)
            self.assertFalse(job.ok, message)
            self.assertIn("INVALID_ARGUMENT", job.log)
            self.assertIn(message, job.log)

    def test_legacy_archive_gets_a_message(self):
        legacy = self.path("legacy.pt")
        torch.save({"images": self.test_x, "labels": self.test_y}, legacy, _use_new_zipfile_serialization=False)
        path = self.path("small_for_legacy.pt")
        torch.jit.script(um.SmallNet()).save(path)
        job = self.run_job(path, dataset={"path": legacy, "trainSize": 0, "valSize": 0})
        self.assertFalse(job.ok)
        self.assertIn("legacy (non-zip) format", job.log)

    def test_image_folder(self):
        # How most users hold images: one folder per class, PNG and JPEG files, here
        # Fashion-MNIST's 28x28 grey images searched as 3x32x32.
        from PIL import Image
        root = self.path("images")
        images, labels = um.fashion_mnist(420)
        for i, (pixels, label) in enumerate(zip(images, labels)):
            split = "test" if i >= 300 else "train"
            folder = os.path.join(root, split, um.CLASS_NAMES[label])
            os.makedirs(folder, exist_ok=True)
            # JPEG for some training images; the test split stays lossless.
            ext = "jpg" if split == "train" and i % 3 == 0 else "png"
            Image.fromarray(pixels).save(os.path.join(folder, f"{i:05d}.{ext}"))
        path = self.path("small_for_folder.pt")
        torch.manual_seed(5)
        torch.jit.script(um.SmallNet()).save(path)
        job = self.run_job(path, dataset={"kind": "image_folder", "path": root, "height": 32, "width": 32,
                                          "channels": 3, "trainSize": 0, "valSize": 50})
        self.assert_succeeded(job)
        classes = sorted(os.listdir(os.path.join(root, "train")))
        self.assertEqual(job.result["classNames"], classes)
        # The test images as a user loads them: PIL, RGB, [0, 1], resized with antialiasing.
        xs, ys = [], []
        for label, name in enumerate(classes):
            folder = os.path.join(root, "test", name)
            for file in sorted(os.listdir(folder)):
                rgb = Image.open(os.path.join(folder, file)).convert("RGB")
                xs.append(torch.tensor(list(rgb.getdata()), dtype=torch.float32).reshape(28, 28, 3).permute(2, 0, 1))
                ys.append(label)
        x = F.interpolate(torch.stack(xs), size=(32, 32), mode="bilinear", align_corners=False, antialias=True) / 255
        self.assert_reproduces_accuracy(job, x, torch.tensor(ys))


if __name__ == "__main__":
    unittest.main(verbosity=2)
