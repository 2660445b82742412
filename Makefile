# fleetmesh.envoy: the two commands a new user needs are `make demo` and `make test`.
# Both set up everything they need on a fresh Debian 12 machine (as root), idempotently.
SHELL := /bin/bash
.DEFAULT_GOAL := help
ROOT := $(CURDIR)
export FLEETMESH_CACHE ?= /var/cache/fleetmesh
export CONTAINERS_CONF := $(ROOT)/tools/lab/containers.conf
export ANSIBLE_CONFIG := $(ROOT)/ansible.cfg
export ANSIBLE_COLLECTIONS_PATH := $(ROOT)/.build/collections
# Go is preinstalled in /usr/local/go (not apt); the doctor says so when it is missing.
export PATH := $(ROOT)/.venv/bin:$(PATH):/usr/local/go/bin
IMAGE_TAG := $(shell sha256sum tools/lab/build-images.sh | cut -c1-12)
export FLEETMESH_DEBIAN_IMAGE := localhost/fleetmesh-lab-debian12:$(IMAGE_TAG)
export FLEETMESH_RHEL_IMAGE := $(or $(FLEETMESH_EL9_IMAGE),localhost/fleetmesh-lab-el9-emulated:$(IMAGE_TAG))
N ?= 3


.PHONY: help setup doctor kube-build demo demo-down test lab-up lab-down lint sanity unit integration molecule bench lock build clean

help:
	@echo "make demo   run the main job on the embedded lab (sets everything up)"
	@echo "make test   run the whole test suite (sets everything up)"
	@echo "other: setup doctor kube-build lab-up [N=3] lab-down lint sanity unit integration molecule bench build lock"

# Every set-up step but kube (kube-build): everything a test asserts is prepared here.
setup:
	@tools/setup.sh apt venv envoy images sanity link

# A few seconds: every command the scripts call, podman reading tools/lab/containers.conf, and a throwaway
# systemd container from the lab image on the lab network. demo and test run it before anything long.
doctor: setup
	@tools/doctor.sh

# The Go builds for the test harness and the demo: kube-apiserver + etcd (about 4 min cold on 2 cores),
# Contour (about 1.5 min cold), pilot-agent with the istio-sidecar test package, and istiod (about 3.5 min each
# cold); a few seconds when cached.
kube-build: setup
	@tools/setup.sh kube contour istiod

lab-up: setup doctor
	@tools/lab/lab.sh up $(N)

lab-down:
	@tools/lab/lab.sh down
	-@python3 tests/harness/contour.py stop --state-dir $(ROOT)/.lab/contour --kube-state-dir $(ROOT)/.lab/kube >/dev/null 2>&1
	-@python3 tests/harness/kubeapi.py stop --state-dir $(ROOT)/.lab/kube >/dev/null 2>&1

# The demo's Kubernetes API: the real kube-apiserver on loopback, and the cluster's ingress: a real Contour
# (contour serve + its Envoy, on free loopback ports), both left running for a look afterwards (make demo-down
# stops them with the lab). The ingress's HTTP port is in .lab/contour.env (CONTOUR_HTTP_PORT).
DEMO_KUBE := $(ROOT)/.lab/kube
DEMO_CONTOUR := $(ROOT)/.lab/contour
demo: setup doctor kube-build lab-up
	python tests/harness/kubeapi.py start --state-dir $(DEMO_KUBE) --namespace fleet-lab --namespace fleet-ingress
	python tests/harness/contour.py start --kube-state-dir $(DEMO_KUBE) --state-dir $(DEMO_CONTOUR) > $(DEMO_CONTOUR).env
	cat $(DEMO_CONTOUR).env
	ansible-playbook playbooks/lab_demo.yml -e fleetmesh_kubeconfig=$(DEMO_KUBE)/registrar.kubeconfig \
	  -e workload_certs_lab_ca_dir=$(ROOT)/.lab/ca -e demo_admin_kubeconfig=$(DEMO_KUBE)/admin.kubeconfig \
	  -e demo_ingress_port=$$(sed -n 's/^CONTOUR_HTTP_PORT=//p' $(DEMO_CONTOUR).env)

demo-down: lab-down
	-python tests/harness/contour.py stop --state-dir $(DEMO_CONTOUR) --kube-state-dir $(DEMO_KUBE)
	-python tests/harness/kubeapi.py stop --state-dir $(DEMO_KUBE)

# The whole suite runs under one pytest so CI ends with pytest's summary line. Quality
# gates (ruff, yamllint, ansible-lint, ansible-test sanity) and molecule are pytest tests too.
# Every run starts from fresh lab VMs and leaves none running, also when pytest fails (its exit code is kept;
# a failed lab-down after a passing run fails the target). Two pytest-xdist workers: one runs every lab test in
# order, the other everything that needs no lab VM meanwhile (tests/conftest.py says which is which).
TEST_WORKERS ?= 2
test: setup doctor kube-build
	@tools/lab/lab.sh down >/dev/null
	pytest -p no:cacheprovider -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder --durations=60 \
	  tests/quality tests/unit tests/integration tests/molecule; rc=$$?; \
	  tools/lab/lab.sh down || { [ $$rc -ne 0 ] || rc=2; }; exit $$rc

lint: setup
	pytest -p no:cacheprovider tests/quality -k "not sanity"

sanity: setup
	pytest -p no:cacheprovider tests/quality -k sanity

unit: setup
	pytest -p no:cacheprovider tests/unit

integration: setup kube-build
	pytest -p no:cacheprovider tests/integration

molecule: setup kube-build
	pytest -p no:cacheprovider tests/molecule

bench: setup kube-build
	python tests/bench/run.py

build: setup
	ansible-galaxy collection build --force --output-path .build/dist

lock:
	python3 -m venv .build/lockvenv && .build/lockvenv/bin/pip install -q -r requirements.in
	{ echo "# Generated from requirements.in with 'make lock' on Python 3.11. Do not edit."; \
	  .build/lockvenv/bin/pip freeze --all | grep -v -E '^(pip|setuptools|wheel)=='; } > requirements.lock

clean: lab-down
	rm -rf .build .lab
