"""A batch's token: the same ranges give the same token, and the token gives the ranges back."""

from __future__ import annotations

import random

import pytest

from connectors.sink import OffsetRange, batch_token, parse_batch_token


def test_one_range_keeps_the_token_of_its_range():
    rng = OffsetRange("t.x.agent.llm_calls", 3, 500, 529)
    assert batch_token((rng,)) == rng.token == "t.x.agent.llm_calls:3:500:529"
    assert parse_batch_token(rng.token) == (rng,)


def test_several_ranges_are_named_by_partition_whatever_their_order():
    seed = 20261203
    print(f"seed {seed}")
    rnd = random.Random(seed)
    for _ in range(200):
        partitions = rnd.sample(range(64), rnd.randint(1, 12))
        ranges = []
        for p in partitions:
            first = rnd.randint(0, 10**12)
            ranges.append(OffsetRange("bench-1.agent_tasks", p, first, first + rnd.randint(0, 10**6)))
        token = batch_token(tuple(ranges))
        assert batch_token(tuple(rnd.sample(ranges, len(ranges)))) == token
        assert parse_batch_token(token) == tuple(sorted(ranges, key=lambda r: r.partition))


def test_a_batch_holds_one_topic():
    with pytest.raises(ValueError, match="one topic"):
        batch_token((OffsetRange("a", 0, 0, 1), OffsetRange("b", 1, 0, 1)))
    with pytest.raises(ValueError, match="one topic"):
        batch_token(())
