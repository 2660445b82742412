"""A client of istiod's CA (``istio.v1.auth.IstioCertificateService/CreateCertificate``) for tests.

It sends a real CSR with a Kubernetes service-account token over istiod's secure gRPC port (15012, TLS verified
against the given root, with istiod's service name as the TLS server name) and prints the returned certificate
chain (leaf first, as istiod sends it) as JSON. The two messages are written by hand (only grpcio is needed:
Debian's python3-grpcio, which /usr/bin/python3 has; the test virtualenv does not carry grpcio)::

    /usr/bin/python3 istio_ca_client.py --target 127.0.0.1:PORT --root root-cert.pem --csr req.pem \
        --token-file token [--server-name istiod.istio-system.svc] [--validity 3600] [--cluster-id Kubernetes]

Output: {"code": "OK", "chain": ["-----BEGIN CERTIFICATE-----...", ...]} or {"code": "...", "details": "..."};
exit 0 on OK, 1 otherwise.

Messages (istio.io/api security/v1alpha1/ca.proto):
  IstioCertificateRequest  {string csr = 1; int64 validity_duration = 3; google.protobuf.Struct metadata = 4;}
  IstioCertificateResponse {repeated string cert_chain = 1;}
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import grpc

METHOD = "/istio.v1.auth.IstioCertificateService/CreateCertificate"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def encode_request(csr_pem: str, validity_seconds: int) -> bytes:
    csr = csr_pem.encode()
    return b"\x0a" + _varint(len(csr)) + csr + b"\x18" + _varint(validity_seconds)


def decode_response(data: bytes) -> list[str]:
    """The cert_chain strings of an IstioCertificateResponse (unknown fields are skipped)."""
    chain, pos = [], 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 2:
            length, pos = _read_varint(data, pos)
            if field == 1:
                chain.append(data[pos:pos + length].decode())
            pos += length
        elif wire == 0:
            _ignored, pos = _read_varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unexpected wire type {wire} in IstioCertificateResponse")
    return chain


def create_certificate(target: str, root_pem: bytes, csr_pem: str, token: str, *, server_name: str,
                       validity_seconds: int = 3600, cluster_id: str = "", timeout: float = 20.0) -> list[str]:
    creds = grpc.ssl_channel_credentials(root_certificates=root_pem)
    options = [("grpc.ssl_target_name_override", server_name), ("grpc.default_authority", server_name)]
    metadata = [("authorization", f"Bearer {token}")]
    if cluster_id:
        metadata.append(("clusterid", cluster_id))
    with grpc.secure_channel(target, creds, options=options) as channel:
        call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        raw = call(encode_request(csr_pem, validity_seconds), metadata=metadata, timeout=timeout)
    return decode_response(raw)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--target", required=True, help="HOST:PORT of istiod's secure gRPC (15012)")
    parser.add_argument("--root", required=True, help="PEM file of the root istiod's serving certificate chains to")
    parser.add_argument("--csr", required=True, help="PEM file of the certificate signing request")
    parser.add_argument("--token-file", required=True, help="file holding the service-account token (istio-ca)")
    parser.add_argument("--server-name", default="istiod.istio-system.svc")
    parser.add_argument("--validity", type=int, default=3600, help="requested lifetime in seconds")
    parser.add_argument("--cluster-id", default="")
    args = parser.parse_args(argv)
    try:
        chain = create_certificate(args.target, Path(args.root).read_bytes(), Path(args.csr).read_text(),
                                   Path(args.token_file).read_text().strip(), server_name=args.server_name,
                                   validity_seconds=args.validity, cluster_id=args.cluster_id)
    except grpc.RpcError as exc:
        print(json.dumps({"code": exc.code().name, "details": exc.details()}))
        return 1
    print(json.dumps({"code": "OK", "chain": chain}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
