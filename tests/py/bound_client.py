"""The Datadog client with its UDP socket bound to a source address, so datagrams come
from a pod's IP as they do on a node (any 127.0.0.0/8 address works on Linux loopback)."""

import socket

from datadog.dogstatsd import DogStatsd


class BoundDogStatsd(DogStatsd):
    """DogStatsd whose UDP socket is bound to `source` (when given) before it connects."""

    def __init__(self, source=None, **kwargs):
        self._source = source
        super().__init__(**kwargs)

    def _get_udp_socket(self, host, port, timeout):
        if self._source is None:
            return DogStatsd._get_udp_socket(host, port, timeout)
        family = socket.AF_INET6 if ":" in self._source else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.settimeout(timeout)
            sock.bind((self._source, 0))
            sock.connect((host, port))
        except Exception:
            sock.close()
            raise
        return sock


def add_target_arguments(parser):
    """The options every sender script takes: where to send, from where, as which container."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int)
    parser.add_argument("--socket-path", help="send over this unix socket instead of UDP")
    parser.add_argument("--source", help="bind the UDP socket to this address")
    parser.add_argument("--container-id", help="the client's container_id (adds |c:<id>)")


def client_from_args(parser, args):
    """A client for `args`, with everything that would make traffic vary off: no telemetry,
    buffering, aggregation, background sender or origin detection of its own (a given
    --container-id is still sent)."""
    if (args.port is None) == (args.socket_path is None):
        parser.error("give either --port (UDP) or --socket-path (unix socket)")
    if args.socket_path is not None:
        target = {"socket_path": args.socket_path}
    else:
        target = {"host": args.host, "port": args.port}
    return BoundDogStatsd(
        source=args.source,
        container_id=args.container_id,
        disable_telemetry=True,
        disable_buffering=True,
        disable_aggregation=True,
        disable_background_sender=True,
        origin_detection_enabled=False,
        track_instance=False,
        **target
    )
