"""Models and data as a PyTorch user makes them, for the tests in this folder.

Everything here is plain PyTorch / torchvision (random init, nothing downloads): the
modules a user writes, the way they save them (torch.jit.script / torch.jit.trace +
torch.jit.save), the tensor archive and image folders they hold their data in, and the
way they would apply what qsearch exports (load_state_dict, forward pre-hooks).
"""
import gzip
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = ["t_shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"]


def read_idx(path):
    data = gzip.open(path).read()
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(data[3])]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * len(dims)).reshape(dims)


def fashion_mnist(count):
    """The first `count` training images (uint8 [N, 28, 28]) and labels (int64 [N])."""
    images = read_idx(os.path.join(FASHION_MNIST, "train-images-idx3-ubyte.gz"))[:count]
    labels = read_idx(os.path.join(FASHION_MNIST, "train-labels-idx1-ubyte.gz"))[:count]
    return images.copy(), labels.astype(np.int64)


def save_padded_archive(path, count):
    """Fashion-MNIST padded to 3x32x32, as a torch.save'd tensor archive; returns the dict."""
    images, labels = fashion_mnist(count)
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)
    x = F.pad(x, (2, 2, 2, 2)).repeat(1, 3, 1, 1)
    data = {"images": x, "labels": torch.from_numpy(labels)}
    torch.save(data, path)
    return data


def archive_test_split(data):
    """The split qsearch tests on: an archive's last sixth."""
    n = len(data["labels"])
    first = n - max(1, n // 6)
    return data["images"][first:], data["labels"][first:]


def conv_linear_names(model):
    """What a user counts as the model's quantizable layers."""
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


class Block(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class EverythingNet(nn.Module):
    """What users' forward methods do: submodules, a buffer, a module called twice, a loop,
    a data-dependent branch, depthwise and grouped convolutions, and F.conv2d / F.linear
    on bare parameters."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.register_buffer("gain", torch.tensor(1.5))
        self.shared = Block(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.grouped = nn.Conv2d(16, 32, 1, groups=2)
        self.looped = nn.Conv2d(32, 32, 3, padding=1)
        self.repeats = 2
        self.left = nn.Conv2d(32, 32, 1)
        self.right = nn.Conv2d(32, 32, 1)
        self.w_conv = nn.Parameter(torch.randn(32, 32, 3, 3) * 0.05)
        self.fc_w = nn.Parameter(torch.randn(10, 32) * 0.1)
        self.fc_b = nn.Parameter(torch.zeros(10))

    def forward(self, x):
        h = F.relu(self.stem(x)) * self.gain
        h = self.shared(h)
        h = self.shared(h)
        h = F.max_pool2d(h, 2)
        h = F.relu(self.grouped(F.relu(self.dw(h))))
        for _ in range(self.repeats):
            h = F.relu(self.looped(h))
        if bool(h.mean() > 0):
            h = self.left(h)
        else:
            h = self.right(h)
        h = F.relu(F.conv2d(h, self.w_conv, None, 1, 1))
        h = F.adaptive_avg_pool2d(h, 1).flatten(1)
        return F.linear(h, self.fc_w, self.fc_b)


# Layers EverythingNet's forward reaches, and how many calls each gets per sample.
EVERYTHING_CALLS = {"stem": 1, "shared.conv": 2, "dw": 1, "grouped": 1, "looped": 2, "left": 1, "right": 0,
                    "w_conv": 1, "fc_w": 1}


class SmallNet(nn.Module):
    def __init__(self, channels=3, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 8 * 8, classes)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        h = F.max_pool2d(F.relu(self.bn2(self.conv2(h))), 2)
        return self.fc(h.flatten(1))


class TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = SmallNet()

    def forward(self, x):
        logits = self.net(x)
        return logits, logits.softmax(1)


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = SmallNet()

    def forward(self, x, mask):
        return self.net(x * mask)


class Deconv(nn.Module):
    """A transposed convolution qsearch cannot quantize, among layers it can."""

    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.fc = nn.Linear(8 * 32 * 32, 10)

    def forward(self, x):
        return self.fc(F.relu(self.up(F.relu(self.down(x)))).flatten(1))


def train_briefly(model, images, labels, mean, std, steps=150, seed=0):
    """A user's own training run: Adam on normalised images, then eval mode."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = (images - mean) / std
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(labels), (64,))
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), labels[idx]).backward()
        opt.step()
    model.eval()
    return model


def accuracy(logits, labels):
    return 100.0 * (logits.argmax(1) == labels).double().mean().item()


def add_input_quantizers(model, quantized):
    """Applies qsearch's per-layer input quantizers (quantized.pt's 'layers') to a plain
    PyTorch model as forward pre-hooks: with the checkpoint's state loaded, the model then
    computes what the job's quantized model computes."""
    for name, entry in quantized["layers"].items():
        if "input_scale" not in entry:
            continue
        s, z = entry["input_scale"], entry["input_zero_point"]
        lo, hi = entry["input_min"].item(), entry["input_max"].item()

        def hook(module, args, s=s, z=z, lo=lo, hi=hi):
            return ((torch.round(torch.clamp(args[0] / s + z, lo, hi)) - z) * s,) + tuple(args[1:])

        model.get_submodule(name).register_forward_pre_hook(hook)
    return model
