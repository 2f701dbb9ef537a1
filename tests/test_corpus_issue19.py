"""Issue 19, "Done when": third-party models used as they are."""

from __future__ import annotations

import pytest

import corpus_models as CM
from corpus_harness import check_case, params

CASES = {c.name: c for c in CM.ISSUE19}


@pytest.mark.parametrize("name,check,step_mode", params(CM.ISSUE19))
def test_corpus_issue19(name, check, step_mode):
    check_case(CASES[name], check, step_mode)
