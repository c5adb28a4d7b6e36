#!/usr/bin/env python3
"""Instructions per request of the filter-cost variants, under callgrind.

One Envoy (--concurrency 1) per configuration runs under `valgrind
--tool=callgrind`; the upstream is a plain Envoy (direct_response, not under
valgrind), and so is the control service of the pushed-table variants. Per
variant: warm up, zero the counters (callgrind_control -z), send N1 requests
over one keep-alive connection, dump (callgrind_control -d), zero, send N2,
dump. Instructions per request = (Ir(N2) - Ir(N1)) / (N2 - N1), which cancels
the per-phase constants (connection set-up, the dump itself). A variant's
no-context and routed traffic run one after the other on the same Envoy. Each
dump is also split by object: Envoy binary (.text), tcmalloc (Envoy's
google_malloc section, which callgrind shows as object "???" like the JIT),
V8 JIT code or LuaJIT (the rest of "???"), a native module's own .so, libc,
other.

Both hosts of sandbox-router are measured: the Wasm filter (sr-*) and the
native dynamic module (sr-native-*), each over its floor (wasm-noop,
module-noop), in the bench layout with a static table, and on its shipped
sidecar with pushed tables of 10 / 10,000 / 100,000 sandboxes. The stores,
the sidecar configs and the bench-layout filters come from
`sandbox-router-bench` (store, sidecar-config, filter), as `cost` makes them.

Then, without valgrind, Envoy's RSS with the largest pushed table, for both
hosts (--rss; plain Envoy for reference).

Usage: bench/callgrind.py [--variants a,b] [--n1 2000] [--n2 4000] [--tables 10,10000,100000]
                  [--rss 100000] [--bench-bin PATH] [--tag TAG] [--workdir DIR]
       (run from the repository root; `make bench-instructions` builds what it needs)
"""
import argparse
import glob
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

REPO = os.getcwd()


def envoy_elf():
    """The Envoy binary itself. valgrind must start Envoy, not the .venv's
    Python launcher that the Makefile exports as ENVOY_BIN: with
    --trace-children=no, the Envoy that launcher execs would run untraced."""
    path = os.environ.get("ENVOY_BIN")
    if path:
        with open(path, "rb") as f:
            if f.read(4) == b"\x7fELF":
                return path
    return glob.glob(os.path.join(REPO, ".venv/lib/python3*/site-packages/envoy/_bin/envoy"))[0]


ENVOY = envoy_elf()
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
        if os.path.exists(self.admin_path):  # an earlier run's (a reused --workdir)
            os.remove(self.admin_path)
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
            if self.proc.poll() is not None:
                sys.exit(f"{name} exited: see {self.dir}")
            if time.time() > deadline:
                sys.exit(f"{name}: no listeners")
            time.sleep(0.5)

    def listeners(self):
        try:
            with urllib.request.urlopen(f"http://{self.admin}/listeners?format=json", timeout=30) as r:
                doc = json.load(r)
        except Exception:
            return None
        return {l["name"]: l["local_address"]["socket_address"]["port_value"]
                for l in doc.get("listener_statuses", [])}

    def port(self, listener):
        """A listener's port. The admin endpoint may be slow to answer while
        Envoy's main thread is busy (under valgrind, a 100,000-key snapshot
        written to shared data): asked again until the start deadline."""
        deadline = time.time() + 600
        while True:
            ls = self.listeners()
            if ls and listener in ls:
                return ls[listener]
            if self.proc.poll() is not None:
                sys.exit(f"{self.dir}: Envoy exited")
            if time.time() > deadline:
                sys.exit(f"{self.dir}: no listener {listener}")
            time.sleep(1)

    def stat(self, name):
        """A stat's value (0 when absent): the exact name."""
        q = urllib.parse.quote(f"^{re.escape(name)}$")
        with urllib.request.urlopen(f"http://{self.admin}/stats?filter={q}", timeout=60) as r:
            for line in r.read().decode().splitlines():
                k, _, v = line.partition(": ")
                if k == name:
                    return int(v)
        return 0

    def filter_stat(self, name):
        """The filter's stat under either host's prefix (testbed::Host::stat_prefix);
        None while the admin endpoint does not answer (a busy main thread)."""
        try:
            return sum(self.stat(prefix + name) for prefix in ("wasmcustom.sandbox_router.", "sandbox_router."))
        except OSError:
            return None

    def rss_mb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return None

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


MODULES = ("libsandbox_router_envoy_module", "libbench_noop_module")


def classify(totals):
    out = {"envoy": 0, "tcmalloc": 0, "jit": 0, "module": 0, "libc": 0, "other": 0}
    for ob, ir in totals.items():
        if ob == "envoy:google_malloc" or ob == "envoy:malloc_hook":
            out["tcmalloc"] += ir
        elif ob is not None and any(m in ob for m in MODULES):
            out["module"] += ir
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
    """Dumps the counters; returns the new files (one per thread with --separate-threads)."""
    before = set(glob.glob(outfile_base + "*"))
    asked = subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True, text=True)
    # The dump is written asynchronously, by the next valgrind scheduler pass:
    # on a loaded machine (seen here: two builds beside it) that took over 2 min.
    for _ in range(3000):
        new = set(glob.glob(outfile_base + "*")) - before
        if new:
            time.sleep(2)
            return sorted(set(glob.glob(outfile_base + "*")) - before)
        time.sleep(0.2)
    sys.exit(f"no dump appeared in 10 min; callgrind_control said: {asked.stdout.strip()}")


def phase_counts(files, threads):
    """The phase's split: of the worker thread (the one with the most
    instructions: it handles every request), or of all threads summed."""
    per_thread = [classify(split_by_object(f)) for f in files]
    if threads == "worker":
        return max(per_thread, key=lambda c: c["total"]), sum(c["total"] for c in per_thread)
    out = {k: sum(c[k] for c in per_thread) for k in per_thread[0]}
    return out, out["total"]


def zero(pid):
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
    time.sleep(1)


class Control:
    """`sandbox-router serve` on a free port with the store at `db` (not under valgrind)."""

    def __init__(self, binary, db, workdir, name):
        self.log = open(os.path.join(workdir, f"{name}.log"), "w")
        self.proc = subprocess.Popen([binary, "serve", "--listen", "127.0.0.1:0", "--db", db],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True)
        first = self.proc.stdout.readline()
        m = re.search(r"http://([0-9.]+):(\d+)", first)
        if not m:
            self.stop()
            sys.exit(f"control service: unexpected first line {first!r}")
        self.port = int(m.group(2))
        # keep draining its stdout so it never blocks on it
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()
        print(f"  control service {name}: pid {self.proc.pid}, port {self.port}", flush=True)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


SR = re.compile(r"^sr-(native-)?(static|\d+)-(nocontext|routed)$")


def default_variants(tables):
    names = ["plain", "marker-route", "marker-routed", "native-1", "native-100", "native-1000",
             "lua-nocontext", "lua-routed",
             "wasm-noop", "wasm-read-headers", "module-noop", "module-get-headers", "module-get-all-headers"]
    for table in ["static"] + [str(t) for t in tables]:
        for host in ("", "native-"):
            names += [f"sr-{host}{table}-nocontext", f"sr-{host}{table}-routed"]
    return names


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default=None,
                    help="comma-separated; default: the peers, both floors, both hosts static and pushed")
    ap.add_argument("--tables", default="10,10000,100000",
                    help="pushed-table sizes of the default variants")
    ap.add_argument("--rss", default="10,100000",
                    help="pushed-table sizes whose RSS is measured without valgrind, both hosts ('' for none)")
    ap.add_argument("--n1", type=int, default=2000)
    ap.add_argument("--n2", type=int, default=4000)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--sr-wasm", default=None, help="another build of the Wasm filter")
    ap.add_argument("--noop-wasm", default=os.path.join(WASM_DIR, "noop_filter.wasm"))
    ap.add_argument("--bench-bin", default=os.path.join(REPO, "target/release/sandbox-router-bench"),
                    help="sandbox-router-bench (its sibling sandbox-router is the control service)")
    ap.add_argument("--threads", choices=["worker", "all"], default="worker",
                    help="count the worker thread only (default; the main thread's timers and the "
                         "table's watch add instructions by wall time, not by request) or all threads")
    ap.add_argument("--bootstrap-extra", default=None,
                    help="a YAML file of top-level bootstrap fields appended to every config under test (an A/B)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="cgbench-")
    os.makedirs(workdir, exist_ok=True)
    print(f"workdir {workdir}; envoy {ENVOY}", flush=True)
    if args.sr_wasm:
        os.environ["SANDBOX_ROUTER_WASM"] = os.path.abspath(args.sr_wasm)
    tables = [int(t) for t in args.tables.split(",") if t]
    rss_tables = [int(t) for t in args.rss.split(",") if t]
    names = [n for n in args.variants.split(",") if n] if args.variants is not None else default_variants(tables)
    control_bin = os.path.join(os.path.dirname(args.bench_bin), "sandbox-router")
    for b in (args.bench_bin, control_bin):
        if not os.path.exists(b):
            sys.exit(f"no {b} (cargo build --release --bins -p sandbox-router-bench -p sandbox-router-control)")

    def helper(*argv):
        return subprocess.run([args.bench_bin, *argv], check=True, capture_output=True, text=True).stdout

    upstream = Envoy(render(read("upstream.yaml"), {"ADMIN_PORT": "0", "LISTEN_PORT": "0"}),
                     workdir, "upstream")
    up_port = upstream.port("upstream")
    upstream_addr = f"127.0.0.1:{up_port}"
    template = read("envoy.yaml")

    def bootstrap_extra():
        if not args.bootstrap_extra:
            return ""
        with open(args.bootstrap_extra) as f:
            return "\n" + f.read()

    def variant_config(filters, routes):
        return render(template, {"ADMIN_PORT": "0", "LISTEN_PORT": "0",
                                 "UPSTREAM_PORT": str(up_port),
                                 "HTTP_FILTERS": filters, "EXTRA_ROUTES": routes}) + bootstrap_extra()

    noop = lambda cfg: render(read("noop-filter.yaml"),
                              {"NOOP_WASM_PATH": args.noop_wasm, "NOOP_CONFIG": cfg})
    bench_filter = lambda kind: helper("filter", "--kind", kind, "--upstream", upstream_addr)
    marker = read("marker-route.yaml")
    native_route = read("native-route.yaml")
    native = lambda n: "".join(render(native_route, {"KEY": f"native-key-{i:07}"}) for i in range(n))
    lua_routes = "".join(f'["lua-key-{i}"] = "{upstream_addr}",\n' for i in range(10))
    lua = render(read("lua-filter.yaml"), {"LUA_ROUTES": lua_routes})

    # Pushed tables: one store and control service per size, shared by both hosts.
    controls, keys = {}, {}

    def control(m):
        if m not in controls:
            db = os.path.join(workdir, "stores", f"{m}.db")
            os.makedirs(os.path.dirname(db), exist_ok=True)
            for f in glob.glob(db + "*"):
                os.remove(f)
            keys[m] = helper("store", "--db", db, "--sandboxes", str(m), "--endpoint", upstream_addr).strip()
            controls[m] = Control(control_bin, db, workdir, f"control-{m}")
        return controls[m]

    def sidecar(host, m):
        c = control(m)
        config = helper("sidecar-config", "--host", host, "--node-id", f"callgrind-{host}-{m}",
                        "--control-port", str(c.port), "--backend-port", str(up_port))
        return config + bootstrap_extra()

    def spec(name):
        """(configuration key, config maker, routed request headers or None, table size to wait for)"""
        fixed = {
            "plain": (lambda: variant_config("", ""), None),
            "native-1": (lambda: variant_config("", native(1)), None),
            "native-100": (lambda: variant_config("", native(100)), None),
            "native-1000": (lambda: variant_config("", native(1000)), None),
            "wasm-noop": (lambda: variant_config(noop(""), ""), None),
            "wasm-read-headers": (lambda: variant_config(noop("read-headers"), ""), None),
            "module-noop": (lambda: variant_config(bench_filter("module-noop"), ""), None),
            "module-get-headers": (lambda: variant_config(bench_filter("module-get-headers"), ""), None),
            "module-get-all-headers": (lambda: variant_config(bench_filter("module-get-all-headers"), ""), None),
        }
        if name in fixed:
            make, _ = fixed[name]
            return name, make, None, None
        if name == "marker-route":
            return name, lambda: variant_config("", marker), None, None
        if name == "marker-routed":
            # No filter: the client sends both internal headers itself.
            return ("marker-route", lambda: variant_config("", marker),
                    [("x-envoy-original-dst-host", upstream_addr), ("x-sandbox-router-route", "1")], None)
        if name in ("lua-nocontext", "lua-routed"):
            routed = [("baggage", "sandbox-routing-key=lua-key-5")] if name.endswith("routed") else None
            return "lua", lambda: variant_config(lua, marker), routed, None
        m = SR.match(name)
        if not m:
            sys.exit(f"unknown variant {name}")
        host = "native" if m.group(1) else "wasm"
        table, traffic = m.group(2), m.group(3)
        if table == "static":
            routed = [("baggage", "sandbox-routing-key=static-key-5")] if traffic == "routed" else None
            return (f"sr-{host}-static", lambda: variant_config(bench_filter(f"sr-static-{host}"), marker),
                    routed, None)
        size = int(table)
        routed = (lambda: [("baggage", f"sandbox-routing-key={keys[size]}")]) if traffic == "routed" else None
        return f"sr-{host}-{size}", lambda: sidecar(host, size), routed, size

    def wait_for_table(envoy, size, name):
        t0 = time.time()
        while envoy.filter_stat("sync.routing_keys") != size:
            if envoy.proc.poll() is not None:
                sys.exit(f"{name} exited: see {envoy.dir}")
            if time.time() - t0 > 3600:
                sys.exit(f"{name}: the {size}-sandbox table did not arrive")
            time.sleep(2)
        print(f"  {name}: the {size}-sandbox table is in after {time.time() - t0:.0f}s", flush=True)

    # Consecutive variants of one configuration share one Envoy.
    groups = []
    for name in names:
        key, make, routed, size = spec(name)
        if groups and groups[-1][0] == key:
            groups[-1][3].append((name, routed))
        else:
            groups.append((key, make, size, [(name, routed)]))

    results, rss = {}, {}
    started = time.time()
    try:
        for key, make, size, members in groups:
            gname = key + args.tag
            out_base = os.path.join(workdir, gname, "callgrind.out")
            os.makedirs(os.path.join(workdir, gname), exist_ok=True)
            vg = VALGRIND + ["--separate-threads=yes", f"--callgrind-out-file={out_base}.%p"]
            t0 = time.time()
            envoy = Envoy(make(), workdir, gname, valgrind=vg)
            if not os.path.exists(f"{out_base}.{envoy.proc.pid}"):
                sys.exit(f"{gname}: Envoy is not running under callgrind (no {out_base}.{envoy.proc.pid})")
            port = envoy.port("outbound")
            print(f"  {gname}: up in {time.time() - t0:.0f}s, port {port}", flush=True)
            try:
                if size is not None:
                    wait_for_table(envoy, size, gname)
                for name, routed in members:
                    vname = name + args.tag
                    headers = (routed() if callable(routed) else routed) or []
                    before = envoy.stat("cluster.sandbox_original_dst.upstream_rq_total")
                    send(port, args.warmup, headers, envoy.dir)
                    phases, all_threads = {}, {}
                    for n in (args.n1, args.n2):
                        zero(envoy.proc.pid)
                        t = time.time()
                        send(port, n, headers, envoy.dir)
                        files = dump(envoy.proc.pid, out_base)
                        phases[n], all_threads[n] = phase_counts(files, args.threads)
                        print(f"  {vname}: {n} requests in {time.time() - t:.0f}s: {phases[n]}", flush=True)
                    # Each request took the route the variant claims.
                    took = envoy.stat("cluster.sandbox_original_dst.upstream_rq_total") - before
                    sent = args.warmup + args.n1 + args.n2
                    expected = sent if routed else 0
                    if took != expected:
                        sys.exit(f"{vname}: {took} of {sent} requests took the sandbox route, expected {expected}")
                    per = {k: (phases[args.n2][k] - phases[args.n1][k]) / (args.n2 - args.n1)
                           for k in phases[args.n2]}
                    results[vname] = {"per_request": per, "phases": phases,
                                      "all_threads_per_request": (all_threads[args.n2] - all_threads[args.n1])
                                      / (args.n2 - args.n1),
                                      "sandbox_route_requests": took, "requests": sent}
                    print(f"  {vname}: per request {per}", flush=True)
            finally:
                envoy.stop()
        # RSS without valgrind: plain Envoy, and both hosts' shipped sidecars with pushed tables.
        for m in rss_tables:
            for host in ("wasm", "native"):
                name = ("sr-" if host == "wasm" else "sr-native-") + str(m)
                envoy = Envoy(sidecar(host, m), workdir, "rss-" + name + args.tag)
                try:
                    wait_for_table(envoy, m, "rss-" + name)
                    rss[name + args.tag] = measure_rss(envoy, [[], [("baggage", f"sandbox-routing-key={keys[m]}")]])
                finally:
                    envoy.stop()
        if rss_tables:
            envoy = Envoy(variant_config("", ""), workdir, "rss-plain")
            try:
                rss["plain"] = measure_rss(envoy, [[]])
            finally:
                envoy.stop()
    finally:
        for c in controls.values():
            c.stop()
        upstream.stop()
    envoy_version = subprocess.run([ENVOY, "--version"], capture_output=True, text=True).stdout.strip()
    builds = {}
    for what, path in (("sandbox-router wasm", os.environ.get("SANDBOX_ROUTER_WASM") or os.path.join(WASM_DIR, "sandbox_router_filter.wasm")),
                       ("sandbox-router native module", os.environ.get("SANDBOX_ROUTER_MODULE") or os.path.join(REPO, "target/release/libsandbox_router_envoy_module.so")),
                       ("noop wasm", args.noop_wasm),
                       ("noop native module", os.environ.get("BENCH_NOOP_MODULE") or os.path.join(REPO, "target/release/libbench_noop_module.so"))):
        if os.path.exists(path):
            with open(path, "rb") as f:
                builds[what] = {"path": path, "sha256": hashlib.sha256(f.read()).hexdigest(),
                                "bytes": os.path.getsize(path)}
    doc = {
        "benchmark": "instructions per request (callgrind)",
        "command": "python3 bench/callgrind.py " + " ".join(sys.argv[1:]),
        "envoy": envoy_version,
        "method": {"warmup": args.warmup, "n1": args.n1, "n2": args.n2, "threads": args.threads,
                   "per_request": "(Ir(n2) - Ir(n1)) / (n2 - n1), Envoy --concurrency 1 under callgrind",
                   "rss": "VmRSS of Envoy --concurrency 1 (no valgrind) after 300 requests of each traffic"},
        "minutes": round((time.time() - started) / 60, 1),
        "builds": builds,
        "variants": results,
        "memory": rss,
    }
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(doc, f, indent=1)
    text = report(doc, args.tag)
    print("\n" + text)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(text)


def measure_rss(envoy, traffics):
    """VmRSS after some traffic, and tcmalloc's view of it (admin /memory):
    what is allocated, and what the heap keeps free after a peak."""
    port = envoy.port("outbound")
    for headers in traffics:
        send(port, 300, headers, envoy.dir)
    time.sleep(2)
    with urllib.request.urlopen(f"http://{envoy.admin}/memory", timeout=60) as r:
        memory = json.load(r)
    mb = lambda k: round(int(memory.get(k, 0)) / 1048576, 1)
    return {"rss_mb": envoy.rss_mb(), "allocated_mb": mb("allocated"), "heap_size_mb": mb("heap_size"),
            "pageheap_free_mb": mb("pageheap_free"), "pageheap_unmapped_mb": mb("pageheap_unmapped")}


def report(doc, tag=""):
    """results.md: every table, then each target of issue 12 (native) and issue 1 (Wasm), met or missed."""
    v = {k[: len(k) - len(tag)] if tag and k.endswith(tag) else k: r["per_request"]
         for k, r in doc["variants"].items()}
    ir = lambda n: v.get(n, {}).get("total")
    plain = ir("plain")
    fmt = lambda x: "-" if x is None else f"{x:,.0f}"
    ratio = lambda n: "-" if ir(n) is None or not plain else f"{ir(n) / plain:.3f}"
    out = ["# Instructions per request (callgrind)", "",
           f"`{doc['command']}` ({doc['envoy']}; {doc['minutes']} min). Generated by `bench/callgrind.py`;",
           "what the figures mean and the analysis: [README.md](README.md#instructions-per-request).", "",
           "Each variant's Envoy (`--concurrency 1`) runs under `valgrind --tool=callgrind`: "
           f"{doc['method']['warmup']} warm-up requests, then {doc['method']['n1']:,} and {doc['method']['n2']:,} "
           "over one keep-alive connection, counters zeroed before each; per request = "
           f"(Ir({doc['method']['n2']}) − Ir({doc['method']['n1']})) / {doc['method']['n2'] - doc['method']['n1']:,}. "
           + ("Counted on Envoy's worker thread, which handles every request (`--separate-threads=yes`): "
              "the main thread's timers and a pushed table's watch run by wall time, not per request, "
              "and would add noise. " if doc["method"].get("threads") == "worker" else "Counted on all threads. ")
           + "Split by where the instructions ran: Envoy's code, its tcmalloc, generated code (V8 for Wasm, LuaJIT), "
           "a native module's own .so, libc. Every variant was checked to take the route it claims.", ""]

    def table(title, rows):
        rows = [r for r in rows if r in v]
        if not rows:
            return
        out.extend([f"## {title}", "",
                    "| variant | Ir/request | × plain | Envoy (.text) | tcmalloc | V8 / LuaJIT | module (.so) | libc |",
                    "|---|---:|---:|---:|---:|---:|---:|---:|"])
        for n in rows:
            p = v[n]
            out.append(f"| {n} | {fmt(p['total'])} | {ratio(n)} | {fmt(p['envoy'])} | {fmt(p['tcmalloc'])} "
                       f"| {fmt(p['jit'])} | {fmt(p.get('module'))} | {fmt(p['libc'])} |")
        out.append("")

    sizes = sorted({int(m.group(2)) for n in v for m in [SR.match(n)] if m and m.group(2) != "static"})
    table("Floors and peers", ["plain", "marker-route", "marker-routed", "wasm-noop", "wasm-read-headers", "module-noop", "module-get-headers",
                               "module-get-all-headers",
                               "native-1", "native-100", "native-1000", "lua-nocontext", "lua-routed"])
    table("sandbox-router, static table of 10, in its floor's layout",
          ["sr-static-nocontext", "sr-static-routed", "sr-native-static-nocontext", "sr-native-static-routed"])
    table("sandbox-router on its shipped sidecar, pushed tables",
          [f"sr-{h}{m}-{t}" for h in ("", "native-") for m in sizes for t in ("nocontext", "routed")])
    rss = {n: m["rss_mb"] for n, m in doc.get("memory", {}).items()}
    if rss:
        out.extend(["## Memory (no valgrind)", "",
                    "Envoy `--concurrency 1` after 300 requests of each traffic: RSS, and tcmalloc's view "
                    "(admin `/memory`): bytes allocated, and free pages the heap keeps mapped after a peak.", "",
                    "| Envoy | RSS MB | over plain | allocated MB | heap free MB |", "|---|---:|---:|---:|---:|"])
        for n, m in doc["memory"].items():
            over = "" if n == "plain" or "plain" not in rss else f"+{m['rss_mb'] - rss['plain']:.0f}"
            out.append(f"| {n} | {m['rss_mb']:.0f} | {over} | {m['allocated_mb']:.0f} | {m['pageheap_free_mb']:.0f} |")
        out.append("")

    checks = []

    def check(what, value, ok):
        checks.append(f"- {what}: {'-' if value is None else value}: "
                      f"{'not measured' if ok is None else ('met' if ok else 'MISSED')}")

    r = lambda a, b: None if ir(a) is None or ir(b) is None else ir(a) / ir(b)
    for host, label in (("native-", "native"), ("", "Wasm")):
        for traffic, limit in (("nocontext", 1.03 if host else 1.15), ("routed", 1.15)):
            x = r(f"sr-{host}static-{traffic}", "plain")
            check(f"{label}, {traffic}, × plain <= {limit}", None if x is None else f"{x:.3f}",
                  None if x is None else x <= limit)
        for ours, theirs in ((f"sr-{host}static-routed", "lua-routed"), (f"sr-{host}static-nocontext", "lua-nocontext"),
                             (f"sr-{host}static-nocontext", "native-1" if host else "native-100")):
            a, b = ir(ours), ir(theirs)
            check(f"{label}: {ours} below {theirs}", None if a is None or b is None else f"{a:,.0f} vs {b:,.0f}",
                  None if a is None or b is None else a < b)
        if len(sizes) >= 2:
            for traffic in ("nocontext", "routed"):
                x = r(f"sr-{host}{sizes[0]}-{traffic}", f"sr-{host}{sizes[-1]}-{traffic}")
                check(f"{label}, {traffic}: at {sizes[0]:,} / at {sizes[-1]:,} sandboxes >= 0.98",
                      None if x is None else f"{x:.3f}", None if x is None else x >= 0.98)
        big = max((int(k.rsplit("-", 1)[1]) for k in rss if re.search(r"-\d+$", k)), default=None)
        if big is not None and "plain" in rss:
            mb = rss.get(f"sr-{host}{big}")
            over = None if mb is None else mb - rss["plain"]
            check(f"{label}: RSS at {big:,} sandboxes <= plain + 60 MB",
                  None if over is None else f"{mb:.0f} MB, plain + {over:.0f} MB", None if over is None else over <= 60)
    out.extend(["## Targets (instructions per request; RSS in MB)", "", *checks, ""])
    return "\n".join(out)


if __name__ == "__main__":
    main()
