"""The PyTorch peer: the same backbone, weights and patch kinds in PyTorch (Debian's
python3-torch), for side-by-side timings and accuracy. Loads models/ssd_mobilenet_v1.safetensors
with the standard library and numpy, builds MobileNetV1 with TensorFlow 'SAME' padding, frozen
batch-norm statistics, trainable scales/biases (and depthwise kernels for sbdw).

  torch_peer.py train --data DIR --kind logits|sb|sbdw [--images N] [--threads T]
      one epoch (or N images) of the recipe: batch 32, Adam 1e-3 one-cycle, random crop of
      60-100% of each side + flip, input 224; prints one JSON line with seconds and images/s
"""
import argparse
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_infer import load_safetensors  # noqa: E402

EPS = 0.0010000000474974513
STRIDE2 = {2, 4, 6, 12}


def same_pad(x, k, s):
    h, w = x.shape[2], x.shape[3]
    oh, ow = -(-h // s), -(-w // s)
    ph, pw = max((oh - 1) * s + k - h, 0), max((ow - 1) * s + k - w, 0)
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


class Net(torch.nn.Module):
    def __init__(self, W, kind, nclass):
        super().__init__()
        t = lambda a: torch.tensor(np.array(a, dtype=np.float32))
        P = torch.nn.Parameter
        sb = kind in ("sb", "sbdw")
        self.w0 = t(W["MobilenetV1/Conv2d_0_pointwise/weights"]).permute(3, 2, 0, 1).contiguous()
        self.s0 = P(torch.ones(32), requires_grad=sb)
        self.b0 = P(t(W["MobilenetV1/Conv2d_0_pointwise/convolution_bn_offset"]), requires_grad=sb)
        self.dwk, self.g, self.be, self.mu, self.var = (torch.nn.ParameterList(), torch.nn.ParameterList(),
                                                        torch.nn.ParameterList(), [], [])
        self.pw, self.ps, self.pb = [], torch.nn.ParameterList(), torch.nn.ParameterList()
        for i in range(1, 14):
            d = f"MobilenetV1/Conv2d_{i}_depthwise/"
            self.dwk.append(P(t(W[d + "depthwise_weights"]).permute(2, 3, 0, 1).contiguous(),
                              requires_grad=kind == "sbdw"))
            self.g.append(P(t(W[d + "BatchNorm/gamma"]), requires_grad=sb))
            self.be.append(P(t(W[d + "BatchNorm/beta"]), requires_grad=sb))
            self.mu.append(t(W[d + "BatchNorm/moving_mean"]))
            self.var.append(t(W[d + "BatchNorm/moving_variance"]))
            p = f"MobilenetV1/Conv2d_{i}_pointwise/"
            w = t(W[p + "weights"])
            self.pw.append(w.permute(3, 2, 0, 1).contiguous())
            self.ps.append(P(torch.ones(w.shape[3]), requires_grad=sb))
            self.pb.append(P(t(W[p + "convolution_bn_offset"]), requires_grad=sb))
        self.head = torch.nn.Linear(1024, nclass)

    def features(self, x):
        x = F.conv2d(same_pad(x, 3, 2), self.w0, stride=2)
        x = torch.clamp(x * self.s0.view(1, -1, 1, 1) + self.b0.view(1, -1, 1, 1), 0, 6)
        for i in range(13):
            s = 2 if i + 1 in STRIDE2 else 1
            c = self.dwk[i].shape[0]
            x = F.conv2d(same_pad(x, 3, s), self.dwk[i], stride=s, groups=c)
            inv = torch.rsqrt(self.var[i] + EPS) * self.g[i]
            x = torch.clamp(x * inv.view(1, -1, 1, 1) + (self.be[i] - self.mu[i] * inv).view(1, -1, 1, 1), 0, 6)
            x = F.conv2d(x, self.pw[i])
            x = torch.clamp(x * self.ps[i].view(1, -1, 1, 1) + self.pb[i].view(1, -1, 1, 1), 0, 6)
        return x.mean((2, 3))

    def forward(self, x):
        return self.head(self.features(x))


def list_images(root):
    labels = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    items = []
    for k, lab in enumerate(labels):
        for f in sorted(os.listdir(os.path.join(root, lab))):
            if f.lower().endswith((".jpg", ".jpeg")):
                items.append((os.path.join(root, lab, f), k))
    return labels, items


def load(path, size, rng=None):
    im = Image.open(path).convert("RGB")
    if rng:
        w, h = im.size
        cw, ch = max(1, round(w * rng.uniform(0.6, 1))), max(1, round(h * rng.uniform(0.6, 1)))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        im = im.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
    im = im.resize((size, size), Image.BILINEAR)
    a = np.asarray(im, dtype=np.float32) / 127.5 - 1
    return torch.from_numpy(a).permute(2, 0, 1)


def cmd_train(a):
    torch.set_num_threads(a.threads)
    W = load_safetensors(a.model)
    labels, items = list_images(a.data)
    rng = random.Random(1)
    rng.shuffle(items)
    if a.images:
        items = items[:a.images]
    net = Net(W, a.kind, len(labels))
    params = [p for p in net.parameters() if p.requires_grad]
    steps = math.ceil(len(items) / 32)
    opt = torch.optim.Adam(params, lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps)
    t0 = time.time()
    seen = 0
    for s in range(steps):
        batch = items[s * 32:(s + 1) * 32]
        x = torch.stack([load(p, 224, rng) for p, _ in batch])
        y = torch.tensor([k for _, k in batch])
        if a.kind == "logits":
            with torch.no_grad():
                f = net.features(x)
            loss = F.cross_entropy(net.head(f), y)
        else:
            loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        seen += len(batch)
    dt = time.time() - t0
    out = {"peer": "pytorch " + torch.__version__, "kind": a.kind, "images": seen,
           "seconds": round(dt, 3), "images_per_s": round(seen / dt, 2), "threads": a.threads}
    print(json.dumps(out))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--data", required=True)
    t.add_argument("--kind", required=True, choices=["logits", "sb", "sbdw"])
    t.add_argument("--images", type=int, default=0)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--model", default=os.path.join(os.path.dirname(__file__), "..", "..",
                                                   "models", "ssd_mobilenet_v1.safetensors"))
    a = ap.parse_args()
    cmd_train(a)


if __name__ == "__main__":
    sys.exit(main())
