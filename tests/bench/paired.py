"""The forward pass against the PyTorch peer, interleaved block by block (issue #8, targets 1-3).

tests/bench/forward.sh runs the two programs one after the other, a second or more each, and
this machine's speed drifts between the two halves of a round: its per-round ratios spread from
0.65 to 0.97. Here both programs stay loaded, as servers (patchctl bench --serve and
tests/bench/torch_infer.py --serve, the same network, weights and photo as forward.sh), and take
turns: PASSES timed passes of one, then PASSES of the other (which goes first alternates), BLOCKS
times. Each block gives a ratio of the two medians; a drift slower than a block cancels out.

One line per figure: each program's median over all its passes, and the median of the per-block
ratios with its quartiles. Not part of the tests.

  /usr/bin/python3 tests/bench/paired.py [BLOCKS] [PASSES] [TASKS] [THREADS]
  (defaults 100, 10, classify,faces, 1,2; e.g. `paired.py 80 10 classify 1` for one figure)
"""
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PHOTO = {"classify": "tests/data/flowers2/val/daisy/10172636503_21bededa75_n.jpg",
         "faces": "tests/data/faces/sample1.jpg"}
SIZE = {"classify": 224, "faces": 512}


class Server:
    """One program in --serve mode: block(n) runs n timed passes and returns their times."""

    def __init__(self, argv):
        self.p = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True)

    def block(self, n):
        self.p.stdin.write(f"{n}\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            sys.exit(f"paired.py: {self.p.args[0]} stopped (exit {self.p.wait()})")
        return json.loads(line)["ms"]

    def close(self):
        self.p.stdin.close()
        if self.p.wait() != 0:
            sys.exit(f"paired.py: {self.p.args[0]} failed (exit {self.p.returncode})")


def quartiles(v):
    v = sorted(v)
    return v[len(v) // 4], statistics.median(v), v[(3 * len(v)) // 4]


def main():
    blocks = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    passes = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    tasks = sys.argv[3].split(",") if len(sys.argv) > 3 else ["classify", "faces"]
    thread_counts = [int(t) for t in sys.argv[4].split(",")] if len(sys.argv) > 4 else [1, 2]
    for task in tasks:
        if task not in PHOTO:
            sys.exit(f"paired.py: task '{task}' is not classify or faces")
        n = passes if task == "classify" else max(passes // 3, 2)
        for threads in thread_counts:
            common = ["--task", task, "--threads", str(threads), "--image", PHOTO[task]]
            ours = Server([os.path.join(ROOT, "build", "patchctl"), "bench", "--serve"] + common)
            peer = Server(["/usr/bin/python3", os.path.join(ROOT, "tests", "bench",
                                                            "torch_infer.py"), "--serve"] + common)
            o_all, p_all, ratios = [], [], []
            for b in range(blocks):
                if b % 2:
                    o, p = ours.block(n), peer.block(n)
                else:
                    p, o = peer.block(n), ours.block(n)
                o_all += o
                p_all += p
                ratios.append(statistics.median(o) / statistics.median(p))
            ours.close()
            peer.close()
            q1, med, q3 = quartiles(ratios)
            print(f"{task} {SIZE[task]}x{SIZE[task]} batch 1, {threads} thread(s), interleaved: "
                  f"patchd {statistics.median(o_all):.2f} ms, pytorch "
                  f"{statistics.median(p_all):.2f} ms, ratio {med:.3f} (per-block quartiles "
                  f"{q1:.3f} to {q3:.3f}; {blocks} blocks of {n} passes each)", flush=True)


if __name__ == "__main__":
    main()
