"""wrk (the Debian package ``wrk``) as an outside load generator, read as bench/loadgen.py reports.

wrk is a C program on epoll, with nothing of ours in it: the ingest figures it gives check
those of the suite's own generator. It is optional; the suite skips its rows without it.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any


def available() -> bool:
    return shutil.which("wrk") is not None


def run(
    url: str,
    clients: int,
    seconds: float,
    *,
    body: str | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """wrk sending to ``url`` over ``clients`` keep-alive connections for ``seconds``
    (rounded up): GETs, or POSTs of ``body`` if given; its summary, parsed."""
    binary = shutil.which("wrk")
    if binary is None:
        raise FileNotFoundError("wrk is not installed (Debian: apt-get install wrk)")
    with tempfile.TemporaryDirectory() as tmp:
        lines = []
        if body is not None:
            lines += ['wrk.method = "POST"', f"wrk.body = [==[{body}]==]"]
        lines += [f'wrk.headers["{name}"] = "{value}"' for name, value in (headers or {}).items()]
        script = Path(tmp, "request.lua")
        script.write_text("\n".join(lines) + "\n")
        out = subprocess.run(
            [
                *(binary, "--threads", str(min(2, clients)), "--connections", str(clients)),
                *("--duration", f"{math.ceil(seconds)}s", "--latency", "--script", str(script)),
                url,
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=seconds + 120,
        )
    return parse(out.stdout, clients)


def milliseconds(text: str) -> float:
    """A wrk duration (``850.00us``, ``12.31ms``, ``1.02s``, ``1.50m``) in milliseconds."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[match.group(2)]


def parse(output: str, clients: int) -> dict[str, Any]:
    """wrk's summary (run with --latency) in the load generator's terms. Every answer that
    was not 2xx or 3xx, and every socket error, is an error; what ``clients`` connections
    had in flight when the time was up is neither counted nor known (``cut_off``)."""
    done = re.search(r"(\d+) requests in ([\d.]+\w+),", output)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", output, re.MULTILINE))
    if done is None or rate is None or set(latency) != {"50", "99"}:
        raise ValueError(f"not a wrk --latency summary:\n{output}")
    requests = int(done.group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    errors = (int(non_2xx.group(1)) if non_2xx else 0) + (
        sum(int(n) for n in sockets.groups()) if sockets else 0
    )
    return {
        "requests": requests,
        "ok": requests - (int(non_2xx.group(1)) if non_2xx else 0),
        "errors": errors,
        "per_second": float(rate.group(1)),
        "p50_ms": milliseconds(latency["50"]),
        "p99_ms": milliseconds(latency["99"]),
        "cut_off": clients,
        "output": output,
    }
