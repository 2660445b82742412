"""The lab's gRPC service (a stand-in legacy gRPC app on each lab VM) and a gRPC client for tests and the demo.

Service ``fleetmesh.lab.Greeter``, unary method ``SayHello``: HelloRequest {string name = 1} in, HelloReply
{string message = 1} out, encoded as protobuf on the wire (the two one-field messages are written by hand, so only
grpcio is needed: Debian's python3-grpcio, in the lab images and on the controller).

    python3 grpc_hello.py serve --port 9090 --vm fm-deb-1        # on a VM, loopback only (Envoy fronts it)
    python3 grpc_hello.py call --target 127.0.0.1:PORT --authority web.fleet.example --name demo --count 9
        # one JSON line per call: {"code": "OK", "message": "hello demo from fm-deb-1"} or the error's code

``call`` speaks HTTP/2 cleartext (h2c, gRPC's insecure channel) with the given :authority, which is the Host an
ingress routes on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent import futures

import grpc

SERVICE = "fleetmesh.lab.Greeter"
METHOD = f"/{SERVICE}/SayHello"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def encode_string_field(text: str) -> bytes:
    """A protobuf message whose field 1 is the string ``text`` (HelloRequest.name, HelloReply.message)."""
    data = text.encode()
    return b"\x0a" + _varint(len(data)) + data if data else b""


def decode_string_field(message: bytes) -> str:
    """Field 1 (a string) of a protobuf message; other fields are skipped."""
    pos, found = 0, ""
    while pos < len(message):
        key, pos = _read_varint(message, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _ignored, pos = _read_varint(message, pos)
        elif wire == 2:
            size, pos = _read_varint(message, pos)
            if field == 1:
                found = message[pos:pos + size].decode()
            pos += size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
    return found


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def serve(port: int, vm: str, address: str) -> None:
    def say_hello(request: bytes, _context: grpc.ServicerContext) -> bytes:
        return encode_string_field(f"hello {decode_string_field(request) or 'there'} from {vm}")

    handler = grpc.method_handlers_generic_handler(SERVICE, {
        "SayHello": grpc.unary_unary_rpc_method_handler(say_hello),  # bytes in, bytes out
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), handlers=[handler])
    server.add_insecure_port(f"{address}:{port}")
    server.start()
    server.wait_for_termination()


def call(target: str, authority: str, name: str, count: int, timeout: float) -> int:
    options = [("grpc.default_authority", authority)] if authority else []
    failed = 0
    with grpc.insecure_channel(target, options=options) as channel:
        stub = channel.unary_unary(METHOD)
        for _index in range(count):
            try:
                reply = stub(encode_string_field(name), timeout=timeout)
                print(json.dumps({"code": "OK", "message": decode_string_field(reply)}), flush=True)
            except grpc.RpcError as err:
                failed += 1
                print(json.dumps({"code": err.code().name, "message": err.details() or ""}), flush=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    srv = sub.add_parser("serve")
    srv.add_argument("--port", type=int, default=9090)
    srv.add_argument("--address", default="127.0.0.1")
    srv.add_argument("--vm", required=True, help="the name the replies carry")
    cli = sub.add_parser("call")
    cli.add_argument("--target", required=True, help="host:port of the gRPC endpoint or the ingress")
    cli.add_argument("--authority", default="", help="the :authority (Host) to send")
    cli.add_argument("--name", default="fleetmesh")
    cli.add_argument("--count", type=int, default=1)
    cli.add_argument("--timeout", type=float, default=5.0)
    cli.add_argument("--wait", type=float, default=0.0, help="retry the first call for this many seconds")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.port, args.vm, args.address)
        return 0
    deadline = time.monotonic() + args.wait
    while args.wait and time.monotonic() < deadline:
        try:
            with grpc.insecure_channel(args.target, options=[("grpc.default_authority", args.authority)]
                                       if args.authority else []) as channel:
                channel.unary_unary(METHOD)(encode_string_field(args.name), timeout=args.timeout)
            break
        except grpc.RpcError:
            time.sleep(0.5)
    return call(args.target, args.authority, args.name, args.count, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
