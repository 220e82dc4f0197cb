"""patchctl inspect on the backbone, and on malformed files: one-line error, exit 1."""
import json
import os
import struct
import tempfile

import pdtest as t

t.need_model()
r = t.run([t.PATCHCTL, "inspect", t.MODEL])
t.eq(r.returncode, 0, "inspect backbone exit status")
info = json.loads(r.stdout)
names = {x["name"] for x in info["tensors"]}
t.eq(len(info["tensors"]), 151, "backbone tensor count")
t.eq(info["parameters"], 5555541, "backbone parameter count")
t.eq(info["bytes"], os.path.getsize(t.MODEL), "bytes is the file size")
t.check("MobilenetV1/Conv2d_13_pointwise/weights" in names, "conv 13 present")
t.check({"name": "Output/extra_dim", "dtype": "F32", "shape": [1, 5118, 4]} in info["tensors"],
        "anchor table present", [x for x in info["tensors"] if x["name"] == "Output/extra_dim"])
meta = info["metadata"]
t.eq(meta.get("format"), "patchd-backbone", "metadata format")
t.eq(meta.get("source"), "@vladmandic/face-api@1.7.15", "metadata source")
t.check(len(meta.get("source_sha256", "")) == 64, "metadata source_sha256", meta)


def st_file(header, data=b"", hlen=None):
    h = header.encode()
    return struct.pack("<Q", len(h) if hlen is None else hlen) + h + data


ok = '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
bad = {
    "empty": (b"", "too short"),
    "truncated": (st_file(ok, b"\0" * 4), "past the data section"),
    "header past end": (st_file(ok, b"\0" * 8, hlen=1 << 40), "past the end of the file"),
    "invalid json": (st_file('{"a":', b""), "not valid JSON"),
    "offsets out of range": (st_file('{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}',
                                     b"\0" * 8), "past the data section"),
    "overlap": (st_file('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
                        '"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}', b"\0" * 12),
                "overlap"),
    "size mismatch": (st_file('{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}',
                              b"\0" * 8), "does not match"),
    "unknown dtype": (st_file('{"a":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}}',
                              b"\0" * 8), "unknown dtype"),
    "absurd size": (st_file('{"a":{"dtype":"F32","shape":[9223372036854775807,4],'
                            '"data_offsets":[0,8]}}', b"\0" * 8), "absurdly large"),
    "duplicate": (st_file('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                          '"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', b"\0" * 8),
                  "duplicate"),
}
with tempfile.TemporaryDirectory() as d:
    for name, (blob, needle) in bad.items():
        p = os.path.join(d, name.replace(" ", "_"))
        with open(p, "wb") as f:
            f.write(blob)
        r = t.run([t.PATCHCTL, "inspect", p])
        t.eq(r.returncode, 1, f"inspect {name}: exit status")
        t.eq(r.stdout, "", f"inspect {name}: nothing on stdout")
        lines = r.stderr.strip().split("\n")
        t.check(len(lines) == 1 and needle in lines[0], f"inspect {name}: one line naming it",
                r.stderr)
    r = t.run([t.PATCHCTL, "inspect", os.path.join(d, "absent")])
    t.eq(r.returncode, 1, "inspect missing file")
# detect: one JSON line per image, matching the reference detections
ref = json.load(open(os.path.join(t.TESTDATA, "faces", "sample1.json")))
jpg = os.path.join(t.TESTDATA, "faces", "sample1.jpg")
r = t.run([t.PATCHCTL, "detect", "--model", t.MODEL, jpg, jpg])
t.eq(r.returncode, 0, "detect exit status")
lines = r.stdout.strip().split("\n")
t.eq(len(lines), 2, "detect prints one line per image")
d = json.loads(lines[0])
t.eq((d["width"], d["height"]), (1920, 1280), "detect image size")
t.eq(len(d["detections"]), len(ref["detections"]), "detect count")
for got, want in zip(d["detections"], ref["detections"]):
    t.check(abs(got["score"] - want["score"]) < 1e-3, "detect score", got, want)
    t.check(all(abs(a - b) < 0.5 for a, b in zip(got["box"], want["box"])), "detect box", got, want)
r = t.run([t.PATCHCTL, "detect", "--model", t.MODEL, "--min-score", "0.999", jpg])
t.eq(json.loads(r.stdout)["detections"], [], "detect --min-score filters")
r = t.run([t.PATCHCTL, "detect", "--model", t.MODEL, "--min-score", "2", jpg])
t.eq(r.returncode, 2, "detect --min-score out of range")

with tempfile.TemporaryDirectory() as d:
    # a file that is not a JPEG: error on stderr, exit 1, other images still processed
    txt = os.path.join(d, "x.jpg")
    with open(txt, "w") as f:
        f.write("hello")
    r = t.run([t.PATCHCTL, "detect", "--model", t.MODEL, txt, jpg])
    t.eq(r.returncode, 1, "detect with a bad image exits 1")
    t.check("not a JPEG" in r.stderr, "detect names the problem", r.stderr)
    t.eq(len(r.stdout.strip().split("\n")), 1, "the good image is still detected")
    # patch new, inspect, classify
    p = os.path.join(d, "p.safetensors")
    r = t.run([t.PATCHCTL, "patch", "new", "--model", t.MODEL, "--labels", "ant,bee",
               "--size", "160", "--out", p])
    t.eq(r.returncode, 0, "patch new exit status", r.stderr)
    r = t.run([t.PATCHCTL, "inspect", "--model", t.MODEL, p])
    info = json.loads(r.stdout)["patch"]
    t.eq((info["kind"], info["labels"], info["parts"], info["input_size"], info["backbone_match"]),
         ("classification", ["ant", "bee"], "head", 160, True), "inspect understands patches")
    t.eq(info["trainable_parameters"], 1025 * 2, "patch parameter count")
    r = t.run([t.PATCHCTL, "classify", "--model", t.MODEL, "--patch", p, "--top-k", "1", jpg])
    t.eq(r.returncode, 0, "classify exit status", r.stderr)
    c = json.loads(r.stdout)
    t.eq(len(c["predictions"]), 1, "classify --top-k 1")
    t.check(c["predictions"][0]["label"] in ("ant", "bee") and 0.5 <= c["predictions"][0]["score"] <= 1,
            "classify prediction", c)
    r = t.run([t.PATCHCTL, "classify", "--model", t.MODEL, "--patch", t.MODEL, jpg])
    t.eq(r.returncode, 1, "classify with a non-patch file")
    t.check("format" in r.stderr, "classify names the problem", r.stderr)

# a patch written from Python with nothing but the standard library, as README documents
def write_safetensors(path, tensors, metadata):
    header, blobs, off = {"__metadata__": metadata}, [], 0
    for name, (shape, values) in tensors.items():
        blob = struct.pack("<%df" % len(values), *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + len(blob)]}
        blobs.append(blob)
        off += len(blob)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


import hashlib
backbone = hashlib.sha256(open(t.MODEL, "rb").read()).hexdigest()
with tempfile.TemporaryDirectory() as d:
    p = os.path.join(d, "py.safetensors")
    write_safetensors(p, {"head.weight": ([1024, 2], [0.0] * 2048), "head.bias": ([2], [1.0, 0.0]),
                          "layers.pw13.scale": ([1024], [1.0] * 1024)},
                      {"format": "patchd-patch", "format_version": "1",
                       "backbone_sha256": backbone, "kind": "classification",
                       "labels": json.dumps(["ant", "bee"]), "input_size": "224",
                       "parts": "scale_bias,head"})
    r = t.run([t.PATCHCTL, "inspect", "--model", t.MODEL, p])
    info = json.loads(r.stdout).get("patch", {})
    t.eq((info.get("valid"), info.get("parts")), (True, "scale_bias,head"),
         "a patch written from Python loads", r.stdout)
    r = t.run([t.PATCHCTL, "classify", "--model", t.MODEL, "--patch", p, jpg])
    pred = json.loads(r.stdout)["predictions"][0]
    t.eq(pred["label"], "ant", "its head decides")
    t.check(abs(pred["score"] - 1 / (1 + 2.718281828459045 ** -1)) < 1e-5, "softmax of (1, 0)", pred)
    # store round trip through the CLI
    st = os.path.join(d, "store")
    r = t.run([t.PATCHCTL, "store", "put", "--model", t.MODEL, "--store", st, "ants", p])
    t.eq(json.loads(r.stdout)["version"], 1, "store put", r.stderr)
    r = t.run([t.PATCHCTL, "store", "put", "--model", t.MODEL, "--store", st, "ants", p])
    t.eq(json.loads(r.stdout)["version"], 2, "store put again")
    r = t.run([t.PATCHCTL, "store", "activate", "--store", st, "ants", "1"])
    t.eq(r.returncode, 0, "store activate")
    r = t.run([t.PATCHCTL, "store", "ls", "--store", st])
    t.eq(json.loads(r.stdout), [{"task": "ants", "active": 1, "versions": [1, 2]}], "store ls")
    with open(os.path.join(st, "default", "ants", "v1.safetensors"), "rb") as f:
        t.eq(f.read(), open(p, "rb").read(), "stored byte for byte")
    r = t.run([t.PATCHCTL, "store", "put", "--model", t.MODEL, "--store", st, "../up", p])
    t.eq(r.returncode, 2, "store refuses a path as a task name")
    r = t.run([t.PATCHCTL, "store", "activate", "--store", st, "ants", "7"])
    t.eq(r.returncode, 1, "store activate of an absent version")
    r = t.run([t.PATCHCTL, "store", "rm", "--store", st, "ants"])
    t.eq(r.returncode, 0, "store rm")
    r = t.run([t.PATCHCTL, "store", "ls", "--store", st])
    t.eq(json.loads(r.stdout), [], "store empty after rm")

# bench: one JSON line, on the pattern and on a photo; bad options and files refused
photo = os.path.join(t.TESTDATA, "faces", "sample1.jpg")
for extra, inp in (([], "pattern"), (["--image", photo], "photo")):
    r = t.run([t.PATCHCTL, "bench", "--model", t.MODEL, "--task", "classify", "--size", "96",
               "--threads", "2", "--iters", "3"] + extra)
    t.eq(r.returncode, 0, "bench " + inp, r.stderr)
    b = json.loads(r.stdout)
    t.check(b["input"] == inp and b["threads"] == 2 and b["size"] == 96 and b["ms_median"] > 0
            and b["images_per_s"] > 0 and b["ms_p90"] >= b["ms_median"], "bench fields", b)
# --serve: a block of timed passes per line of stdin, one JSON line each; a bad line is refused
r = t.run([t.PATCHCTL, "bench", "--model", t.MODEL, "--size", "96", "--serve"], input="2\n1\n")
t.eq(r.returncode, 0, "bench --serve", r.stderr)
blocks = [json.loads(line)["ms"] for line in r.stdout.splitlines()]
t.check([len(b) for b in blocks] == [2, 1] and all(v > 0 for b in blocks for v in b),
        "bench --serve answers each count with that many times", r.stdout)
for bad in ("0\n", "two\n", "3x\n"):
    r = t.run([t.PATCHCTL, "bench", "--model", t.MODEL, "--size", "96", "--serve"], input=bad)
    t.check(r.returncode == 1 and "not a count" in r.stderr and r.stdout == "",
            "bench --serve refuses " + repr(bad), r.returncode, r.stderr)
r = t.run([t.PATCHCTL, "bench", "--model", t.MODEL, "--image", "/nonexistent.jpg"])
t.check(r.returncode == 1 and "/nonexistent.jpg" in r.stderr, "bench with a missing photo",
        r.stderr)
r = t.run([t.PATCHCTL, "bench", "--task", "faces", "--batch", "2"])
t.eq(r.returncode, 2, "bench faces at batch 2 is a usage error")
r = t.run([t.PATCHCTL, "bench", "--split", "blas"])
t.eq(r.returncode, 2, "bench --split is gone")

r = t.run([t.PATCHCTL, "frobnicate"])
t.eq(r.returncode, 2, "unknown command is a usage error")
r = t.run([t.PATCHCTL, "--version"])
t.check(r.returncode == 0 and r.stdout.startswith("patchctl "), "--version", r.stdout)
t.finish()
