import pytest

from colony.cluster.epoch import EpochGuard, StaleEpoch


def test_older_epochs_are_refused_after_a_newer_one():
    guard = EpochGuard()
    guard.admit(3)
    guard.admit(3)  # the same controller again
    guard.admit(5)
    with pytest.raises(StaleEpoch):
        guard.admit(4)


def test_observing_the_lease_raises_the_floor_without_a_command():
    guard = EpochGuard()
    guard.observe(9)
    with pytest.raises(StaleEpoch):
        guard.admit(8)
    guard.admit(9)


def test_zero_is_never_a_valid_epoch():
    with pytest.raises(StaleEpoch):
        EpochGuard().admit(0)
