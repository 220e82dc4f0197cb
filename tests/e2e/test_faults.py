"""Faults and abuse against a real patchd (issue #9).

Faults: a full disk during upload (a small tmpfs as the store: 507, the store intact, the task at
its old version); corrupt patch files on disk (that task answers an error naming the problem, the
others are unaffected); kill -9 of patchd during uploads and training, at random moments, many
times (after each restart every task serves a valid version and no temporary file is left).
Abuse: slow clients trickling bytes cannot starve the workers; decompression bombs in an archive
and in a JPEG's dimensions hit their limits; task names and archive entries cannot leave the
store (dot-dot, slashes, NUL, over-long names, absolute paths, symlinks)."""
import gzip
import io
import json
import os
import random
import socket
import subprocess
import tarfile
import tempfile
import threading
import time

import pdtest as t

t.need_model()
IMG = open(os.path.join(t.TESTDATA, "faces", "sample1.jpg"), "rb").read()
JPEG = {"Content-Type": "image/jpeg"}
GZ = {"Content-Type": "application/gzip"}
F2 = os.path.join(t.TESTDATA, "flowers2")
tmp = tempfile.TemporaryDirectory()
# the ASan build is several times slower: fewer kill cycles there
ASAN = b"__asan_init" in open(t.PATCHD, "rb").read()
KILL_CYCLES = int(os.environ.get("PD_KILL_CYCLES", "30" if ASAN else "100"))


def new_patch(labels, seed=1, size=64):
    return t.new_patch(tmp.name, labels, seed, size)


def err(body):
    return body.get("error", {}) if isinstance(body, dict) else {}


def tgz(entries):
    """entries: (name, bytes) for files, (name, None, target) for symlinks"""
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w:gz") as tf:
        for e in entries:
            info = tarfile.TarInfo(e[0])
            if len(e) == 3:
                info.type, info.linkname = tarfile.SYMTYPE, e[2]
                tf.addfile(info)
            else:
                info.size = len(e[1])
                tf.addfile(info, io.BytesIO(e[1]))
    return b.getvalue()


def flowers():
    out = []
    for cls in sorted(os.listdir(os.path.join(F2, "train"))):
        for f in sorted(os.listdir(os.path.join(F2, "train", cls))):
            out.append((f"{cls}/{f}", open(os.path.join(F2, "train", cls, f), "rb").read()))
    return out


def temp_files(root):
    return [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if ".tmp." in f]


def config(path, **kw):
    with open(path, "w") as f:
        json.dump(kw, f)
    return path


p1, p2 = new_patch(["a", "b"], 1), new_patch(["a", "b"], 2)

# ---- disk full --------------------------------------------------------------------------------
mnt = os.path.join(tmp.name, "small")
os.makedirs(mnt)
mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt],
                         capture_output=True, text=True).returncode == 0
if not mounted:
    print("disk full: SKIPPED (cannot mount a tmpfs here: needs root)")
else:
    try:
        store = os.path.join(mnt, "store")
        s = t.Server("--store", store)
        st, body = s.json("PUT", "/tasks/full", p1)
        t.eq(st, 201, "disk full: first version stored", body)
        # fill the disk to the last byte
        fd = os.open(os.path.join(mnt, "filler"), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 512)
        except OSError:
            pass
        os.close(fd)
        st, body = s.json("PUT", "/tasks/full", p2)
        t.eq((st, err(body).get("code")), (507, "no_space"), "disk full: upload answers 507",
             body)
        t.check("space" in err(body).get("message", ""), "disk full: message says so", body)
        st, body = s.json("GET", "/tasks/full")
        t.eq((body.get("active"), [v["version"] for v in body.get("versions", [])]), (1, [1]),
             "disk full: task still at its old version", body)
        st, body = s.json("POST", "/infer?task=full", IMG, JPEG)
        t.eq((st, body.get("version")), (200, 1), "disk full: old version serves", body)
        t.eq(temp_files(store), [], "disk full: no temporary file left")
        st, body = s.json("PUT", "/tasks/other", p1)
        t.eq(st, 507, "disk full: a new task is refused too", body)
        os.unlink(os.path.join(mnt, "filler"))
        st, body = s.json("PUT", "/tasks/full", p2)
        t.eq((st, body.get("version")), (201, 2), "disk full: space back, upload works", body)
        t.eq(s.stop(), 0, "disk full: clean stop")
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
        subprocess.run(["umount", "-l", mnt])

# ---- corrupt patch files on disk ---------------------------------------------------------------
store = os.path.join(tmp.name, "cstore")
s = t.Server("--store", store)
for name in ("good", "garbage", "truncated", "flipped"):
    st, _ = s.json("PUT", f"/tasks/{name}", p1)
    t.eq(st, 201, f"corrupt: upload {name}")
# a deployment tool drops broken second versions by hand and activates them
broken = {"garbage": b"\x00garbage, not a patch" * 10, "truncated": p2[: len(p2) // 2],
          "flipped": p2.replace(b'"patchd-patch"', b'"patchd-patcX"')}
for name, data in broken.items():
    d = os.path.join(store, "default", name)
    with open(os.path.join(d, "v2.safetensors"), "wb") as f:
        f.write(data)
    with open(os.path.join(d, "ACTIVE"), "w") as f:
        f.write("2\n")
deadline = time.time() + 20
while time.time() < deadline:  # the watcher or the periodic rescan sees them
    if all(s.json("GET", f"/tasks/{n}")[1].get("active") == 2 for n in broken):
        break
    time.sleep(0.2)
for name in broken:
    st, body = s.json("POST", f"/infer?task={name}", IMG, JPEG)
    e = err(body)
    t.check(400 <= st < 600 and e.get("code") and len(e.get("message", "")) > 10,
            f"corrupt {name}: an error naming the problem", st, body)
    t.check(name in e.get("message", "") or "v2" in e.get("message", "") or
            "patch" in e.get("message", ""), f"corrupt {name}: message points at the patch", body)
st, body = s.json("POST", "/infer?task=good", IMG, JPEG)
t.eq(st, 200, "corrupt: the other task is unaffected", body)
st, body = s.json("POST", "/infer?task=faces", IMG, JPEG)
t.eq(st, 200, "corrupt: faces is unaffected", body)
# rolling back to the good version heals the task
st, body = s.json("POST", "/tasks/garbage/activate?version=1")
t.eq(st, 200, "corrupt: roll back", body)
st, body = s.json("POST", "/infer?task=garbage", IMG, JPEG)
t.eq((st, body.get("version")), (200, 1), "corrupt: rolled-back task serves", body)
t.eq(s.stop(), 0, "corrupt: clean stop")

# ---- kill -9 during uploads and training ------------------------------------------------------
store = os.path.join(tmp.name, "kstore")
archive = tgz(flowers())
rng = random.Random(7)
tasks = [f"k{i}" for i in range(4)]
served_bad, leftovers, trained = [], [], 0
t0 = time.time()
for cycle in range(KILL_CYCLES):
    s = t.Server("--store", store)
    # every task known so far serves a valid version
    st, listing = s.json("GET", "/tasks")
    for task in [x["task"] for x in listing.get("tasks", [])]:
        st, body = s.json("POST", f"/infer?task={task}", IMG, JPEG)
        if st != 200:
            served_bad.append((cycle, task, st, body))
    tf = temp_files(store)
    if tf:
        leftovers.append((cycle, tf))
    stop = threading.Event()

    def upload(seed):
        r = random.Random(seed)
        while not stop.is_set():
            try:
                s.request("PUT", f"/tasks/{r.choice(tasks)}", r.choice([p1, p2]), timeout=10)
            except OSError:
                return

    ups = [threading.Thread(target=upload, args=(cycle * 10 + i,)) for i in range(2)]
    [u.start() for u in ups]
    if cycle % 5 == 0:
        try:
            st, body = s.json("POST", f"/train?task=k{cycle % 4}&kind=sb&epochs=1", archive, GZ)
            trained += st == 202
        except OSError:
            pass
    time.sleep(rng.uniform(0.0, 0.6))
    s.proc.kill()  # SIGKILL at a random moment
    s.proc.wait()
    stop.set()
    [u.join() for u in ups]
    s.reader.join(10)
s = t.Server("--store", store)
st, listing = s.json("GET", "/tasks")
for task in [x["task"] for x in listing.get("tasks", [])]:
    st, body = s.json("POST", f"/infer?task={task}", IMG, JPEG)
    if st != 200:
        served_bad.append(("final", task, st, body))
t.eq(served_bad, [], f"kill -9 x{KILL_CYCLES}: every task serves a valid version after restart")
t.eq(leftovers + [("final", x) for x in temp_files(store) if x], [],
     f"kill -9 x{KILL_CYCLES}: no temporary files accumulate")
t.check(len(listing.get("tasks", [])) >= 1, "kill -9: uploads landed between kills", listing)
t.check(trained >= 1, "kill -9: training jobs were accepted and killed", trained)
print(f"kill -9: {KILL_CYCLES} cycles in {time.time() - t0:.0f} s, {trained} training jobs, "
      f"{len(listing.get('tasks', []))} tasks")
t.eq(s.stop(), 0, "kill -9: clean stop at the end")

# ---- abuse ------------------------------------------------------------------------------------
conf = config(os.path.join(tmp.name, "abuse.json"), store=os.path.join(tmp.name, "astore"),
              limits={"archive_bytes": 1 << 20, "max_pixels": 4000000, "timeout_s": 10})
s = t.Server("--config", conf)
s.json("PUT", "/tasks/ok", p1)

# slow clients: 40 connections trickle a body a byte at a time; others are still served
slow = []
for i in range(40):
    c = socket.create_connection(("127.0.0.1", s.port), timeout=30)
    c.sendall(b"POST /infer?task=faces HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
              b"Content-Length: 100000\r\n\r\n")
    slow.append(c)
stop = threading.Event()


def trickle():
    while not stop.is_set():
        for c in slow:
            try:
                c.send(b"\xff")
            except OSError:
                pass
        stop.wait(1.0)


tr = threading.Thread(target=trickle)
tr.start()
ok = 0
for i in range(5):
    st, body = s.json("POST", "/infer?task=faces", IMG, JPEG)
    ok += st == 200
t.eq(ok, 5, "slow clients: normal requests are still answered")
st, body = s.json("GET", "/healthz")
t.eq(st, 200, "slow clients: healthz answers")
stop.set()
tr.join()
for c in slow:
    c.close()

# a decompression bomb in an archive: 64 MiB of zeros (64 KiB compressed) against a 4 MiB
# extraction limit (4x archive_bytes)
bomb = tgz(flowers()[:3] + [("daisy/bomb.jpg", b"\0" * (64 << 20))] + flowers()[-3:])
t.check(len(bomb) < (1 << 20), "the bomb is small compressed", len(bomb))
st, body = s.json("POST", "/train?task=bomb", bomb, GZ)
t.eq((st, err(body).get("code")), (413, "too_large"), "archive bomb: refused at the limit", body)
# gzip of a gzip bomb as the body is not an archive format at all
st, body = s.json("POST", "/train?task=bomb", gzip.compress(b"\0" * (8 << 20)), GZ)
t.check(st in (413, 422), "gzip of zeros: refused", st, body)
# a JPEG whose header claims 30000 x 30000 pixels: refused before any pixel is allocated
sof = IMG.find(b"\xff\xc0")
if sof < 0:
    sof = IMG.find(b"\xff\xc2")
huge = IMG[:sof + 5] + (30000).to_bytes(2, "big") + (30000).to_bytes(2, "big") + IMG[sof + 9:]
st, body = s.json("POST", "/infer?task=faces", huge, JPEG)
# 422 (the bytes were acceptable, the content is not) with the too_large code
t.eq((st, err(body).get("code")), (422, "too_large"), "JPEG dimension bomb: refused", body)
t.check("30000x30000" in err(body).get("message", ""), "JPEG bomb: message names the size", body)

# task names cannot leave the store
names = ["..", "..%2F..%2Fetc", "a%2Fb", "%2Fetc%2Fpasswd", "a%00b", "x" * 65, ".hidden",
         "UPPER", "a%20b", "a%2500b"]
for n in names:
    for method, path, body in (("PUT", f"/tasks/{n}", p1), ("POST", f"/infer?task={n}", IMG),
                               ("GET", f"/tasks/{n}", None)):
        st, b = s.json(method, path, body, JPEG if method == "POST" else {})
        t.check(st in (400, 404) and err(b).get("code") in ("invalid_task_name", "not_found"),
                f"task name {n!r}: {method} refused", st, b)
import re
top = sorted(e for e in os.listdir(tmp.name) if not re.fullmatch(r"p[0-9a-f]{32}\.safetensors", e))
t.eq(top, ["abuse.json", "astore", "cstore", "kstore", "small"], "nothing written beside the stores")
adirs = os.listdir(os.path.join(tmp.name, "astore", "default"))
t.eq([d for d in adirs if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", d)], [],
     "only valid task names in the store", adirs)

# archive entries: symlinks are never followed nor extracted (a class made only of symlinks is
# empty), dot-dot and absolute paths are refused
links = tgz(flowers()[:5] + [("tulips/a.jpg", None, "/etc/passwd"),
                             ("tulips/b.jpg", None, "../../../../etc/shadow")])
st, body = s.json("POST", "/train?task=links", links, GZ)
t.eq((st, err(body).get("code")), (422, "bad_format"), "symlink entries: not images", body)
for name in ("../../x/evil.jpg", "/tmp/evil.jpg", "daisy/../../evil.jpg"):
    st, body = s.json("POST", "/train?task=trav", tgz(flowers() + [(name, IMG)]), GZ)
    t.eq((st, err(body).get("code")), (422, "bad_format"), f"archive entry {name}: refused", body)
t.check(not os.path.exists("/tmp/evil.jpg"), "nothing extracted outside")
t.eq(s.stop(), 0, "abuse: clean stop")
t.finish()
