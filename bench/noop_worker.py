"""The queue's own ceiling: stock procrastinate draining no-op jobs, then exiting.

Same worker options as ``notifier worker`` (concurrency, polling, LISTEN/NOTIFY), stock
connector with durable commits, a task that does nothing.

    python bench/noop_worker.py DATABASE_URL [--concurrency 10]
"""

from __future__ import annotations

import argparse
import asyncio

import procrastinate

NOOP_QUEUE = "bench_noop"
NOOP_TASK = "bench.noop"


def make_app(url: str) -> procrastinate.App:
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(name=NOOP_TASK, queue=NOOP_QUEUE)
    async def noop() -> None:
        """Nothing: what is left is the queue's own cost."""

    return app


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    app = make_app(args.url)
    async with app.open_async():
        await app.run_worker_async(
            queues=[NOOP_QUEUE],
            concurrency=args.concurrency,
            wait=False,
            fetch_job_polling_interval=0.5,
            install_signal_handlers=False,
        )


if __name__ == "__main__":
    asyncio.run(main())
