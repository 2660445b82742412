"""Run the testinfra checks through `podman exec` when the instance is a podman container.

Molecule hands testinfra its Ansible inventory, and testinfra's ansible backend runs one Ansible
module per command (seconds each); the podman backend reaches the same container directly.
The instance's inventory variables stay available as `host.variables`."""

import pytest
import testinfra

PODMAN_CONNECTIONS = ("containers.podman.podman", "podman", "podman_nsenter")


@pytest.fixture
def host(host):
    variables = host.ansible.get_variables()
    if variables.get("ansible_connection") in PODMAN_CONNECTIONS:
        fast = testinfra.get_host(f"podman://{variables['inventory_hostname']}")
        fast.variables = variables
        return fast
    host.variables = variables
    return host
