"""Numbers for people: logs, artifacts and messages show 4 significant digits and thousands separators."""

from hypothesis import given
from hypothesis import strategies as st

from tasks.common import readable


def test_four_significant_digits_with_trailing_zeros_and_thousands_separators():
    assert readable(0.03067868992019155) == "0.03068"
    assert readable(12086.19398) == "12,086"
    assert readable(6.99996) == "7.000"  # not "7" beside "6.907" in the epoch lines
    assert readable(0.19) == "0.1900"
    assert readable(123456) == "123,456"
    assert readable(None) == "—"
    assert readable("n/a") == "n/a"


@given(st.floats(min_value=1e-3, max_value=999.4, allow_nan=False))
def test_below_a_thousand_four_significant_digits_within_rounding(x):
    shown = readable(x)
    digits = shown.replace(".", "").lstrip("0")
    assert len(digits) == 4, shown
    assert abs(float(shown) - x) <= 5e-4 * abs(x) + 1e-12
