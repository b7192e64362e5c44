"""Hypothesis profiles for the model-based test: `ci` (the default) is bounded and repeatable,
so that the whole of pytest stays within its time budget; `fuzz` (make fuzz) searches longer
and shrinks what it finds; `mutate` (make mutate) is smaller and does not shrink; `debug` does
not shrink (HYPOTHESIS_MAX_EXAMPLES sets its budget). HYPOTHESIS_PROFILE picks one; it applies
to the state machine only (test_vending_model.py)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

_COMMON = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much],
}
settings.register_profile(
    "ci", max_examples=400, stateful_step_count=40, derandomize=True, database=None, **_COMMON
)
settings.register_profile(
    "fuzz", max_examples=3000, stateful_step_count=80, derandomize=False, **_COMMON
)
# make mutate: every mutant of the vending core runs the state machine; a smaller, repeatable
# budget that stops at the first failure (no shrinking: only whether it fails counts).
settings.register_profile(
    "mutate",
    max_examples=120,
    stateful_step_count=40,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    **_COMMON,
)
settings.register_profile(
    "debug",
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "60")),
    stateful_step_count=40,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    **_COMMON,
)
