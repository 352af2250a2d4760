"""The README's promises that can drift: the two Quick start commands and the generated feature list."""

from __future__ import annotations

import re
from pathlib import Path

from features.docs import SHIPPED, render
from features.registry import feature_set

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_quick_start_is_exactly_two_commands_and_ci_runs_them():
    section = README.split("## Quick start", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    assert block.strip().splitlines() == ["make run", "make test"]
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert "make run" in ci and ci.strip().endswith("make test")


def test_feature_list_matches_declarations():
    assert render([feature_set(n) for n in SHIPPED]) in README
