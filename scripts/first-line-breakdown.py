#!/usr/bin/env python3
"""Where the first line of local `kubectl orb8 trace network` spends its time.

Run as root after a build (default: target/release):

    python3 scripts/first-line-breakdown.py [--bin target/release] [--runs 5]

In a network namespace of its own, with a new UDP flow on lo every 2 ms, it runs
`kubectl-orb8 --local --local-arg=--interface=lo trace network -o json` until its first line,
then Ctrl-C, `--runs` times plain (the time to the first line as a user sees it) and `--runs`
times under `strace -f --seccomp-bpf` (syscall timestamps of client and agent: the milestones
below; strace adds some time of its own). Prints medians (min-max) in milliseconds. Asserts
nothing. Removes its namespace and processes on exit.
"""

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

TRAFFIC = r"""
import socket, time
r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); r.bind(("127.0.0.1", 9000))
p = 20000
while True:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", p))
    s.sendto(b"x", ("127.0.0.1", 9000)); s.close()
    p = 20000 if p == 60000 else p + 1
    time.sleep(0.002)
"""

# (name, what it measures up to): each milestone's time from the client's exec.
MILESTONES = [
    ("agent exec", "client start until it starts orb8-agent"),
    ("kernel BTF opened", "agent start (runtime, GPU probe) until it opens /sys/kernel/btf/vmlinux"),
    ("first bpf() after BTF", "parsing the kernel's BTF (aya) until the first bpf() call after it"),
    ("TC programs loaded", "feature probes, maps, program BTF, loading (verifier) both TC programs"),
    ("attached", "until the last BPF_LINK_CREATE (TCX) on lo"),
    ("agent ready line", "until the agent prints its ready line"),
    ("client connects", "until the client connects to the agent"),
    ("first line", "GetStatus, StreamEvents, the opening's table read, the first record written"),
]


def trace_command(binary_dir, ns):
    return [
        "ip", "netns", "exec", ns,
        os.path.join(binary_dir, "kubectl-orb8"),
        "--local", "--local-arg=--interface=lo",
        "trace", "network", "-o", "json", "--port", "9000", "--duration", "20s",
    ]


def first_line(cmd):
    """Runs cmd until its first stdout line; returns seconds to it."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    p.stdout.readline()
    took = time.monotonic() - t0
    p.send_signal(signal.SIGINT)
    try:
        p.wait(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    return took


def strace_milestones(binary_dir, ns):
    """One run under strace; the milestones' times in seconds from the client's exec."""
    with tempfile.NamedTemporaryFile(suffix=".strace") as out:
        cmd = [
            "strace", "-f", "--seccomp-bpf", "-ttt", "-o", out.name,
            "-e", "trace=execve,bpf,connect,write,openat,clone,clone3,fork,vfork",
        ] + trace_command(binary_dir, ns)
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        p.stdout.readline()
        # Ctrl-C to the client itself (strace's child: `ip netns exec` execs it). Interrupting
        # strace instead detaches it mid-run, which was seen to leave client and agent threads
        # stuck.
        with open(f"/proc/{p.pid}/task/{p.pid}/children", encoding="ascii") as f:
            for child in f.read().split():
                os.kill(int(child), signal.SIGINT)
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        lines = open(out.name, encoding="utf-8", errors="replace").read().splitlines()
    t = {}
    # Which program each thread id runs: a new thread or child is its parent's until it execs.
    owner = {}
    btf_seen = False
    sched_cls = []
    for line in lines:
        m = re.match(r"(\d+)\s+(\d+\.\d+) (.*)", line)
        if not m:
            continue
        pid, ts, call = m.group(1), float(m.group(2)), m.group(3)
        child = re.search(r"= (\d+)$", call)
        if child and re.match(r"(<\.\.\. )?v?(clone3?|fork)", call):
            owner.setdefault(child.group(1), owner.get(pid))
        who = owner.get(pid)
        if call.startswith("execve(") and "kubectl-orb8" in call.split(",")[0]:
            owner[pid] = "client"
            t.setdefault("start", ts)
        elif call.startswith("execve(") and "orb8-agent" in call.split(",")[0]:
            owner[pid] = "agent"
            t.setdefault("agent exec", ts)
        elif who == "agent" and "/sys/kernel/btf/vmlinux" in call:
            t.setdefault("kernel BTF opened", ts)
            btf_seen = True
        elif who == "agent" and call.startswith("bpf(") and btf_seen:
            t.setdefault("first bpf() after BTF", ts)
            if "BPF_PROG_TYPE_SCHED_CLS" in call:
                sched_cls.append(ts)
            if "BPF_LINK_CREATE" in call:
                t["attached"] = ts
        elif who == "agent" and call.startswith('write(1, "{\\"attach_mode'):
            t.setdefault("agent ready line", ts)
        elif who == "client" and call.startswith("connect(") and "agent ready line" in t:
            t.setdefault("client connects", ts)
        elif who == "client" and call.startswith('write(1, "{\\"event'):
            t.setdefault("first line", ts)
    if sched_cls:
        # The TC programs are loaded by then: the first link creation follows the last load.
        t["TC programs loaded"] = sched_cls[-1]
    start = t.get("start")
    return {k: v - start for k, v in t.items() if k != "start" and start is not None}


def summary(values):
    ms = [v * 1000 for v in values]
    return f"{statistics.median(ms):6.0f} ({min(ms):.0f}-{max(ms):.0f})"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default="target/release", help="folder of kubectl-orb8 and orb8-agent")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (the agent loads eBPF programs)")
    ns = f"o8first{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    traffic = None
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        traffic = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", TRAFFIC])
        time.sleep(0.5)
        plain = [first_line(trace_command(args.bin, ns)) for _ in range(args.runs)]
        traced = [strace_milestones(args.bin, ns) for _ in range(args.runs)]
    finally:
        if traffic is not None:
            traffic.kill()
            traffic.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False)
    print(f"binaries: {os.path.abspath(args.bin)}; {args.runs} runs each; ms, median (min-max)")
    print(f"first line, plain runs:          {summary(plain)}")
    print("under strace, from the client's exec (step: time since the previous milestone):")
    prev = [0.0] * len(traced)
    for name, what in MILESTONES:
        got = [r.get(name) for r in traced]
        if any(g is None for g in got):
            print(f"  {name:24} not seen in every run")
            continue
        steps = [g - p for g, p in zip(got, prev)]
        print(f"  {name:24} at {summary(got)}  step {summary(steps)}  {what}")
        prev = got


if __name__ == "__main__":
    main()
