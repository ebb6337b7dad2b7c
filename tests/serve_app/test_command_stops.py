"""A gang rank's stop flag follows the command a cancel names, whatever order the threaded actor runs the calls in:
a cancel lost on one rank left the others stopped and this one running on (the gang then looked hung)."""

from __future__ import annotations

import threading

from deployments.denoiser import CommandStops


def test_a_cancel_that_arrives_before_its_command_starts_still_stops_it() -> None:
    stops = CommandStops(threading.Event())
    stops.cancel(3)
    stops.begin(3)
    assert stops.stop.is_set()


def test_a_cancel_during_the_command_stops_it_and_the_next_command_starts_clear() -> None:
    stops = CommandStops(threading.Event())
    stops.begin(1)
    assert not stops.stop.is_set()
    stops.cancel(1)
    assert stops.stop.is_set()
    stops.begin(2)
    assert not stops.stop.is_set()


def test_a_late_cancel_of_an_earlier_command_leaves_the_running_one_alone() -> None:
    stops = CommandStops(threading.Event())
    stops.begin(5)
    stops.cancel(4)
    assert not stops.stop.is_set()
