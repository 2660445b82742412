"""Run the sidecar scenarios' testinfra checks through `podman exec` when the instance is a podman container.

Molecule hands testinfra its Ansible inventory, and testinfra's ansible backend runs one `ansible` process per
command for the podman connection (seconds each, on a busy machine more); the podman backend reaches the same
container directly (as molecule/shared/tests/conftest.py does for the debian and rhel scenarios). Module scope,
as testinfra's own `host`: the snapshot and trace fixtures are module-scoped. host.sudo() works the same (the
lab images carry sudo; the container user is root).
"""

import pytest
import testinfra

PODMAN_CONNECTIONS = ("containers.podman.podman", "podman", "podman_nsenter")


@pytest.fixture(scope="module")
def host(host):
    variables = host.ansible.get_variables()
    if variables.get("ansible_connection") in PODMAN_CONNECTIONS:
        fast = testinfra.get_host(f"podman://{variables['inventory_hostname']}")
        fast.variables = variables
        return fast
    host.variables = variables
    return host
