#!/usr/bin/env python3
"""Renders the Envoy template (deploy/envoy/envoy.yaml) for a set of replicas:
the one renderer that `make cluster` (Envoy by default), the tests and
`make security-check` use.

    python3 deploy/envoy/render.py --bind 127.0.0.1:8080 --admin 127.0.0.1:0 \\
        --server replica-1=127.0.0.1:50051 --server replica-2=127.0.0.1:50052 > envoy.yaml

@BIND_HOST@ and @BIND_PORT@ become --bind, @ADMIN_HOST@ and @ADMIN_PORT@
--admin (port 0: Envoy picks one; `--admin-address-path` tells it), and
every line holding @REPLICA@ is written once per --server NAME=HOST:PORT,
with @REPLICA@, @HOST@ and @PORT@ filled in; every line holding
@CORS_ORIGIN@ once per --cors-origin (none: no line, no other origin may
call); the lines holding @WEB_ROOT@ only with --web-root (the directory of the
built chat page, web/build.sh), which Envoy then serves. Commented lines are
copied as they are.

    python3 deploy/envoy/render.py --bind 127.0.0.1:8080 --server r1=127.0.0.1:50051 \
        --web-root "$CARGO_TARGET_DIR/web" --cors-origin http://localhost:3000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent / "envoy.yaml"


def split_addr(text: str) -> tuple[str, str]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{text!r}: expected HOST:PORT")
    return host, port


def parse_server(text: str) -> tuple[str, str, str]:
    name, sep, addr = text.partition("=")
    if not sep or not name:
        raise ValueError(f"--server {text!r}: expected NAME=HOST:PORT")
    return (name, *split_addr(addr))


def render(template: str, bind: str, admin: str, servers: list[tuple[str, str, str]],
           cors_origins: list[str] = (), web_root: str | None = None) -> str:
    (bind_host, bind_port), (admin_host, admin_port) = split_addr(bind), split_addr(admin)
    out = []
    for line in template.splitlines():
        if line.lstrip().startswith("#"):
            out.append(line)
        elif "@REPLICA@" in line:
            for name, host, port in servers:
                out.append(line.replace("@REPLICA@", name).replace("@HOST@", host).replace("@PORT@", port))
        elif "@CORS_ORIGIN@" in line:
            out.extend(line.replace("@CORS_ORIGIN@", yaml_string(o)) for o in cors_origins)
        elif "@WEB_ROOT@" in line:
            if web_root is not None:
                out.append(line.replace("@WEB_ROOT@", yaml_string(web_root)))
        else:
            out.append(line.replace("@BIND_HOST@", bind_host).replace("@BIND_PORT@", bind_port)
                       .replace("@ADMIN_HOST@", admin_host).replace("@ADMIN_PORT@", admin_port))
    return "\n".join(out) + "\n"


def yaml_string(text: str) -> str:
    """`text` as it may stand inside a double-quoted YAML string."""
    if any(c in text for c in '"\\') or not text.isprintable():
        raise ValueError(f"{text!r}: no quotes, backslashes or control characters")
    return text


def origin_arg(text: str) -> str:
    scheme, sep, rest = text.partition("://")
    if scheme not in ("http", "https") or not sep or not rest or "/" in rest:
        raise argparse.ArgumentTypeError(f"--cors-origin {text!r}: expected SCHEME://HOST[:PORT], e.g. http://localhost:3000")
    try:
        return yaml_string(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def web_root_arg(text: str) -> str:
    path = Path(text).resolve()
    missing = [f for f in ("index.html", "app.js") if not (path / f).is_file()]
    if missing:
        raise argparse.ArgumentTypeError(f"--web-root {text!r}: no {', '.join(missing)} there; build it with web/build.sh")
    try:
        return yaml_string(str(path))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def server_arg(text: str) -> tuple[str, str, str]:
    try:
        return parse_server(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def addr_arg(text: str) -> str:
    try:
        split_addr(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bind", type=addr_arg, required=True, help="HOST:PORT clients dial")
    ap.add_argument("--admin", type=addr_arg, default="127.0.0.1:0",
                    help="HOST:PORT of Envoy's admin interface (keep it on loopback)")
    ap.add_argument("--server", type=server_arg, action="append", default=[], required=True,
                    help="NAME=HOST:PORT of a replica's gRPC port, repeatable")
    ap.add_argument("--cors-origin", type=origin_arg, action="append", default=[],
                    help="an origin (SCHEME://HOST[:PORT]) whose pages may call through CORS, repeatable")
    ap.add_argument("--web-root", type=web_root_arg,
                    help="the built chat page's directory (index.html, app.js): Envoy serves it at /")
    ap.add_argument("--template", type=Path, default=TEMPLATE, help="another template (default: the shipped one)")
    args = ap.parse_args()
    try:
        template = args.template.read_text()
    except OSError as e:
        print(f"render: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(render(template, args.bind, args.admin, args.server, args.cors_origin, args.web_root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
