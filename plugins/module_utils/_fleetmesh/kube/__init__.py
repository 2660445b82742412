# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!

"""The one Kubernetes layer of the collection: every plugin that talks to a cluster goes through it.

* ``args``: the authentication options (doc fragment ``fleetmesh.envoy.k8s_auth``), importable by host-side
  modules without the ``kubernetes`` package;
* ``client``: kubeconfig, authentication and transport from the ``kubernetes`` package, one parallel client,
  discovery, reads and error messages;
* ``apply``: server-side apply, delete, dry runs, access reviews and the request-free no-op check on
  ``metadata.managedFields``.
"""
