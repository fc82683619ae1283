"""The one result shape of every study: the benchmark's name, the schema version, the options, the study (runs,
equal-time runs, the clock and each contender's verdict at the settings' margins) and the study's own extras."""
from __future__ import annotations

import dataclasses
from typing import Any

from ..harness import StudySettings
from .runner import Study, Verdict, study_dict

#: The version of the one result shape every defined study writes.
SCHEMA = 1


def study_result(name: str, settings: StudySettings, study: Study, extras: dict[str, Any]) -> dict[str, Any]:
    """The one result shape: the benchmark's name, the schema version, the options, the study and its extras."""
    verdicts = [Verdict.of(run, study.baseline(run.seed), **settings.margins())
                for run in study.equal_time_runs if run.kind != "baseline"]
    made = study_dict(study)
    made["verdicts"] = [dataclasses.asdict(v) for v in verdicts]
    return {"benchmark": name, "schema": SCHEMA, "options": settings.to_dict(), "study": made, "extras": extras}
