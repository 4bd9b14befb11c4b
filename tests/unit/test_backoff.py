"""The project's one back-off."""

from __future__ import annotations

import pytest

from connectors.backoff import Backoff


def test_delays_double_up_to_the_last_and_start_again_after_a_reset():
    backoff = Backoff(0.5, 5.0)
    assert [backoff.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    backoff.reset()
    assert backoff.next() == 0.5


@pytest.mark.parametrize("first, last", [(0, 1), (2, 1), (-1, 3)])
def test_nonsense_delays_are_refused(first, last):
    with pytest.raises(ValueError, match="first <= last"):
        Backoff(first, last)
