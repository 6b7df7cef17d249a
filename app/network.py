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


def network_key(address: str, ipv6_prefix: int) -> str:
    """The network a rate limit counts an address by: an IPv4 address itself (also when
    written as IPv4-mapped IPv6), an IPv6 address's first `ipv6_prefix` bits: one host
    or subscriber usually holds a whole /64, and could otherwise change address at will."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # "unknown", or whatever a test transport names its client
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip.packed, ipv6_prefix), strict=False))
    return str(ip)
