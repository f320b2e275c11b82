"""One bounded local Ray cluster per test module (num_cpus=2, loopback only, no dashboard)."""
import pytest


def local_ray():
    ray = pytest.importorskip("ray", reason="the 'serve' extra (ray[serve,data]) is not installed")
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, configure_logging=False)
    return ray
