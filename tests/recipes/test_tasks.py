"""The shipped task files are exactly what their generator makes, for both task families, and validation inputs
never occur in training."""
from __future__ import annotations

import json

import pytest

from dropbp.recipes.data.tasks import FAMILIES, make_records


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_shipped_task_files_are_the_generators_output(family):
    folder = FAMILIES[family][2]
    train, validation = make_records(family=family)
    for name, records in (("train", train), ("validation", validation)):
        shipped = [json.loads(line) for line in (folder / f"{name}.jsonl").read_text().splitlines()]
        assert shipped == records, (family, name)
    assert not {r["input"] for r in train} & {r["input"] for r in validation}
    assert len(validation) == 40 * len(FAMILIES[family][0])
