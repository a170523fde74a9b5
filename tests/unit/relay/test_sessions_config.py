"""Session rooms with several nodes (issue 20): --node-address and the rules around it, each a
one-line error naming the option."""

import pytest

from sphincter_lib.errors import ConfigError
from sphincter_lib.relay import config

REDIS = ["--redis-url", "redis://127.0.0.1:6379/0", "--sessions", "on"]


def test_node_address_values():
    assert config.parse(["--node-address", "10.0.0.2:9001"], env={}).node_address == ("10.0.0.2", 9001)
    assert config.parse(["--node-address", "[fd00::2]:0"], env={}).node_address == ("fd00::2", 0)
    assert config.parse([], env={"SPHINCTER_NODE_ADDRESS": "relay-1.internal:9000"}).node_address == (
        "relay-1.internal", 9000)
    assert config.parse([], env={}).node_address == ""


@pytest.mark.parametrize("bad", ["9001", "host:", "host:70000", ":9001", "a b:1"])
def test_bad_node_address_is_one_line_naming_the_option(bad):
    with pytest.raises(ConfigError) as exc:
        config.parse(["--node-address", bad], env={})
    assert str(exc.value).startswith("argument --node-address: invalid address") and "\n" not in str(exc.value)


def test_sessions_with_redis_need_an_address_the_other_nodes_reach():
    with pytest.raises(ConfigError) as exc:
        config.parse(REDIS, env={})
    assert str(exc.value).startswith("argument --node-address:") and "\n" not in str(exc.value)
    assert config.parse(REDIS + ["--tcp-host", "127.0.0.1"], env={}).sessions
    assert config.parse(REDIS + ["--node-address", "10.0.0.2:9000"], env={}).sessions
    with pytest.raises(ConfigError) as exc:
        config.parse(REDIS + ["--tcp-host", "127.0.0.1", "--source-tls-cert", "c.pem", "--source-tls-key", "k.pem"],
                     env={})
    assert str(exc.value).startswith("argument --sessions:")
