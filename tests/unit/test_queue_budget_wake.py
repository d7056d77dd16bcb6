"""A finished job frees a slot of the store's shared ``JobBudget``: which runners hear of it
(``colony.queue.runner.QueueRunner._wake``).  Only those fetching: one that is not (a
partition another store fetches, a drain) has nothing to ask for, and was woken for every
job of every partition of its store."""

from __future__ import annotations

from colony.queue.runner import JobBudget, QueueRunner


class _Bus:
    def jetstream(self):
        return object()


class _Puller:
    def __init__(self) -> None:
        self.woken = 0

    def wake(self) -> None:
        self.woken += 1


def _runner(budget: JobBudget) -> tuple[QueueRunner, _Puller]:
    runner = QueueRunner(_Bus(), stream="MAIL", durable="d", filter_subject="s", handler=None, budget=budget)
    runner._puller = puller = _Puller()
    return runner, puller


def test_a_freed_slot_wakes_only_the_runners_that_fetch():
    budget = JobBudget(16)
    fetching, fetching_puller = _runner(budget)
    idle, idle_puller = _runner(budget)
    idle.set_accepting(False)
    budget.take(2)
    budget.give(1)
    budget.give(1)
    assert fetching_puller.woken == 2
    assert idle_puller.woken == 0, "not fetching: nothing to ask for, so not woken"
    assert idle._free() == 0


def test_a_runner_told_to_fetch_again_is_woken_at_once_and_hears_of_freed_slots():
    budget = JobBudget(16)
    runner, puller = _runner(budget)
    runner.set_accepting(False)
    assert puller.woken == 0
    runner.set_accepting(True)
    assert puller.woken == 1, "a lone job waiting must be fetched without waiting for a freed slot"
    budget.take(1)
    budget.give(1)
    assert puller.woken == 2
