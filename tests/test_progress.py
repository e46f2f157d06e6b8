"""Progress lines: the time format, the estimate (on a fake clock), the rate limit, MPI ranks and threads."""

import logging
import threading

import pytest

from cryopipe.progress import Progress, format_duration

log = logging.getLogger("cryopipe.test_progress")


class Clock:
    """A clock the test sets (seconds)."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Rank:
    def __init__(self, rank):
        self.rank = rank

    def Get_rank(self):  # noqa: N802 (mpi4py naming)
        return self.rank


@pytest.fixture
def lines(caplog):
    """The messages the test's logger wrote at INFO, as a list (read it after the calls)."""
    caplog.set_level(logging.INFO, logger=log.name)
    return lambda: [r.getMessage() for r in caplog.records if r.name == log.name]


@pytest.mark.parametrize("seconds, text", [
    (0, "0.0 s"), (4.24, "4.2 s"), (9.96, "10 s"), (12.4, "12 s"), (45, "45 s"), (59.6, "1 min"),
    (190, "3 min 10 s"), (3599, "59 min 59 s"), (3599.7, "1 h"), (3900, "1 h 5 min"), (7200, "2 h"),
    (-1, "0.0 s")])
def test_durations_read_as_people_say_them(seconds, text):
    assert format_duration(seconds) == text


def test_each_step_is_logged_with_its_time_and_the_mean_rate_estimate(lines):
    clock = Clock()
    progress = Progress(10, log, "iteration", clock=clock)
    assert progress.left_s() is None and progress.estimate() == "time left not known yet"
    clock.now += 12.0
    progress.step("resolution %.1f A", 8.04)
    assert progress.left_s() == pytest.approx(12.0 * 9)
    clock.now += 8.0
    progress.step()
    assert progress.left_s() == pytest.approx(10.0 * 8)  # 20 s for 2 steps, 8 to go
    assert lines() == ["iteration 1/10: resolution 8.0 A, 12 s, about 1 min 48 s left",
                       "iteration 2/10, 8.0 s, about 1 min 20 s left"]


def test_a_resumed_run_times_only_its_own_steps_and_the_last_step_gives_the_whole_time(lines):
    clock = Clock()
    progress = Progress(8, log, "iteration", done=5, clock=clock)
    clock.now += 30.0
    progress.step("a")
    clock.now += 30.0
    progress.step("b")
    clock.now += 60.0
    progress.step("c")
    assert lines() == ["iteration 6/8: a, 30 s, about 1 min left", "iteration 7/8: b, 30 s, about 30 s left",
                       "iteration 8/8: c, 1 min, 2 min in all"]


def test_a_loop_that_may_stop_early_says_at_most_and_ends_with_its_last_step(lines):
    clock = Clock()
    progress = Progress(25, log, "iteration", at_most=True, clock=clock)
    clock.now += 10.0
    progress.step("global")
    clock.now += 20.0
    progress.step("final", last=True)
    assert lines() == ["iteration 1 (of at most 25): global, 10 s, at most about 4 min left",
                       "iteration 2 (of at most 25): final, 20 s, 30 s in all"]


def test_the_rate_limit_logs_the_first_step_then_at_most_one_line_per_period(lines):
    clock = Clock()
    progress = Progress(100, log, "orientations", every_s=20.0, clock=clock)
    for t in (1, 5, 10, 20, 21, 30, 40, 41):  # seconds after the start, 8 steps of 10 orientations
        clock.now = 100.0 + t
        progress.step(n=10)
    assert progress.done == 80
    assert lines() == ["orientations 10/100, 1.0 s elapsed, about 9.0 s left",
                       "orientations 50/100, 21 s elapsed, about 21 s left",
                       "orientations 80/100, 41 s elapsed, about 10 s left"]


def test_each_counts_every_item_the_loop_is_done_with(lines):
    clock = Clock()
    progress = Progress(3, log, "micrograph", clock=clock)
    kept = []
    for item in progress.each("abc", lambda: f"{len(kept)} kept"):
        clock.now += 2.0
        if item == "b":
            continue
        kept.append(item)
    assert lines() == ["micrograph 1/3: 1 kept, 2.0 s, about 4.0 s left",
                       "micrograph 2/3: 1 kept, 2.0 s, about 2.0 s left",
                       "micrograph 3/3: 2 kept, 2.0 s, 6.0 s in all"]


def test_only_rank_0_logs_and_every_rank_counts(lines):
    quiet = [Progress(2, log, "iteration", comm=Rank(1)), Progress(2, log, "iteration", enabled=False)]
    for progress in [*quiet, Progress(2, log, "iteration", comm=Rank(0))]:
        progress.step("x")
    assert [p.done for p in quiet] == [1, 1]
    assert len(lines()) == 1 and lines()[0].startswith("iteration 1/2: x, ")


def test_steps_from_several_threads_are_all_counted():
    progress = Progress(4000, log, "pairs", every_s=60.0)

    def work():
        for _ in range(1000):
            progress.step()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert progress.done == 4000
