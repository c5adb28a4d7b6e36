#!/usr/bin/env python3
"""Instructions per request of the filter-cost variants, under callgrind.

One Envoy (--concurrency 1) per variant runs under `valgrind --tool=callgrind`;
the upstream is a plain Envoy (direct_response, not under valgrind). Per
variant: warm up, zero the counters (callgrind_control -z), send N1 requests
over one keep-alive connection, dump (callgrind_control -d), zero, send N2,
dump. Instructions per request = (Ir(N2) - Ir(N1)) / (N2 - N1), which cancels
the per-phase constants (connection set-up, the dump itself). Each dump is also
split by object: Envoy binary (.text), tcmalloc (Envoy's google_malloc section,
which callgrind shows as object "???" like the JIT), V8 JIT code (the rest of
"???"), libc, other.

Usage: bench/callgrind.py [--variants a,b] [--n1 2000] [--n2 4000] [--sr-wasm PATH] [--noop-wasm PATH]
                  [--tag TAG]   (run from the repository root)
"""
import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.getcwd()
ENVOY = os.environ.get(
    "ENVOY_BIN",
    glob.glob(os.path.join(REPO, ".venv/lib/python3*/site-packages/envoy/_bin/envoy"))[0],
)
WASM_DIR = os.path.join(REPO, "target/wasm32-wasip1/wasm")
BENCH = os.path.join(REPO, "envoy-config/bench")
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
VALGRIND = [
    "valgrind", "--tool=callgrind", "--smc-check=all-non-file",
    "--vex-iropt-register-updates=allregs-at-mem-access",
    "--trace-children=no", "--dump-instr=no", "--collect-jumps=no",
]


def render(template, vars):
    """As testbed/src/render.rs: ${NAME} placeholders, multi-line values
    re-indented to the placeholder line's indent."""
    out = []
    for line in template.splitlines(keepends=True):
        indent = line[: len(line) - len(line.lstrip(" "))]

        def sub(m):
            value = vars[m.group(1)]
            return value.rstrip().replace("\n", "\n" + indent)

        out.append(re.sub(r"\$\{([A-Z0-9_]+)\}", sub, line))
    return "".join(out)


def read(name):
    with open(os.path.join(BENCH, name)) as f:
        return f.read()


class Envoy:
    def __init__(self, config, workdir, name, valgrind=None):
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        cfg = os.path.join(self.dir, "envoy.yaml")
        with open(cfg, "w") as f:
            f.write(config)
        self.admin_path = os.path.join(self.dir, "admin-address")
        self.log = os.path.join(self.dir, "envoy.log")
        cmd = [ENVOY, "-c", cfg, "--use-dynamic-base-id",
               "--admin-address-path", self.admin_path, "--log-path", self.log,
               "-l", "info", "--concurrency", "1"]
        if valgrind is not None:
            cmd = valgrind + cmd
        self.stderr = open(os.path.join(self.dir, "stderr"), "w")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                     stdout=self.stderr, stderr=self.stderr)
        print(f"  started {name}: pid {self.proc.pid}", flush=True)
        deadline = time.time() + 600
        while True:
            if self.proc.poll() is not None:
                sys.exit(f"{name} exited: see {self.dir}")
            try:
                with open(self.admin_path) as f:
                    a = f.read().strip()
                if a:
                    self.admin = a
                    break
            except FileNotFoundError:
                pass
            if time.time() > deadline:
                sys.exit(f"{name}: no admin address")
            time.sleep(0.5)
        while True:
            ls = self.listeners()
            if ls and all(p != 0 for p in ls.values()):
                break
            time.sleep(0.5)

    def listeners(self):
        try:
            with urllib.request.urlopen(f"http://{self.admin}/listeners?format=json", timeout=30) as r:
                doc = json.load(r)
        except Exception:
            return None
        return {l["name"]: l["local_address"]["socket_address"]["port_value"]
                for l in doc.get("listener_statuses", [])}

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def send(port, n, headers, workdir):
    """n GETs over one keep-alive connection (one curl, n URLs); all must be 200."""
    cfg = os.path.join(workdir, "curl.cfg")
    with open(cfg, "w") as f:
        f.write('header = "Host: backend"\n')
        f.write(f'header = "traceparent: {TRACEPARENT}"\n')
        for k, v in headers:
            f.write(f'header = "{k}: {v}"\n')
        f.write('write-out = "%{http_code}\\n"\n')
        for _ in range(n):
            f.write(f'url = "http://127.0.0.1:{port}/"\noutput = "/dev/null"\n')
    out = subprocess.run(["curl", "-s", "--noproxy", "*", "-K", cfg],
                         capture_output=True, text=True, check=True).stdout.split()
    ok = sum(1 for c in out if c == "200")
    if ok != n:
        sys.exit(f"sent {n}, {ok} answered 200: {sorted(set(out))}")


def envoy_unnamed_sections():
    """Executable sections of the Envoy binary outside .text (tcmalloc's
    google_malloc and malloc_hook, .plt ...): valgrind does not attribute them
    to the binary, so callgrind shows their functions under object "???"."""
    out = subprocess.run(["readelf", "-SW", ENVOY], capture_output=True, text=True, check=True).stdout
    ranges = []
    for m in re.finditer(r"\]\s+(\S+)\s+PROGBITS\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)\s+\S+\s+(\S*X\S*)", out):
        name, addr, size = m.group(1), int(m.group(2), 16), int(m.group(3), 16)
        if name != ".text":
            ranges.append((name, addr, addr + size))
    return ranges


# valgrind loads a PIE main executable at this fixed base
PIE_BASE = int(os.environ.get("PIE_BASE", "0x108000"), 16)
SECTIONS = None


def split_by_object(path):
    """Self Ir per object in a callgrind out file (call cost lines skipped).
    Functions of object "???" are split into the Envoy binary's sections outside
    .text (by address) and the rest: V8's generated code ("jit")."""
    global SECTIONS
    if SECTIONS is None:
        SECTIONS = envoy_unnamed_sections()
    obs, fns = {}, {}
    totals = {}
    ob = fn = None
    skip_next = False
    with open(path) as f:
        for line in f:
            if skip_next:
                skip_next = False
                continue
            m = re.match(r"(c?ob|c?fn)=(\(\d+\))?\s*(.*)", line.rstrip("\n"))
            if m:
                kind, ident, name = m.groups()
                d = obs if kind.endswith("ob") else fns
                if ident:
                    if name:
                        d[ident] = name
                    name = d[ident]
                if kind == "ob":
                    ob = name
                elif kind == "fn":
                    fn = name
                continue
            if line.startswith("calls="):
                skip_next = True
            elif line[:1].isdigit() or line[:1] in "+-*":
                parts = line.split()
                if len(parts) >= 2:
                    key = ob
                    if ob == "???" and fn and fn.startswith("0x"):
                        a = int(fn, 16) - PIE_BASE
                        for sname, lo, hi in SECTIONS:
                            if lo <= a < hi:
                                key = "envoy:" + sname
                                break
                    totals[key] = totals.get(key, 0) + int(parts[1])
    return totals


def classify(totals):
    out = {"envoy": 0, "tcmalloc": 0, "jit": 0, "libc": 0, "other": 0}
    for ob, ir in totals.items():
        if ob == "envoy:google_malloc" or ob == "envoy:malloc_hook":
            out["tcmalloc"] += ir
        elif ob is not None and (ob.endswith("/envoy") or ob.startswith("envoy:")):
            out["envoy"] += ir
        elif ob is None or ob.startswith("???"):
            out["jit"] += ir
        elif "libc" in ob or "libm" in ob or "ld-linux" in ob or "libpthread" in ob:
            out["libc"] += ir
        else:
            out["other"] += ir
    out["total"] = sum(totals.values())
    return out


def dump(pid, outfile_base):
    before = set(glob.glob(outfile_base + "*"))
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    # the dump is written asynchronously by the next valgrind scheduler pass
    for _ in range(600):
        new = set(glob.glob(outfile_base + "*")) - before
        if new:
            time.sleep(2)
            return sorted(new)[-1]
        time.sleep(0.2)
    sys.exit("no dump appeared")


def zero(pid):
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
    time.sleep(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="plain,native-100,native-1000,lua-nocontext,lua-routed,"
                    "wasm-noop,wasm-read-headers,sr-static-nocontext,sr-static-routed")
    ap.add_argument("--n1", type=int, default=2000)
    ap.add_argument("--n2", type=int, default=4000)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--sr-wasm", default=os.path.join(WASM_DIR, "sandbox_router_filter.wasm"))
    ap.add_argument("--noop-wasm", default=os.path.join(WASM_DIR, "noop_filter.wasm"))
    ap.add_argument("--tag", default="")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="cgbench-")
    os.makedirs(workdir, exist_ok=True)
    print(f"workdir {workdir}; envoy {ENVOY}", flush=True)
    noop_wasm = args.noop_wasm

    upstream = Envoy(render(read("upstream.yaml"), {"ADMIN_PORT": "0", "LISTEN_PORT": "0"}),
                     workdir, "upstream")
    up_port = upstream.listeners()["upstream"]
    upstream_addr = f"127.0.0.1:{up_port}"
    template = read("envoy.yaml")

    def variant_config(filters, routes):
        return render(template, {"ADMIN_PORT": "0", "LISTEN_PORT": "0",
                                 "UPSTREAM_PORT": str(up_port),
                                 "HTTP_FILTERS": filters, "EXTRA_ROUTES": routes})

    noop = lambda cfg: render(read("noop-filter.yaml"),
                              {"NOOP_WASM_PATH": noop_wasm, "NOOP_CONFIG": cfg})
    static_config = json.dumps({"table": {"version": 1, "entries": [
        {"routing_key": f"static-key-{i}",
         "forks": [{"service": "backend", "endpoints": [upstream_addr]}]}
        for i in range(10)]}}, separators=(",", ":"))
    sr = render(read("sandbox-router-filter.yaml"),
                {"WASM_PATH": args.sr_wasm, "FILTER_CONFIG": static_config})
    marker = read("marker-route.yaml")
    routed = [("baggage", "sandbox-routing-key=static-key-5")]
    native_route = read("native-route.yaml")
    native = lambda n: "".join(render(native_route, {"KEY": f"native-key-{i:07}"}) for i in range(n))
    lua_routes = "".join(f'["lua-key-{i}"] = "{upstream_addr}",\n' for i in range(10))
    lua = render(read("lua-filter.yaml"), {"LUA_ROUTES": lua_routes})
    variants = {
        "plain": (lambda: variant_config("", ""), []),
        "native-100": (lambda: variant_config("", native(100)), []),
        "native-1000": (lambda: variant_config("", native(1000)), []),
        "lua-nocontext": (lambda: variant_config(lua, marker), []),
        "lua-routed": (lambda: variant_config(lua, marker), [("baggage", "sandbox-routing-key=lua-key-5")]),
        "wasm-noop": (lambda: variant_config(noop(""), ""), []),
        "wasm-read-headers": (lambda: variant_config(noop("read-headers"), ""), []),
        "sr-static-nocontext": (lambda: variant_config(sr, marker), []),
        "sr-static-routed": (lambda: variant_config(sr, marker), routed),
    }
    results = {}
    try:
        for name in args.variants.split(","):
            make, headers = variants[name]
            vname = name + args.tag
            out_base = os.path.join(workdir, vname, "callgrind.out")
            os.makedirs(os.path.join(workdir, vname), exist_ok=True)
            vg = VALGRIND + [f"--callgrind-out-file={out_base}.%p"]
            t0 = time.time()
            envoy = Envoy(make(), workdir, vname, valgrind=vg)
            port = envoy.listeners()["outbound"]
            print(f"  {vname}: up in {time.time() - t0:.0f}s, port {port}", flush=True)
            try:
                send(port, args.warmup, headers, envoy.dir)
                phases = {}
                for n in (args.n1, args.n2):
                    zero(envoy.proc.pid)
                    t = time.time()
                    send(port, n, headers, envoy.dir)
                    f = dump(envoy.proc.pid, out_base)
                    phases[n] = classify(split_by_object(f))
                    print(f"  {vname}: {n} requests in {time.time() - t:.0f}s: {phases[n]}", flush=True)
                # a request not in the table / the check that routed traffic was routed
                with urllib.request.urlopen(f"http://{envoy.admin}/stats?filter=cluster.sandbox_original_dst.upstream_rq_total", timeout=30) as r:
                    stat = r.read().decode().strip()
                per = {k: (phases[args.n2][k] - phases[args.n1][k]) / (args.n2 - args.n1)
                       for k in phases[args.n2]}
                results[vname] = {"per_request": per, "phases": phases, "stat": stat}
                print(f"  {vname}: per request {per}; {stat}", flush=True)
            finally:
                envoy.stop()
    finally:
        upstream.stop()
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    lines = ["| variant | Ir/request | × plain | envoy (.text) | tcmalloc | V8 JIT | libc |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    plain = results.get("plain" + args.tag, {}).get("per_request", {}).get("total")
    for name, r in results.items():
        p = r["per_request"]
        ratio = f"{p['total'] / plain:.3f}" if plain else "-"
        lines.append(f"| {name} | {p['total']:.0f} | {ratio} | {p['envoy']:.0f} | {p['tcmalloc']:.0f} "
                     f"| {p['jit']:.0f} | {p['libc']:.0f} |")
    table = "\n".join(lines)
    print("\n" + table)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(f"Command: `python3 bench/callgrind.py {' '.join(sys.argv[1:])}`\n\n{table}\n")


if __name__ == "__main__":
    main()
