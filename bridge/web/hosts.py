"""Which ``Host`` a request may name. Without BRIDGE_PUBLIC_URL, links (``self``, ``next``, ``fullUrl``, the
CapabilityStatement's URL) are built from the request's Host: a client sending ``Host: evil.example`` would
have the bridge write links to evil.example, for itself or, through a shared cache, for others. So only names
the operator allows (BRIDGE_ALLOWED_HOSTS; by default loopback and BRIDGE_HOST) are answered under /fhir, reads
included: that also keeps a web page whose name was rebound to this address (DNS rebinding) from reading studies
through a browser on the bridge's machine."""

from __future__ import annotations

from bridge.errors import MisdirectedRequest
from bridge.settings import host_name


class HostCheck:
    """Raises ``MisdirectedRequest`` for a Host header naming none of ``names`` (any port).

    A client sends the same Host on every request: each header value is judged once and remembered."""

    #: Distinct Host values remembered; beyond, the memory starts again (a client may send endless variants).
    MAX_REMEMBERED = 1024

    def __init__(self, names: frozenset[str]) -> None:
        self._names = names
        self._judged: dict[str, bool] = {}

    def __call__(self, header: str | None) -> None:
        """``header`` is the request's Host, None when it sent none (HTTP/1.0: links use the server's name)."""
        if header is None:
            return
        allowed = self._judged.get(header)
        if allowed is None:
            if len(self._judged) >= self.MAX_REMEMBERED:
                self._judged.clear()
            allowed = self._judged[header] = _name(header) in self._names
        if not allowed:
            shown = header if len(header) <= 100 else header[:100] + "…"
            raise MisdirectedRequest(
                f"this server does not answer for Host {shown!r}: its operator sets BRIDGE_PUBLIC_URL (the base URL "
                "links are written with) or lists the name in BRIDGE_ALLOWED_HOSTS"
            )


def _name(header: str) -> str | None:
    """The host of a Host header value (``name[:port]``, ``[v6][:port]``), normalized; None if malformed."""
    if header.startswith("["):
        end = header.find("]") + 1
        name, port = header[:end], header[end:]
    else:
        name, colon, digits = header.partition(":")
        port = colon + digits
    if port and not (port[0] == ":" and port[1:].isascii() and (port[1:].isdigit() or port == ":")):
        return None
    try:
        return host_name(name)
    except ValueError:
        return None
