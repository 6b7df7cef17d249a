"""Who is calling: the client's address, believing X-Forwarded-For only from our proxies."""

import ipaddress
from collections.abc import Iterable

from starlette.types import Scope

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """IPs or CIDR blocks ("10.0.0.0/8", "::1"); ValueError names a bad one."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or CIDR block") from None
    return tuple(networks)


class TrustedProxies:
    """The proxies whose X-Forwarded-For is believed; by default none.

    uvicorn is started with --no-proxy-headers (make run, make bench), so the
    connection's peer is the real one; a client that sends X-Forwarded-For
    itself changes nothing unless its peer is listed here.
    """

    def __init__(self, networks: tuple[Network, ...] = ()) -> None:
        self._networks = networks

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._networks)

    def client_ip(self, scope: Scope) -> str:
        """The caller's address: the peer, or through trusted proxies the nearest hop
        in X-Forwarded-For that is not one of them."""
        client = scope.get("client")
        peer = str(client[0]) if client else "unknown"
        if not self._networks or not self._trusted(peer):
            return peer
        hops: list[str] = [
            hop.strip()
            for name, value in scope["headers"]
            if name == b"x-forwarded-for"
            for hop in value.decode("latin-1").split(",")
        ]
        nearest = peer
        for hop in reversed(hops):
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                break  # a hop we cannot read: stop at the last proxy that we trust
            if not self._trusted(hop):
                return hop
            nearest = hop
        return nearest
