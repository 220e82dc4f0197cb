"""Training over HTTP: archives checked before a job is accepted (bad ones answered at once),
a job that trains, stores and serves a new version, zip and multipart uploads, cancellation,
SIGTERM with a job running."""
import io
import os
import tarfile
import tempfile
import time
import zipfile

import pdtest as t

t.need_model()
F2 = os.path.join(t.TESTDATA, "flowers2")
tmp = tempfile.TemporaryDirectory()


def tgz(entries):
    """entries: (archive name, file path or bytes)"""
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w:gz") as tf:
        for name, src in entries:
            data = open(src, "rb").read() if isinstance(src, str) else src
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return b.getvalue()


def flowers(split="train", prefix=""):
    out = []
    for cls in sorted(os.listdir(os.path.join(F2, split))):
        for f in sorted(os.listdir(os.path.join(F2, split, cls))):
            out.append((f"{prefix}{cls}/{f}", os.path.join(F2, split, cls, f)))
    return out


def err_code(body):
    return body.get("error", {}).get("code")


def wait_job(s, job, states=("succeeded", "failed", "cancelled"), timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        st, body = s.json("GET", f"/jobs/{job}")
        if body.get("state") in states:
            return body
        time.sleep(0.5)
    return body


GZ = {"Content-Type": "application/gzip"}
s = t.Server("--store", os.path.join(tmp.name, "store"))
good = tgz(flowers(prefix="data/"))

# bad archives and parameters: answered at once, never a job
bad = [
    ("garbage", b"this is not an archive", GZ, "/train?task=x", 422, "bad_format"),
    ("one class", tgz([e for e in flowers() if e[0].startswith("daisy/")]), GZ, "/train?task=x",
     422, "bad_format"),
    ("dot-dot path", tgz(flowers()[:3] + [("../evil/x.jpg", flowers()[0][1])]
                         + flowers()[-3:]), GZ, "/train?task=x", 422, "bad_format"),
    ("absolute path", tgz(flowers()[:3] + [("/etc/x/y.jpg", flowers()[0][1])] + flowers()[-3:]),
     GZ, "/train?task=x", 422, "bad_format"),
    ("wrong content type", good, {"Content-Type": "text/plain"}, "/train?task=x", 415,
     "unsupported_media_type"),
    ("no task", good, GZ, "/train", 400, "missing_task"),
    ("bad kind", good, GZ, "/train?task=x&kind=full", 400, "invalid_parameter"),
    ("bad epochs", good, GZ, "/train?task=x&epochs=0", 400, "invalid_parameter"),
    ("train faces", good, GZ, "/train?task=faces", 409, "builtin_task"),
    ("unknown base", good, GZ, "/train?task=x&base=nosuch", 404, "unknown_task"),
]
for name, body, hdr, path, want, code in bad:
    st, b = s.json("POST", path, body, hdr)
    t.eq((st, err_code(b)), (want, code), f"train refuses {name}", b)
st, body = s.json("POST", "/train?task=x", tgz(flowers()[:3] + [("../evil/x.jpg",
                                                                    flowers()[0][1])]), GZ)
t.check("'..'" in body.get("error", {}).get("message", ""), "the '..' entry is named", body)
st, body = s.json("GET", "/jobs")
t.eq(body, {"jobs": []}, "refused archives leave no job")

# a real job: trains, stores version 1, serves it
st, body = s.json("POST", "/train?task=fl&kind=sb&epochs=1", good, GZ)
t.eq(st, 202, "train accepted", body)
job = body.get("job")
st, busy = s.json("POST", "/train?task=fl2&kind=logits", good, GZ)
t.eq((st, err_code(busy)), (429, "job_limit"), "one job at a time per tenant in dev mode")
final = wait_job(s, job)
t.eq(final.get("state"), "succeeded", "job succeeded", final)
t.eq((final.get("version"), final.get("epochs"), final.get("task")), (1, 1, "fl"),
     "job result")
st, info = s.json("GET", "/tasks/fl")
v1 = info.get("versions", [{}])[0]
t.eq((v1.get("labels"), v1.get("parts")), (["daisy", "sunflowers"], "scale_bias,head"),
     "trained patch labels and parts")
t.eq(v1.get("training", {}).get("kind"), "sb", "training summary in the metadata")
img = open(flowers("val")[0][1], "rb").read()
st, pred = s.json("POST", "/infer?task=fl", img, {"Content-Type": "image/jpeg"})
t.eq((st, sorted(p["label"] for p in pred.get("predictions", []))),
     (200, ["daisy", "sunflowers"]), "infer with the trained task")

# zip and multipart, logits kind, sequential transfer from fl
zb = io.BytesIO()
with zipfile.ZipFile(zb, "w") as z:
    for name, src in flowers():
        z.write(src, name)
st, body = s.json("POST", "/train?task=flz&kind=logits&base=fl", zb.getvalue(),
                  {"Content-Type": "application/zip"})
t.eq(st, 202, "zip accepted", body)
final = wait_job(s, body.get("job"))
t.eq(final.get("state"), "succeeded", "zip job succeeded", final)
st, info = s.json("GET", "/tasks/flz")
t.eq(info.get("versions", [{}])[0].get("parts"), "scale_bias,head",
     "sequential transfer keeps the base's layers")

# cancellation
st, body = s.json("POST", "/train?task=long&kind=sbdw&epochs=200", good, GZ)
t.eq(st, 202, "long job accepted")
time.sleep(1)
st, c = s.json("DELETE", f"/jobs/{body['job']}")
t.eq((st, c.get("state")), (200, "cancelling"), "cancel")
final = wait_job(s, body["job"], timeout=120)
t.eq(final.get("state"), "cancelled", "job cancelled", final)
st, c = s.json("DELETE", f"/jobs/{body['job']}")
t.eq((st, err_code(c)), (409, "job_finished"), "cancel a finished job")
st, c = s.json("GET", "/jobs/0123456789abcdef0123456789abcdef")
t.eq((st, err_code(c)), (404, "unknown_job"), "unknown job")
st, jobs = s.json("GET", "/jobs")
t.eq(sorted(j["state"] for j in jobs.get("jobs", [])), ["cancelled", "succeeded", "succeeded"],
     "GET /jobs")
st, h, data = s.request("GET", "/metrics")
t.check('patchd_jobs{state="succeeded"} 2' in data.decode(), "jobs in metrics")

# SIGTERM while a job runs: cancelled cleanly, exit 0
st, body = s.json("POST", "/train?task=long&kind=sbdw&epochs=200", good, GZ)
t.eq(st, 202, "another long job")
time.sleep(2)
t0 = time.time()
t.eq(s.stop(), 0, "SIGTERM with a running job exits 0")
t.check(time.time() - t0 < 60, "and promptly", time.time() - t0)
t.finish()
