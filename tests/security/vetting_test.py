"""The vetting refuses no honest model: every torchvision classification model
(torchvision.models.list_models, 80 in torchvision 0.14), scripted and traced, passes
`qsearch-worker --check-model`, the check a job makes before running a user's model.

Only the graphs matter to the vetting, so each model is saved without its weights, and
its random initialisation is skipped (it is most of the time the large ones take to
build). Models are traced at the smallest input their architecture takes.

Run by ctest with QSEARCH_WORKER set.
"""
import os
import shutil
import subprocess
import tempfile
import unittest
import warnings

import torch
import torch.nn.init as init
import torchvision

WORKER = os.environ.get("QSEARCH_WORKER", "qsearch-worker")


def trace_size(name):
    if name.startswith("vit_"):
        return 28 if "_14" in name else 32
    if name.startswith(("swin", "maxvit")):
        return 224
    if name.startswith("inception"):
        return 96
    return 64


class VettingTest(unittest.TestCase):
    def test_every_torchvision_classifier_passes_scripted_and_traced(self):
        names = torchvision.models.list_models(module=torchvision.models)
        self.assertGreaterEqual(len(names), 80)
        out = tempfile.mkdtemp(prefix="qsearch_vetting_")
        skipped_init = {fn: getattr(init, fn) for fn in dir(init) if fn.endswith("_") and not fn.startswith("_")}
        for fn in skipped_init:
            setattr(init, fn, lambda t, *args, **kwargs: t)
        files = []
        try:
            warnings.filterwarnings("ignore")
            for name in names:
                kwargs = {"image_size": trace_size(name)} if name.startswith("vit_") else {}
                model = torchvision.models.get_model(name, num_classes=10, **kwargs).eval()
                size = trace_size(name)
                with torch.no_grad():
                    traced = torch.jit.trace(model, torch.zeros(1, 3, size, size), check_trace=False)
                scripted = torch.jit.script(model)
                for module in (traced, scripted):
                    for p in module.parameters():
                        p.data = torch.empty(0)
                for how, module in (("trace", traced), ("script", scripted)):
                    path = os.path.join(out, f"{name}_{how}.pt")
                    module.save(path)
                    files.append(path)
            for fn, f in skipped_init.items():
                setattr(init, fn, f)
            proc = subprocess.run([WORKER, "--check-model", *files], capture_output=True, text=True, timeout=900)
            lines = proc.stdout.splitlines()
            refused = [line for line in lines if not line.startswith("ok ")]
            self.assertEqual(refused, [])
            self.assertEqual(len(lines), 2 * len(names))
            self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
            print(f"\n{len(names)} torchvision classification models, scripted and traced: {len(lines)} files pass")
        finally:
            for fn, f in skipped_init.items():
                setattr(init, fn, f)
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
