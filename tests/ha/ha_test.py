#!/usr/bin/env python3
"""kfsec replicas on a real three-member etcd cluster (issue 14), driven as a user and an operator
would: curl-like HTTP (stdlib only), kubectl, etcdctl, and kill -9.

    python3 tests/ha/ha_test.py TMPDIR      # run by tests/ha/run.sh (env KFSEC_BIN)

Every process started is recorded in TMPDIR/pids (run.sh kills what is left on any exit) and
stopped here in a finally. Each scenario prints `PASS name` or `FAILED name: why`; the last line
is `ha: N passed, M failed`.
"""

from __future__ import annotations

import base64
import http.client as hc
import json
import os
import random
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import traceback
import urllib.parse
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
KFSEC = os.environ.get("KFSEC_BIN", str(ROOT / "target/debug/kfsec"))
TMP = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/kfsec-ha")
PASSWORD = "ha test password 7"
USER = "user@example.org"
LOCKED = "locked@example.org"
BURST = "burst@example.org"
CLIENT, SECRET = "ha-test", "ha-test-secret-0123456789"
STALE_LIMIT = 5
WORKERS = 6  # scenario 5's load: each its own user (one account's checks in flight are capped)
T0 = time.monotonic()

PROCS: list[subprocess.Popen] = []
RESULTS: list[tuple[str, bool, str]] = []


def log(msg: str) -> None:
    print(f"ha-tests [{time.monotonic() - T0:5.1f}s] {msg}", flush=True)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def spawn(args: list[str], out: Path, env: dict | None = None) -> subprocess.Popen:
    f = open(out, "ab")
    p = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    f.close()
    PROCS.append(p)
    with open(TMP / "pids", "a") as pids:
        pids.write(f"{p.pid}\n")
    return p


def kill9(p: subprocess.Popen | None) -> None:
    if p is not None and p.poll() is None:
        p.send_signal(signal.SIGKILL)
        p.wait()


def until(within: float, f, every: float = 0.1):
    """Polls f() until it returns something truthy, for at most `within` seconds; returns its
    last value."""
    end = time.monotonic() + within
    v = None
    while True:
        try:
            v = f()
        except Exception as e:  # a refused connection while something restarts
            v = None
            last = e  # noqa: F841
        if v or time.monotonic() >= end:
            return v
        time.sleep(every)


# --- HTTP ------------------------------------------------------------------------------------

NOVERIFY = ssl.create_default_context()
NOVERIFY.check_hostname = False
NOVERIFY.verify_mode = ssl.CERT_NONE


class Resp:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def header(self, name: str) -> str:
        return next((v for k, v in self.headers if k.lower() == name.lower()), "")

    def cookies(self) -> dict[str, str]:
        out = {}
        for k, v in self.headers:
            if k.lower() == "set-cookie":
                name, _, rest = v.partition("=")
                out[name.strip()] = rest.split(";", 1)[0]
        return out

    def json(self):
        return json.loads(self.body or b"null")

    def __repr__(self) -> str:
        return f"{self.status} {self.body[:300]!r}"


def req(port: int, method: str, path: str, headers: dict | None = None, body: bytes | None = None,
         ctx: ssl.SSLContext = NOVERIFY, timeout: float = 15, tls: bool = True) -> Resp:
    if tls:
        c = hc.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=timeout)
    else:
        c = hc.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        h = {"Connection": "close", **(headers or {})}
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        return Resp(r.status, r.getheaders(), r.read())
    finally:
        c.close()


def cookie_header(jar: dict[str, str]) -> str:
    return "; ".join(f"{k}={v}" for k, v in jar.items())


# --- etcd ------------------------------------------------------------------------------------


class Etcd:
    """Three members on free loopback ports, each with its own data directory; a member killed
    with SIGKILL starts again on the same ports and data."""

    def __init__(self) -> None:
        self.names = ["n1", "n2", "n3"]
        self.client = {n: free_port() for n in self.names}
        self.peer = {n: free_port() for n in self.names}
        self.procs: dict[str, subprocess.Popen | None] = {n: None for n in self.names}
        self.token = f"kfsec-ha-{os.getpid()}-{random.randrange(1 << 30)}"
        self.state = "new"

    def endpoints(self) -> list[str]:
        return [f"http://127.0.0.1:{self.client[n]}" for n in self.names]

    def start(self, n: str) -> None:
        cluster = ",".join(f"{m}=http://127.0.0.1:{self.peer[m]}" for m in self.names)
        c, p = f"http://127.0.0.1:{self.client[n]}", f"http://127.0.0.1:{self.peer[n]}"
        self.procs[n] = spawn([
            "/usr/bin/etcd", "--name", n, "--data-dir", str(TMP / f"{n}.etcd"),
            "--listen-client-urls", c, "--advertise-client-urls", c,
            "--listen-peer-urls", p, "--initial-advertise-peer-urls", p,
            "--initial-cluster", cluster, "--initial-cluster-token", self.token,
            "--initial-cluster-state", "new", "--logger", "zap", "--log-outputs", "stderr",
        ], TMP / f"{n}.log", env={"PATH": "/usr/bin:/bin"})

    def start_all(self) -> None:
        for n in self.names:
            if self.procs[n] is None or self.procs[n].poll() is not None:
                self.start(n)

    def kill(self, n: str) -> None:
        kill9(self.procs[n])
        self.procs[n] = None

    def status(self) -> list[dict]:
        live = [f"http://127.0.0.1:{self.client[n]}" for n in self.names if self.procs[n] is not None]
        r = subprocess.run(["etcdctl", "--endpoints", ",".join(live), "--command-timeout=2s",
                            "endpoint", "status", "-w", "json"],
                           capture_output=True, text=True, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
        return json.loads(r.stdout) if r.stdout.strip() else []

    def leader(self) -> str | None:
        """The name of the member that is the raft leader, as every live member reports it."""
        for s in self.status():
            if s["Status"]["leader"] == s["Status"]["header"]["member_id"]:
                port = int(s["Endpoint"].rsplit(":", 1)[1])
                return next(n for n in self.names if self.client[n] == port)
        return None

    def healthy(self) -> bool:
        live = [n for n in self.names if self.procs[n] is not None]
        st = self.status()
        return len(st) == len(live) and self.leader() is not None


# --- kfsec replicas --------------------------------------------------------------------------


class Replica:
    def __init__(self, name: str, config: Path) -> None:
        self.name, self.config = name, config
        self.https, self.admin, self.webhook = free_port(), free_port(), free_port()
        self.dir = TMP / name
        self.dir.mkdir(exist_ok=True)
        self.proc: subprocess.Popen | None = None

    def start(self, config: Path | None = None) -> None:
        self.proc = spawn([KFSEC, "serve", "--config", str(config or self.config),
                           "--data-dir", str(self.dir / "data"),
                           "--https-addr", f"127.0.0.1:{self.https}",
                           "--admin-addr", f"127.0.0.1:{self.admin}",
                           "--webhook-addr", f"127.0.0.1:{self.webhook}"], self.dir / "kfsec.log",
                          env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info")})

    def log(self) -> str:
        return (self.dir / "kfsec.log").read_text(errors="replace")

    def readyz(self) -> int:
        try:
            return req(self.admin, "GET", "/readyz", tls=False, timeout=3).status
        except OSError:
            return 0

    def wait_ready(self, within: float = 30) -> bool:
        def done():
            if self.proc is None or self.proc.poll() is not None:
                return "exited"
            return "ready" if self.readyz() == 200 else None

        return until(within, done) == "ready"

    def leader_gauge(self) -> str:
        try:
            m = req(self.admin, "GET", "/metrics", tls=False, timeout=3).body.decode()
        except OSError:
            return "down"
        v = re.search(r"^kfsec_leader (\S+)$", m, re.M)
        return v.group(1) if v else "absent"

    def kill(self) -> None:
        kill9(self.proc)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def kubeconfig(self) -> Path:
        return self.dir / "data" / "admin.kubeconfig"


# --- clients ---------------------------------------------------------------------------------


class LoginStopped(RuntimeError):
    """A browser login that ended on an answer other than the upstream's (its status kept)."""

    def __init__(self, status: int, msg: str):
        super().__init__(msg)
        self.status = status


def browser_login(r: Replica, public: str, path: str = "/app/x", user: str = USER) -> dict[str, str]:
    """The browser flow on replica r (every hop sent to r, as a load balancer that happens to
    pick r would): protected path → login form → POST → callback; returns the cookie jar."""
    jar: dict[str, str] = {}
    target, method, body = path, "GET", None
    for _ in range(15):
        h = {"Cookie": cookie_header(jar)} if jar else {}
        if body is not None:
            h["Content-Type"] = "application/x-www-form-urlencoded"
            h["Origin"] = public
        resp = req(r.https, method, target, h, body)
        jar.update(resp.cookies())
        if 300 <= resp.status < 400:
            u = urllib.parse.urlsplit(resp.header("Location"))
            target = urllib.parse.urljoin(target, u.path + (f"?{u.query}" if u.query else ""))
            method, body = "GET", None
            continue
        if resp.status == 200 and "/auth/local/login" in target and method == "GET":
            body = urllib.parse.urlencode({"login": user, "password": PASSWORD}).encode()
            method = "POST"
            continue
        if resp.status == 200 and resp.body.startswith(b"GET /app/"):
            return jar
        raise LoginStopped(resp.status, f"login on {r.name} stopped at {method} {target}: {resp}")
    raise RuntimeError(f"login on {r.name}: too many redirects")


def check(r: Replica, jar: dict[str, str], timeout: float = 15) -> int:
    return req(r.https, "GET", "/authservice/check", {"Cookie": cookie_header(jar)}, timeout=timeout).status


def token_grant(r: Replica, form: dict, timeout: float = 15) -> Resp:
    auth = base64.b64encode(f"{CLIENT}:{SECRET}".encode()).decode()
    return req(r.https, "POST", "/dex/token",
                {"Authorization": f"Basic {auth}", "Content-Type": "application/x-www-form-urlencoded"},
                urllib.parse.urlencode(form).encode(), timeout=timeout)


def password_grant(r: Replica, user: str = USER, password: str = PASSWORD, scope: str = "openid email") -> Resp:
    return token_grant(r, {"grant_type": "password", "username": user, "password": password, "scope": scope})


def admin_ctx(kubeconfig: Path) -> ssl.SSLContext:
    """A TLS client context with the admin kubeconfig's client certificate (no server check:
    scenario 3 checks the server's certificate with kubectl)."""
    text = kubeconfig.read_text()
    cert = re.search(r"client-certificate-data:\s*(\S+)", text).group(1)
    key = re.search(r"client-key-data:\s*(\S+)", text).group(1)
    d = kubeconfig.parent / "ha-client"
    d.mkdir(exist_ok=True)
    (d / "c.pem").write_bytes(base64.b64decode(cert))
    (d / "k.pem").write_bytes(base64.b64decode(key))
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(d / "c.pem", d / "k.pem")
    return ctx


def create_configmap(r: Replica, ctx: ssl.SSLContext, name: str, timeout: float = 15) -> Resp:
    body = json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": name}})
    return req(r.https, "POST", "/api/v1/namespaces/default/configmaps",
                {"Content-Type": "application/json"}, body.encode(), ctx=ctx, timeout=timeout)


def kubectl(kubeconfig: Path, server_port: int, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig), "--server", f"https://127.0.0.1:{server_port}",
                           "--request-timeout=15s", *args], input=stdin, capture_output=True, text=True,
                          env={**os.environ, "HOME": str(TMP / "home")})


# --- scenarios -------------------------------------------------------------------------------


def scenario(name: str):
    def wrap(f):
        def run(*a):
            t = time.monotonic()
            try:
                why = f(*a)
            except Exception as e:
                why = f"{type(e).__name__}: {e}"
                traceback.print_exc()
            ok = not why
            RESULTS.append((name, ok, why or ""))
            dt = time.monotonic() - t
            print(f"{'PASS' if ok else 'FAILED'} {name} ({dt:.1f}s){'' if ok else ': ' + why}", flush=True)
            return ok
        return run
    return wrap


def main() -> int:
    TMP.mkdir(parents=True, exist_ok=True)
    (TMP / "home").mkdir(exist_ok=True)
    etcd = Etcd()
    etcd.start_all()
    upstream = free_port()
    spawn([sys.executable, str(ROOT / "tests/readme/echo_upstream.py"), str(upstream)], TMP / "upstream.log")

    key = TMP / "kek.b64"
    subprocess.run([KFSEC, "secrets", "generate-key", str(key)], check=True, capture_output=True)
    pw_hash = subprocess.run([KFSEC, "hash-password"], input=PASSWORD + "\n", capture_output=True, text=True,
                             check=True).stdout.strip()
    a_port = free_port()
    public = f"https://localhost:{a_port}"

    def config(endpoints: list[str], name: str) -> Path:
        path = TMP / name
        path.write_text(f"""apiVersion: kfsec/v1
publicURL: {public}
staticPasswords:
- {{email: {USER}, hash: "{pw_hash}", username: user, userID: "1001"}}
- {{email: {LOCKED}, hash: "{pw_hash}", username: locked, userID: "1002"}}
- {{email: {BURST}, hash: "{pw_hash}", username: burst, userID: "1003"}}
{"".join(f'- {{email: load{w}@example.org, hash: "{pw_hash}", username: load{w}, userID: "20{w}"}}{chr(10)}' for w in range(WORKERS))}staticClients:
- {{id: {CLIENT}, secret: {SECRET}, name: HA test, redirectURIs: ["http://127.0.0.1:5555/cb"]}}
oauth2: {{passwordConnector: local}}
routes:
- {{prefix: /app/, upstream: "http://127.0.0.1:{upstream}"}}
loginProtection: {{maxFailuresPerAccount: 5, maxFailuresPerAddress: 1000, maxVerificationsPerAccount: 100000}}
store:
  type: etcd
  endpoints: [{", ".join(endpoints)}]
  prefix: /kfsec-ha
  staleLimit: {STALE_LIMIT}s
secretsEncryption: {{keyFile: {key}}}
""")
        return path

    cfg = config(etcd.endpoints(), "kfsec.yaml")
    if not until(20, etcd.healthy, 0.3):
        log("etcd did not elect a leader")
        RESULTS.append(("etcd cluster", False, "no leader within 20 s"))
        return report()
    log(f"etcd up: {etcd.endpoints()} (leader {etcd.leader()})")

    a, b = Replica("a", cfg), Replica("b", cfg)
    a.https = a_port
    a.start()
    b.start()
    for r in (a, b):
        if not r.wait_ready(45):
            log(f"replica {r.name} not ready:\n{r.log()[-3000:]}")
            RESULTS.append(("replicas start", False, f"{r.name} not ready"))
            return report()
    log(f"replicas a (:{a.https}) and b (:{b.https}) ready")
    replicas = [a, b]
    state: dict = {}

    @scenario("1 session shared: a cookie from A works on B; logout on A ends it on B within 1 s")
    def s1():
        jar = browser_login(a, public)
        state["jar"] = jar
        if (s := check(b, jar)) != 200:
            return f"B answered {s} to A's session"
        out = req(a.https, "POST", "/authservice/logout",
                   {"Cookie": cookie_header(jar), "Origin": public, "Accept": "application/json"})
        if out.status not in (200, 201, 302, 303):
            return f"logout on A: {out}"
        t = time.monotonic()
        ended = until(3, lambda: check(b, jar) == 401, 0.02)
        dt = time.monotonic() - t
        if not ended:
            return "B still accepts the session 3 s after the logout on A"
        log(f"logout on A seen on B after {dt * 1000:.0f} ms")
        if dt > 1.0:
            return f"logout reached B after {dt:.2f} s (> 1 s)"

    @scenario("2 a replica started after the session was created serves it")
    def s2():
        jar = browser_login(b, public)
        state["jar"] = jar
        c = Replica("c", cfg)
        c.start()
        replicas.append(c)
        if not c.wait_ready(45):
            return f"C not ready: {c.log()[-1500:]}"
        if (s := check(c, jar)) != 200:
            return f"C answered {s} to a session created before it started"
        r = req(c.https, "GET", "/app/hello", {"Cookie": cookie_header(jar)})
        if r.status != 200 or b"kubeflow-userid: user@example.org" not in r.body.lower():
            return f"C's proxy: {r}"

    @scenario("3 the admin kubeconfig written by A works against B and C (kubectl, server certificate checked)")
    def s3():
        for r in replicas[1:]:
            out = kubectl(a.kubeconfig(), r.https, "get", "namespaces", "-o", "name")
            if out.returncode != 0 or "namespace/default" not in out.stdout:
                return f"kubectl with A's kubeconfig against {r.name}: exit {out.returncode}: {out.stderr.strip()[:400]}"
        ca_a = (a.dir / "data/pki/ca.crt").read_bytes()
        for r in replicas[1:]:
            if (r.dir / "data/pki/ca.crt").read_bytes() != ca_a:
                return f"{r.name}'s pki/ca.crt differs from A's"

    @scenario("4 failed logins spread over A and B lock the (account, source) pair on both; bursts of logins leave no stale refusal")
    def s4():
        if (r := password_grant(a, LOCKED, PASSWORD)).status != 200:
            return f"the account's right password is refused before any failure: {r}"
        # maxFailuresPerAccount: 5 — five wrong passwords, alternating replicas.
        for i in range(5):
            r = password_grant([a, b][i % 2], LOCKED, "wrong password")
            if r.status != 401 and r.status != 400:
                return f"failure {i + 1} answered {r}"
        for r in (a, b):
            ok = password_grant(r, LOCKED, PASSWORD)
            if ok.status == 200:
                return f"{r.name} let the right password in after 5 failures spread over A and B"
            log(f"locked on {r.name}: {ok}")
        # Another account from the same source is not locked.
        if (r := password_grant(b, USER, PASSWORD)).status != 200:
            return f"another account is refused too: {r}"
        # Bursts of right-password logins of one account over A and B, more at once than the
        # budget (those past it are refused while it is in flight): afterwards both replicas let
        # the next login in (a replica refusing from a stale copy of the others' reservations
        # refused it for the rest of the window).
        for round_ in range(2):
            barrier = threading.Barrier(8)

            def burst(i: int):
                barrier.wait()
                password_grant([a, b][i % 2], BURST, PASSWORD)

            ts = [threading.Thread(target=burst, args=(i,)) for i in range(8)]
            for th in ts:
                th.start()
            for th in ts:
                th.join()
            for r in (a, b):
                if (got := password_grant(r, BURST, PASSWORD)).status != 200:
                    return f"after burst {round_ + 1}, {r.name} refuses the right password: {got}"

    @scenario("9 a refresh token redeemed on A and B at the same moment: both 200, one rotated token")
    def s9():
        t = password_grant(a, scope="openid email offline_access")
        if t.status != 200 or "refresh_token" not in t.json():
            return f"no refresh token: {t}"
        rt = t.json()["refresh_token"]
        for round_ in range(3):
            barrier = threading.Barrier(2)
            out: dict = {}

            def go(r: Replica):
                barrier.wait()
                out[r.name] = token_grant(r, {"grant_type": "refresh_token", "refresh_token": rt})

            ts = [threading.Thread(target=go, args=(r,)) for r in (a, b)]
            for th in ts:
                th.start()
            for th in ts:
                th.join()
            if any(v.status != 200 for v in out.values()):
                return f"round {round_}: {out}"
            news = {v.json().get("refresh_token") for v in out.values()}
            if len(news) != 1 or rt in news:
                return f"round {round_}: refresh tokens answered: {len(news)} distinct"
            rt = news.pop()

    @scenario("8 an unreachable endpoint at startup: not ready, each retry logged naming it; ready on the real cluster")
    def s8():
        closed = free_port()
        bad = config([f"http://127.0.0.1:{closed}"], "unreachable.yaml")
        d = Replica("d", bad)
        d.start()
        ep = f"127.0.0.1:{closed}"

        def tries() -> int:
            return sum(1 for ln in d.log().splitlines() if ep in ln and "retry" in ln.lower())

        try:
            rz = until(10, lambda: d.readyz() == 503 and "503")
            if rz != "503":
                return f"D's /readyz answered {d.readyz()} with no etcd reachable"
            if not until(10, lambda: tries() >= 3):
                return f"retries logged naming {ep} in 10 s: {tries()}"
            if d.readyz() != 503:
                return f"D's /readyz answered {d.readyz()} after {tries()} failed attempts"
            body = req(d.admin, "GET", "/readyz", tls=False).body.decode()
            if ep not in body:
                return f"/readyz does not name {ep}: {body[:200]}"
            if d.proc.poll() is not None:
                return "D exited instead of retrying"
        finally:
            d.stop()
        d.start(cfg)
        try:
            if not d.wait_ready(40):
                return f"D not ready on the real cluster: {d.log()[-1500:]}"
        finally:
            d.stop()

    @scenario("5 kill -9 the etcd leader, then a follower, under logins + API writes + proxied GETs: nothing fails, nothing lost")
    def s5():
        ctx = admin_ctx(a.kubeconfig())
        jar = browser_login(a, public)
        stop = threading.Event()
        lock = threading.Lock()
        acked: list[str] = []
        sessions: list[dict[str, str]] = []
        failures: list[tuple[float, int, str]] = []  # (start, status, what)
        kills: list[float] = []
        counts = {"login": 0, "browser-login": 0, "write": 0, "get": 0}

        def worker(w: int):
            i = 0
            rnd = random.Random(w)
            while not stop.is_set():
                i += 1
                r = rnd.choice(replicas)
                kind = ("login", "write", "get", "browser-login", "write", "get")[i % 6]
                t = time.monotonic()
                status = 0
                try:
                    if kind == "login":
                        resp = password_grant(r, f"load{w}@example.org")
                        ok = resp.status == 200
                    elif kind == "browser-login":
                        # raises unless it reaches the upstream
                        resp = browser_login(r, public, user=f"load{w}@example.org")
                        ok = "authservice_session" in resp
                        if ok:
                            with lock:
                                sessions.append(resp)
                    elif kind == "write":
                        name = f"load-{w}-{i}"
                        resp = create_configmap(r, ctx, name)
                        ok = resp.status == 201
                        if ok:
                            with lock:
                                acked.append(name)
                    else:
                        resp = req(r.https, "GET", f"/app/{w}/{i}", {"Cookie": cookie_header(jar)})
                        ok = resp.status == 200
                    detail = repr(resp)
                    status = getattr(resp, "status", 200)
                except Exception as e:
                    ok, detail = False, f"{type(e).__name__}: {e}"
                    status = getattr(e, "status", 0)
                with lock:
                    counts[kind] += 1
                    if not ok:
                        failures.append((t, status, f"{kind} on {r.name}: {detail[:600]}"))

        ts = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(WORKERS)]
        for th in ts:
            th.start()
        time.sleep(1.5)
        killed = []
        for role in ("leader", "follower"):
            leader = etcd.leader()
            if leader is None:
                stop.set()
                return f"no etcd leader before killing the {role}"
            victim = leader if role == "leader" else next(n for n in etcd.names if n != leader)
            etcd.kill(victim)
            kills.append(time.monotonic())
            killed.append(f"{role} {victim}")
            log(f"killed etcd {role} {victim}")
            time.sleep(3)
            etcd.start(victim)
            if not until(15, etcd.healthy, 0.3):
                stop.set()
                return f"etcd not healthy after restarting {victim}"
            time.sleep(1)
        stop.set()
        for th in ts:
            th.join(30)
        # Strict: no request fails. A kfsec request whose etcd transaction was in flight on the
        # killed member's connection (or while the survivors elected a leader) gets an ambiguous
        # answer from etcd, which kfsec settles itself with the transaction's receipt (a write
        # that applied is acknowledged, a code exchange's `take` goes to exactly one caller), so
        # none reaches the client; the clients' own connections (to the kfsec replicas) are
        # never cut here. Each failure is printed with its distance from the nearest kill.
        log(f"load: {counts}, {len(acked)} writes acknowledged, {len(failures)} failed")
        for f in failures[:10]:
            near = min((f[0] - k for k in kills), key=abs)
            log(f"  failed ({near:+.1f} s from a kill): {f[2][:400]}")
        listed = req(b.https, "GET", "/api/v1/namespaces/default/configmaps", ctx=ctx)
        if listed.status != 200:
            return f"list: {listed}"
        present = {i["metadata"]["name"]: (i.get("data") or {}).get("k") for i in listed.json()["items"]}
        lost = [n for n in acked if present.get(n) != n]
        if lost:
            return f"{len(lost)} acknowledged writes missing after {killed}: {lost[:5]}"
        # The sessions made under the load (acknowledged with a cookie) are there too, on every
        # replica.
        gone = [(r.name, j) for j in sessions for r in replicas if check(r, j) != 200]
        if gone:
            return f"{len(gone)} (replica, session) pairs refuse a session made during the kills"
        log(f"{len(acked)} acknowledged writes present, {len(sessions)} sessions valid on every replica")
        if failures:
            return f"{len(failures)} of {sum(counts.values())} requests failed across {killed}: {failures[0][2]}"
        if min(counts.values()) == 0:
            return f"no load of some kind ran: {counts}"

    @scenario("6 kill -9 the kfsec leader: another replica leads within 10 s; Profiles before and after get one namespace and one owner RoleBinding")
    def s6():
        gauges = {r.name: r.leader_gauge() for r in replicas}
        leaders = [r for r in replicas if gauges[r.name] == "1"]
        if len(leaders) != 1:
            return f"kfsec_leader per replica: {gauges} (want exactly one 1)"
        lead = leaders[0]
        others = [r for r in replicas if r is not lead]
        kc = a.kubeconfig()

        def profile(name: str, via: Replica) -> str | None:
            doc = json.dumps({"apiVersion": "kubeflow.org/v1", "kind": "Profile", "metadata": {"name": name},
                              "spec": {"owner": {"kind": "User", "name": USER}}})
            out = kubectl(kc, via.https, "apply", "-f", "-", stdin=doc)
            if out.returncode != 0:
                return f"kubectl apply Profile {name} via {via.name}: {out.stderr.strip()[:300]}"
            return None

        def settled(name: str, via: Replica):
            """The namespace `name` exists and has its owner RoleBinding(s): their names."""
            out = kubectl(kc, via.https, "get", "rolebindings", "-n", name, "-o", "json")
            if out.returncode != 0:
                return None
            owners = [i["metadata"]["name"] for i in json.loads(out.stdout)["items"]
                      if any(s.get("name") == USER for s in i.get("subjects") or [])
                      and i.get("roleRef", {}).get("name") == "kubeflow-admin"]
            return owners or None

        if (e := profile("ha-before", others[0])):
            return e
        if not until(15, lambda: settled("ha-before", others[0]), 0.3):
            return "no owner RoleBinding for ha-before within 15 s"
        lead.kill()
        replicas.remove(lead)
        log(f"killed kfsec leader {lead.name}")
        t = time.monotonic()
        new = until(15, lambda: next((r for r in others if r.leader_gauge() == "1"), None), 0.2)
        dt = time.monotonic() - t
        if not new:
            return f"no replica leads 15 s after the leader died: { {r.name: r.leader_gauge() for r in others} }"
        log(f"{new.name} leads after {dt:.1f} s")
        if dt > 10:
            return f"takeover took {dt:.1f} s (> 10 s)"
        if (e := profile("ha-after", others[-1])):
            return e
        if not until(15, lambda: settled("ha-after", others[-1]), 0.3):
            return "no owner RoleBinding for ha-after within 15 s after the takeover"
        time.sleep(2)  # a double run would show now
        for ns in ("ha-before", "ha-after"):
            out = kubectl(kc, others[0].https, "get", "namespaces", "-o", "json")
            names = [i["metadata"]["name"] for i in json.loads(out.stdout)["items"]]
            if names.count(ns) != 1:
                return f"namespace {ns} listed {names.count(ns)} times"
            owners = settled(ns, others[0]) or []
            if len(owners) != 1:
                return f"{ns}: owner RoleBindings {owners} (want exactly one)"

    @scenario("7 etcd fully down: /readyz 503, writes 503 Status, sessions until staleLimit then 503; etcd back → ready, session works")
    def s7():
        ctx = admin_ctx(a.kubeconfig())
        live = [r for r in replicas if r.proc is not None]
        jars = {r.name: browser_login(r, public) for r in live}
        for r in live:
            if check(r, jars[r.name]) != 200:
                return f"{r.name}: fresh session refused before etcd went down"
        for n in etcd.names:
            etcd.kill(n)
        down = time.monotonic()
        log("killed all etcd members")
        for r in live:
            if (s := check(r, jars[r.name], timeout=5)) != 200:
                return f"{r.name}: cached session answered {s} right after etcd went down (staleLimit {STALE_LIMIT}s)"
        for r in live:
            if not until(10 - (time.monotonic() - down), lambda: r.readyz() == 503, 0.1):
                return f"{r.name}: /readyz still {r.readyz()} 10 s after etcd went down"
        log(f"/readyz 503 on all after {time.monotonic() - down:.1f} s")
        t = time.monotonic()
        w = create_configmap(live[0], ctx, "while-down", timeout=15)
        dt = time.monotonic() - t
        try:
            status = w.json()
        except ValueError:
            status = None
        if w.status != 503 or not isinstance(status, dict) or status.get("kind") != "Status" or dt > 10:
            return f"write while etcd is down: {w} after {dt:.1f} s"
        log(f"write while down: 503 {status.get('reason')} after {dt:.1f} s")
        for r in live:
            left = STALE_LIMIT + 2 - (time.monotonic() - down)
            if not until(max(left, 0.5), lambda: check(r, jars[r.name], timeout=5) == 503, 0.1):
                return f"{r.name}: session still answered {check(r, jars[r.name], timeout=5)} {STALE_LIMIT + 2} s after etcd went down"
        log(f"sessions refused (503) after {time.monotonic() - down:.1f} s")
        etcd.start_all()
        for r in live:
            if not r.wait_ready(30):
                return f"{r.name} not ready again 30 s after etcd returned"
        for r in live:
            if (s := check(r, jars[r.name])) != 200:
                return f"{r.name}: session answered {s} after etcd returned"

    try:
        s1()
        s2()
        s3()
        s4()
        s9()
        s8()
        s5()
        s6()
        s7()
    finally:
        for p in PROCS:
            kill9(p)
    return report()


def report() -> int:
    for p in PROCS:
        kill9(p)
    panicked = [d.name for d in sorted(TMP.iterdir()) if (d / "kfsec.log").is_file()
                and "panicked" in (d / "kfsec.log").read_text(errors="replace")]
    if panicked:
        RESULTS.append(("no replica panicked", False, f"panics in the logs of {panicked}"))
        print(f"FAILED no replica panicked: {panicked}", flush=True)
    passed = sum(1 for _, ok, _ in RESULTS if ok)
    failed = len(RESULTS) - passed
    (TMP / "result").write_text(f"{passed} {failed}\n")
    log("done")
    print(f"ha: {passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        for p in PROCS:
            kill9(p)
