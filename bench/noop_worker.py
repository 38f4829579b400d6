"""The queue's own ceiling: stock procrastinate draining no-op jobs, then exiting.

Stock procrastinate (its connector and fetch, durable commits), run through the queue
adapter as ``notifier worker`` runs it, with a task that does nothing and the same
concurrency and polling interval.

    python bench/noop_worker.py DATABASE_URL [--concurrency 10]
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Final

from notifier.queue import JobInfo
from notifier.queue.app import QueueApp, Task, create_stock_app, open_app, run_worker

NOOP_QUEUE: Final = "bench_noop"
NOOP_TASK: Final = "bench.noop"


async def noop(deps: object, job: JobInfo) -> None:
    """Nothing: what is left is the queue's own cost."""


def make_app(url: str) -> QueueApp:
    return create_stock_app(url, [Task(NOOP_TASK, noop, queue=NOOP_QUEUE)])


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    app = make_app(args.url)
    async with open_app(app):
        await run_worker(
            app,
            deps=None,
            queues=[NOOP_QUEUE],
            concurrency=args.concurrency,
            wait=False,
            poll_interval_seconds=0.5,
        )


if __name__ == "__main__":
    asyncio.run(main())
