"""Cluster addresses are parsed and dialled before ray.init: a bad or silent address is one clear ConfigError."""

import socket

import pytest

from srel_ray.distributed.cluster import _bootstrap_endpoint, _check_reachable
from srel_ray.errors import ConfigError


@pytest.mark.parametrize("address,endpoint", [
    ("10.0.0.9:6379", ("10.0.0.9", 6379)),
    ("ray://head.internal:10001", ("head.internal", 10001)),
    ("[::1]:6379", ("::1", 6379)),
])
def test_address_forms(address, endpoint):
    assert _bootstrap_endpoint(address, "resources.ray_address") == endpoint


@pytest.mark.parametrize("address", ["10.0.0.9", "ray://head.internal", ":6379"])
def test_address_without_host_or_port_is_refused(address):
    with pytest.raises(ConfigError, match=r"resources.ray_address=.* is not a cluster address; expected host:port"):
        _bootstrap_endpoint(address, "resources.ray_address")


def test_an_open_port_passes_and_a_closed_one_is_named():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        _check_reachable("127.0.0.1", port, f"127.0.0.1:{port}", "$RAY_ADDRESS")
    with pytest.raises(ConfigError, match=rf"\$RAY_ADDRESS='127.0.0.1:{port}': no Ray cluster answers at "
                                          rf"127.0.0.1:{port}"):
        _check_reachable("127.0.0.1", port, f"127.0.0.1:{port}", "$RAY_ADDRESS")
