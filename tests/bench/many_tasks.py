"""Many tasks as fast as one, and what HTTP costs (issue #8, targets 4 and 5).

Builds a store of N copies of a real sbdw patch (trained for one epoch on the committed flowers
subset; each copy is its own task, loaded and held separately), then runs the same closed-loop
load four ways, each for SECONDS with C concurrent clients sending the same JPEG:

  engine, 1 task / N tasks   bench_engine_load: the in-process engine patchd serves with
  HTTP,   1 task / N tasks   wrk against a real patchd on 127.0.0.1 (each request names a random
                             one of the tasks); every task is made resident before timing

and prints one line per figure with the ratios: N tasks / 1 task over HTTP (goal >= 0.9) and
HTTP / in-process at the same concurrency (goal >= 0.9). The four loads alternate ROUNDS times;
each figure is the median over the rounds (the machine is noisy).

  /usr/bin/python3 tests/bench/many_tasks.py [N] [C] [SECONDS] [ROUNDS]
"""
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import http.client

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.path.join(ROOT, "build")
MODEL = os.environ.get("PD_MODEL", os.path.join(ROOT, "models", "ssd_mobilenet_v1.safetensors"))
DATA = os.path.join(ROOT, "tests", "data", "flowers2")

LUA = r"""
local f = io.open(os.getenv("PD_JPEG"), "rb")
local body = f:read("*a")
f:close()
local n = tonumber(os.getenv("PD_NTASKS"))
local key = os.getenv("PD_KEY")
local headers = {["Authorization"] = "Bearer " .. key, ["Content-Type"] = "image/jpeg"}
local counter = 0
request = function()
  counter = counter + 1
  local t = math.random(0, n - 1)
  return wrk.format("POST", string.format("/infer?task=t%04d", t), headers, body)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("JSON {\"requests\":%d,\"seconds\":%.3f,\"socket_errors\":%d," ..
    "\"non_2xx\":%d,\"p50_ms\":%.2f,\"p99_ms\":%.2f}\n", summary.requests,
    summary.duration / 1e6, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def sh(args, **kw):
    r = subprocess.run(args, capture_output=True, text=True, **kw)
    if r.returncode:
        sys.exit(f"{args[0]} failed: {r.stderr.strip()}")
    return r.stdout


def start_patchd(*args):
    """A patchd on a free loopback port with these arguments; returns (process, port)."""
    p = subprocess.Popen([os.path.join(BUILD, "patchd"), *args, "--listen", "127.0.0.1:0",
                          "--model", MODEL], stderr=subprocess.PIPE, text=True)
    port = None
    for line in p.stderr:
        m = re.search(r"listening on .* \(port (\d+)\)", line)
        if m:
            port = int(m.group(1))
            break
    if port is None:
        sys.exit("patchd did not start")
    threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
    return p, port


def warm(port, key, ntasks, jpeg):
    """One request per task, 4 connections: every task resident before timing."""
    def run(part):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for i in range(part, ntasks, 4):
            c.request("POST", f"/infer?task=t{i:04d}", body=jpeg,
                      headers={"Authorization": "Bearer " + key, "Content-Type": "image/jpeg"})
            r = c.getresponse()
            r.read()
            if r.status != 200:
                sys.exit(f"warm-up: t{i:04d} answered {r.status}")
    ts = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    [t.start() for t in ts]
    [t.join() for t in ts]


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    conc = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    secs = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    tmp = tempfile.mkdtemp(prefix="pd_many_")
    try:
        patch = os.path.join(tmp, "sbdw.safetensors")
        sh([os.path.join(BUILD, "patchctl"), "train", "--data", os.path.join(DATA, "train"),
            "--kind", "sbdw", "--epochs", "1", "--out", patch, "--model", MODEL])
        daisy = os.path.join(DATA, "val", sorted(os.listdir(os.path.join(DATA, "val")))[0])
        jpeg_path = os.path.join(daisy, sorted(os.listdir(daisy))[0])
        jpeg = open(jpeg_path, "rb").read()
        store = os.path.join(tmp, "store")
        for i in range(n):
            d = os.path.join(store, "bench", f"t{i:04d}")
            os.makedirs(d)
            os.link(patch, os.path.join(d, "v1.safetensors"))
            with open(os.path.join(d, "ACTIVE"), "w") as f:
                f.write("1\n")
        print(f"store: {n} tasks, each a {os.path.getsize(patch)}-byte sbdw patch; "
              f"image {os.path.basename(jpeg_path)} ({len(jpeg)} bytes); {conc} clients, {secs} s")

        key = "pd_bench_" + os.urandom(8).hex()
        conf = os.path.join(tmp, "patchd.json")
        with open(conf, "w") as f:
            json.dump({"store": store, "cache_bytes": 4 << 30, "limits": {"queue": 4096},
                       "tenants": [{"name": "bench", "max_tasks": n + 10, "rps": 0,
                                    "keys": [{"sha256": hashlib.sha256(key.encode()).hexdigest(),
                                              "role": "infer"}]}]}, f)
        lua = os.path.join(tmp, "load.lua")
        with open(lua, "w") as f:
            f.write(LUA)
        engine = {1: [], n: []}
        http_r = {1: [], n: []}
        for r in range(rounds):
            for k in (1, n):
                out = sh([os.path.join(BUILD, "tests", "bench_engine_load"), store, "bench",
                          str(k), str(conc), str(secs), jpeg_path],
                         env={**os.environ, "PD_MODEL": MODEL})
                e = json.loads(out)
                engine[k].append(e)
                print(f"round {r + 1}: engine in-process, {k} task(s): "
                      f"{e['requests_per_s']:.1f} req/s, mean batch {e['mean_batch']:.2f}, "
                      f"errors {e['errors']}", flush=True)
            p, port = start_patchd("--config", conf)
            try:
                warm(port, key, n, jpeg)
                for k in (1, n):
                    out = sh(["wrk", "-t1", f"-c{conc}", f"-d{secs}s", "-s", lua,
                              f"http://127.0.0.1:{port}/"],
                             env={**os.environ, "PD_JPEG": jpeg_path, "PD_NTASKS": str(k),
                                  "PD_KEY": key})
                    d = json.loads(re.search(r"^JSON (.*)$", out, re.M).group(1))
                    d["requests_per_s"] = d["requests"] / d["seconds"]
                    http_r[k].append(d)
                    print(f"round {r + 1}: HTTP (wrk, patchd), {k} task(s): "
                          f"{d['requests_per_s']:.1f} req/s, p50 {d['p50_ms']:.1f} ms, "
                          f"p99 {d['p99_ms']:.1f} ms, non-2xx {d['non_2xx']}, "
                          f"socket errors {d['socket_errors']}", flush=True)
            finally:
                p.terminate()
                p.wait(60)

        def med(xs):
            return statistics.median(x["requests_per_s"] for x in xs)

        for k in (1, n):
            print(f"median of {rounds}: engine {k} task(s) {med(engine[k]):.1f} req/s, "
                  f"HTTP {k} task(s) {med(http_r[k]):.1f} req/s")
        print(f"many tasks over HTTP: {n} tasks / 1 task = {med(http_r[n]) / med(http_r[1]):.2f} "
              f"(goal >= 0.9)")
        print(f"many tasks in-process: {n} tasks / 1 task = "
              f"{med(engine[n]) / med(engine[1]):.2f}")
        for k in (1, n):
            print(f"HTTP overhead, {k} task(s): HTTP / in-process = "
                  f"{med(http_r[k]) / med(engine[k]):.2f} (goal >= 0.9)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
