"""patchd end to end: a real server on a free loopback port, a real HTTP client.

faces equals patchctl detect; upload, infer, hot swap under a client loop with zero failures,
roll back, delete; a table of bad inputs with their statuses and JSON errors; metrics; SIGTERM
loses no accepted request; then the tenant isolation matrix, rate and task limits, SIGHUP."""
import hashlib
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
import uuid

import pdtest as t

t.need_model()
JPG = os.path.join(t.TESTDATA, "faces", "sample1.jpg")
IMG = open(JPG, "rb").read()
JPEG = {"Content-Type": "image/jpeg"}
tmp = tempfile.TemporaryDirectory()


def new_patch(labels, seed=1, size=96):
    return t.new_patch(tmp.name, labels, seed, size)


def err_code(body):
    return body.get("error", {}).get("code") if isinstance(body, dict) else None


def multipart(files):
    b = "----pd" + uuid.uuid4().hex
    out = b""
    for name, data in files:
        out += (f"--{b}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"x.jpg\"\r\n"
                f"Content-Type: image/jpeg\r\n\r\n").encode() + data + b"\r\n"
    out += f"--{b}--\r\n".encode()
    return out, {"Content-Type": f"multipart/form-data; boundary={b}"}


# ---- development mode -------------------------------------------------------------------------
store = os.path.join(tmp.name, "store")
s = t.Server("--store", store)

# faces equals patchctl detect
st, body = s.json("POST", "/infer?task=faces", IMG, JPEG)
t.eq(st, 200, "faces status", body)
cli = json.loads(t.run([t.PATCHCTL, "detect", "--model", t.MODEL, JPG]).stdout)
t.eq([d["box"] for d in body["detections"]], [d["box"] for d in cli["detections"]],
     "faces boxes equal patchctl detect")
t.eq([d["score"] for d in body["detections"]], [d["score"] for d in cli["detections"]],
     "faces scores equal patchctl detect")
t.check(all(d["label"] == "face" for d in body["detections"]), "faces label")
st, body = s.json("POST", "/infer?task=faces&min_score=0.999", IMG, JPEG)
t.eq(body.get("detections"), [], "min_score filters")
mp, hdr = multipart([("image", IMG)])
st, body = s.json("POST", "/infer?task=faces", mp, hdr)
t.eq((st, len(body.get("detections", []))), (200, len(cli["detections"])), "multipart upload")

# upload, infer, inspect
p1 = new_patch(["ant", "bee"], seed=1)
st, body = s.json("PUT", "/tasks/antbee", p1, {"Content-Type": "application/octet-stream"})
t.eq(st, 201, "PUT status", body)
t.eq(body, {"task": "antbee", "version": 1, "sha256": hashlib.sha256(p1).hexdigest(),
            "bytes": len(p1)}, "PUT body")
st, body = s.json("POST", "/infer?task=antbee&top_k=1", IMG, JPEG)
t.eq((st, body.get("task"), body.get("version"), len(body.get("predictions", []))),
     (200, "antbee", 1, 1), "infer with the patch", body)
st, body = s.json("GET", "/tasks")
names = [x["task"] for x in body.get("tasks", [])]
t.eq(names, ["faces", "antbee"], "GET /tasks")
ab = body["tasks"][1]
t.eq((ab["version"], ab["kind"], ab["labels"], ab["loaded"]),
     (1, "classification", ["ant", "bee"], True), "GET /tasks entry")
st, hdrs, data = s.request("GET", "/tasks/antbee/patch")
t.eq((st, data), (200, p1), "download is byte for byte")

# hot swap under a client loop: zero failures
stop = threading.Event()
seen, failures = set(), []


def client():
    while not stop.is_set():
        try:
            st, body = s.json("POST", "/infer?task=antbee", IMG, JPEG)
            if st != 200:
                failures.append((st, body))
            else:
                seen.add(body["version"])
        except Exception as e:  # noqa: BLE001 - any failure counts
            failures.append(repr(e))


threads = [threading.Thread(target=client) for _ in range(3)]
for th in threads:
    th.start()
for v in range(2, 7):
    time.sleep(0.15)
    st, body = s.json("PUT", "/tasks/antbee", new_patch(["ant", "bee"], seed=v))
    t.eq((st, body.get("version")), (201, v), f"swap to version {v}")
time.sleep(0.3)
stop.set()
for th in threads:
    th.join()
t.eq(failures, [], "zero failed requests during hot swaps")
t.check(len(seen) >= 2, "the client loop saw several versions", seen)

# roll back, versions, delete
st, body = s.json("POST", "/tasks/antbee/activate?version=1")
t.eq((st, body), (200, {"task": "antbee", "version": 1}), "roll back")
st, body = s.json("POST", "/infer?task=antbee", IMG, JPEG)
t.eq(body.get("version"), 1, "infer after roll back")
st, body = s.json("POST", "/infer?task=antbee&version=3", IMG, JPEG)
t.eq(body.get("version"), 3, "infer at a pinned version")
st, body = s.json("GET", "/tasks/antbee")
t.eq((body.get("active"), [v["version"] for v in body.get("versions", [])]),
     (1, [1, 2, 3, 4, 5, 6]), "GET /tasks/NAME versions")
t.eq(body["versions"][0].get("labels"), ["ant", "bee"], "version metadata")
st, hdrs, data = s.request("GET", "/tasks/antbee/patch?version=1")
t.eq(data, p1, "download of an old version")
st, body = s.json("DELETE", "/tasks/antbee")
t.eq((st, body), (200, {"task": "antbee", "deleted": True}), "delete")
st, body = s.json("POST", "/infer?task=antbee", IMG, JPEG)
t.eq((st, err_code(body)), (404, "unknown_task"), "infer after delete")

# bad inputs: status and a JSON error naming the problem
s.json("PUT", "/tasks/good", p1)
cases = [
    ("bad task name", "POST", "/infer?task=Bad.Name", IMG, JPEG, 400, "invalid_task_name"),
    ("missing task", "POST", "/infer", IMG, JPEG, 400, "missing_task"),
    ("unknown task", "POST", "/infer?task=nosuch", IMG, JPEG, 404, "unknown_task"),
    ("wrong content type", "POST", "/infer?task=good", IMG, {"Content-Type": "text/plain"}, 415,
     "unsupported_media_type"),
    ("not an image", "POST", "/infer?task=good", b"hello world", JPEG, 422, "bad_format"),
    ("truncated image", "POST", "/infer?task=good", IMG[: len(IMG) // 2], JPEG, 422, "bad_format"),
    ("empty body", "POST", "/infer?task=good", b"", JPEG, 400, "empty_body"),
    ("bad top_k", "POST", "/infer?task=good&top_k=0", IMG, JPEG, 400, "invalid_parameter"),
    ("bad min_score", "POST", "/infer?task=faces&min_score=2", IMG, JPEG, 400,
     "invalid_parameter"),
    ("invalid patch", "PUT", "/tasks/x1", b"not a patch at all", {}, 422, "invalid_patch"),
    ("patch of the wrong type", "PUT", "/tasks/x1", p1, {"Content-Type": "image/png"}, 415,
     "unsupported_media_type"),
    ("replace faces", "PUT", "/tasks/faces", p1, {}, 409, "builtin_task"),
    ("delete faces", "DELETE", "/tasks/faces", None, {}, 409, "builtin_task"),
    ("wrong method", "DELETE", "/infer", None, {}, 405, "method_not_allowed"),
    ("unknown endpoint", "GET", "/nope", None, {}, 404, "not_found"),
    ("activate absent version", "POST", "/tasks/good/activate?version=9", None, {}, 404,
     "not_found"),
    ("activate without version", "POST", "/tasks/good/activate", None, {}, 400,
     "invalid_parameter"),
    ("two files in multipart", "POST", "/infer?task=faces", *multipart([("a", IMG), ("b", IMG)]),
     400, "bad_multipart"),
]
for name, method, path, data, headers, want, code in cases:
    try:
        st, body = s.json(method, path, data, headers)
    except (ConnectionError, OSError) as e:  # a refused oversized upload may reset
        st, body = 0, {"_exc": repr(e)}
    t.eq((st, err_code(body)), (want, code), f"bad input: {name}", body)
    t.check(not isinstance(body, dict) or "error" not in body or body["error"].get("message"),
            f"bad input {name}: has a message")

# an oversized body is refused from its declared length, before it is sent
import http.client
c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
c.putrequest("POST", "/infer?task=good")
c.putheader("Content-Type", "image/jpeg")
c.putheader("Content-Length", str(21 << 20))
c.putheader("Expect", "100-continue")
c.endheaders()
resp = c.getresponse()
body = json.loads(resp.read())
c.close()
t.eq((resp.status, err_code(body)), (413, "too_large"), "oversized body refused before reading")
# and one without a declared length (chunked) is cut off at the limit
c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
def chunks():
    for _ in range(22):
        yield b"\0" * (1 << 20)
c.request("POST", "/infer?task=good", body=chunks(), headers=JPEG, encode_chunked=True)
resp = c.getresponse()
st = resp.status
body = json.loads(resp.read())
c.close()
t.eq((st, err_code(body)), (413, "too_large"), "chunked oversized body")

# metrics reflect the traffic
st, hdrs, data = s.request("GET", "/metrics")
text = data.decode()
t.eq(st, 200, "metrics status")
t.check('patchd_requests_total{endpoint="infer",tenant="default",task="faces",status="200"}'
        in text, "metrics count faces requests")
t.check("patchd_cache_hits_total" in text and "patchd_batch_size_bucket" in text,
        "metrics have cache and batch series")
t.check('patchd_build_info{version="' in text, "build info")

# SIGTERM while requests are in flight: every accepted request is answered
results = []


def one():
    try:
        results.append(s.json("POST", "/infer?task=faces", IMG, JPEG)[0])
    except Exception as e:  # noqa: BLE001
        results.append(repr(e))


threads = [threading.Thread(target=one) for _ in range(6)]
for th in threads:
    th.start()
time.sleep(0.3)
code = s.stop(signal.SIGTERM)
for th in threads:
    th.join()
t.eq(code, 0, "exit status after SIGTERM")
t.eq(results, [200] * 6, "SIGTERM loses no accepted request")
t.check("patchd: access" in s.text(), "access log lines")

# ---- tenants ----------------------------------------------------------------------------------
keys = {}
for who in ("acme_admin", "acme_infer", "globex_admin", "tight_admin"):
    out = json.loads(t.run([t.PATCHCTL, "key", "new", "--role", who.split("_")[1]]).stdout)
    keys[who] = out
os.environ["PD_TEST_GLOBEX_SHA"] = keys["globex_admin"]["sha256"]
conf = {
    "store": os.path.join(tmp.name, "tstore"),
    "tenants": [
        {"name": "acme", "keys": [{"sha256": keys["acme_admin"]["sha256"], "role": "admin"},
                                  {"sha256": keys["acme_infer"]["sha256"], "role": "infer"}]},
        {"name": "globex", "keys": [{"sha256": "env:PD_TEST_GLOBEX_SHA", "role": "admin"}]},
        {"name": "tight", "rps": 2, "max_tasks": 1,
         "keys": [{"sha256": keys["tight_admin"]["sha256"], "role": "admin"}]},
    ],
}
cpath = os.path.join(tmp.name, "patchd.json")
with open(cpath, "w") as f:
    json.dump(conf, f)
s = t.Server("--config", cpath)


def auth(who):
    if who == "none":
        return {}
    if who == "wrong":
        return {"Authorization": "Bearer pd_not_a_key"}
    return {"Authorization": "Bearer " + keys[who]["key"]}


st, body = s.json("PUT", "/tasks/t", p1, auth("acme_admin"))
t.eq(st, 201, "acme uploads t", body)
p2 = new_patch(["x", "y"], seed=9)
# a training job of acme's (two classes of the flowers subset), cancelled at once
import io
import tarfile
f2 = os.path.join(t.TESTDATA, "flowers2", "train")
arch = io.BytesIO()
with tarfile.open(fileobj=arch, mode="w:gz") as tf:
    tf.add(f2, arcname="data")
GZ = {"Content-Type": "application/gzip"}
st, body = s.json("POST", "/train?task=tj&kind=sbdw&epochs=50", arch.getvalue(),
                  {**GZ, **auth("acme_admin")})
t.eq(st, 202, "acme starts a training job", body)
job = body.get("job", "none")
matrix = [
    # (method, path, body, headers, {key class: status})
    ("GET", "/tasks", None, {}, {"none": 401, "wrong": 401, "acme_infer": 200,
                                 "globex_admin": 200, "acme_admin": 200}),
    ("GET", "/tasks/t", None, {}, {"none": 401, "wrong": 401, "acme_infer": 200,
                                   "globex_admin": 404, "acme_admin": 200}),
    ("GET", "/tasks/t/patch", None, {}, {"none": 401, "wrong": 401, "acme_infer": 200,
                                         "globex_admin": 404, "acme_admin": 200}),
    ("POST", "/infer?task=t", IMG, JPEG, {"none": 401, "wrong": 401, "acme_infer": 200,
                                          "globex_admin": 404, "acme_admin": 200}),
    ("POST", "/infer?task=faces", IMG, JPEG, {"none": 401, "wrong": 401, "acme_infer": 200,
                                              "globex_admin": 200, "acme_admin": 200}),
    ("POST", "/tasks/t/activate?version=1", None, {}, {"none": 401, "wrong": 401,
                                                       "acme_infer": 403, "globex_admin": 404,
                                                       "acme_admin": 200}),
    ("GET", "/metrics", None, {}, {"none": 401, "wrong": 401, "acme_infer": 200,
                                   "globex_admin": 200, "acme_admin": 200}),
    ("PUT", "/tasks/t", p2, {}, {"none": 401, "wrong": 401, "acme_infer": 403,
                                 "globex_admin": 201, "acme_admin": 201}),
    ("DELETE", "/tasks/t", None, {}, {"none": 401, "wrong": 401, "acme_infer": 403,
                                      "globex_admin": 200, "acme_admin": 200}),
    # a refused archive: globex gets past authorisation to the archive check; acme, whose job is
    # running, to its job limit
    ("POST", "/train?task=t", b"not an archive", GZ, {"none": 401, "wrong": 401,
                                                      "acme_infer": 403, "globex_admin": 422,
                                                      "acme_admin": 429}),
    ("GET", "/jobs", None, {}, {"none": 401, "wrong": 401, "acme_infer": 200,
                                "globex_admin": 200, "acme_admin": 200}),
    ("GET", f"/jobs/{job}", None, {}, {"none": 401, "wrong": 401, "acme_infer": 200,
                                       "globex_admin": 404, "acme_admin": 200}),
    ("DELETE", f"/jobs/{job}", None, {}, {"none": 401, "wrong": 401, "acme_infer": 403,
                                          "globex_admin": 404, "acme_admin": 200}),
]
for method, path, data, headers, want in matrix:
    for who in ("none", "wrong", "acme_infer", "globex_admin", "acme_admin"):
        st, body = s.json(method, path, data, {**headers, **auth(who)})
        t.eq(st, want[who], f"matrix {method} {path} as {who}", body)
        if st >= 400:
            t.check(err_code(body), f"matrix {method} {path} as {who}: JSON error", body)
        if method == "GET" and path == "/jobs" and who == "globex_admin":
            t.eq(body.get("jobs"), [], "globex sees none of acme's jobs", body)
        if method == "GET" and path == "/tasks" and who == "globex_admin":
            t.eq([x["task"] for x in body["tasks"]], ["faces"], "globex sees none of acme's tasks")
        if method == "PUT" and who == "globex_admin":
            # globex's PUT made its own t; acme's t is untouched
            st2, b2 = s.json("GET", "/tasks/t", None, auth("acme_admin"))
            t.eq((b2.get("active"), len(b2.get("versions", []))), (1, 1),
                 "another tenant's PUT leaves acme's task alone")
st, body = s.json("GET", "/healthz")
t.eq(st, 200, "healthz needs no key")
st, body = s.json("GET", "/readyz")
t.eq((st, body.get("status")), (200, "ready"), "readyz needs no key")

# rate limit and task limit
codes = [s.request("GET", "/tasks", None, auth("tight_admin"))[0] for _ in range(6)]
t.check(429 in codes and codes[0] == 200, "rate limit answers 429", codes)
time.sleep(1.2)
st, hdrs, data = s.request("GET", "/tasks", None, auth("tight_admin"))
for _ in range(5):
    st, hdrs, data = s.request("GET", "/tasks", None, auth("tight_admin"))
    if st == 429:
        break
t.eq(st, 429, "rate limited again")
t.check(hdrs.get("Retry-After", "").isdigit(), "429 carries Retry-After", hdrs)
time.sleep(1.2)
st, body = s.json("PUT", "/tasks/one", p1, auth("tight_admin"))
t.eq(st, 201, "tight's first task")
time.sleep(0.6)
st, body = s.json("PUT", "/tasks/two", p1, auth("tight_admin"))
t.eq((st, err_code(body)), (409, "task_limit"), "task limit")

# SIGHUP reloads keys without a restart
fresh = json.loads(t.run([t.PATCHCTL, "key", "new", "--role", "infer"]).stdout)
conf["tenants"][1]["keys"].append({"sha256": fresh["sha256"], "role": "infer"})
with open(cpath, "w") as f:
    json.dump(conf, f)
st, body = s.json("GET", "/tasks", None, {"Authorization": "Bearer " + fresh["key"]})
t.eq(st, 401, "new key unknown before SIGHUP")
s.proc.send_signal(signal.SIGHUP)
for _ in range(50):
    time.sleep(0.1)
    st, body = s.json("GET", "/tasks", None, {"Authorization": "Bearer " + fresh["key"]})
    if st == 200:
        break
t.eq(st, 200, "new key works after SIGHUP")
t.eq(s.stop(), 0, "tenant server exit status")

# ---- refusals at start-up ---------------------------------------------------------------------
r = subprocess.run([t.PATCHD, "--listen", "0.0.0.0:0", "--model", t.MODEL, "--store", store],
                   capture_output=True, text=True, timeout=60)
t.eq(r.returncode, 2, "dev mode refuses a non-loopback address")
t.check("--insecure" in r.stderr, "and says how to override", r.stderr)
bad = os.path.join(tmp.name, "bad.json")
with open(bad, "w") as f:
    json.dump({"limits": {"image_bytez": 5}}, f)
r = subprocess.run([t.PATCHD, "--config", bad], capture_output=True, text=True, timeout=60)
t.eq(r.returncode, 2, "unknown config key exit status")
t.check("limits.image_bytez" in r.stderr, "unknown config key is named", r.stderr)
# the example configuration is valid (its admin hash comes from the environment)
example = os.path.join(os.path.dirname(t.TESTDATA), "..", "conf", "patchd.json")
env = dict(os.environ, PATCHD_ACME_ADMIN_SHA256=keys["acme_admin"]["sha256"])
p = subprocess.Popen([t.PATCHD, "--config", example, "--model", t.MODEL, "--store",
                      os.path.join(tmp.name, "ex"), "--listen", "127.0.0.1:0"],
                     stderr=subprocess.PIPE, text=True, env=env)
line = p.stderr.readline()
t.check("authentication on" in line, "conf/patchd.json starts a server", line)
p.send_signal(signal.SIGTERM)
t.eq(p.wait(timeout=60), 0, "example server stops cleanly")
p.stderr.close()
env.pop("PATCHD_ACME_ADMIN_SHA256")
r = subprocess.run([t.PATCHD, "--config", example], capture_output=True, text=True, timeout=60,
                   env=env)
t.check(r.returncode == 2 and "PATCHD_ACME_ADMIN_SHA256" in r.stderr,
        "a missing secret variable is named", r.stderr)
t.finish()
