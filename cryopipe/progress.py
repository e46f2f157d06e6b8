"""Progress of the loops a user waits on, as plain log lines: counts, time and an estimate of the time left.

Logs are files under SLURM and Snakemake, not terminals, so progress is one ordinary line per step (or per
``every_s`` seconds), never a carriage-return bar. One code path for 1 or N MPI ranks: every rank counts its own
steps, and with ``comm`` given only rank 0 writes::

    progress = Progress(params.iterations, log, "iteration", done=start.iteration, comm=comm)
    for it in range(start.iteration + 1, params.iterations + 1):
        ...
        progress.step("resolution %.1f A", res)
    # iteration 7/15: resolution 8.1 A, 12.4 s, about 1 min 30 s left

The estimate is the mean time per step of this process's steps (a resumed run's earlier steps are not timed)
times the steps left. A loop that may stop early (convergence) says ``at_most=True`` (``iteration 7 (of at most
25)``, ``at most about 3 min left``) and marks its final step with ``last=True`` (``2 min 5 s in all``).

Fine-grained loops (micrographs, orientation batches) give ``every_s``: the first step logs (an early estimate),
then at most one line every ``every_s`` seconds, stating the time elapsed instead of the step's; the caller ends
with a summary line of its own (:attr:`Progress.elapsed_s`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

__all__ = ["PERIOD_S", "Progress", "format_duration"]

PERIOD_S = 20.0  # seconds between two lines of a fine-grained loop (extract's micrographs, BioEM's orientations)

T = TypeVar("T")


def format_duration(seconds: float) -> str:
    """A duration in seconds as people read it: "4.2 s" (below 10 s), "45 s", "3 min 10 s", "1 h 5 min"."""
    seconds = max(float(seconds), 0.0)
    if seconds < 9.95:
        return f"{seconds:.1f} s"
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        minutes, rest = divmod(whole, 60)
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, minutes = divmod(int(round(seconds / 60)), 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


class Progress:
    """Counts the steps of a loop of ``total`` steps and logs where it stands (see the module docstring).

    log : the stage's logger (lines at INFO). what : the name of a step ("iteration", "micrograph"). done : steps
    already done before this process started (a resumed run). every_s : 0: a line per step, with that step's
    time; > 0: the first step's line, then at most one line every ``every_s`` seconds, with the time elapsed.
    at_most : ``total`` is a cap that the loop may stop before. comm : an MPI communicator (or its one-rank
    stand-in); only its rank 0 logs. enabled : False: count, log nothing. clock : seconds, monotonic (tests
    inject a fake one). Thread-safe: steps may come from several threads.
    """

    def __init__(self, total: int, log: logging.Logger, what: str, *, done: int = 0, every_s: float = 0.0,
                 at_most: bool = False, comm=None, enabled: bool = True,
                 clock: Callable[[], float] = time.perf_counter):
        self.total = int(total)
        self.done = int(done)
        self.what = what
        self.every_s = float(every_s)
        self.at_most = at_most
        self.enabled = enabled and (comm is None or comm.Get_rank() == 0)
        self._log = log
        self._first = self.done
        self._clock = clock
        self._start = self._previous = clock()
        self._last_line: float | None = None
        self._lock = threading.Lock()

    @property
    def elapsed_s(self) -> float:
        """Seconds since this object was made."""
        return self._clock() - self._start

    def left_s(self) -> float | None:
        """Estimated seconds until the last step (up to the cap with ``at_most``): the mean time of the steps done
        in this process times the steps left; None before the first step."""
        steps = self.done - self._first
        if steps <= 0:
            return None
        return self.elapsed_s / steps * max(self.total - self.done, 0)

    def counts(self) -> str:
        """"7/15", or "7 (of at most 25)" with ``at_most``."""
        return f"{self.done} (of at most {self.total})" if self.at_most else f"{self.done}/{self.total}"

    def estimate(self, last: bool = False) -> str:
        """"about 1 min 30 s left" ("at most about ..." with ``at_most``), or the whole time ("2 min 5 s in all")
        once the ``last`` step or the total is reached."""
        left = self.left_s()
        if last or self.done >= self.total:
            return f"{format_duration(self.elapsed_s)} in all"
        if left is None:
            return "time left not known yet"
        return f"{'at most ' if self.at_most else ''}about {format_duration(left)} left"

    def step(self, message: str = "", *args, n: int = 1, last: bool = False) -> None:
        """``n`` more steps are done; log "<what> <counts>: <message % args>, <time>, <estimate>" when a line is due
        (every step without ``every_s``; always for the ``last`` step, the final one of a loop that stops early)."""
        with self._lock:
            now = self._clock()
            self.done += n
            step_s, self._previous = now - self._previous, now
            due = (self.every_s <= 0 or last or self._last_line is None
                   or now - self._last_line >= self.every_s)
            if not (self.enabled and due):
                return
            self._last_line = now
            timing = format_duration(step_s) if self.every_s <= 0 else f"{format_duration(now - self._start)} elapsed"
            text = message % args if args else message
            self._log.info("%s %s%s, %s, %s", self.what, self.counts(), f": {text}" if text else "", timing,
                           self.estimate(last))

    def each(self, items: Iterable[T], message: Callable[[], str] | None = None) -> Iterator[T]:
        """The ``items`` one by one, counting a step (:meth:`step`, with ``message()``) each time the loop's body is
        done with one (``continue`` included; not after an exception or ``break``)."""
        for item in items:
            yield item
            self.step(message() if message is not None else "")
