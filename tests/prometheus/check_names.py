#!/usr/bin/env python3
"""Every metric name the alert rules and the Grafana dashboard use is one kfsec exposes.

    check_names.py SCRAPE RULES.yaml DASHBOARD.json

SCRAPE is a text-format scrape of kfsec's /metrics (what `curl` gets). The names kfsec exposes
are taken from its `# TYPE` lines and samples (a histogram's `_bucket`, `_sum` and `_count`
series included). A labelled family with no sample yet (dropped audit events on a healthy
server) is not in a scrape at all: such a name passes only if the sources register it
(`registry.register("<base>", …)` under crates/, the name being the base plus `_total`, `_info`,
`_bucket`, `_sum` or `_count`, or the base itself), and is printed as such. Names used are every
`kfsec_…` word in the rules' `expr:` and the dashboard's `expr`/`query` strings; `up` is
Prometheus' own. Prints each name checked; exits 1 naming any that kfsec does not expose.
"""
import json
import pathlib
import re
import sys

NAME = re.compile(r"\bkfsec_[a-zA-Z0-9_]+")


def exposed(scrape: str) -> set[str]:
    names = set()
    for line in scrape.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)", line)
        if m:
            name, kind = m.groups()
            names.add(name)
            if kind == "histogram":
                names.update({f"{name}_bucket", f"{name}_sum", f"{name}_count"})
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def registered() -> set[str]:
    """Names the Rust sources register, with every suffix the exposition may give them."""
    root = pathlib.Path(__file__).resolve().parents[2] / "crates"
    pattern = re.compile(r'register(?:_with_unit)?\(\s*"(kfsec_[a-z0-9_]+)"', re.S)
    names = set()
    for f in root.glob("*/src/**/*.rs"):
        for base in pattern.findall(f.read_text(encoding="utf-8", errors="replace")):
            names.add(base)
            names.update(base + s for s in ("_total", "_info", "_bucket", "_sum", "_count"))
    return names


def rule_exprs(path: str) -> list[str]:
    # The rules file is YAML; its expressions are the `expr:` values (one line, or a `|` block).
    out, block = [], None
    for line in open(path, encoding="utf-8"):
        if block is not None:
            if line.strip() and len(line) - len(line.lstrip()) > block[0]:
                block[1].append(line.strip())
                continue
            out.append(" ".join(block[1]))
            block = None
        m = re.match(r"(\s*)expr:\s*(.*)$", line)
        if m:
            if m.group(2).strip() in ("|", ">"):
                block = (len(m.group(1)), [])
            else:
                out.append(m.group(2))
    if block is not None:
        out.append(" ".join(block[1]))
    return out


def dashboard_exprs(path: str) -> list[str]:
    out = []

    def walk(v):
        if isinstance(v, dict):
            for k, x in v.items():
                if k in ("expr", "query", "definition") and isinstance(x, str):
                    out.append(x)
                elif k == "query" and isinstance(x, dict):
                    walk(x)
                else:
                    walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(json.load(open(path, encoding="utf-8")))
    return out


def main() -> int:
    scrape, rules, dashboard = sys.argv[1:4]
    have = exposed(open(scrape, encoding="utf-8").read())
    used = {}
    for where, exprs in (("rules", rule_exprs(rules)), ("dashboard", dashboard_exprs(dashboard))):
        if not exprs:
            print(f"check_names: no expressions found in the {where}")
            return 1
        for e in exprs:
            for n in NAME.findall(e):
                used.setdefault(n, set()).add(where)
    source = registered()
    missing = sorted(n for n in used if n not in have and n not in source)
    for n in sorted(used):
        state = "exposed" if n in have else "registered, no sample yet" if n in source else "MISSING"
        print(f"check_names: {n} ({', '.join(sorted(used[n]))}): {state}")
    if missing:
        print(f"check_names: not exposed by kfsec: {', '.join(missing)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
