"""What rendering in the template sandbox costs, beside rendering in process.

Renders a built-in template (password.expiring, with a payload like the delivery
benchmark's) in batches as a delivery job does (``render_many``, one tenant), one by one
as previews do (``render``), and in process with the same renderer, and prints per render:
the CPU time of this process (the worker's or API's share: encoding, pipes, decoding),
the children's CPU time (from /proc) and the wall time.

    uv run python bench/template_ipc.py            # 20,000 renders each way
    uv run python bench/template_ipc.py --renders 2000
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import time
from pathlib import Path

import msgspec

from notifier.templates.builtin import builtin_templates
from notifier.templates.messages import MessageFields
from notifier.templates.pool import RenderPool, ToRender
from notifier.templates.rendering import Renderer, template_context

SOURCE = builtin_templates()["password.expiring"]


def fields(n: int) -> MessageFields:
    return MessageFields(
        notification_id=f"00000000-0000-4000-8000-{n:012d}",
        notification_type="password.expiring",
        recipient="https://hooks.example.com/notifier",
        entity_id=f"user-{n}",
        target_date=datetime.datetime(2030, 12, 24, 9, tzinfo=datetime.UTC),
        lead_time=datetime.timedelta(days=7),
        channel="webhook",
    )


def payload(n: int) -> dict[str, object]:
    return {"n": n, "name": "Ada", "email": "ada@example.com", "user_id": n}


def children_cpu(pool: RenderPool) -> float:
    """CPU seconds the pool's children have used so far."""
    total = 0.0
    for pid in pool.child_pids():
        stat = Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()
        total += (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def measure(renders: int, batch: int) -> dict[str, dict[str, float]]:
    pool = RenderPool(size=2, render_timeout_seconds=0.1, memory_mb=256)
    results: dict[str, dict[str, float]] = {}
    try:
        # Start both children and fill their compile caches before measuring.
        work = [ToRender("bench", SOURCE, payload(n), fields(n)) for n in range(batch)]
        await asyncio.gather(*pool.render_many(work), *pool.render_many(work))

        for label, size in ((f"sandbox, batches of {batch}", batch), ("sandbox, one by one", 1)):
            children_before = children_cpu(pool)
            cpu, wall = time.process_time(), time.perf_counter()
            for start in range(0, renders, size):
                work = [
                    ToRender("bench", SOURCE, payload(n), fields(n))
                    for n in range(start, start + size)
                ]
                await asyncio.gather(*pool.render_many(work))
            results[label] = {
                "parent_cpu_us": (time.process_time() - cpu) / renders * 1e6,
                "children_cpu_us": (children_cpu(pool) - children_before) / renders * 1e6,
                "wall_us": (time.perf_counter() - wall) / renders * 1e6,
            }
    finally:
        await pool.close()

    renderer = Renderer()
    contexts = [
        template_context(payload(n), **msgspec.structs.asdict(fields(n))) for n in range(renders)
    ]
    renderer.render(SOURCE, contexts[0])
    cpu, wall = time.process_time(), time.perf_counter()
    for context in contexts:
        renderer.render(SOURCE, context)
    results["in process (before)"] = {
        "parent_cpu_us": (time.process_time() - cpu) / renders * 1e6,
        "children_cpu_us": 0.0,
        "wall_us": (time.perf_counter() - wall) / renders * 1e6,
    }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--renders", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=50, help="NOTIFIER_DELIVERY_BATCH_SIZE")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--asyncio", action="store_true", help="asyncio's own loop instead of uvloop (workers')"
    )
    args = parser.parse_args()
    if args.asyncio:
        results = asyncio.run(measure(args.renders, args.batch))
    else:
        import uvloop  # noqa: PLC0415 - what `notifier worker` and uvicorn run on

        results = uvloop.run(measure(args.renders, args.batch))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    loop = "asyncio" if args.asyncio else "uvloop"
    print(f"{args.renders:,} renders of password.expiring each way, on {loop}; µs per render")
    print(f"  {'':<26} {'this process CPU':>17} {'children CPU':>13} {'wall':>8}")
    for label, figures in results.items():
        print(
            f"  {label:<26} {figures['parent_cpu_us']:>17.1f}"
            f" {figures['children_cpu_us']:>13.1f} {figures['wall_us']:>8.1f}"
        )


if __name__ == "__main__":
    main()
