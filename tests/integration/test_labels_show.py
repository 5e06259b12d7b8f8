"""`clipdex labels show FILE`: what a label file will do, including its minimum and its background."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_cli

LABELS = """
[taken_time]
labels = ["dawn", "day", "dusk", "night"]
templates = ["a photo taken at {}"]
min_prob = 0.4

[objects]
labels = ["dog", "cat"]
multi_label = true
threshold = 0.6
background = ["a photo", "a photo of something else"]
"""


def test_labels_show_says_the_minimum_and_the_background(tmp_path: Path) -> None:
    path = tmp_path / "labels.toml"
    path.write_text(LABELS)
    result = run_cli("labels", "show", str(path))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("taken_time (single-label, below 0.4 a photo is 'uncertain'")
    assert not any("(background)" in line for line in lines[:5])  # a single-label set has none to show
    background = next(line for line in lines if "(background)" in line)
    assert "2 prompts: a photo; a photo of something else" in background
