"""The molecule scenarios' connection to their podman instances: containers.podman.podman, made cheap.

containers.podman.podman runs five `podman exec` for each module (find the home directory, make the temporary
directory, make the module executable, run it, remove it). A `podman exec` costs a quarter of a second on an idle
controller (podman, conmon and runc start each time), more on a busy one: most of the time of a scenario went
there. This connection
- pipelines modules, as the lab VMs do over SSH (ansible.cfg): a module runs from the standard input of one command;
- runs commands in the container's namespaces with nsenter (mount, UTS, IPC, network, PID), as root, with the
  environment podman exec gives them (the container's configured variables, nothing of the controller's), instead
  of `podman exec`: the container's PID 1 and environment are read once per task with `podman inspect`.
Files (copy, template, unarchive) still go through the container's mounted file system, as in
containers.podman.podman. With a remote_user other than root, commands go through `podman exec --user`.

Test plumbing, not part of the collection (galaxy.yml build_ignore: molecule). The molecule.yml files put this
directory on ANSIBLE_CONNECTION_PLUGINS and set ansible_connection: podman_nsenter (provisioner
connection_options); the testinfra checks reach the instances with testinfra's own podman backend (conftest.py).
"""

from __future__ import annotations

import json
import shlex
import subprocess

from ansible.errors import AnsibleConnectionFailure
from ansible.module_utils.common.text.converters import to_bytes, to_native
from ansible.utils.display import Display
from ansible_collections.containers.podman.plugins.connection.podman import Connection as PodmanConnection

DOCUMENTATION = """
    name: podman_nsenter
    short_description: containers.podman.podman through nsenter, with pipelining, for the molecule scenarios
    description:
      - Run commands in an existing podman container by entering its namespaces with nsenter, modules through the
        standard input of one command (pipelining); files through the container's mounted file system, as
        containers.podman.podman.
    options:
      remote_addr:
        description: The ID or name of the container.
        default: inventory_hostname
        vars:
          - name: ansible_host
          - name: inventory_hostname
          - name: ansible_podman_host
      remote_user:
        description: User that runs the commands in the container (other than root through C(podman exec --user)).
        ini:
          - section: defaults
            key: remote_user
        env:
          - name: ANSIBLE_REMOTE_USER
        vars:
          - name: ansible_user
      podman_extra_args:
        description: Extra arguments to pass to the podman command line.
        default: ''
        vars:
          - name: ansible_podman_extra_args
        env:
          - name: ANSIBLE_PODMAN_EXTRA_ARGS
      podman_executable:
        description: Executable for podman command.
        default: podman
        vars:
          - name: ansible_podman_executable
        env:
          - name: ANSIBLE_PODMAN_EXECUTABLE
      pipelining:
        description: Pass modules on the standard input of the command that runs them.
        type: boolean
        default: true
        vars:
          - name: ansible_pipelining
"""

display = Display()


class Connection(PodmanConnection):
    """containers.podman.podman, with commands run through nsenter and modules pipelined."""

    transport = "podman_nsenter"
    has_pipelining = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pid = None
        self._env = []

    def _connect(self):
        if self._connected:
            return self
        super()._connect()  # podman mount: copy, template and fetch use the container's file system
        rc, out, err = self._podman("inspect", ["--format", "{{json .State.Pid}} {{json .Config.Env}}"])
        if rc != 0:
            raise AnsibleConnectionFailure(f"podman inspect {self._container_id} failed: {to_native(err).strip()}")
        pid, env = to_native(out).strip().split(" ", 1)
        if int(pid) <= 0:
            raise AnsibleConnectionFailure(f"container {self._container_id} is not running")
        self._pid = int(pid)
        self._env = [item for item in json.loads(env) if not item.startswith("HOME=")] + ["HOME=/root"]
        return self

    def reset(self):
        """After a restart of the container: read its PID 1 again at the next command."""
        self._connected = False
        self._pid = None

    def close(self):
        self._connected = False
        self._pid = None

    def exec_command(self, cmd, in_data=None, sudoable=False):
        if self.user and self.user not in ("root", "0"):
            if in_data is None:
                return super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
            self._connect()
            args = ["exec", "--interactive", "--user", self.user]
            return self._podman(args, shlex.split(to_native(cmd, errors="surrogate_or_strict")), in_data)
        self._connect()
        argv = ["nsenter", f"--target={self._pid}", "--mount", "--uts", "--ipc", "--net", "--pid", "--",
                "env", "-i", *self._env, *shlex.split(to_native(cmd, errors="surrogate_or_strict"))]
        display.vvv(f"NSENTER {argv}", host=self._container_id)
        argv = [to_bytes(a, errors="surrogate_or_strict") for a in argv]
        if in_data is None:  # as podman exec without --interactive: no standard input
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=False)
        else:
            proc = subprocess.run(argv, input=in_data, capture_output=True, check=False)
        return proc.returncode, proc.stdout, proc.stderr
