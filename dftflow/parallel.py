"""Run many small, independent tasks over worker processes with a time bound per task.

A task that raises or overruns its bound becomes a failed result with the
reason; it never stops the batch. A worker that dies outright (a crash in a C
extension) breaks the pool: the tasks it held are reported as failed and a new
pool takes over the rest.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class TaskTimeout(BaseException):
    """Raised inside a task that ran past its bound.

    A ``BaseException``, so that the ``except Exception`` clauses of the task's own
    code (and of the libraries it calls) cannot swallow it and run on unbounded.
    """


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`TaskTimeout` in the main thread after ``seconds`` (wall clock).

    Uses ``SIGALRM``, so it interrupts pure-Python loops (pymatgen's CIF parser,
    SMACT's enumeration). Outside the main thread or without a bound it is a no-op.
    """
    import threading

    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: Any) -> None:
        raise TaskTimeout(f"timed out after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass(slots=True)
class Outcome(Generic[T, R]):
    task: T
    result: R | None
    error: str | None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if isinstance(exc, TaskTimeout):
        return first
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _run_chunk(func: Callable[[T], R], chunk: list[T], timeout: float | None) -> list[tuple[R | None, str | None]]:
    out: list[tuple[R | None, str | None]] = []
    for task in chunk:
        try:
            with time_limit(timeout):
                out.append((func(task), None))
        except (Exception, TaskTimeout) as exc:  # a task's failure is data, recorded with its reason
            out.append((None, _describe(exc)))
    return out


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def run_tasks(
    func: Callable[[T], R],
    tasks: Iterable[T],
    *,
    workers: int = 1,
    timeout: float | None = None,
    chunk_size: int = 16,
    preload: Iterable[str] = (),
) -> Iterator[Outcome[T, R]]:
    """Yield an :class:`Outcome` per task, in completion order.

    ``func`` must be a module-level function (it is sent to worker processes).
    With ``workers == 1`` everything runs in this process, which keeps tracebacks
    and profilers simple. ``preload`` names modules the worker server imports once.
    """
    chunks = _chunks(tasks, chunk_size)
    if workers <= 1:
        for chunk in chunks:
            for task, (res, err) in zip(chunk, _run_chunk(func, chunk, timeout)):
                yield Outcome(task, res, err)
        return

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload))
    # When a worker dies, the pool cannot tell which task killed it: every chunk
    # that was in flight is retried one task at a time ("isolated", in parallel);
    # a single task that was in flight when a pool broke again is retried with
    # nothing else in flight ("serial"), and only a task that breaks a pool on
    # its own there is reported as failed.
    isolated: deque[list[T]] = deque()
    serial: deque[list[T]] = deque()
    while True:
        broken = False
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            inflight: dict[Future, tuple[list[T], str]] = {}

            def submit_next() -> bool:
                if serial:
                    if inflight:
                        return False
                    chunk, mode = serial.popleft(), "serial"
                elif isolated:
                    chunk, mode = isolated.popleft(), "isolated"
                else:
                    chunk, mode = next(chunks, None), "chunk"
                if chunk is None:
                    return False
                inflight[pool.submit(_run_chunk, func, chunk, timeout)] = (chunk, mode)
                return True

            def fill() -> None:
                while len(inflight) < 2 * workers and submit_next():
                    pass

            fill()
            while inflight:
                done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for fut in done:
                    chunk, mode = inflight.pop(fut)
                    try:
                        results = fut.result()
                    except BrokenProcessPool:
                        broken = True
                        if mode == "serial":
                            yield Outcome(chunk[0], None, "worker process died while handling this entry")
                        elif mode == "isolated":
                            serial.append(chunk)
                        else:
                            isolated.extend([task] for task in chunk)
                        continue
                    for task, (res, err) in zip(chunk, results):
                        yield Outcome(task, res, err)
                if not broken:
                    fill()
        if not broken:
            return


def _chunks(tasks: Iterable[T], size: int) -> Iterator[list[T]]:  # noqa: D103
    chunk: list[T] = []
    for task in tasks:
        chunk.append(task)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
