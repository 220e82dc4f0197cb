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
r = t.run([t.PATCHCTL, "frobnicate"])
t.eq(r.returncode, 2, "unknown command is a usage error")
r = t.run([t.PATCHCTL, "--version"])
t.check(r.returncode == 0 and r.stdout.startswith("patchctl "), "--version", r.stdout)
t.finish()
