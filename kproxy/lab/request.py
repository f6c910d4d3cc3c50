"""HTTP(S) GETs from inside a lab namespace, for `kproxy lab curl` and the tests. Names
resolve through the namespace's own /etc/hosts and resolv.conf (the lab puts them under
/etc/netns/<namespace>/), HTTPS is verified against the lab's certificates.

    python -m kproxy.lab.request URL [--count N] [--cacert FILE] [--json]

Bounded: at most 1000 requests, each with a timeout; one JSON line per request with --json.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import urllib.error
import urllib.request
from collections import Counter
from typing import Any

MAX_COUNT = 1000


def get(opener: urllib.request.OpenerDirector, url: str, timeout: float) -> dict[str, Any]:
    try:
        with opener.open(url, timeout=timeout) as reply:
            return {"status": reply.status, "body": reply.read().decode(errors="replace").strip(),
                    "ingress": reply.headers.get("X-Lab-Ingress")}
    except urllib.error.HTTPError as err:
        return {"status": err.code, "body": err.read().decode(errors="replace").strip(),
                "ingress": err.headers.get("X-Lab-Ingress")}
    except (OSError, ssl.SSLError) as err:
        return {"status": None, "error": str(getattr(err, "reason", err))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kproxy.lab.request")
    parser.add_argument("url")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--cacert", help="trust these certificates (the lab's self-signed ones)")
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not 1 <= args.count <= MAX_COUNT:
        parser.error(f"--count must be between 1 and {MAX_COUNT}")
    context = ssl.create_default_context(cafile=args.cacert) if args.cacert else None
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=context))
    results = [get(opener, args.url, args.timeout) for _ in range(args.count)]
    if args.json:
        for r in results:
            print(json.dumps(r))
    else:
        seen = Counter(r.get("body") or f"FAILED: {r.get('error') or r.get('status')}" for r in results)
        for body, n in sorted(seen.items()):
            print(f"{n:4d} x {body}")
    return 0 if all(r["status"] == 200 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
