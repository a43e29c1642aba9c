"""The pure measurement of clock skew and its bound (:mod:`workspace_lifecycle.skew`)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workspace_lifecycle import leases, skew
from workspace_lifecycle.deadlines import Due, due_action, wake_at
from workspace_lifecycle.values import Deadline, Lease, Reason


class TestMeasure:
    def test_offset_is_the_store_clock_minus_the_round_trip_midpoint(self) -> None:
        """The store read its clock somewhere in the round trip: half of it is the uncertainty."""
        measured = skew.measure(sent=10.0, store=7.0, received=11.0)
        assert measured.offset == pytest.approx(-3.5)
        assert measured.uncertainty == pytest.approx(0.5)
        assert measured.at == 11.0
        assert measured.at_least == pytest.approx(3.0)

    @given(
        true_offset=st.floats(-100, 100),
        sent=st.floats(1e9, 2e9),
        there=st.floats(0, 1),
        back=st.floats(0, 1),
    )
    def test_the_true_offset_lies_within_the_uncertainty(
        self, true_offset: float, sent: float, there: float, back: float
    ) -> None:
        """Whatever the two legs of the round trip took, the true offset is within the bound."""
        measured = skew.measure(sent=sent, store=sent + there + true_offset, received=sent + there + back)
        assert abs(measured.offset - true_offset) <= measured.uncertainty + 1e-6

    def test_a_clock_that_went_back_is_no_round_trip(self) -> None:
        measured = skew.measure(sent=10.0, store=10.0, received=9.0)
        assert measured.uncertainty == 0 and measured.offset == 0

    def test_non_finite_readings_are_refused(self) -> None:
        with pytest.raises(ValueError, match="finite"):
            skew.measure(sent=math.nan, store=1.0, received=1.0)


class TestBound:
    def test_warns_above_a_tenth_of_the_lease(self) -> None:
        assert skew.warn_above(30.0) == pytest.approx(3.0)
        assert skew.excessive(skew.ClockSkew(offset=3.2, uncertainty=0.1, at=0), lease_seconds=30.0)
        assert skew.excessive(skew.ClockSkew(offset=-3.2, uncertainty=0.1, at=0), lease_seconds=30.0)
        assert not skew.excessive(skew.ClockSkew(offset=2.9, uncertainty=0.0, at=0), lease_seconds=30.0)

    def test_a_skew_the_round_trip_may_explain_is_not_reported(self) -> None:
        """Only a skew the measurement proves counts: |offset| less the uncertainty."""
        assert not skew.excessive(skew.ClockSkew(offset=3.5, uncertainty=0.6, at=0), lease_seconds=30.0)

    def test_the_warning_leaves_the_margin_of_a_failed_renewal(self) -> None:
        """A reported skew is still inside the margin a lease keeps with one failed renewal:
        the warning comes before any live worker's lease can expire of it."""
        for lease in (3.0, 30.0, 600.0):
            assert skew.warn_above(lease) < skew.lease_margin(lease, failed_renewals=1)
            assert skew.lease_margin(lease) == pytest.approx(lease * (1 - leases.RENEW_EVERY))


class TestActMargin:
    """Deadlines and leases are acted on ``act_margin`` after their time (issue 29, item 11)."""

    @given(
        stamper_lag=st.floats(0, 10),
        spare=st.floats(0, 10),
        ahead=st.floats(-20, 20),
        there=st.floats(0, 1),
        back=st.floats(0, 1),
        intended=st.floats(1e9, 2e9),
        late=st.floats(0, 5),
    )
    def test_never_early_by_the_stores_clock(
        self,
        stamper_lag: float,
        spare: float,
        ahead: float,
        there: float,
        back: float,
        intended: float,
        late: float,
    ) -> None:
        """A deadline meant for store time ``intended``, stamped by a replica ``stamper_lag``
        behind the store (within ``skew_margin``), fired by a replica ``ahead`` of the store that
        measured itself over any round trip: it fires no earlier than ``intended`` on the
        store's clock."""
        sent = 1e9  # the firing replica's clock at the measurement
        measured = skew.measure(sent=sent, store=sent + there - ahead, received=sent + there + back)
        margin = skew.act_margin(stamper_lag + spare, measured)
        stamped = Deadline(intended - stamper_lag, Reason.IDLE)
        fired_at = wake_at(stamped, margin) + late  # on the firing replica's clock
        assert due_action(stamped, fired_at, margin) is Due.FIRE
        assert fired_at - ahead >= intended - 1e-6 * max(1.0, abs(intended))

    @given(at=st.floats(0, 1e9), margin=st.floats(0, 1e4), now=st.floats(0, 1e9 + 1e4))
    def test_fires_at_the_margin_and_not_before(self, at: float, margin: float, now: float) -> None:
        deadline = Deadline(at, Reason.RETENTION)
        assert (due_action(deadline, now, margin) is Due.FIRE) == (at + margin <= now)
        assert due_action(deadline, wake_at(deadline, margin), margin) is Due.FIRE

    def test_a_warning_keeps_no_margin(self) -> None:
        deadline = Deadline(1060.0, Reason.IDLE, warn_at=1000.0)
        assert wake_at(deadline, 5.0) == 1000.0
        assert due_action(deadline, 1000.0, 5.0) is Due.WARN
        assert due_action(deadline, 1062.0, 5.0) is Due.WARN  # the deadline waits out its margin
        assert due_action(deadline, 1065.0, 5.0) is Due.FIRE

    def test_the_margin_is_the_setting_plus_the_measured_lead(self) -> None:
        assert skew.act_margin(0.0, None) == 0.0
        assert skew.act_margin(2.0, skew.ClockSkew(offset=-3.0, uncertainty=0.5, at=0)) == pytest.approx(5.5)
        assert skew.act_margin(2.0, skew.ClockSkew(offset=3.0, uncertainty=0.5, at=0)) == 2.0

    @given(expires=st.floats(0, 1e9), margin=st.floats(0, 1e4))
    def test_a_lease_is_expired_its_margin_after_its_end(self, expires: float, margin: float) -> None:
        lease = Lease("b1", "w1", "worker", "t", expires_at=expires)
        assert leases.expiry_due(lease, margin) == expires + margin
        assert lease.due(leases.expiry_due(lease, margin))
