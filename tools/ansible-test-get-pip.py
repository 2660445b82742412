"""Stand-in for ansible-test's get-pip bootstrap script.

ansible-test bootstraps pip into each sanity-test virtualenv with a script it downloads from
a CI file host that this machine cannot reach. tools/setup.sh installs this file as that
cached script (in the dedicated HOME the sanity gate uses) next to a pip wheel taken from
PyPI, so the bootstrap installs the same pinned pip from the local wheel. Everything else
ansible-test installs still comes from PyPI with its own pins."""

import glob
import os
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
wheels = sorted(glob.glob(os.path.join(here, "pip-*.whl")))
if not wheels:
    sys.exit("ansible-test-get-pip: no pip wheel next to " + here + "; run 'make setup'")
cmd = [sys.executable, os.path.join(wheels[-1], "pip"), "install", "--no-index", "--find-links", here] + args
sys.exit(subprocess.call(cmd))
