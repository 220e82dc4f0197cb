"""Deployment: meson install into a temporary DESTDIR and run the installed programs; the systemd
unit passes systemd-analyze verify; the Dockerfile's COPY sources exist; every Kubernetes
manifest and the compose file parse with their required fields."""
import glob
import json
import os
import re
import shutil
import subprocess
import tempfile

import yaml

import pdtest as t

ROOT = os.path.abspath(os.path.join(t.TESTDATA, "..", ".."))
BUILD = os.path.dirname(t.PATCHD)
t.need_model()
with tempfile.TemporaryDirectory() as d:
    r = subprocess.run(["meson", "install", "-C", BUILD, "--no-rebuild", "--destdir", d],
                       capture_output=True, text=True, timeout=300)
    t.eq(r.returncode, 0, "meson install into DESTDIR", r.stderr[-500:])
    pre = os.path.join(d, "usr", "local")
    for rel in ("bin/patchd", "bin/patchctl", "share/man/man1/patchd.1",
                "share/man/man1/patchctl.1", "etc/patchd/patchd.json",
                "share/patchd/fetch-backbone.sh", "lib/systemd/system/patchd.service"):
        t.check(os.path.exists(os.path.join(pre, rel)), f"installed {rel}")
    for prog in ("patchd", "patchctl"):
        r = subprocess.run([os.path.join(pre, "bin", prog), "--version"], capture_output=True,
                           text=True, timeout=30)
        t.check(r.returncode == 0 and r.stdout.startswith(prog + " "), f"{prog} --version",
                r.stdout)
        r = subprocess.run([os.path.join(pre, "bin", prog), "--help"], capture_output=True,
                           text=True, timeout=30)
        t.check(r.returncode == 0 and "usage:" in r.stdout, f"{prog} --help")
    r = subprocess.run([os.path.join(pre, "bin", "patchctl"), "inspect", t.MODEL],
                       capture_output=True, text=True, timeout=60)
    t.eq(json.loads(r.stdout).get("parameters"), 5555541, "installed patchctl inspect")
    # the unit, with its ExecStart pointed at the DESTDIR binary
    unit = open(os.path.join(pre, "lib/systemd/system/patchd.service")).read()
    t.check("/usr/local/bin/patchd --config /usr/local/etc/patchd/patchd.json" in unit,
            "unit uses the installed paths")
    if shutil.which("systemd-analyze"):
        u = os.path.join(d, "patchd.service")
        with open(u, "w") as f:
            f.write(unit.replace("/usr/local/bin/patchd", os.path.join(pre, "bin", "patchd")))
        r = subprocess.run(["systemd-analyze", "verify", "--man=no", u], capture_output=True,
                           text=True, timeout=60)
        t.eq((r.returncode, r.stderr.strip()), (0, ""), "systemd-analyze verify")
    else:
        t.check(False, "systemd-analyze is not installed (deploy/deps.sh installs systemd)")

# the Dockerfile: every COPY source exists (no Docker engine runs here)
df = open(os.path.join(ROOT, "deploy/docker/Dockerfile")).read()
for line in df.replace("\\\n", " ").splitlines():
    m = re.match(r"\s*COPY\s+(?!--from)(.+)", line)
    if not m:
        continue
    srcs = m.group(1).split()[:-1]
    for src in srcs:
        t.check(glob.glob(os.path.join(ROOT, src)), f"Dockerfile COPY source {src} exists")
t.check("HEALTHCHECK" in df and "EXPOSE 8080" in df and "USER 10001" in df,
        "Dockerfile: healthcheck, port, non-root user")
t.check(re.search(r"^FROM debian:bookworm-slim AS build", df, re.M) and
        df.count("FROM debian:bookworm-slim") == 2, "Dockerfile: two bookworm-slim stages")
compose = yaml.safe_load(open(os.path.join(ROOT, "deploy/docker/docker-compose.yml")))
svc = compose["services"]["patchd"]
t.check("patchd-store" in compose["volumes"] and any(v.startswith("patchd-store:")
                                                     for v in svc["volumes"]),
        "compose: a named volume for the store")

# Kubernetes: parse every manifest, check the fields that matter
docs = {}
for path in sorted(glob.glob(os.path.join(ROOT, "deploy/k8s/*.yaml"))):
    for doc in yaml.safe_load_all(open(path)):
        t.check(doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get("name"),
                f"{os.path.basename(path)}: apiVersion, kind, metadata.name")
        docs[doc["kind"]] = doc
t.eq(sorted(docs), ["ConfigMap", "Deployment", "HorizontalPodAutoscaler",
                    "PersistentVolumeClaim", "Secret", "Service"], "the six manifests")
pod = docs["Deployment"]["spec"]["template"]["spec"]
c = pod["containers"][0]
t.eq(c["readinessProbe"]["httpGet"]["path"], "/readyz", "readiness probe")
t.eq(c["livenessProbe"]["httpGet"]["path"], "/healthz", "liveness probe")
t.check(c["resources"]["requests"] and c["resources"]["limits"], "requests and limits")
t.check(pod["securityContext"]["runAsNonRoot"] and c["securityContext"]["readOnlyRootFilesystem"],
        "non-root, read-only root filesystem")
t.check(pod["terminationGracePeriodSeconds"] >= 35, "graceful termination")
t.eq(docs["PersistentVolumeClaim"]["spec"]["accessModes"], ["ReadWriteMany"], "RWX store")
t.eq(docs["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["resource"]["name"], "cpu", "HPA on CPU")
conf = json.loads(docs["ConfigMap"]["data"]["patchd.json"])
t.check(conf["tenants"] and all(k["sha256"].startswith("env:") for k in conf["tenants"][0]["keys"]),
        "ConfigMap config parses and takes hashes from the Secret")
t.finish()
