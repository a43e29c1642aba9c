"""The pure measurement of clock skew and its bound (:mod:`workspace_lifecycle.skew`)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workspace_lifecycle import leases, skew


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
