"""examples/compose.yaml (issue 23): a relay of two nodes on Redis, from the release image.

Parsed as YAML (PyYAML); its nodes use a name the image archive loads as
(packaging/oci/build.py), set only real SPHINCTER_* settings (conf/sphincter.env lists every
one), reach Redis by its service name and publish the image's two ports on distinct host
ports. `docker compose config` / `podman-compose config` would check more, but neither is
required here (tests/release/test_image.py runs the image itself).
"""
import importlib.util
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "examples" / "compose.yaml"

pytestmark = pytest.mark.timeout(30)


def oci_build():
    spec = importlib.util.spec_from_file_location("oci_build", str(ROOT / "packaging" / "oci" / "build.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def settings():
    return set(re.findall(r"^#?(SPHINCTER_[A-Z0-9_]+)=", (ROOT / "conf" / "sphincter.env").read_text(), re.M))


def test_compose_is_redis_and_two_nodes_of_the_release_image():
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    assert set(services) == {"redis", "node1", "node2"}
    build = oci_build()
    tags = build.image_tags("0.0.0")
    known = settings()
    assert "SPHINCTER_REDIS_URL" in known and "SPHINCTER_NODE_NAME" in known
    host_ports, names = [], set()
    for name in ("node1", "node2"):
        node = services[name]
        assert node["image"] in tags, node["image"]
        assert node["pull_policy"] == "never"      # never another registry's "sphincter"
        env = node["environment"]
        assert set(env) <= known, set(env) - known
        assert env["SPHINCTER_REDIS_URL"] == "redis://redis:6379/0"
        names.add(env["SPHINCTER_NODE_NAME"])
        assert "redis" in node["depends_on"]
        ports = [str(p).split(":") for p in node["ports"]]
        assert sorted(int(c) for _, c in ports) == sorted([build.TCP_PORT, build.WS_PORT])
        host_ports += [int(h) for h, _ in ports]
    assert len(names) == 2, "each node needs its own name"
    assert len(set(host_ports)) == 4, host_ports


def test_image_tags_and_ports_match_the_docs():
    build = oci_build()
    assert build.image_tags("1.2.3") == ["sphincter:1.2.3", "sphincter:latest"]
    readme = (ROOT / "README.md").read_text()
    assert "podman load -i sphincter-" in readme and "docker load -i sphincter-" in readme
    assert "/healthz" in COMPOSE.read_text()
