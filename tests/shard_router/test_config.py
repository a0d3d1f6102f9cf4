"""The shards file: what it accepts, and the clear error for what it does not."""

from __future__ import annotations

from pathlib import Path

import pytest

from shard_router import ConfigError, load
from shard_router.config import DEFAULT_LISTEN

GOOD = """
vnodes = 64
[router]
reload_interval_s = 2
[[shards]]
id = "shard-1"
address = "127.0.0.1:50071"
[[shards]]
id = "shard-2"
address = "127.0.0.1:50072"
draining = true
"""


def test_a_good_file(tmp_path: Path) -> None:
    cfg = load(_write(tmp_path, GOOD), env={})
    assert cfg.listen == DEFAULT_LISTEN
    assert cfg.ring.vnodes == 64
    assert cfg.ring.ring_ids == ("shard-1",)
    assert cfg.ring.addresses == {"shard-1": "127.0.0.1:50071", "shard-2": "127.0.0.1:50072"}
    assert cfg.settings.reload_interval_s == 2.0
    assert cfg.epochs_path == tmp_path / "shards.epochs.json"


def test_environment_then_arguments_override(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD)
    env = {"SAGA_ROUTER_CONFIG": str(path), "SAGA_ROUTER_LISTEN": "0.0.0.0:6000", "SAGA_ROUTER_EPOCHS": "/x/e.json"}
    cfg = load(None, env=env)
    assert (cfg.listen, str(cfg.epochs_path)) == ("0.0.0.0:6000", "/x/e.json")
    assert load(None, listen="127.0.0.1:7000", env=env).listen == "127.0.0.1:7000"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no shards"),
        ("[[shards]]\nid = 'a'\naddress = 'nohost'\n", "shards[0].address must be host:port"),
        ("[[shards]]\nid = 'a b'\naddress = 'h:1'\n", "shards[0].id must be 1-64"),
        ("[[shards]]\nid = 'a'\naddress = 'h:1'\n[[shards]]\nid = 'a'\naddress = 'h:2'\n", "two shards have id 'a'"),
        ("[[shards]]\nid = 'a'\naddress = 'h:1'\n[[shards]]\nid = 'b'\naddress = 'h:1'\n", "two shards have address"),
        ("[[shards]]\nid = 'a'\naddress = 'h:1'\ndraining = true\n", "every shard is draining"),
        ("[[shards]]\nid = 'a'\naddress = 'h:1'\nport = 3\n", "unknown setting(s) ['port']"),
        ("shard = 1\n[[shards]]\nid = 'a'\naddress = 'h:1'\n", "unknown setting(s) ['shard']"),
        ("vnodes = 0\n[[shards]]\nid = 'a'\naddress = 'h:1'\n", "vnodes must be an integer"),
        ("[router]\nprobe_timeout_s = 'x'\n[[shards]]\nid = 'a'\naddress = 'h:1'\n", "probe_timeout_s must be float"),
        ("[router]\nnope = 1\n[[shards]]\nid = 'a'\naddress = 'h:1'\n", "unknown setting [router] nope"),
        ("[[shards]\n", "not valid TOML"),
    ],
)
def test_bad_files_are_refused_with_the_setting_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(_write(tmp_path, text), env={})
    assert message in str(e.value)
    assert "shards.toml" in str(e.value)


def test_missing_file_and_bad_listen(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read shards config"):
        load(tmp_path / "nope.toml", env={})
    with pytest.raises(ConfigError, match="no shards config"):
        load(None, env={})
    with pytest.raises(ConfigError, match="listen must be host:port"):
        load(_write(tmp_path, GOOD), listen="6000", env={})


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "shards.toml"
    path.write_text(text)
    return path


SHARD_SET = """
[shard_set]
count = 3
id = "saga-shard-{i}"
address = "saga-shard-{i}.saga-shard:50071"
metrics = "saga-shard-{i}.saga-shard:9071"
"""


def test_a_shard_set_lists_count_shards_and_the_environment_sets_the_count(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(SHARD_SET)
    ring = load(path, env={}).ring
    assert ring.ring_ids == ("saga-shard-0", "saga-shard-1", "saga-shard-2")
    assert ring.addresses["saga-shard-2"] == "saga-shard-2.saga-shard:50071"
    assert ring.metrics_addresses["saga-shard-0"] == "saga-shard-0.saga-shard:9071"
    assert len(load(path, env={"SAGA_SHARD_COUNT": "5"}).ring.ring_ids) == 5
    with pytest.raises(ConfigError, match="SAGA_SHARD_COUNT must be a whole number"):
        load(path, env={"SAGA_SHARD_COUNT": "three"})
    path.write_text(SHARD_SET.replace("count = 3", "count = 0"))
    with pytest.raises(ConfigError, match="count"):
        load(path, env={})
    path.write_text(SHARD_SET.replace('id = "saga-shard-{i}"', 'id = "saga-shard"'))
    with pytest.raises(ConfigError, match=r"\[shard_set\] id must be a string containing \{i\}"):
        load(path, env={})
    path.write_text(SHARD_SET + '\n[[shards]]\nid = "x"\naddress = "127.0.0.1:1"\n')
    with pytest.raises(ConfigError, match="not both"):
        load(path, env={})


def test_a_shard_set_marks_draining_shards_by_id(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(SHARD_SET + 'draining = ["saga-shard-2"]\n')
    ring = load(path, env={}).ring
    assert ring.ring_ids == ("saga-shard-0", "saga-shard-1") and "saga-shard-2" in ring.addresses
    path.write_text(SHARD_SET + 'draining = ["saga-shard-9"]\n')
    with pytest.raises(ConfigError, match="draining must be a list of the set's shard ids"):
        load(path, env={})
