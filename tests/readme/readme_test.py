#!/usr/bin/env python3
"""The README as a tested script: every command block a user copies is run, in order, in one
shell, against a fresh kfsec, as a new user following the README would.

    python3 tests/readme/readme_test.py            # env: KFSEC_BIN (required), KEEP_TMP=1

How a block is run is said next to it in README.md, in an HTML comment on the line just above
the fence (invisible on GitHub):

    <!-- readme-test: run -->                 the default for ```sh blocks; may be omitted
    <!-- readme-test: run expect TEXT -->     ... and the output must contain TEXT (any case)
    <!-- readme-test: serve -->               starts a server in the background and waits until
                                              https://localhost:8443 answers; a later `serve` block
                                              stops the running one first (as Ctrl-C would)
    <!-- readme-test: output -->              a plain ``` block showing what the last `serve`
                                              printed: each line (up to a `...`) must be in its log
    <!-- readme-test: python -->              a ```python block, run with kfp installed and the
                                              variables the README's shell blocks set (ID_TOKEN)
    <!-- readme-test: nginx -->               a ```nginx block: served by a real nginx in front of
                                              kfsec, then checked with curl (see NGINX_CHECK)
    <!-- readme-test: device-login EMAIL PASSWORD -->   run; when it prints `open URL and confirm
                                              the code C`, do what the user does in a browser
    <!-- readme-test: skip REASON -->         not run, for the reason given (required)

A ```sh block line whose comment starts with `yes` or `no`, or says `exit N`, is checked: the
command's first output line must be that word, and its exit status N (else any). Every ```sh, ```python
and ```nginx block must be run or skipped with a reason; a block without a verdict fails the test.
```yaml blocks are configuration, checked by crates/server's config tests
(`the_readmes_connector_examples_load`, `the_readmes_configuration_reference_loads`).

The blocks run in a fresh temporary directory (the README's `./kfsec-data`, `kfsec.yaml` are
relative to it) with these stand-ins, which a new user does not need:
  * `cargo run [-q] --release -- ARGS` runs the kfsec binary under test ($KFSEC_BIN) with ARGS:
    the same program, without a second (release) build of the workspace;
  * the route upstream of the README's examples (http://127.0.0.1:8081) is a small echo server
    (tests/readme/echo_upstream.py) that answers with the request headers it received.
Port 8443 (and 9090, 9443) must be free: the README's commands use the defaults.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import ssl
import html
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
README = ROOT / "README.md"

FENCE = re.compile(r"^```(\w*)\s*$")
VERDICT = re.compile(r"^<!--\s*readme-test:\s*([\w-]+)\s*(.*?)\s*-->\s*$")
CHECKED = re.compile(r"^(?P<cmd>.*?)\s+#\s*(?:(?P<word>yes|no)\b)?(?:.*?\bexit\s+(?P<rc>\d+))?.*$")
RUNNABLE = {"sh", "bash", "python", "nginx"}
BLOCK_TIMEOUT = 180


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    verdict: str
    arg: str
    text: str


def blocks(readme: str) -> list[Block]:
    out: list[Block] = []
    lines = readme.splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        lang = m.group(1)
        verdict, arg = "", ""
        if i > 0 and (v := VERDICT.match(lines[i - 1])):
            verdict, arg = v.group(1), v.group(2)
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        out.append(Block(i + 1, lang, verdict, arg, "\n".join(lines[i + 1 : j]) + "\n"))
        i = j + 1
    return out


def shell_script(block: Block) -> str:
    """The block as bash, with its checked commands (`# yes`, `# no`, `exit N`) turned into
    checks; a command continued over lines with `\\` is checked as a whole."""
    out: list[str] = []
    command: list[str] = []
    for raw in block.text.splitlines():
        command.append(raw)
        if raw.endswith("\\"):
            continue
        m = CHECKED.match(command[-1])
        if m and (m.group("word") or m.group("rc")) and not command[0].lstrip().startswith("#"):
            text = "\n".join(command[:-1] + [m.group("cmd")])
            out.append(f"__readme_check {shlex.quote(m.group('word') or '')} {shlex.quote(m.group('rc') or '')} {shlex.quote(text)}")
        else:
            out.extend(command)
        command = []
    out.extend(command)
    return "\n".join(out) + "\n"


PRELUDE = r"""
set -eE -o pipefail
__readme_check() { # WORD RC CMD: CMD's first output line is WORD (and its exit status RC)
  local out rc=0
  out="$(eval "$3")" || rc=$?
  if { [ -n "$1" ] && [ "${out%%$'\n'*}" != "$1" ]; } || { [ -n "$2" ] && [ "$rc" != "$2" ]; }; then
    echo "readme-test: '$3' printed '${out%%$'\n'*}' (exit $rc), the README says '$1'${2:+ (exit $2)}" >&2
    return 1
  fi
  echo "$out"
}
"""


class Runner:
    def __init__(self, kfsec_bin: str, work: Path):
        self.bin = kfsec_bin
        self.work = work
        self.server: subprocess.Popen | None = None
        self.server_log: Path | None = None
        self.others: list[subprocess.Popen] = []
        self.passed = 0
        self.failed = 0
        shims = work / ".shims"
        shims.mkdir()
        cargo = shims / "cargo"
        cargo.write_text(
            textwrap.dedent(
                """\
                #!/usr/bin/env bash
                # readme-test stand-in: `cargo run [-q] [--release] -- ARGS` runs $KFSEC_BIN ARGS.
                [ "${1:-}" = run ] || { echo "readme-test: 'cargo $*' is not something the README may run" >&2; exit 97; }
                shift
                while [ $# -gt 0 ] && [ "$1" != -- ]; do
                  case "$1" in -q|--release) shift ;; *) echo "readme-test: cargo run $1 is not expected" >&2; exit 97 ;; esac
                done
                [ "${1:-}" = -- ] && shift
                exec "$KFSEC_BIN" "$@"
                """
            )
        )
        cargo.chmod(0o755)
        (work / ".home").mkdir()
        self.env = dict(os.environ, KFSEC_BIN=kfsec_bin, PATH=f"{shims}:{os.environ['PATH']}", HOME=str(work / ".home"))
        self.env.pop("KUBECONFIG", None)
        # One shell for all blocks, as the user's terminal: functions, variables and the working
        # directory carry from block to block. Each block is sourced with stdin from /dev/null
        # (nothing waits for typing); `set -e` ends the shell at the first failing command.
        self.sh = subprocess.Popen(["bash", "--norc", "--noprofile"], cwd=work, env=self.env, stdin=subprocess.PIPE, text=True, start_new_session=True)
        self.sh.stdin.write(PRELUDE)
        self.sh.stdin.flush()

    def ok(self, block: Block, what: str) -> None:
        self.passed += 1
        print(f"readme-test: ok   line {block.line}: {what}")

    def fail(self, block: Block, why: str) -> None:
        self.failed += 1
        print(f"readme-test: FAIL line {block.line}: {why}")
        print(textwrap.indent(block.text.rstrip(), "    | "))

    def run(self, block: Block) -> None:
        script, out, rc = (self.work / f".block-{block.line}{ext}" for ext in (".sh", ".out", ".rc"))
        script.write_text(shell_script(block))
        self.sh.stdin.write(f"source {shlex.quote(str(script))} </dev/null >{shlex.quote(str(out))} 2>&1; echo $? >{shlex.quote(str(rc))}\n")
        self.sh.stdin.flush()
        deadline = time.time() + BLOCK_TIMEOUT
        approved = ""
        while not rc.exists() and self.sh.poll() is None and time.time() < deadline:
            if block.verdict == "device-login" and not approved and out.exists():
                if m := re.search(r"open (https://\S+) and confirm the code (\S+)", out.read_text()):
                    approved = self.approve_device(m.group(1), *block.arg.split()[:2]) or "approved"
            time.sleep(0.05)
        if approved not in ("", "approved"):
            self.fail(block, f"approving the device login: {approved}")
            return
        time.sleep(0.05)
        text = out.read_text() if out.exists() else ""
        print(textwrap.indent(text.rstrip(), "    > "))
        want = block.arg.removeprefix("expect ").strip() if block.arg.startswith("expect ") else ""
        if rc.exists() and rc.read_text().strip() == "0" and want.lower() not in text.lower():
            self.fail(block, f"the output lacks {want!r}")
        elif rc.exists() and rc.read_text().strip() == "0":
            self.ok(block, f"ran{f', printed {want!r}' if want else ''}")
        elif self.sh.poll() is not None:
            self.fail(block, f"a command failed (exit status {self.sh.returncode})")
        elif rc.exists():
            self.fail(block, f"exit status {rc.read_text().strip()}")
        else:
            self.fail(block, f"did not finish within {BLOCK_TIMEOUT}s")

    def stop_server(self) -> None:
        if self.server and self.server.poll() is None:
            os.killpg(self.server.pid, 2)  # SIGINT, as Ctrl-C
            try:
                self.server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.server.pid, 9)
                self.server.wait()
        self.server = None

    def serve(self, block: Block) -> None:
        self.stop_server()
        self.server_log = self.work / f".serve-{block.line}.log"
        self.server = subprocess.Popen(["bash", "-c", block.text], cwd=self.work, env=self.env, stdin=subprocess.DEVNULL,
                                       stdout=self.server_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 60
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE  # readiness only; the README's commands verify
        while time.time() < deadline:
            if self.server.poll() is not None:
                self.fail(block, f"the server exited with status {self.server.returncode}:\n{self.server_log.read_text()[-3000:]}")
                return
            try:
                urllib.request.urlopen("https://localhost:8443/dex/.well-known/openid-configuration", context=insecure, timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        else:
            self.fail(block, "the server did not answer on https://localhost:8443 within 60 s")
            return
        time.sleep(0.3)
        self.ok(block, "server started")

    def output(self, block: Block) -> None:
        log = self.server_log.read_text() if self.server_log else ""
        missing = [l for l in block.text.splitlines() if l.strip() and l.split("...")[0].strip() not in log]
        if missing:
            self.fail(block, f"the server's output lacks {missing!r}:\n{log[-2000:]}")
        else:
            self.ok(block, "the server printed this")

    def approve_device(self, url: str, login: str, password: str) -> str:
        """What the user does in a browser for `kfsec login`: opens the printed URL, confirms the
        code, logs in, grants access. Returns "" on success, else what went wrong."""
        ctx = ssl.create_default_context(cafile=str(self.work / "kfsec-data/pki/ca-bundle.crt"))
        opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx), urllib.request.HTTPCookieProcessor())

        def form(page: str, at: str) -> tuple[str, dict]:
            f = re.search(r'<form method="post"(?: action="([^"]*)")?[^>]*>(.*?)</form>', page, re.S)
            if not f:
                raise ValueError(f"no form on {at}: {page[:300]!r}")
            fields = dict(re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', f.group(2)))
            return urllib.parse.urljoin(at, html.unescape(f.group(1) or at)), {k: html.unescape(v) for k, v in fields.items()}

        try:
            with opener.open(url, timeout=10) as r:
                at, page = r.url, r.read().decode()
            for _ in range(4):
                if "Grant Access" in page:
                    action, fields = form(page, at)
                    fields["approval"] = "approve"
                elif 'name="password"' in page:
                    action, fields = form(page, at)
                    fields.update(login=login, password=password)
                elif 'name="user_code"' in page:
                    action, fields = form(page, at)
                else:
                    return ""  # the final page ("you may close this window")
                with opener.open(action, data=urllib.parse.urlencode(fields).encode(), timeout=10) as r:
                    at, page = r.url, r.read().decode()
            return f"still on a form after four steps: {page[:300]!r}"
        except (OSError, ValueError) as e:
            return str(e)

    def shell_value(self, expr: str) -> str:
        """The value of a shell expression (e.g. `$TOKEN`) in the README's shell."""
        f = self.work / ".value"
        f.unlink(missing_ok=True)
        self.sh.stdin.write(f"printf '%s' \"{expr}\" >{shlex.quote(str(f))}.tmp && mv {shlex.quote(str(f))}.tmp {shlex.quote(str(f))}\n")
        self.sh.stdin.flush()
        deadline = time.time() + 10
        while not f.exists() and time.time() < deadline:
            time.sleep(0.05)
        return f.read_text() if f.exists() else ""

    def python(self, block: Block) -> None:
        """A ```python block, with the variables its verdict names (NAME=$SHELLVAR ...) set from
        the README's shell, run by a Python that has the kfp SDK (tests/kfp/.venv2)."""
        py = ROOT / "tests/kfp/.venv2/bin/python"
        if subprocess.run([str(py), "-c", "import kfp"], capture_output=True).returncode != 0 if py.exists() else True:
            subprocess.run([sys.executable, "-m", "venv", str(py.parent.parent)], check=True)
            subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "kfp==2.14.*", "requests"], check=True)
        prelude = ""
        for assign in block.arg.split():
            name, _, expr = assign.partition("=")
            prelude += f"{name} = {self.shell_value(expr)!r}\n"
        p = subprocess.run([str(py), "-c", prelude + block.text], cwd=self.work, env=self.env, text=True, capture_output=True, timeout=BLOCK_TIMEOUT)
        print(textwrap.indent((p.stdout + p.stderr).rstrip(), "    > "))
        if p.returncode == 0:
            self.ok(block, "ran (python)")
        else:
            self.fail(block, f"python exited with status {p.returncode}")

    def nginx(self, block: Block) -> None:
        """A ```nginx block (a `location` set for a `server`): served by a real nginx in front of
        kfsec with the README's upstream `app`, then: no credentials → 401, a forged identity
        header → 401, the README's bearer token ($TOKEN) → 200 with kfsec's identity headers."""
        port = free_port()
        conf = self.work / ".nginx.conf"
        body = block.text.replace("https://kfsec:8443", "https://127.0.0.1:8443").replace(
            "/etc/nginx/kfsec-ca.crt", str(self.work / "kfsec-data/pki/ca.crt"))
        conf.write_text(textwrap.dedent(f"""\
            daemon off; pid {self.work}/.nginx.pid; error_log {self.work}/.nginx.err;
            events {{}}
            http {{
              access_log off;
              client_body_temp_path {self.work}/.nginx-body; proxy_temp_path {self.work}/.nginx-proxy;
              fastcgi_temp_path {self.work}/.nginx-f; uwsgi_temp_path {self.work}/.nginx-u; scgi_temp_path {self.work}/.nginx-s;
              upstream app {{ server 127.0.0.1:8081; }}
              server {{
                listen 127.0.0.1:{port};
            {textwrap.indent(body, "    ")}
              }}
            }}
            """))
        nginx = subprocess.Popen(["nginx", "-p", str(self.work), "-c", str(conf)], stderr=subprocess.PIPE, text=True)
        self.others.append(nginx)
        token = self.shell_value("$TOKEN")
        url = f"http://127.0.0.1:{port}/"
        checks = []
        for _ in range(50):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.1)

        def get(headers: dict) -> tuple[int, str]:
            req = urllib.request.Request(url, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, ""
            except OSError as e:
                return 0, str(e)

        checks.append(("no credentials → 401", get({})[0] == 401))
        checks.append(("a forged kubeflow-userid → 401", get({"kubeflow-userid": "admin@kfsec.local"})[0] == 401))
        status, text = get({"Authorization": f"Bearer {token}", "kubeflow-userid": "admin@kfsec.local"})
        checks.append(("the bearer token → 200, the upstream sees kfsec's user", status == 200 and "kubeflow-userid: test.user1@example.org" in text.lower() and "admin@kfsec.local" not in text))
        nginx.terminate()
        nginx.wait()
        bad = [c for c, good in checks if not good]
        if bad:
            err = (self.work / ".nginx.err").read_text() if (self.work / ".nginx.err").exists() else ""
            self.fail(block, f"through nginx: {bad} (last answer {status}: {text[:500]!r}; nginx: {err[-1500:]})")
        else:
            self.ok(block, "nginx in front of kfsec: " + "; ".join(c for c, _ in checks))

    def close(self) -> None:
        self.stop_server()
        if self.sh.poll() is None:
            os.killpg(self.sh.pid, 9)
            self.sh.wait()
        for p in self.others:
            p.terminate()
            p.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    kfsec_bin = os.environ.get("KFSEC_BIN")
    if not kfsec_bin:
        print("readme-test: set KFSEC_BIN to the kfsec binary", file=sys.stderr)
        return 2
    for port in (8443, 9090, 9443):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                print(f"readme: 0 passed, 1 failed\nreadme-test: port {port} is in use; the README's commands need it", file=sys.stderr)
                return 1
    work = Path(tempfile.mkdtemp(prefix="kfsec-readme."))
    r = Runner(kfsec_bin, work)
    r.others.append(subprocess.Popen([sys.executable, str(HERE / "echo_upstream.py"), "8081"], stdout=subprocess.DEVNULL))
    try:
        for b in blocks(README.read_text()):
            v = b.verdict or ("run" if b.lang in ("sh", "bash") else "")
            if v == "skip":
                if not b.arg:
                    r.fail(b, "skipped without a reason")
                else:
                    print(f"readme-test: skip line {b.line}: {b.arg}")
            elif v in ("run", "device-login"):
                r.run(b)
            elif v == "serve":
                r.serve(b)
            elif v == "output":
                r.output(b)
            elif v in ("python", "nginx"):
                getattr(r, v)(b)
            elif b.lang in RUNNABLE:
                r.fail(b, f"a ```{b.lang} block needs a readme-test verdict (run, serve, python, nginx or skip REASON)")
            if r.failed:
                break  # later blocks build on this one
    finally:
        r.close()
        if os.environ.get("KEEP_TMP") == "1":
            print(f"readme-test: kept {work}")
        else:
            subprocess.run(["rm", "-rf", str(work)])
    print(f"readme: {r.passed} passed, {r.failed} failed")
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main())
