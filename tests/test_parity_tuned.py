"""The parity ladder's tuned tier: the same rungs as the stock tier's (tests/test_parity.py says what they are), in
a file of its own so that ``make test``'s two test processes can each take one tier."""
from __future__ import annotations

import pytest

from tests.helpers import assert_rung_holds, ladder_cases

CASES = ladder_cases("tuned")


@pytest.mark.parametrize("case", [pytest.param(case, id=case.id) for case in CASES])
def test_rung(make_backend, fashion, case):
    assert_rung_holds(make_backend, fashion, case)
