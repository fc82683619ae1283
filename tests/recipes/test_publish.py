"""Results are published as a set: a process killed at any point of publishing leaves the previous complete set or
no published set, never a mix, and no temporary file that a results glob would pick up."""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dropbp.recipes.report.publish import publish, pyplot, read_published

CHILD = r"""
import os, signal, sys
from pathlib import Path
from dropbp.recipes.report import publish as pub

out, kill_at = Path(sys.argv[1]), int(sys.argv[2])
events = {"n": 0}
for name in ("fsync", "replace", "unlink"):
    original = getattr(os, name)
    def wrapped(*args, _original=original, **kwargs):
        if events["n"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        events["n"] += 1
        return _original(*args, **kwargs)
    setattr(os, name, wrapped)
plt = pub.pyplot()
figure = plt.figure()
plt.plot([0, 1], [1, 0])
pub.publish(out, "bench", {"version": "B"}, "# B", figure)
print("events", events["n"])
"""
# fsync md, png, json (0-2); unlink the old manifest (3); fsync the folder (4); move md, png, json (5-7); fsync (8)
EVENTS = 9
OLD_MANIFEST_REMOVED, NEW_MANIFEST_IN_PLACE = 3, 7


def _figure():
    plt = pyplot()
    figure = plt.figure()
    plt.plot([0, 1], [0, 1])
    return figure


def test_publish_writes_the_set_and_leaves_nothing_else(tmp_path, capsys):
    publish(tmp_path, "bench", {"version": "A"}, "# A", _figure())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "bench.md", "bench.png"]
    assert read_published(tmp_path, "bench") == {"version": "A"}
    assert "# A" in capsys.readouterr().out


@pytest.mark.slow  # a subprocess killed at each of the writer's events: seconds each; make test runs them all
@pytest.mark.parametrize("kill_at", range(EVENTS + 1))
def test_sigkill_during_publish_leaves_the_previous_set_or_nothing(tmp_path, kill_at):
    publish(tmp_path, "bench", {"version": "A"}, "# A", _figure())
    child = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), str(kill_at)], capture_output=True,
                           text=True, timeout=120)
    if kill_at < EVENTS:
        assert child.returncode == -signal.SIGKILL, child.stderr
    else:
        assert child.returncode == 0 and f"events {EVENTS}" in child.stdout, child.stderr
    published = read_published(tmp_path, "bench")
    if kill_at <= OLD_MANIFEST_REMOVED:
        assert published == {"version": "A"}  # the previous complete set
    elif kill_at <= NEW_MANIFEST_IN_PLACE:
        assert published is None  # nothing published
    else:
        assert published == {"version": "B"}  # the new set, complete
    if published is not None:  # a manifest means its companions are the same set
        assert (tmp_path / "bench.md").read_text() == f"# {published['version']}\n"
    else:
        assert not (tmp_path / "bench.json").exists()
    visible = {p.name for p in tmp_path.iterdir() if not p.name.startswith(".")}
    assert visible <= {"bench.json", "bench.md", "bench.png"}
    assert [p.name for p in Path(tmp_path).rglob("*.json")] == (["bench.json"] if published else [])
    assert not [p for p in Path(tmp_path).rglob("*.png") if p.parent != tmp_path]
