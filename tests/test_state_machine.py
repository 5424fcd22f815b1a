"""The command state machine: every (from, to) pair, against the table as the design states it.

The expected table is written out here by hand on purpose: a change to ALLOWED_TRANSITIONS has
to be made twice, once in the code and once in this statement of the design.
"""

from __future__ import annotations

import itertools

import pytest

from chalicelib import domain
from chalicelib.domain import ALLOWED_TRANSITIONS, TERMINAL_STATUSES, CommandStatus
from tests.builders import issue_command

ACCEPTED, SENDING, SENT = CommandStatus.ACCEPTED, CommandStatus.SENDING, CommandStatus.SENT
COMMITTED, REJECTED, IN_DOUBT = (
    CommandStatus.COMMITTED,
    CommandStatus.REJECTED,
    CommandStatus.IN_DOUBT,
)

# The design (DESIGN.md, the worker's timeline in usecases.process):
DESIGNED = {
    # the guard is taken before anything is sent; refused or done without the registry
    (ACCEPTED, SENDING),
    (ACCEPTED, REJECTED),
    (ACCEPTED, COMMITTED),
    # the registry refused the connection (nothing left) or the step committed and the next
    # one is ready; took it and will say later; answered; or nobody knows
    (SENDING, ACCEPTED),
    # the step committed and the worker sends the next one at once (the step says which)
    (SENDING, SENDING),
    (SENT, SENDING),
    (SENDING, SENT),
    (SENDING, COMMITTED),
    (SENDING, REJECTED),
    (SENDING, IN_DOUBT),
    # a pending transaction committed (next step), committed, failed, or vanished
    (SENT, ACCEPTED),
    (SENT, COMMITTED),
    (SENT, REJECTED),
    (SENT, IN_DOUBT),
    # resolved by the reconciler or an operator
    (IN_DOUBT, ACCEPTED),
    (IN_DOUBT, COMMITTED),
    (IN_DOUBT, REJECTED),
}
EVERY_PAIR = list(itertools.product(CommandStatus, CommandStatus))


@pytest.mark.parametrize(("current", "target"), EVERY_PAIR, ids=lambda s: s.value)
def test_every_state_change_is_allowed_exactly_when_the_design_says_so(current, target):
    if (current, target) in DESIGNED:
        domain.check_transition(current, target)
        assert target in ALLOWED_TRANSITIONS[current]
    else:
        with pytest.raises(domain.IllegalTransition):
            domain.check_transition(current, target)
        assert target not in ALLOWED_TRANSITIONS[current]


def test_the_table_names_every_status_and_nothing_else():
    assert set(ALLOWED_TRANSITIONS) == set(CommandStatus)
    for targets in ALLOWED_TRANSITIONS.values():
        assert targets <= set(CommandStatus)


@pytest.mark.parametrize("terminal", sorted(TERMINAL_STATUSES))
def test_a_terminal_state_has_no_exit(terminal):
    assert ALLOWED_TRANSITIONS[terminal] == frozenset()
    for target in CommandStatus:
        with pytest.raises(domain.IllegalTransition):
            domain.check_transition(terminal, target)


def test_the_terminal_states_are_committed_and_rejected():
    assert frozenset({COMMITTED, REJECTED}) == TERMINAL_STATUSES


def test_no_state_moves_to_itself_but_sending_on_to_the_next_step():
    # SENDING -> SENDING is the guard of the next step taken as the last one committed; the
    # book conditions it on the step it committed, so it never repeats a step's guard.
    for status in CommandStatus:
        assert (status in ALLOWED_TRANSITIONS[status]) == (status == SENDING)


def test_only_a_command_that_took_the_guard_can_have_reached_the_registry():
    # I1: SENT and IN_DOUBT mean "may have left"; only SENDING (the guard) leads there first.
    may_have_left = {SENT, IN_DOUBT}
    for current, targets in ALLOWED_TRANSITIONS.items():
        for target in targets & may_have_left:
            assert current in {SENDING, SENT}, (current, target)


def test_every_state_can_reach_a_terminal_state():
    # I2: nothing accepted is lost; from every state some path ends in COMMITTED or REJECTED.
    for start in CommandStatus:
        seen, frontier = {start}, [start]
        while frontier:
            for target in ALLOWED_TRANSITIONS[frontier.pop()]:
                if target not in seen:
                    seen.add(target)
                    frontier.append(target)
        assert seen & TERMINAL_STATUSES, start


def test_an_in_doubt_command_is_resolved_only_by_a_decision_never_by_sending():
    assert ALLOWED_TRANSITIONS[IN_DOUBT] == frozenset({ACCEPTED, COMMITTED, REJECTED})
    assert SENDING not in ALLOWED_TRANSITIONS[IN_DOUBT]


def test_a_command_knows_whether_it_is_terminal():
    for status in CommandStatus:
        command = issue_command().model_copy(update={"status": status})
        assert command.is_terminal == (status in {COMMITTED, REJECTED})
