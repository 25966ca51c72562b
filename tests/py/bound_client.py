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
