"""worker/gather.py: entries sent together, 10 at most a request, none held past its age or
the close."""

from __future__ import annotations

import threading

from slurmctl.worker.gather import Gatherer
from tests.helpers import wait_for


def test_full_batches_then_the_rest_at_close() -> None:
    sent: list[list[int]] = []
    g: Gatherer[int] = Gatherer("test", sent.append, max_entries=10, max_age_s=3600)
    for i in range(25):
        g.add(i)
    assert sent == [list(range(10)), list(range(10, 20))]
    g.close()
    assert sent[2:] == [list(range(20, 25))] and g.sends == 3
    g.add(99)  # after the close: sent at once
    assert sent[3:] == [[99]]


def test_an_entry_is_sent_once_its_age_is_reached_with_nothing_else_coming() -> None:
    sent: list[list[str]] = []
    done = threading.Event()

    def send(entries: list[str]) -> None:
        sent.append(entries)
        done.set()

    g: Gatherer[str] = Gatherer("test", send, max_entries=10, max_age_s=0.2)
    g.add("a")
    g.add("b")
    wait_for(done.is_set, timeout=10, what="the timer's send")
    assert sent == [["a", "b"]]
    g.close()
    assert sent == [["a", "b"]]  # nothing left: no empty request


def test_a_send_that_meets_an_outage_drops_its_entries_and_the_next_goes_on() -> None:
    sent: list[list[int]] = []

    def send(entries: list[int]) -> None:
        if entries[0] == 0:
            raise ConnectionError("reset")
        sent.append(entries)

    g: Gatherer[int] = Gatherer("test", send, max_entries=2, max_age_s=3600)
    for i in range(4):
        g.add(i)
    g.close()
    assert sent == [[2, 3]]
