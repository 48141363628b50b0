"""The round state machine on its own: when a plain round closes, and how a secure round moves
through its phases (the server's end-to-end behaviour is in test_federation_core.py)."""
from __future__ import annotations

from fedvla.federation.rounds import (ALL_LIVE_UPLOADED, TIMEOUT, RoundLimits, RoundTimer, Step, plain_decision,
                                      secure_decision)
from fedvla.federation.secure_round import SecurePhase, SecureRound

LIMITS = RoundLimits(quorum=2, round_timeout_s=60.0, phase_timeout_s=10.0)


def test_a_plain_round_waits_for_quorum_even_after_its_timeout() -> None:
    timer = RoundTimer.starting(0.0)
    assert plain_decision(["a"], ["a", "b", "c"], LIMITS, timer, now=1000.0).step is Step.WAIT


def test_a_plain_round_closes_when_every_live_client_uploaded() -> None:
    timer = RoundTimer.starting(0.0)
    decision = plain_decision(["a", "b"], ["a", "b"], LIMITS, timer, now=1.0)
    assert decision.step is Step.CLOSE and decision.closed_by == ALL_LIVE_UPLOADED


def test_a_plain_round_waits_for_a_live_client_until_the_timeout() -> None:
    timer = RoundTimer.starting(100.0)
    assert plain_decision(["a", "b"], ["a", "b", "c"], LIMITS, timer, now=159.0).step is Step.WAIT
    decision = plain_decision(["a", "b"], ["a", "b", "c"], LIMITS, timer, now=160.0)
    assert decision.step is Step.CLOSE and decision.closed_by == TIMEOUT


def test_a_client_that_is_not_live_is_not_waited_for() -> None:
    decision = plain_decision(["a", "b"], ["a"], LIMITS, RoundTimer.starting(0.0), now=1.0)
    assert decision.closed_by == ALL_LIVE_UPLOADED


def test_a_secure_round_fixes_participants_once_the_reports_are_in() -> None:
    secure = SecureRound(round_index=0, attempt=0, length=4, frac_bits=16, threshold_fraction=0.6)
    secure.reports = {"a": {}, "b": {}}
    timer = RoundTimer.starting(0.0)
    assert secure_decision(secure, ["a", "b", "c"], LIMITS, timer, now=5.0).step is Step.WAIT
    assert secure_decision(secure, ["a", "b"], LIMITS, timer, now=5.0).step is Step.FIX_PARTICIPANTS
    assert secure_decision(secure, ["a", "b", "c"], LIMITS, timer, now=60.0).step is Step.FIX_PARTICIPANTS


class _PhaseStub:
    """A secure round as the state machine reads it, in a chosen phase."""

    def __init__(self, phase: SecurePhase, expected: list[str], answers: int = 0, threshold: int = 2) -> None:
        self.phase, self._expected, self.threshold = phase, expected, threshold
        self.unmask_answers = dict.fromkeys(range(answers))
        self.reports = {}

    def expected(self) -> list[str]:
        return self._expected


def test_a_later_phase_waits_for_its_live_clients_then_advances_on_the_phase_timeout() -> None:
    timer = RoundTimer(round_started=0.0, phase_started=50.0)
    stub = _PhaseStub(SecurePhase.SHARES, expected=["c"])
    assert secure_decision(stub, ["a", "c"], LIMITS, timer, now=55.0).step is Step.WAIT
    assert secure_decision(stub, ["a", "c"], LIMITS, timer, now=60.0).step is Step.ADVANCE
    assert secure_decision(stub, ["a"], LIMITS, timer, now=51.0).step is Step.ADVANCE  # c is gone


def test_the_unmask_phase_closes_with_the_threshold_and_aborts_below_it() -> None:
    timer = RoundTimer(round_started=0.0, phase_started=0.0)
    closing = secure_decision(_PhaseStub(SecurePhase.UNMASK, [], answers=2), ["a"], LIMITS, timer, now=1.0)
    assert closing.step is Step.CLOSE and closing.closed_by == ALL_LIVE_UPLOADED
    late = secure_decision(_PhaseStub(SecurePhase.UNMASK, ["c"], answers=2), ["c"], LIMITS, timer, now=11.0)
    assert late.step is Step.CLOSE and late.closed_by == TIMEOUT
    aborted = secure_decision(_PhaseStub(SecurePhase.UNMASK, [], answers=1), ["a"], LIMITS, timer, now=1.0)
    assert aborted.step is Step.ABORT and "1 unmasking answer(s), 2 needed" in aborted.why


def test_restart_moves_both_clocks() -> None:
    timer = RoundTimer(round_started=1.0, phase_started=2.0)
    timer.restart(9.0)
    assert (timer.round_started, timer.phase_started) == (9.0, 9.0)
