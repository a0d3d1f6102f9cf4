"""The README's walkthrough, run as written (every command in it) against the system `make run` starts: the same
processes and settings, on free ports."""

from __future__ import annotations

from pathlib import Path

from deploy.local import LocalSystem, SystemOptions

from .walkthrough import parse, run

REPO = Path(__file__).parents[2]


def test_every_command_of_the_readme_does_what_it_shows(tmp_path: Path) -> None:
    walk = parse(REPO / "README.md")
    assert len(walk.commands) >= 8 and walk.prelude, "the README's walkthrough was not found"
    options = SystemOptions(tmp_path / "data", shards=3, routers=2, dashboard=False, metrics=False)
    with LocalSystem(options, log_dir=tmp_path, cwd=REPO) as system:
        problems = run(walk, system.router.address, system.stubs.address, REPO, data_dir=tmp_path / "data")
    assert not problems, "\n".join(problems)
