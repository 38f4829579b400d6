"""What the API and workers say to their template sandboxes, and how.

Messages are msgspec JSON (payloads may hold integers wider than 64 bits, which msgpack
cannot carry), each framed by its length as 4 bytes, big-endian, over the child's stdin
and stdout. The parent sends one request at a time and reads every reply to it before
sending the next.

Beside the pipes, each child shares a small block of memory with its parent
(:class:`ProgressBlock`): where it is (item, part, compiling or rendering), the wall time
by which it expects to be done, and the CPU time at which its own timer stops the item.
The parent reads it to know how long to wait, and when a child overruns, whether the
template is to blame (the child used its CPU budget) and for which part, even when the
child is stuck inside a single C call and can answer nothing.
"""

from __future__ import annotations

import mmap
import os
import struct
import tempfile
from typing import Any

import msgspec

from notifier.templates.messages import PARTS, MessageFields, TemplateSource

# A frame's length prefix.
HEADER = struct.Struct(">I")
# Replies larger than this come from a broken child: three parts of MAX_RENDERED_CHARS,
# each escaped to at most six bytes a character, fit well below it.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class RenderItem(msgspec.Struct, frozen=True, array_like=True):
    """One notification to render: its template (an index into the request's sources),
    its payload and its own fields."""

    source: int
    payload: dict[str, Any]
    fields: MessageFields


class RenderRequest(msgspec.Struct, frozen=True, tag="render", array_like=True):
    """Render each item, in order. Each template is sent once per request."""

    sources: list[TemplateSource]
    items: list[RenderItem]


class CheckRequest(msgspec.Struct, frozen=True, tag="check", array_like=True):
    """Compile each template (every part), in order."""

    sources: list[TemplateSource]


Request = RenderRequest | CheckRequest


class Rendered(msgspec.Struct, frozen=True, tag="ok", array_like=True):
    """An item rendered."""

    subject: str
    text: str
    html: str | None


class Checked(msgspec.Struct, frozen=True, tag="checked", array_like=True):
    """A template compiled."""


class Failed(msgspec.Struct, frozen=True, tag="failed", array_like=True):
    """An item that did not render or compile: a :class:`~notifier.templates.messages.TemplateProblem`."""

    part: str
    message: str
    line: int | None = None


Outcome = Rendered | Checked | Failed


class Ready(msgspec.Struct, frozen=True, tag="ready", array_like=True):
    """The child has set its limits, warmed up and waits for requests."""


class Results(msgspec.Struct, frozen=True, tag="results", array_like=True):
    """The outcomes of the request's items ``first``, ``first + 1``, ...

    ``more``: other messages follow for this request. The last one may stop short of the
    request's end: the child has used up its time slice, and the parent queues the rest
    again behind other tenants' work.
    """

    first: int
    outcomes: list[Outcome]
    more: bool


Reply = Ready | Results

request_encoder = msgspec.json.Encoder()
request_decoder = msgspec.json.Decoder(Request)
reply_encoder = msgspec.json.Encoder()
reply_decoder = msgspec.json.Decoder(Reply)


def frame(body: bytes) -> bytes:
    """``body`` with its length prefix."""
    return HEADER.pack(len(body)) + body


# --- the shared progress block -------------------------------------------------------------

# item (int32, -1: none), phase (u8), part (u8, index into PARTS), the wall time
# (time.monotonic, shared by all processes of a machine) the child expects to be done by,
# and the CPU time (time.process_time) at which its timer interrupts the item.
_PROGRESS = struct.Struct("<iBBxxdd")
IDLE, COMPILING, RENDERING = 0, 1, 2


class Progress(msgspec.Struct, frozen=True):
    """What a child last said it was doing."""

    item: int
    phase: int
    part: str
    deadline: float
    cpu_limit: float


class ProgressBlock:
    """The few bytes of memory a child and its parent share.

    Made by the parent on a memory-only file (memfd where the platform has it), whose
    descriptor the child inherits. The child writes without a system call; the parent
    reads when it needs to.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._memory = mmap.mmap(fd, _PROGRESS.size)

    @classmethod
    def create(cls) -> ProgressBlock:
        """A new block (for the parent); the descriptor goes to the child."""
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("notifier-template-sandbox", 0)
        else:  # pragma: no cover - macOS and others: an unlinked temporary file
            fd, path = tempfile.mkstemp(prefix="notifier-sandbox-")
            os.unlink(path)
        os.ftruncate(fd, _PROGRESS.size)
        block = cls(fd)
        block.write(-1, IDLE, 0, 0.0, 0.0)
        return block

    def write(self, item: int, phase: int, part: int, deadline: float, cpu: float) -> None:
        """Record what the child starts doing (the child's side)."""
        _PROGRESS.pack_into(self._memory, 0, item, phase, part, deadline, cpu)

    def read(self) -> Progress:
        """What the child last recorded (the parent's side)."""
        item, phase, part, deadline, cpu = _PROGRESS.unpack_from(self._memory, 0)
        return Progress(item, phase, PARTS[part % len(PARTS)], deadline, cpu)

    def close(self) -> None:
        """Unmap the block and close the descriptor."""
        self._memory.close()
        os.close(self.fd)
