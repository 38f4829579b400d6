"""The template sandbox: a child process that compiles and renders tenants' templates.

Started by :class:`notifier.templates.pool.RenderPool` as
``python -m notifier.templates.sandbox``; it reads requests on stdin and answers on stdout
(:mod:`notifier.templates.protocol`) until stdin closes. Jinja2's sandbox keeps templates
away from Python's internals; this process keeps them away from everything else, and
limits itself so that most runaway templates end in a clean error:

- a CPU timer per item (``ITIMER_PROF``): a render that has used its budget is
  interrupted between two bytecodes and reported as taking too long;
- an address-space limit (``RLIMIT_AS``): an allocation beyond it is a ``MemoryError``,
  reported as needing too much memory;
- Python's recursion limit: a template nested or recursing too deeply is reported so;
- a CPU-time limit (``RLIMIT_CPU``) raised before each request just far enough for it,
  so that even a child whose parent is gone cannot spin for long.

A template stuck in one long C call (``10 ** 10 ** 8``) cannot be interrupted from inside:
the parent kills the process when the deadline it publishes has passed, and starts
another. Nothing here is trusted by the parent beyond its answers' shape.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import resource
import signal
import sys
import time
from types import FrameType
from typing import BinaryIO

import msgspec

from notifier.templates import protocol
from notifier.templates.messages import PARTS, TemplateProblem, TemplateSource
from notifier.templates.rendering import Phase, Renderer, RenderInterrupted, template_context

# Done items wait at most this long (plus the item in progress) before their results are
# written, so that a batch's fast items go out while its slow ones still render, and a
# batch of fast ones costs one write.
FLUSH_AFTER_SECONDS = 0.001
RECURSION_LIMIT = 1000


class Sandbox:
    """Serves requests one by one, each item under its own time budget."""

    def __init__(
        self,
        *,
        render_seconds: float,
        compile_seconds: float,
        slice_seconds: float,
        progress: protocol.ProgressBlock,
        output_fd: int,
    ) -> None:
        self.render_seconds = render_seconds
        self.compile_seconds = compile_seconds
        self.slice_seconds = slice_seconds
        self.progress = progress
        self.output_fd = output_fd
        self.renderer = Renderer(on_phase=self._on_phase)
        self._render_message = f"took longer than {render_seconds * 1000:.0f} ms to render"
        self._compile_message = f"took longer than {compile_seconds * 1000:.0f} ms to compile"
        # The message the timer raises with; None while no item is in progress.
        self._armed: str | None = None
        self._item = -1
        self._part = PARTS[0]
        self._deadline = 0.0
        self._cpu_limit = 0.0
        # Render time left when a compile paused the render's timer; None outside renders.
        self._render_left: float | None = None

    # --- the timer and the progress block ------------------------------------------------

    def _on_timer(self, signum: int, frame: FrameType | None) -> None:
        if self._armed is not None:
            message, self._armed = self._armed, None
            raise RenderInterrupted(message)

    def _arm(self, seconds: float, message: str) -> None:
        self._armed = message
        # ITIMER_PROF counts this process's CPU time: a busy machine delays a render
        # without spending its budget (the parent's wall-clock deadline covers that).
        self._cpu_limit = time.process_time() + seconds
        signal.setitimer(signal.ITIMER_PROF, max(seconds, 1e-6))

    def _disarm(self) -> float:
        """Stop the timer; the budget it had left."""
        self._armed = None
        left, _ = signal.setitimer(signal.ITIMER_PROF, 0)
        return left

    def _publish(self, phase: int, deadline: float) -> None:
        self._deadline = deadline
        self.progress.write(self._item, phase, PARTS.index(self._part), deadline, self._cpu_limit)

    def _on_phase(self, phase: Phase, part: str) -> None:
        self._part = part
        if phase == "compile":
            # Compiling gets a budget of its own (a large template takes a while, once per
            # process and version); the render's budget waits meanwhile.
            left = self._disarm()
            if self._render_left is not None:
                self._render_left = left
            self._arm(self.compile_seconds, self._compile_message)
            self._publish(protocol.COMPILING, time.monotonic() + self.compile_seconds)
        elif phase == "compiled":
            self._disarm()
            if self._render_left is not None:
                self._arm(self._render_left, self._render_message)
                self._publish(protocol.RENDERING, time.monotonic() + self._render_left)
        else:
            # The next part renders within what is left of the same budget and deadline.
            self._publish(protocol.RENDERING, self._deadline)

    # --- items ---------------------------------------------------------------------------

    def _start_item(self, index: int) -> None:
        self._item = index
        self._part = PARTS[0]

    def render(
        self, index: int, source: TemplateSource, item: protocol.RenderItem
    ) -> protocol.Outcome:
        """One notification's message, or why not."""
        self._start_item(index)
        self._render_left = self.render_seconds
        try:
            self._arm(self.render_seconds, self._render_message)
            self._publish(protocol.RENDERING, time.monotonic() + self.render_seconds)
            context = template_context(item.payload, **msgspec.structs.asdict(item.fields))
            message = self.renderer.render(source, context)
            self._disarm()
        except TemplateProblem as problem:
            return protocol.Failed(problem.part, problem.message, problem.line)
        except RenderInterrupted as exc:
            # The timer fired between the renderer's return and the disarm.
            return protocol.Failed(self._part, str(exc))
        except MemoryError:
            return protocol.Failed(self._part, "needs more memory to render than allowed")
        finally:
            self._disarm()
            self._render_left = None
        return protocol.Rendered(message.subject, message.text, message.html)

    def check(self, index: int, source: TemplateSource) -> protocol.Outcome:
        """Whether every part of ``source`` compiles (each within the compile budget)."""
        self._start_item(index)
        # Each part's compile arms the timer (see _on_phase); a cached part costs nothing.
        self._cpu_limit = time.process_time() + self.compile_seconds
        self._publish(protocol.COMPILING, time.monotonic() + self.compile_seconds)
        try:
            self.renderer.check(source)
        except TemplateProblem as problem:
            return protocol.Failed(problem.part, problem.message, problem.line)
        except RenderInterrupted as exc:
            return protocol.Failed(self._part, str(exc))
        except MemoryError:
            return protocol.Failed(self._part, "needs more memory to compile than allowed")
        finally:
            self._disarm()
        return protocol.Checked()

    # --- requests ------------------------------------------------------------------------

    def serve(self, requests: BinaryIO) -> int:
        """Answer requests until the parent closes stdin; the exit status."""
        self.progress.write(-1, protocol.IDLE, 0, 0.0, 0.0)
        self._write(protocol.Ready())
        while True:
            body = _read_frame(requests)
            if body is None:
                return 0
            request = protocol.request_decoder.decode(body)
            self._limit_cpu_for(request)
            self._answer(request)
            self._item = -1
            self.progress.write(-1, protocol.IDLE, 0, 0.0, 0.0)

    def _answer(self, request: protocol.Request) -> None:
        started = last_flush = time.monotonic()
        count = (
            len(request.items)
            if isinstance(request, protocol.RenderRequest)
            else len(request.sources)
        )
        first = 0
        done: list[protocol.Outcome] = []
        for index in range(count):
            now = time.monotonic()
            if index and now - started >= self.slice_seconds:
                break  # the rest waits its turn again, behind other tenants' work
            if done and now - last_flush >= FLUSH_AFTER_SECONDS:
                self._write(protocol.Results(first, done, more=True))
                first, done, last_flush = index, [], now
            if isinstance(request, protocol.RenderRequest):
                item = request.items[index]
                done.append(self.render(index, request.sources[item.source], item))
            else:
                done.append(self.check(index, request.sources[index]))
            # Done with it: a parent looking now must not take the next steps for it.
            self.progress.write(
                index, protocol.IDLE, 0, time.monotonic() + self.render_seconds, 0.0
            )
        self._write(protocol.Results(first, done, more=False))

    def _limit_cpu_for(self, request: protocol.Request) -> None:
        """A hard stop for this request, should the parent be gone and the timer stuck: the
        longest the request may take (a slice, then one item's compiles and render)."""
        longest = self.slice_seconds + len(PARTS) * self.compile_seconds + self.render_seconds
        used = time.process_time()
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        soft = math.ceil(used + longest) + 1
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))

    def _write(self, reply: protocol.Reply) -> None:
        view = memoryview(protocol.frame(protocol.reply_encoder.encode(reply)))
        while view:
            written = os.write(self.output_fd, view)
            view = view[written:]


def _read_frame(stream: BinaryIO) -> bytes | None:
    """The next message's body; None when the parent has closed the pipe."""
    header = stream.read(protocol.HEADER.size)
    if len(header) < protocol.HEADER.size:
        return None
    (length,) = protocol.HEADER.unpack(header)
    body = stream.read(length)
    return body if len(body) == length else None


def limit_resources(memory_bytes: int) -> None:
    """Limits the process cannot raise again: memory, no core files, no new processes; and
    first in line for the kernel's OOM killer, so that a container out of memory loses a
    renderer (replaced) rather than the API or worker it serves."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    sys.setrecursionlimit(RECURSION_LIMIT)
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as adjust:
        adjust.write("1000")


def main(argv: list[str] | None = None) -> int:
    """Run the sandbox on stdin/stdout."""
    parser = argparse.ArgumentParser(prog="python -m notifier.templates.sandbox")
    parser.add_argument("--render-ms", type=float, required=True)
    parser.add_argument("--compile-ms", type=float, required=True)
    parser.add_argument("--slice-ms", type=float, required=True)
    parser.add_argument("--memory-mb", type=int, required=True)
    parser.add_argument("--progress-fd", type=int, required=True)
    args = parser.parse_args(argv)
    # Stray output (a warning) must not mix with the replies: they get stdout's descriptor
    # to themselves, and everything else writes to stderr.
    output_fd = os.dup(sys.stdout.fileno())
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    # The parent stops this process by closing stdin, or kills it: no keyboard interrupts.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sandbox = Sandbox(
        render_seconds=args.render_ms / 1000,
        compile_seconds=args.compile_ms / 1000,
        slice_seconds=args.slice_ms / 1000,
        progress=protocol.ProgressBlock(args.progress_fd),
        output_fd=output_fd,
    )
    signal.signal(signal.SIGPROF, sandbox._on_timer)
    # Build both environments' lexers and the like before the first timed item, and
    # before the limits, which the start-up has no reason to meet.
    sandbox.renderer.render(
        TemplateSource(name="warm-up", subject="{{ a }}", text_body="{{ a }}", html_body="{{ a }}"),
        {"a": 1},
    )
    limit_resources(args.memory_mb * 1024 * 1024)
    return sandbox.serve(sys.stdin.buffer)


if __name__ == "__main__":
    sys.exit(main())
