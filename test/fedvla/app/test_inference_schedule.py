"""When the policy node observes next, per inference mode (executed horizon: 4 actions of 0.1 s)."""
import pytest

from fedvla.app.inference_schedule import InferenceMode, InferenceSchedule
from fedvla.config import ConfigError


def schedule(mode: str, **options) -> InferenceSchedule:
    return InferenceSchedule(InferenceMode(mode), 0.1, 4, **options)


def test_rate_observes_at_every_poll_unless_a_chunk_waits_for_publication() -> None:
    rate = schedule("rate")
    assert rate.poll_period_s == 0.1 and rate.due(0.0)
    rate.observed(0.0)
    assert not rate.due(0.1)  # (its chunk is held back: injected latency)
    rate.published(0.15)
    assert rate.due(0.2)


def test_async_refills_at_the_threshold_of_the_horizon_left() -> None:
    early = schedule("async", refill_threshold=0.25)
    assert early.poll_period_s == pytest.approx(0.025)
    early.observed(1.0)
    early.published(1.05)
    assert not early.due(1.29) and early.due(1.30)  # 0.1 s (a quarter of 0.4 s) left of the chunk observed at 1.0
    half = schedule("async")
    half.observed(1.0)
    half.published(1.01)
    assert not half.due(1.19) and half.due(1.2)


def test_sync_waits_until_the_published_chunk_has_run() -> None:
    sync = schedule("sync")
    assert sync.due(0.0)
    sync.observed(0.0)
    sync.published(0.3)  # a slow policy: the arm waited 0.3 s, then runs the chunk from its arrival
    assert not sync.due(0.69) and sync.due(0.7)


def test_a_threshold_outside_0_1_is_refused() -> None:
    with pytest.raises(ConfigError, match="refill_threshold"):
        schedule("async", refill_threshold=1.5)
