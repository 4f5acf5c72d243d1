"""A/B comparison of two builds of the service, alternating, on the same machine.

The absolute rate of this machine moves by a factor of two over an hour (it is shared), and
one benchmark run against the next is no evidence that a change helped. This runs the SAME
load against build A, then B, then A... on a fresh data directory each time, and reports the
median rate and CPU time per request of each, and their ratio: what a change is worth.

Usage: bench/ab A_BINARY B_BINARY [--rounds N] [--duration S] [--connections C] [--kind post|get|both]
Build A from another checkout, e.g.:
  git worktree add /tmp/base HEAD~1 && (cd /tmp/base && CARGO_TARGET_DIR=/tmp/base-target cargo build --release)
  bench/ab /tmp/base-target/release/data-ingestion-api target/release/data-ingestion-api
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the same helpers as bench/run)


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def one_run(binary, kind, args, workdir, bodies, to_import):
    data = tempfile.mkdtemp(prefix="ab-data-", dir=workdir)
    port = bench.free_port()
    env = dict(os.environ, DATA_DIR=data, RUST_LOG="info")
    env.pop("FUNCTIONS_CUSTOMHANDLER_PORT", None)
    with open(os.path.join(workdir, "service.log"), "ab") as out:
        service = subprocess.Popen([binary, "serve", "--port", str(port)], env=env, stdout=out, stderr=out)
    try:
        bench.wait_answer(port)
        if kind == "get":
            subprocess.run([binary, "import", to_import, "--url", f"http://127.0.0.1:{port}", "--quiet", "--restart",
                            "--accepted", os.path.join(workdir, "accepted.ndjson")],
                           check=True, capture_output=True, cwd=workdir)
            bench.wait_drained(port)
        script, wrk_env = ("get.lua", {"BENCH_IDS": str(bench.IMPORT_RECORDS)}) if kind == "get" else (
            "post.lua", {"BENCH_BODIES": bodies})
        before = cpu_ticks(service.pid)
        result = bench.wrk(f"http://127.0.0.1:{port}", script, args.duration, args.connections, wrk_env)
        ticks = cpu_ticks(service.pid) - before
        requests = result["rps"] * args.duration
        hz = os.sysconf("SC_CLK_TCK")
        return result["rps"], ticks / hz / requests * 1e6
    finally:
        service.terminate()
        service.wait()
        shutil.rmtree(data, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--kind", choices=["post", "get", "both"], default="both")
    args = parser.parse_args()
    args.a, args.b = os.path.abspath(args.a), os.path.abspath(args.b)
    for binary in (args.a, args.b):
        if not os.access(binary, os.X_OK):
            sys.exit(f"ab: {binary} is not an executable")
    if not shutil.which("wrk"):
        sys.exit("ab: wrk is not installed (bench/run installs it: apt-get install wrk)")
    workdir = tempfile.mkdtemp(prefix="ab-")
    bodies, (to_import, _) = bench.prepare(workdir)
    kinds = ["post", "get"] if args.kind == "both" else [args.kind]
    runs = {(k, side): [] for k in kinds for side in "ab"}
    for round_ in range(args.rounds):
        for kind in kinds:
            for side, binary in (("a", args.a), ("b", args.b)):
                rps, cpu_us = one_run(binary, kind, args, workdir, bodies, to_import)
                runs[(kind, side)].append((rps, cpu_us))
                bench.log(f"round {round_ + 1} {kind} {side.upper()}: {rps:,.0f} req/s, {cpu_us:.1f} µs CPU/request")
    print(f"\nA = {args.a}\nB = {args.b}\nwrk -t2 -c{args.connections} -d{args.duration}s, {args.rounds} rounds, "
          "medians (each round runs A then B on fresh data)")
    print(f"| {'load':<6} | {'A req/s':>10} | {'B req/s':>10} | {'B/A':>6} | {'A µs CPU/req':>13} | {'B µs CPU/req':>13} | {'B/A':>6} |")
    print(f"|{'-' * 8}|{'-' * 12}|{'-' * 12}|{'-' * 8}|{'-' * 15}|{'-' * 15}|{'-' * 8}|")
    for kind in kinds:
        a_rps = statistics.median(r for r, _ in runs[(kind, "a")])
        b_rps = statistics.median(r for r, _ in runs[(kind, "b")])
        a_cpu = statistics.median(c for _, c in runs[(kind, "a")])
        b_cpu = statistics.median(c for _, c in runs[(kind, "b")])
        print(f"| {kind.upper():<6} | {a_rps:>10,.0f} | {b_rps:>10,.0f} | {b_rps / a_rps:>6.2f} | {a_cpu:>13.1f} | {b_cpu:>13.1f} | {b_cpu / a_cpu:>6.2f} |")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
