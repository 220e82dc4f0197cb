"""Inference latency with and without a training job running (issue: training must not starve
inference; goal p99 within 2x). Starts a real patchd on a free loopback port, uploads a
classification patch, measures N sequential /infer requests, starts POST /train (sbdw on the
given data, run at nice 19 by patchd), measures again while it runs, cancels it, and prints one
line per figure. Bounded: N requests each way, then it stops.
  infer_during_training.py [DATA_DIR] [N]   (default ../shared/datasets/flowers5/train, 200)
"""
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "e2e"))
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
os.environ.setdefault("PD_PATCHD", os.path.join(ROOT, "build", "patchd"))
os.environ.setdefault("PD_PATCHCTL", os.path.join(ROOT, "build", "patchctl"))
os.environ.setdefault("PD_MODEL", os.path.join(ROOT, "models", "ssd_mobilenet_v1.safetensors"))
os.environ.setdefault("PD_TESTDATA", os.path.join(ROOT, "tests", "data"))
import pdtest as t  # noqa: E402

data = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "..", "shared", "datasets",
                                                          "flowers5", "train")
n = int(sys.argv[2]) if len(sys.argv) > 2 else 200
tmp = tempfile.TemporaryDirectory()
p = os.path.join(tmp.name, "p.safetensors")
subprocess.run([t.PATCHCTL, "patch", "new", "--model", t.MODEL, "--labels", "a,b,c,d,e", "--out",
                p], check=True)
s = t.Server("--store", os.path.join(tmp.name, "store"))
s.request("PUT", "/tasks/bench", open(p, "rb").read())
img = open(os.path.join(t.TESTDATA, "faces", "sample1.jpg"), "rb").read()


def measure(label):
    ms = []
    for _ in range(n):
        t0 = time.perf_counter()
        st, _, _ = s.request("POST", "/infer?task=bench", img, {"Content-Type": "image/jpeg"})
        ms.append((time.perf_counter() - t0) * 1e3)
        assert st == 200, st
    ms.sort()
    p50, p99 = ms[len(ms) // 2], ms[int(0.99 * (len(ms) - 1))]
    print(f"infer 224 {label}: p50 {p50:.1f} ms, p99 {p99:.1f} ms ({n} sequential requests)")
    return p50, p99


base = measure("without training")
b = io.BytesIO()
with tarfile.open(fileobj=b, mode="w:gz") as tf:
    tf.add(data, arcname="data")
st, job = s.json("POST", "/train?task=bg&kind=sbdw&epochs=50", b.getvalue(),
                 {"Content-Type": "application/gzip"})
assert st == 202, job
while s.json("GET", f"/jobs/{job['job']}")[1].get("phase") not in ("train",):
    time.sleep(0.5)
busy = measure("during an sbdw training job")
s.json("DELETE", f"/jobs/{job['job']}")
print(f"p99 ratio during/without training: {busy[1] / base[1]:.2f} (goal <= 2)")
s.stop()
