# FLEETMESH STAND-IN for Istio's pilot-agent. NOT ISTIO. build.sh packages this file as
# /usr/local/bin/pilot-agent only when the real pilot-agent could not be built from the
# istio.io/istio Go module (it says so in its output and in BUILDINFO next to the packages).
#
# What it does, so the package keeps the real unit and start-script contract:
#   pilot-agent proxy           serve :15021/healthz/ready: 200 only when the certificates
#                               (/etc/certs/{root-cert,cert-chain,key}.pem), the istio-token
#                               (/var/run/secrets/tokens/istio-token) exist and the discoveryAddress
#                               of /etc/istio/config/mesh answers TCP; otherwise 503 and a log
#                               line saying why. It runs no Envoy and speaks no xDS.
#   pilot-agent istio-iptables  log and do nothing (no traffic capture)
#   pilot-agent version         print the stand-in version
"""Stand-in pilot-agent (fleetmesh), not Istio's."""

import http.server
import os
import re
import socket
import sys
import threading
import time

VERSION = "fleetmesh-standin"
CERTS = [os.path.join(os.environ.get("OUTPUT_CERTS") or "/etc/certs", name)
         for name in ("root-cert.pem", "cert-chain.pem", "key.pem")]
TOKEN = "/var/run/secrets/tokens/istio-token"
MESH = "/etc/istio/config/mesh"


def log(msg):
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    sys.stderr.write(f"{stamp}\tinfo\tpilot-agent-standin\t{msg}\n")
    sys.stderr.flush()


def discovery_address():
    try:
        with open(MESH, encoding="utf-8") as handle:
            found = re.search(r"discoveryAddress:\s*['\"]?([^'\"\s]+)", handle.read())
    except OSError:
        found = None
    return found.group(1) if found else "istiod.istio-system.svc:15012"


def not_ready_reason():
    missing = [path for path in CERTS + [TOKEN] if not os.access(path, os.R_OK)]
    if missing:
        return "missing or unreadable: " + ", ".join(missing)
    address = discovery_address()
    host, port = (address.rsplit(":", 1) + [""])[:2]
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except (OSError, ValueError) as err:
        return f"discoveryAddress {address} unreachable: {err}"
    return None


class Handler(http.server.BaseHTTPRequestHandler):
    last = [None]

    def do_GET(self):  # noqa: N802 - http.server API
        if self.path != "/healthz/ready":
            self.send_error(404)
            return
        reason = not_ready_reason()
        if reason != self.last[0]:
            log("ready" if reason is None else "not ready: " + reason)
            self.last[0] = reason
        body = b"" if reason is None else reason.encode() + b"\n"
        self.send_response(200 if reason is None else 503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main(argv):
    command = argv[1] if len(argv) > 1 else ""
    if command == "version":
        print("client version: " + VERSION)
        return 0
    if command in ("istio-iptables", "istio-clean-iptables"):
        log(f"STAND-IN: {command} ignored, no traffic capture")
        return 0
    if command != "proxy":
        sys.stderr.write("pilot-agent (fleetmesh stand-in): commands: proxy, istio-iptables, version\n")
        return 2
    log(f"STAND-IN pilot-agent (not Istio) starting as uid {os.getuid()}; discoveryAddress {discovery_address()}")
    server = http.server.ThreadingHTTPServer(("0.0.0.0", 15021), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    reason = not_ready_reason()
    log("ready" if reason is None else "not ready: " + reason)
    Handler.last[0] = reason
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
