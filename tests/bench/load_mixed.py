"""The mixed load test of issue #9: SECONDS at saturation on loopback, all at once,
  - inference over N tasks (wrk, C connections, each request names a random task),
  - uploads of new versions of random tasks and re-activations of older versions (a client
    thread, back to back),
  - one training job (sbdw on the committed flowers subset) started at the beginning;
then reports: requests and their statuses (5xx and connection errors must be zero), inference
p50/p99, patchd's RSS after warm-up, every 5 s and at the end (the training job adds its own
bounded working set while it runs). It stops by itself.

  /usr/bin/python3 tests/bench/load_mixed.py [SECONDS] [N] [C]
"""
import io
import json
import os
import random
import re
import shutil
import sys
import tarfile
import tempfile
import threading
import time
import http.client

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from many_tasks import BUILD, DATA, LUA, MODEL, sh, start_patchd  # noqa: E402


def rss_kb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main():
    secs = int(sys.argv[1]) if len(sys.argv) > 1 else 60
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    conc = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    tmp = tempfile.mkdtemp(prefix="pd_mixed_")
    proc = None
    try:
        patches = []
        for seed in range(4):
            p = os.path.join(tmp, f"p{seed}.safetensors")
            sh([os.path.join(BUILD, "patchctl"), "patch", "new", "--model", MODEL, "--labels",
                "daisy,sunflowers", "--seed", str(seed), "--out", p])
            patches.append(open(p, "rb").read())
        store = os.path.join(tmp, "store")
        daisy = os.path.join(DATA, "val", "daisy")
        jpeg_path = os.path.join(daisy, sorted(os.listdir(daisy))[0])
        b = io.BytesIO()
        with tarfile.open(fileobj=b, mode="w:gz") as tf:
            tf.add(os.path.join(DATA, "train"), arcname="data")
        archive = b.getvalue()
        proc, port = start_patchd("--store", store)

        def call(method, path, body=None, headers=None):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            data = r.read()
            c.close()
            return r.status, data

        for i in range(n):
            st, _ = call("PUT", f"/tasks/t{i:04d}", patches[i % 4])
            assert st == 201, st
        for i in range(n):  # resident
            st, _ = call("POST", f"/infer?task=t{i:04d}", open(jpeg_path, "rb").read(),
                         {"Content-Type": "image/jpeg"})
            assert st == 200, st
        rss0 = rss_kb(proc.pid)
        lua = os.path.join(tmp, "load.lua")
        with open(lua, "w") as f:
            f.write(LUA)
        stop = threading.Event()
        admin = {"uploads": 0, "activations": 0, "5xx": 0, "other": 0, "errors": 0}

        def churn():
            r = random.Random(1)
            while not stop.is_set():
                task = f"t{r.randrange(n):04d}"
                try:
                    if r.random() < 0.5:
                        st, _ = call("PUT", f"/tasks/{task}", r.choice(patches))
                        admin["uploads"] += st == 201
                    else:
                        st, body = call("GET", f"/tasks/{task}")
                        vs = [v["version"] for v in json.loads(body)["versions"]]
                        st, _ = call("POST", f"/tasks/{task}/activate?version={r.choice(vs)}")
                        admin["activations"] += st == 200
                    if st >= 500:
                        admin["5xx"] += 1
                    elif st >= 300:
                        admin["other"] += 1
                except OSError:
                    admin["errors"] += 1

        st, body = call("POST", "/train?task=trained&kind=sbdw&epochs=2", archive,
                        {"Content-Type": "application/gzip"})
        job = json.loads(body).get("job") if st == 202 else None
        ch = threading.Thread(target=churn)
        ch.start()
        samples = []

        def sample():
            while not stop.wait(5):
                samples.append(rss_kb(proc.pid))

        sm = threading.Thread(target=sample)
        sm.start()
        t0 = time.time()
        out = sh(["wrk", "-t1", f"-c{conc}", f"-d{secs}s", "--timeout", "30s", "-s", lua,
                  f"http://127.0.0.1:{port}/"],
                 env={**os.environ, "PD_JPEG": jpeg_path, "PD_NTASKS": str(n), "PD_KEY": "none"})
        stop.set()
        ch.join()
        sm.join()
        dt = time.time() - t0
        d = json.loads(re.search(r"^JSON (.*)$", out, re.M).group(1))
        st, body = call("GET", f"/jobs/{job}") if job else (0, b"{}")
        jstate = json.loads(body).get("state")
        rss1 = rss_kb(proc.pid)
        print(f"mixed load {dt:.0f} s: {n} tasks, {conc} inference connections")
        print(f"inference: {d['requests']} requests ({d['requests'] / d['seconds']:.1f}/s), "
              f"non-2xx {d['non_2xx']}, socket errors {d['socket_errors']}, "
              f"p50 {d['p50_ms']:.1f} ms, p99 {d['p99_ms']:.1f} ms")
        print(f"admin: {admin['uploads']} uploads, {admin['activations']} activations, "
              f"5xx {admin['5xx']}, other non-2xx {admin['other']}, "
              f"connection errors {admin['errors']}")
        print(f"training job {job}: {jstate} (started with the load)")
        print(f"patchd RSS: {rss0 / 1024:.0f} MiB after warm-up, {rss1 / 1024:.0f} MiB at the end; "
              "every 5 s: " + " ".join(f"{x / 1024:.0f}" for x in samples) + " MiB")
        bad = d["non_2xx"] + d["socket_errors"] + admin["5xx"] + admin["errors"]
        print("result:", "PASS" if bad == 0 else "FAIL")
        return 0 if bad == 0 else 1
    finally:
        if proc:
            proc.terminate()
            proc.wait(60)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
