"""How a service dials the several instances of a peer as one channel: gRPC's own
`round_robin` load balancing over every address, so the calls spread over all instances
and skip one whose connection is down.

Client-side health checking (`healthCheckConfig` in the service config) keeps an instance
that is up but says NOT_SERVING (its database unreachable, `kernel/health.py`; or shutting
down) out of the rotation: gRPC keeps one `grpc.health.v1.Health/Watch` stream per
instance, for the peer's own service name (`meterline.rating.v1.RatingService`,
`meterline.billing.v1.BillingManager`: the names the servers set, together with the
whole server's ""), and gives calls only to the instances that answer SERVING. Without
it, such an instance still gets its share: the rating service answers from its cached
catalog, and a call one answers UNAVAILABLE costs a retry (`kernel/retry.py`). When no
instance is SERVING, calls fail UNAVAILABLE without reaching any (after the retries); a
peer with no health service (UNIMPLEMENTED) counts as SERVING.

Health checking is on only where it has a job (`METERLINE_PEER_HEALTH_CHECKS=auto`, the
default): for a target that names several instances (a comma list, or a `dns:` target),
and off for one `host:port`. The watch streams keep gRPC's threads busy in the calling
process, and a process that forks meanwhile (the tests start their own PostgreSQL beside
an in-process stack, with a `preexec_fn`) crashed in the child; the in-process stacks dial
one `host:port` each, so that cannot happen there. `on` checks a single `host:port` too
(a name whose DNS answer lists several instances); `off` never checks.

A peer setting (`METERLINE_RATING_PEERS`, `METERLINE_BILLING_PEERS`) is one of:
- one `host:port`: gRPC resolves the name (DNS) and balances over every address it gets;
- a `scheme:` target such as `dns:///rating:50051` (a name that resolves to every
  instance: a compose network alias, a Kubernetes headless service), passed on as it is;
- a comma-separated list of IP `host:port`s, dialled as gRPC's `ipv4:`/`ipv6:` target
  (TLS then checks each instance's certificate against the first entry's address; see
  `balanced_options`). Host names in a list are refused: gRPC has no static list of
  names, and one DNS name for all instances is the form that follows instances as they
  come and go.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from typing import Any

from meterline.kernel.config import PEER_HEALTH_CHECK_MODES, ConfigError


def _host(address: str) -> str:
    host, separator, port = address.rpartition(":")
    if not separator or not port.isdigit():
        raise ValueError(address)
    return host.strip("[]")


def peer_target(addresses: str, setting: str) -> str:
    """The gRPC target for `addresses` (the value of `setting`, for the error sentence)."""
    value = addresses.strip()
    if "," not in value:
        return value
    parts = [part.strip() for part in value.split(",") if part.strip()]
    versions: set[int] = set()
    for part in parts:
        try:
            versions.add(ipaddress.ip_address(_host(part)).version)
        except ValueError:
            raise ConfigError(
                f"{setting}: {part!r} is not an IP address with a port; a list takes "
                "IP:port entries (10.0.0.5:50051,10.0.0.6:50051). For host names give one "
                "DNS name that resolves to every instance, as dns:///name:port."
            ) from None
    if len(versions) > 1:
        raise ConfigError(
            f"{setting}: IPv4 and IPv6 addresses cannot share one list; use one family."
        )
    scheme = "ipv6" if versions == {6} else "ipv4"
    return f"{scheme}:{','.join(parts)}"


def names_several_instances(addresses: str) -> bool:
    """Whether a peer setting names several instances: a comma list or a `dns:` target
    (one `host:port` may too, through DNS, but is taken as one instance)."""
    value = addresses.strip()
    return "," in value or value.lower().startswith("dns:")


def health_checked(addresses: str, mode: str = "auto") -> bool:
    """Whether calls to `addresses` go only to instances whose health says SERVING."""
    if mode not in PEER_HEALTH_CHECK_MODES:
        raise ValueError(f"health check mode {mode!r} is not one of {PEER_HEALTH_CHECK_MODES}")
    if mode == "auto":
        return names_several_instances(addresses)
    return mode == "on"


def balanced_options(
    options: Sequence[tuple[str, Any]],
    addresses: str = "",
    health_service: str | None = None,
    health_checks: str = "auto",
) -> tuple[tuple[str, Any], ...]:
    """`options` plus the service config: round_robin over every address and, if
    `health_service` is given and `health_checked(addresses, health_checks)`, health
    checking of every instance for that service name. For a list of `addresses`, TLS
    checks every instance's certificate against the first entry's IP address: a list has
    no one host name (gRPC would check the whole list as one name), so the instances of a
    list must present certificates valid for that address, or be named by one DNS name
    instead."""
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if health_service is not None and health_checked(addresses, health_checks):
        config["healthCheckConfig"] = {"serviceName": health_service}
    extra: list[tuple[str, Any]] = [("grpc.service_config", json.dumps(config))]
    if "," in addresses:
        first = addresses.split(",", 1)[0].strip()
        extra.append(("grpc.ssl_target_name_override", _host(first)))
    return (*options, *extra)
