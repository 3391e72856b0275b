"""A console of thousands of crashes stays a bounded list (issue 15: 100,000 Oopses were 100,000 entries, 28 MB
of JSON): every crash is kept up to MAX_KEPT, then repeats of a title are counted on its first crash, new titles
are kept up to MAX_DISTINCT, and the rest only counted."""

from __future__ import annotations

import json

from framework.analysis import crashes
from framework.analysis.console_log import Ending
from framework.analysis.observation import Observation, observe


def oops(n: int, func: str) -> list[str]:
    return [f"[  {n}.000] BUG: kernel NULL pointer dereference, address: 0000000000000008",
            f"[  {n}.000] Oops: 0000 [#{n}] PREEMPT SMP NOPTI", f"[  {n}.000] RIP: 0010:{func}+0x1/0x2"]


def test_repeats_past_the_first_hundred_are_counted_on_their_first_crash() -> None:
    lines = [line for n in range(5000) for line in oops(n, f"f{n % 3}")]
    found, dropped = crashes.count_crashes(lines)
    assert len(found) == crashes.MAX_KEPT and dropped == 0
    # the first 100 are kept whole (f0, f1, f2 in turn); the 4,900 after them add to the first of their title
    assert [c.repeats for c in found[:3]] == [1 + 1633, 1 + 1634, 1 + 1633] and all(c.repeats == 1 for c in found[3:])
    assert sum(c.repeats for c in found) == 5000


def test_new_titles_past_the_limit_are_only_counted_and_the_observation_says_so() -> None:
    lines = [line for n in range(crashes.MAX_DISTINCT + 250) for line in oops(n, f"g{n}")]
    obs = observe([(0.0, ln) for ln in lines], Ending("timeout", 1.0))
    assert len(obs.crashes) == crashes.MAX_DISTINCT and obs.crashes_dropped == 250
    data = json.loads(json.dumps(obs.to_json()))
    assert data["crashes_dropped"] == 250
    again = Observation.from_json(data, ())
    assert again.crashes_dropped == 250 and again.crashes == obs.crashes


def test_a_few_crashes_are_listed_as_before() -> None:
    found, dropped = crashes.count_crashes([line for n in range(3) for line in oops(n, "same")])
    assert len(found) == 3 and dropped == 0 and all(c.repeats == 1 for c in found)
    assert "repeats" not in found[0].to_json()
