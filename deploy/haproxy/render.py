#!/usr/bin/env python3
"""Renders the HAProxy template (deploy/haproxy/haproxy.cfg) for a set of
replicas: the one renderer that `make cluster PROXY=haproxy`, the tests and
`make security-check SECURITY_ARGS=--targets=proxied` use.

    python3 deploy/haproxy/render.py --bind 127.0.0.1:8080 \\
        --server replica-1=127.0.0.1:50051,9001 --server spare=127.0.0.1:50052,9002,backup > haproxy.cfg

@BIND@ becomes --bind; every line holding @NAME@ (one per backend) is written
once per --server NAME=HOST:PORT,ADMIN_PORT[,backup], with @NAME@, @ADDR@,
@ADMIN_PORT@ and @BACKUP@ ("backup" or nothing) filled in. Commented lines
are copied as they are.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent / "haproxy.cfg"


def parse_server(text: str) -> tuple[str, str, str, bool]:
    name, sep, rest = text.partition("=")
    fields = rest.split(",")
    if not sep or not name or len(fields) not in (2, 3) or (len(fields) == 3 and fields[2] != "backup"):
        raise ValueError(f"--server {text!r}: expected NAME=HOST:PORT,ADMIN_PORT[,backup]")
    return name, fields[0], fields[1], len(fields) == 3


def render(template: str, bind: str, servers: list[tuple[str, str, str, bool]]) -> str:
    out = []
    for line in template.splitlines():
        if "@NAME@" in line and not line.lstrip().startswith("#"):
            for name, addr, admin_port, backup in servers:
                rendered = (line.replace("@NAME@", name).replace("@ADDR@", addr)
                            .replace("@ADMIN_PORT@", admin_port).replace("@BACKUP@", "backup" if backup else ""))
                out.append(rendered.rstrip())
        else:
            out.append(line.replace("@BIND@", bind))
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bind", required=True, help="HOST:PORT clients dial")
    ap.add_argument("--server", action="append", default=[], required=True,
                    help="NAME=HOST:PORT,ADMIN_PORT[,backup], repeatable")
    ap.add_argument("--template", type=Path, default=TEMPLATE, help="another template (default: the shipped one)")
    args = ap.parse_args()
    try:
        servers = [parse_server(s) for s in args.server]
        template = args.template.read_text()
    except (ValueError, OSError) as e:
        print(f"render: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(render(template, args.bind, servers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
