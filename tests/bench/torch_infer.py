"""The PyTorch inference peer: the same network and weights as patchd's forward pass, built from
models/ssd_mobilenet_v1.safetensors in ordinary torch.nn layers (Conv2d, BatchNorm2d, ReLU6,
ZeroPad2d for TensorFlow's bottom/right 'SAME' padding), then frozen with torch.jit.trace,
torch.jit.freeze and torch.jit.optimize_for_inference (oneDNN), the fastest CPU path PyTorch 1.13
offers. Two graphs:

  classify  MobileNetV1 at SIZE, global average pool, a 5-class linear head, softmax
  faces     the SSD at 512: the backbone, 8 extra layers, 6 box predictors, box decoding against
            the anchors and the face score (sigmoid) - what patchctl bench --task faces times

  torch_infer.py --task classify|faces [--size S] [--threads T] [--iters N] [--image JPEG] [--serve]

The input is the photo given (padded bottom/right to square for faces, resized bilinearly, x/127.5-1)
or a fixed pattern; PyTorch's time does not depend on it, patchd's does a little (it skips channels
that ReLU6 zeroed), so tests/bench/forward.sh gives both programs the same photo.

Prints one JSON line like patchctl bench: ms_median, ms_p90, images_per_s. With --serve, as
patchctl bench --serve: after the checks and 3 warm-up runs it reads a count N per line of stdin
and answers each with {"ms": [...]}, the times of N runs (tests/bench/paired.py interleaves the
two programs this way). Before timing it checks that the optimised graph agrees with the eager
one, and for faces that its per-anchor scores on ../shared/reference/faces/sample1.jpg match the
original model's (decoded by PIL, padded and resized as tfjs does).
"""
import argparse
import json
import os
import statistics
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn

EPS = 0.0010000000474974513
STRIDE2 = {2, 4, 6, 12}
HERE = os.path.dirname(os.path.abspath(__file__))


def load_safetensors(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, en = e["data_offsets"]
        dt = {"F32": np.float32, "I32": np.int32}[e["dtype"]]
        out[name] = np.frombuffer(raw[8 + n + b:8 + n + en], dtype=dt).reshape(e["shape"])
    return out


def t(a):
    return torch.tensor(np.array(a, dtype=np.float32))


def conv(W, wname, bname, stride, in_side):
    """A TF (k, k, cin, cout) convolution with bias, as [ZeroPad2d,] Conv2d."""
    w = t(W[wname]).permute(3, 2, 0, 1).contiguous()
    cout, cin, k, _ = w.shape
    c = nn.Conv2d(cin, cout, k, stride=stride, bias=True)
    c.weight.data = w
    c.bias.data = t(W[bname])
    return padded(c, k, stride, in_side)


def padded(layer, k, stride, side):
    out = -(-side // stride)
    total = max((out - 1) * stride + k - side, 0)
    if total == 0:
        return layer
    return nn.Sequential(nn.ZeroPad2d((total // 2, total - total // 2, total // 2,
                                      total - total // 2)), layer)


def backbone(W, size):
    """MobileNetV1 as face-api builds it; returns (layers, side after each, pw11 index)."""
    layers, side = [], size
    layers.append(nn.Sequential(conv(W, "MobilenetV1/Conv2d_0_pointwise/weights",
                                     "MobilenetV1/Conv2d_0_pointwise/convolution_bn_offset", 2,
                                     side), nn.ReLU6()))
    side = -(-side // 2)
    for i in range(1, 14):
        d = f"MobilenetV1/Conv2d_{i}_depthwise/"
        k = t(W[d + "depthwise_weights"]).permute(2, 3, 0, 1).contiguous()
        c = k.shape[0]
        s = 2 if i in STRIDE2 else 1
        dw = nn.Conv2d(c, c, 3, stride=s, padding=0, groups=c, bias=False)
        dw.weight.data = k
        if s == 1:
            dw.padding = (1, 1)
            pdw = dw
        else:
            pdw = padded(dw, 3, s, side)
        bn = nn.BatchNorm2d(c, eps=EPS)
        bn.weight.data = t(W[d + "BatchNorm/gamma"])
        bn.bias.data = t(W[d + "BatchNorm/beta"])
        bn.running_mean.data = t(W[d + "BatchNorm/moving_mean"])
        bn.running_var.data = t(W[d + "BatchNorm/moving_variance"])
        side = -(-side // s)
        p = f"MobilenetV1/Conv2d_{i}_pointwise/"
        pw = conv(W, p + "weights", p + "convolution_bn_offset", 1, side)
        layers.append(nn.Sequential(pdw, bn, nn.ReLU6(), pw, nn.ReLU6()))
    return nn.ModuleList(layers), side


class Classify(nn.Module):
    def __init__(self, W, size, nclass=5):
        super().__init__()
        self.layers, _ = backbone(W, size)
        self.head = nn.Linear(1024, nclass)
        g = torch.Generator().manual_seed(1)
        self.head.weight.data = torch.randn(nclass, 1024, generator=g) * 0.01
        self.head.bias.data.zero_()

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return torch.softmax(self.head(x.mean((2, 3))), dim=1)


class Faces(nn.Module):
    def __init__(self, W):
        super().__init__()
        self.layers, side = backbone(W, 512)
        extras, s = [], side
        for j in range(8):
            stride = 2 if j % 2 else 1
            extras.append(nn.Sequential(conv(W, f"Prediction/Conv2d_{j}_pointwise/weights",
                                             f"Prediction/Conv2d_{j}_pointwise/convolution_bn_offset",
                                             stride, s), nn.ReLU6()))
            s = -(-s // stride)
        self.extras = nn.ModuleList(extras)
        self.box = nn.ModuleList(
            conv(W, f"Prediction/BoxPredictor_{j}/BoxEncodingPredictor/weights",
                 f"Prediction/BoxPredictor_{j}/BoxEncodingPredictor/biases", 1, 1)
            for j in range(6))
        self.cls = nn.ModuleList(
            conv(W, f"Prediction/BoxPredictor_{j}/ClassPredictor/weights",
                 f"Prediction/BoxPredictor_{j}/ClassPredictor/biases", 1, 1) for j in range(6))
        a = t(W["Output/extra_dim"]).reshape(-1, 4)
        self.register_buffer("size", a[:, 2:] - a[:, :2])
        self.register_buffer("centre", a[:, :2] + (a[:, 2:] - a[:, :2]) / 2)

    def forward(self, x):
        maps = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i == 11:
                maps.append(x)
        maps.append(x)
        for j, layer in enumerate(self.extras):
            x = layer(x)
            if j % 2:
                maps.append(x)
        enc = torch.cat([b(m).permute(0, 2, 3, 1).reshape(1, -1, 4)
                         for b, m in zip(self.box, maps)], 1)[0]
        cls = torch.cat([c(m).permute(0, 2, 3, 1).reshape(1, -1, 3)
                         for c, m in zip(self.cls, maps)], 1)[0]
        mid = enc[:, :2] / 10 * self.size + self.centre
        half = torch.exp(enc[:, 2:] / 5) * self.size / 2
        return torch.sigmoid(cls[:, 1]), torch.cat([mid - half, mid + half], 1)


def reference_check(model):
    """Worst per-anchor score difference from the original model on the shared reference photo."""
    from PIL import Image
    ref = os.path.join(HERE, "..", "..", "..", "shared", "reference", "faces")
    jpg, js = os.path.join(ref, "sample1.jpg"), os.path.join(ref, "sample1.json")
    if not os.path.exists(js):
        return None
    scores = np.array(json.load(open(js))["anchors"]["scores"], dtype=np.float32)
    rgb = np.asarray(Image.open(jpg).convert("RGB"))
    h, w, _ = rgb.shape
    side = max(w, h)
    sq = np.zeros((side, side, 3), dtype=np.float32)  # padded bottom/right, as face-api does
    sq[:h, :w] = rgb
    # tfjs resizeBilinear (no corner alignment, no half-pixel centres), in float32
    scale = np.float32(side / 512)
    src = np.arange(512, dtype=np.float32) * scale
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, side - 1)
    f = (src - i0).astype(np.float32)
    rows = sq[i0] + (sq[i1] - sq[i0]) * f[:, None, None]
    a = rows[:, i0] + (rows[:, i1] - rows[:, i0]) * f[None, :, None]
    a = a / np.float32(127.5) - np.float32(1)
    x = torch.from_numpy(a.astype(np.float32)).permute(2, 0, 1)[None].contiguous()
    with torch.no_grad():
        got = model(x)[0].numpy()
    return float(np.abs(got - scores).max())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", choices=["classify", "faces"], default="classify")
    ap.add_argument("--size", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--image", default=None)
    ap.add_argument("--serve", action="store_true")
    ap.add_argument("--model", default=os.path.join(HERE, "..", "..", "models",
                                                   "ssd_mobilenet_v1.safetensors"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    W = load_safetensors(a.model)
    size = a.size or (512 if a.task == "faces" else 224)
    model = (Faces(W) if a.task == "faces" else Classify(W, size)).eval()
    if a.image:
        from PIL import Image
        im = Image.open(a.image).convert("RGB")
        if a.task == "faces":
            side = max(im.size)
            sq = Image.new("RGB", (side, side))
            sq.paste(im, (0, 0))
            im = sq
        im = im.resize((size, size), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(im, dtype=np.float32)[None] / 127.5 - 1)
    else:
        x = torch.from_numpy(((np.arange(size * size * 3, dtype=np.int64) * 2654435761 % 255)
                              .astype(np.float32) / 127.5 - 1).reshape(1, size, size, 3))
    x = x.permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        eager = model(x)
        fast = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, x)))
        got = fast(x)
    e0 = eager[0] if isinstance(eager, tuple) else eager
    g0 = got[0] if isinstance(got, tuple) else got
    agree = float((e0 - g0).abs().max())
    ref = reference_check(model) if a.task == "faces" else None
    def runs(n):
        """The times of n runs, in ms."""
        out = []
        with torch.no_grad():
            for i in range(n):
                t0 = time.perf_counter()
                fast(x)
                out.append((time.perf_counter() - t0) * 1e3)
        return out

    runs(3)  # warm-up
    if a.serve:
        for line in sys.stdin:
            n = int(line)
            if not 1 <= n <= 100000:
                sys.exit("torch_infer.py --serve: a line of stdin is not a count 1..100000")
            print(json.dumps({"ms": [round(v, 3) for v in runs(n)]}), flush=True)
        return 0
    ms = sorted(runs(a.iters))
    out = {"peer": "pytorch " + torch.__version__, "task": a.task, "size": size,
           "threads": a.threads, "batch": 1, "iters": a.iters,
           "input": "photo" if a.image else "pattern",
           "ms_median": round(statistics.median(ms), 3),
           "ms_p90": round(ms[int(0.9 * (len(ms) - 1) + 0.5)], 3),
           "images_per_s": round(1e3 / statistics.median(ms), 2),
           "optimised_vs_eager_max_diff": agree}
    if ref is not None:
        out["reference_anchor_score_max_diff"] = ref
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
