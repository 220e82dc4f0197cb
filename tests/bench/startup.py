"""Start-up time of patchd with the backbone on disk (issue #8, target 6): N starts, each timed
from the spawn to the first 200 from GET /readyz (polled every 5 ms), and patchd's own "ready in"
figure; prints the median and the worst. Then the p99 of a patch's cold load comes from
build/tests/bench_patch_load.

  /usr/bin/python3 tests/bench/startup.py [N]
"""
import http.client
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODEL = os.environ.get("PD_MODEL", os.path.join(ROOT, "models", "ssd_mobilenet_v1.safetensors"))


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    wall, own = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            t0 = time.perf_counter()
            p = subprocess.Popen([os.path.join(ROOT, "build", "patchd"), "--listen", "127.0.0.1:0",
                                  "--store", os.path.join(tmp, "store"), "--model", MODEL],
                                 stderr=subprocess.PIPE, text=True)
            port = None
            for line in p.stderr:
                m = re.search(r"\(port (\d+)\).*ready in (\d+) ms", line)
                if m:
                    port, ready = int(m.group(1)), int(m.group(2))
                    break
            while True:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                try:
                    c.request("GET", "/readyz")
                    if c.getresponse().status == 200:
                        break
                except OSError:
                    pass
                finally:
                    c.close()
                time.sleep(0.005)
            wall.append((time.perf_counter() - t0) * 1e3)
            own.append(ready)
            p.terminate()
            p.wait(30)
    print(f"patchd start-up to /readyz 200, {n} starts: median {statistics.median(wall):.0f} ms, "
          f"worst {max(wall):.0f} ms (patchd's own 'ready in': median "
          f"{statistics.median(own):.0f} ms); goal < 1000 ms")


if __name__ == "__main__":
    main()
