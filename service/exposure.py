"""The exposure and feedback logs: JSON lines written off the event loop (docs/design.md, "A/B
routing"; read by ``python -m service.ab_report``).

A request only puts a dict on a bounded queue (``queue.Queue.put_nowait``: it never blocks and
never formats); a writer thread turns the queued dicts into JSON lines in batches and appends
them, rotating the file by size with :class:`logging.handlers.RotatingFileHandler`'s rollover
(``<name>.jsonl`` -> ``<name>.jsonl.1`` -> ... up to ``backups``; the oldest is deleted).
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
import threading
import time
from collections.abc import Callable
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def process_file_name(prefix: str) -> str:
    """``<prefix>-<host>-<pid>.jsonl``: one file per process (host names sanitised)."""
    host = _UNSAFE.sub("_", socket.gethostname()) or "host"
    return f"{prefix}-{host}-{os.getpid()}.jsonl"


_STOP = object()  # the writer thread's sentinel


class JsonlLog:
    """One process's JSON-lines file in ``directory``, written by a background thread.

    The thread wakes at most once per ``interval_s`` while records arrive: it takes everything
    queued, serialises it, writes it in one call and flushes, rotating the file (the logging
    module's :meth:`RotatingFileHandler.doRollover`: ``<name>.1`` ... ``<name>.<backups>``)
    before a record that would take it past ``max_bytes``. Waking per batch rather than per
    record keeps the thread from contending for the interpreter lock with the request path at
    every request (measured in reports/service.md, "Exposure log cost")."""

    def __init__(
        self,
        directory: Path,
        prefix: str,
        *,
        max_bytes: int,
        backups: int,
        queue_size: int,
        on_drop: Callable[[], None] | None = None,
        interval_s: float = 0.05,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / process_file_name(prefix)
        self.max_bytes = max_bytes
        self.interval_s = interval_s
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        # Used for its file and its rollover (renaming and deleting the rotated files) only.
        self.handler = RotatingFileHandler(
            self.path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
        self._size = self.path.stat().st_size
        self.dropped = 0
        self._on_drop = on_drop
        self._open = True
        self._thread = threading.Thread(target=self._run, name=f"{prefix}-log", daemon=True)
        self._thread.start()

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
        self.queue.put(_STOP)  # waits for room: the thread is draining the queue
        self._thread.join()
        self.handler.close()

    def _run(self) -> None:
        while True:
            batch = [self.queue.get()]
            if batch[0] is not _STOP:
                time.sleep(self.interval_s)  # let a batch gather: one wake-up per interval
            while batch[-1] is not _STOP:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            stop = batch[-1] is _STOP
            records = batch[:-1] if stop else batch
            try:
                self._write(records)
            except Exception:  # a full disk must not kill the writer: report, keep going
                logger.exception("could not write %d records to %s", len(records), self.path)
            if stop:
                return

    def _write(self, records: list[dict[str, Any]]) -> None:
        """Append ``records`` as JSON lines, rotating before one that would pass max_bytes."""
        chunk: list[str] = []
        for record in records:
            line = json.dumps(record, ensure_ascii=False) + "\n"
            size = len(line.encode("utf-8"))
            if self._size and self._size + size > self.max_bytes:
                self._flush(chunk)
                chunk = []
                self.handler.doRollover()
                self._size = 0
            chunk.append(line)
            self._size += size
        self._flush(chunk)

    def _flush(self, lines: list[str]) -> None:
        if lines:
            if self.handler.stream is None:  # (re)opened lazily by the handler
                self.handler.stream = self.handler._open()
            self.handler.stream.write("".join(lines))
            self.handler.stream.flush()
