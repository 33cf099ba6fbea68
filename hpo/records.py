"""What hpo keeps in a study's user attributes, and how a stored retrain record reads in words.

Kept apart from the trainer so that the commands that only read a study (``hpo.export``, ``hpo.report``) start
without importing torch: about a second instead of four on a 2-core machine.
"""

from __future__ import annotations

import math

from hpo.config import RECIPE_LABEL

SETTINGS_ATTR = "hpo_settings"  # study user attribute holding the search settings
RETRAIN_ATTR = "retrain"  # study user attribute holding the retrain result
RUN_ATTR = "last_run"  # study user attribute: the last search run's accounting (hpo.search.record_run)
IS_RECIPE = ", the recipe"  # appended to a best/runner-up label whose config is the recipe's


def defaults_verdict(record: dict) -> str | None:
    """Did the search beat the trainer's defaults (the recipe)? In words, from the retrain's test of the search's
    best trial against the recipe (or, when the best trial is the recipe, of the runner-up against it): "Yes" when
    the search's config retrained significantly better, "No" when the recipe did, "Not shown" when the test cannot
    tell them apart (which is no evidence that they are equal), "Cannot tell" without a test (one run, no variance).
    """
    comparisons = record.get("comparisons", [])
    if record["candidates"][0]["label"].endswith(f"{IS_RECIPE})"):
        # The validation-best is the recipe: the search found something better only if the runner-up retrained so.
        if not comparisons:
            return "No: the best trial is the recipe itself (the trainer's defaults)."
        c, sign = comparisons[0], -1  # best (the recipe) vs the runner-up
        prefix = "the best trial by validation accuracy is the recipe itself; retrained, "
    else:
        versus = [c for c in comparisons if c["against"] == RECIPE_LABEL or c["against"].endswith(f"{IS_RECIPE})")]
        if not versus:
            return None
        c, sign, prefix = versus[0], 1, ""
    if math.isnan(c.get("p_value", 0.0)):
        answer = "Cannot tell"  # too few runs or no variance
    elif c["significant"]:
        answer = "Yes" if sign * c["difference"] > 0 else "No"
    else:
        answer = "Not shown"
    return f"{answer}: {prefix}{c['verdict']}."


def diverged_text(record: dict) -> str:
    """A sentence naming the runs whose training loss diverged, or "" when none did."""
    runs = [f"{c['label']} seed {seed}" for c in record["candidates"] for seed in c.get("diverged_seeds", [])]
    if not runs:
        return ""
    return f"Diverged (training loss became NaN/inf; each scored on the model it left): {', '.join(runs)}."
