"""`python -m coordinator keys ...` and a shard start refused for its key file, as real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from coordinator.saga.model import Action
from coordinator.security.sealing import read_key_file
from tests.helpers.order_flow import PROCESS_PAYMENT

from .conftest import Harness, order

REPO_ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, env: dict[str, str] | None = None, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coordinator", *args],
        cwd=REPO_ROOT,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("SAGA_")}, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


async def journal_with_sagas(tmp_path: Path) -> Harness:
    h = Harness(tmp_path)
    await h.start()
    for i in range(3):
        await h.shard.place_order(order(f"done-{i}"))  # type: ignore[union-attr]
    h.caller.hang(PROCESS_PAYMENT, Action.FORWARD)
    for i in range(2):
        await h.shard.place_order(order(f"run-{i}", no_wait=True))  # type: ignore[union-attr]
    await h.stop()
    return h


async def test_keys_rotate_reseal_status(tmp_path: Path) -> None:
    h = await journal_with_sagas(tmp_path)
    keys = h.path + ".keys"
    status = run("keys", "status", "--journal", h.path)
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[1].split() == ["k1", "5", "2", "newest"]
    # Which backed-up key file is this journal's: the fingerprint the journal holds.
    assert status.stdout.splitlines()[-1].endswith("(matches the journal)"), status.stdout

    rotated = run("keys", "rotate", "--journal", h.path)
    assert rotated.returncode == 0 and "added key k2" in rotated.stdout, rotated.stderr
    assert os.stat(keys).st_mode & 0o777 == 0o600 and read_key_file(keys).newest == "k2"

    resealed = run("keys", "reseal", "--journal", h.path, "--key-file", keys)
    assert resealed.returncode == 0, resealed.stderr
    lines = resealed.stdout.splitlines()
    assert "re-sealed 5 blobs under key k2" in lines[0]
    assert [line.split() for line in lines[2:]] == [["k1", "0", "0", "yes"], ["k2", "5", "2", "newest"]]

    # The shard resumes its sagas from the re-sealed blobs.
    h.caller.scripts.clear()
    await h.start()
    try:
        assert h.shard.in_flight == 2  # type: ignore[union-attr]
    finally:
        await h.stop()


def test_keys_commands_refuse_with_status_2(tmp_path: Path) -> None:
    keys = tmp_path / "prod.keys"
    made = run("keys", "init", "--key-file", str(keys), "--journal", str(tmp_path / "j.db"))
    assert made.returncode == 0 and keys.stat().st_mode & 0o777 == 0o600, made.stderr
    again = run("keys", "init", "--key-file", str(keys))
    assert again.returncode == 2 and f"key file {keys} already exists" in again.stderr
    keys.chmod(0o644)
    too_open = run("keys", "rotate", "--key-file", str(keys))
    assert too_open.returncode == 2 and f"key file {keys} has mode 0644" in too_open.stderr
    missing = run("keys", "status", "--journal", str(tmp_path / "j.db"), "--key-file", str(tmp_path / "nope"))
    assert missing.returncode == 2 and f"key file {tmp_path / 'nope'} does not exist" in missing.stderr
    keys.chmod(0o600)
    no_journal = run("keys", "reseal", "--journal", str(tmp_path / "j.db"), "--key-file", str(keys))
    assert no_journal.returncode == 2 and f"journal {tmp_path / 'j.db'} does not exist" in no_journal.stderr
    assert not (tmp_path / "j.db").exists()


def start_shard(journal: str) -> subprocess.CompletedProcess[str]:
    """A shard start expected to fail: it exits long before the timeout (a start that hangs fails the test)."""
    return run("--journal", journal, "--listen", "127.0.0.1:0", "--services", "127.0.0.1:1", timeout_s=20)


async def test_shard_start_refuses_a_key_file_others_can_read(tmp_path: Path) -> None:
    h = await journal_with_sagas(tmp_path)
    os.chmod(h.path + ".keys", 0o644)
    p = start_shard(h.path)
    assert p.returncode == 2, p.stderr
    assert f"key file {h.path}.keys has mode 0644" in p.stderr and "Traceback" not in p.stderr


async def test_shard_start_refuses_a_missing_key_file_when_the_journal_holds_blobs(tmp_path: Path) -> None:
    h = await journal_with_sagas(tmp_path)
    os.remove(h.path + ".keys")
    p = start_shard(h.path)
    assert p.returncode == 2, p.stderr
    assert f"key file {h.path}.keys does not exist, and journal {h.path} holds 5 sealed" in p.stderr
    assert "Traceback" not in p.stderr and not Path(h.path + ".keys").exists()  # noqa: ASYNC240
