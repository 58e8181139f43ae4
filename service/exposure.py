"""The exposure and feedback logs: JSON lines written off the event loop (docs/design.md, "A/B
routing"; read by ``python -m service.ab_report``).

A request only puts a dict on a bounded queue (``queue.Queue.put_nowait``: it never blocks and
never formats); a :class:`logging.handlers.QueueListener` thread turns each dict into one JSON
line and hands it to a :class:`logging.handlers.RotatingFileHandler`, which rotates the file by
size (``<name>.jsonl`` -> ``<name>.jsonl.1`` -> ... up to ``backups``; the oldest is deleted).
A full queue drops the record and counts it (``dialogue_exposure_log_dropped_total{log}``).
Each process writes its own file, named with the host name and the process id, so several
workers or replicas may share a directory. ``close`` writes what is queued and closes the file.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import socket
from collections.abc import Callable
from logging.handlers import QueueListener, RotatingFileHandler
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def process_file_name(prefix: str) -> str:
    """``<prefix>-<host>-<pid>.jsonl``: one file per process (host names sanitised)."""
    host = _UNSAFE.sub("_", socket.gethostname()) or "host"
    return f"{prefix}-{host}-{os.getpid()}.jsonl"


class _JsonLines(QueueListener):
    """A QueueListener whose records are plain dicts, serialised in its thread."""

    def prepare(self, record: Any) -> logging.LogRecord:
        return logging.makeLogRecord({"msg": json.dumps(record, ensure_ascii=False)})

    def enqueue_sentinel(self) -> None:
        # The queue is bounded: wait for room (the thread is draining it) instead of raising.
        self.queue.put(self._sentinel)  # type: ignore[attr-defined]


class JsonlLog:
    """One process's JSON-lines file in ``directory``, written by a background thread."""

    def __init__(
        self,
        directory: Path,
        prefix: str,
        *,
        max_bytes: int,
        backups: int,
        queue_size: int,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / process_file_name(prefix)
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self.handler = RotatingFileHandler(
            self.path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
        self.handler.setFormatter(logging.Formatter("%(message)s"))
        self.dropped = 0
        self._on_drop = on_drop
        self._listener = _JsonLines(self.queue, self.handler)
        self._listener.start()
        self._open = True

    def write(self, record: dict[str, Any]) -> bool:
        """Queue one record; False (and counted) when the queue is full or the log is closed."""
        if self._open:
            try:
                self.queue.put_nowait(record)
                return True
            except queue.Full:
                pass
        self.dropped += 1
        if self._on_drop is not None:
            self._on_drop()
        return False

    def close(self) -> None:
        """Write every queued record, stop the thread and close the file (idempotent)."""
        if not self._open:
            return
        self._open = False
        self._listener.stop()
        self.handler.close()
