"""Helpers for the end-to-end tests: paths from the environment, a real patchd on a free
loopback port, a small HTTP client, and plain assertions that print both values."""
import http.client
import json
import os
import re
import signal
import subprocess
import sys

PATCHD = os.environ["PD_PATCHD"]
PATCHCTL = os.environ["PD_PATCHCTL"]
MODEL = os.environ["PD_MODEL"]
SHARED = os.environ.get("PD_SHARED", "")
TESTDATA = os.environ["PD_TESTDATA"]

failures = 0
passes = 0


def check(cond, what, *detail):
    global failures, passes
    if cond:
        passes += 1
        return True
    failures += 1
    print("FAIL:", what, *detail, file=sys.stderr)
    return False


def eq(got, want, what, *detail):
    return check(got == want, what, f"got {got!r}, want {want!r}", *detail)


def finish():
    print(f"{os.path.basename(sys.argv[0])}: {passes} passed, {failures} failed")
    sys.exit(1 if failures else 0)


def need_model():
    if not os.path.exists(MODEL):
        print(f"backbone {MODEL} is missing: run models/fetch-backbone.sh", file=sys.stderr)
        sys.exit(1)


def run(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, timeout=300, **kw)


def new_patch(tmpdir, labels, seed=1, size=96):
    """The bytes of a fresh head-only classification patch (patchctl patch new)."""
    import uuid
    p = os.path.join(tmpdir, f"p{uuid.uuid4().hex}.safetensors")
    r = run([PATCHCTL, "patch", "new", "--model", MODEL, "--labels", ",".join(labels),
             "--seed", str(seed), "--size", str(size), "--out", p])
    assert r.returncode == 0, r.stderr
    return open(p, "rb").read()


class Server:
    """A patchd on 127.0.0.1:0; the port is read from its start-up line. stderr is drained by a
    thread (the access log would otherwise fill the pipe) and kept in self.log."""

    def __init__(self, *args, expect_fail=False, model=True):
        import threading
        cmd = [PATCHD, "--listen", "127.0.0.1:0", *(["--model", MODEL] if model else []), *args]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        self.port = None
        self.log = []
        started = threading.Event()

        def drain():
            for line in self.proc.stderr:
                self.log.append(line)
                m = re.search(r"listening on .* \(port (\d+)\)", line)
                if m and self.port is None:
                    self.port = int(m.group(1))
                    started.set()
            started.set()

        self.reader = threading.Thread(target=drain, daemon=True)
        self.reader.start()
        started.wait(60)
        if self.port is None and not expect_fail:
            raise RuntimeError("patchd did not start: " + "".join(self.log))

    def request(self, method, path, body=None, headers=None, timeout=60):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, dict(r.getheaders()), data

    def json(self, method, path, body=None, headers=None):
        status, hdrs, data = self.request(method, path, body, headers)
        try:
            return status, json.loads(data)
        except ValueError:
            return status, {"_raw": data.decode("latin-1")}

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(10)
        return self.proc.returncode

    def text(self):
        return "".join(self.log)
