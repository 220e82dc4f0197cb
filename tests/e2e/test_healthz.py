"""patchd loads the backbone, answers /healthz, refuses a bad backbone, stops on SIGTERM."""
import os
import subprocess
import tempfile

import pdtest as t

t.need_model()
s = t.Server()
status, body = s.json("GET", "/healthz")
t.eq(status, 200, "GET /healthz status")
t.eq(body, {"status": "ok"}, "GET /healthz body")
status, body = s.json("POST", "/healthz")
t.eq(status, 405, "POST /healthz status")
t.eq(body.get("error", {}).get("code"), "method_not_allowed", "POST /healthz error code")
status, body = s.json("GET", "/nope")
t.eq(status, 404, "unknown path")
t.check("error" in body, "unknown path answers a JSON error", body)
t.eq(s.stop(), 0, "exit status after SIGTERM")

# a missing and a corrupt backbone: a clear message and a non-zero exit, never a crash
with tempfile.TemporaryDirectory() as d:
    bad = os.path.join(d, "bad.safetensors")
    with open(bad, "wb") as f:
        f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    for model, needle in ((os.path.join(d, "absent"), "No such file"), (bad, "not valid JSON")):
        r = subprocess.run([t.PATCHD, "--listen", "127.0.0.1:0", "--model", model],
                           capture_output=True, text=True, timeout=30)
        t.eq(r.returncode, 1, f"exit status with backbone {model}")
        t.check(needle in r.stderr, f"message for {model} names the problem", r.stderr)
r = subprocess.run([t.PATCHD, "--bogus"], capture_output=True, text=True, timeout=30)
t.eq(r.returncode, 2, "unknown flag exit status")
t.finish()
