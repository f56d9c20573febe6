"""`meterline gateway ...` and `meterline account identity ...`: the gateway registry, the
session ticket key gateways verify with, and the subscriber identities gateways name
subscribers by. Registered from main.py (`register`), which lends its one error boundary
and output helpers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn

import typer
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from meterline.cli.operator import OperatorClient
from meterline.rating.v1 import types_pb2
from meterline.service.v1 import service_pb2

BAD_INPUT = 2


@dataclass(frozen=True)
class Cli:
    """What main.py lends these commands: its error boundary and its output."""

    run: Callable[[Callable[[OperatorClient], Awaitable[Any]]], Any]
    """Runs operator calls; every failure becomes one line and an exit code."""
    emit: Callable[[bool, Any, str], None]
    """JSON or text."""
    fail: Callable[..., NoReturn]
    """One line on stderr, then exit (code=2 for bad input)."""
    table: Callable[..., Any]
    print_table: Callable[[Any, str], None]


_cli: Cli | None = None

gateway_app = typer.Typer(
    help="The gateway registry, and the key gateways verify session tickets with.",
    no_args_is_help=True,
)
identity_app = typer.Typer(
    help="Subscriber identities (phone number, IMSI, SIP URI, user name) of an account.",
    no_args_is_help=True,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
NameArgument = Annotated[str, typer.Argument(help="The gateway's name.")]


def register(app: typer.Typer, account_app: typer.Typer, cli: Cli) -> None:
    """Add `gateway` (and its old name `gateways`, hidden) and `account identity`."""
    global _cli
    _cli = cli
    app.add_typer(gateway_app, name="gateway")
    app.add_typer(gateway_app, name="gateways", hidden=True)
    account_app.add_typer(identity_app, name="identity")


def _tools() -> Cli:
    assert _cli is not None, "meterline.cli.gateways.register was not called"
    return _cli


def _dict(message: Message) -> dict[str, Any]:
    return MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


# -- the registry ---------------------------------------------------------------------------


def _service_types(text: str) -> list[types_pb2.ServiceType.ValueType]:
    """VOICE,VIDEO (any case); empty, "all" or "*" for every service type."""
    names = [name.strip().upper() for name in text.split(",") if name.strip()]
    if not names or names in (["ALL"], ["*"]):
        return []
    known = [
        name for name, _ in types_pb2.ServiceType.items() if name != "SERVICE_TYPE_UNSPECIFIED"
    ]
    unknown = [name for name in names if name not in known]
    if unknown:
        _tools().fail(
            f"unknown service type {', '.join(unknown)}: give some of {', '.join(known)}, "
            "separated by commas, or all",
            code=BAD_INPUT,
        )
    return [types_pb2.ServiceType.Value(name) for name in names]


def _state(gateway: service_pb2.RegisteredGateway) -> str:
    name = service_pb2.GatewayState.Name(gateway.state).removeprefix("GATEWAY_STATE_").lower()
    if gateway.state == service_pb2.GATEWAY_STATE_DRAINING and not gateway.active_sessions:
        return "drained"
    return name


def _health(gateway: service_pb2.RegisteredGateway) -> str:
    return "takes sessions" if gateway.healthy else gateway.unhealthy_reason


def _seen(gateway: service_pb2.RegisteredGateway) -> str:
    if gateway.skip_liveness_check:
        return "not checked"
    if not gateway.HasField("last_seen_time"):
        return "never"
    seconds = int(
        (datetime.now(UTC) - gateway.last_seen_time.ToDatetime(tzinfo=UTC)).total_seconds()
    )
    return f"{max(seconds, 0)} s ago"


def _kinds(gateway: service_pb2.RegisteredGateway) -> str:
    return ",".join(types_pb2.ServiceType.Name(k) for k in gateway.service_types) or "all"


def _summary(gateway: service_pb2.RegisteredGateway) -> str:
    parts = [gateway.address, _kinds(gateway)]
    if gateway.region:
        parts.append(f"region {gateway.region}")
    parts.append(f"capacity {gateway.capacity}" if gateway.capacity else "no capacity limit")
    parts.append(_state(gateway))
    if gateway.skip_liveness_check:
        parts.append("liveness not checked")
    return f"{gateway.gateway_id} ({'; '.join(parts)})"


@gateway_app.command("add")
def gateway_add(
    name: NameArgument,
    address: Annotated[
        str, typer.Option("--address", help="HOST:PORT clients connect their media to.")
    ],
    service_types: Annotated[
        str,
        typer.Option(
            "--service-types", help="What it carries, e.g. VOICE,VIDEO; all for every type."
        ),
    ] = "all",
    region: Annotated[str, typer.Option("--region", help="Its region, e.g. eu-west.")] = "",
    capacity: Annotated[
        int, typer.Option("--capacity", min=0, help="The most sessions at once; 0: no limit.")
    ] = 0,
    skip_liveness_check: Annotated[
        bool,
        typer.Option(
            "--skip-liveness-check",
            help="It neither watches nor sends heartbeats: count it as alive while enabled.",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Register a gateway. It gets sessions once enabled (it is) and alive: heard of
    within METERLINE_GATEWAY_LIVENESS_SECONDS (an open WatchTerminations, or
    GatewayHeartbeat). Then `meterline credential issue --gateway NAME` gives its
    credential."""
    request = service_pb2.RegisterGatewayRequest(
        gateway_id=name,
        address=address,
        service_types=_service_types(service_types),
        region=region,
        capacity=capacity,
        skip_liveness_check=skip_liveness_check,
    )
    stored = _tools().run(lambda client: client.register_gateway(request))
    _tools().emit(as_json, _dict(stored), f"registered gateway {_summary(stored)}")


@gateway_app.command("list")
def gateway_list(as_json: JsonOption = False) -> None:
    """The gateway registry: address, service types, region, capacity, state, whether it
    takes new sessions now (and why not), active sessions, when it was last heard of."""
    cli = _tools()
    gateways = cli.run(lambda client: client.gateways())
    if as_json:
        cli.emit(True, [_dict(g) for g in gateways], "")
        return
    table = cli.table(
        "gateway", "address", "service types", "region", "capacity", "state", "new sessions",
        "active", "last heard of",
    )  # fmt: skip
    for gateway in gateways:
        table.add_row(
            gateway.gateway_id,
            gateway.address,
            _kinds(gateway),
            gateway.region or "-",
            str(gateway.capacity or "-"),
            _state(gateway),
            _health(gateway),
            str(gateway.active_sessions),
            _seen(gateway),
        )
    cli.print_table(table, "no gateways")


def _set_state(name: str, state: service_pb2.GatewayState.ValueType, as_json: bool) -> None:
    request = service_pb2.UpdateGatewayRequest(gateway_id=name, state=state)
    updated = _tools().run(lambda client: client.update_gateway(request))
    _tools().emit(as_json, _dict(updated), f"gateway {_summary(updated)}")


@gateway_app.command("enable")
def gateway_enable(name: NameArgument, as_json: JsonOption = False) -> None:
    """Let a gateway take new sessions again."""
    _set_state(name, service_pb2.GATEWAY_STATE_ENABLED, as_json)


@gateway_app.command("drain")
def gateway_drain(name: NameArgument, as_json: JsonOption = False) -> None:
    """Send a gateway no new sessions; its sessions go on until they end (`gateway list`
    shows it drained once none is left)."""
    _set_state(name, service_pb2.GATEWAY_STATE_DRAINING, as_json)


@gateway_app.command("disable")
def gateway_disable(name: NameArgument, as_json: JsonOption = False) -> None:
    """Take a gateway out of service: no new sessions (its sessions still end normally,
    and it still hears of them)."""
    _set_state(name, service_pb2.GATEWAY_STATE_DISABLED, as_json)


@gateway_app.command("update")
def gateway_update(
    name: NameArgument,
    address: Annotated[str | None, typer.Option("--address", help="A new HOST:PORT.")] = None,
    service_types: Annotated[
        str | None, typer.Option("--service-types", help="New service types, or all.")
    ] = None,
    region: Annotated[
        str | None, typer.Option("--region", help='A new region ("" for none).')
    ] = None,
    capacity: Annotated[
        int | None, typer.Option("--capacity", min=0, help="A new capacity; 0: no limit.")
    ] = None,
    liveness_check: Annotated[
        bool | None,
        typer.Option(
            "--liveness-check/--skip-liveness-check", help="Whether its liveness is checked."
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Change what a gateway is registered with; what is not given stays."""
    request = service_pb2.UpdateGatewayRequest(gateway_id=name)
    if address is not None:
        request.address = address
    if region is not None:
        request.region = region
    if capacity is not None:
        request.capacity = capacity
    if service_types is not None:
        request.service_types.service_types.extend(_service_types(service_types))
        request.service_types.SetInParent()
    if liveness_check is not None:
        request.skip_liveness_check = not liveness_check
    updated = _tools().run(lambda client: client.update_gateway(request))
    _tools().emit(as_json, _dict(updated), f"gateway {_summary(updated)}")


@gateway_app.command("key")
def gateway_key(
    pem: Annotated[bool, typer.Option("--pem", help="Print it as a PEM PUBLIC KEY block.")] = False,
    jwk: Annotated[bool, typer.Option("--jwk", help="Print it as a JSON Web Key.")] = False,
    as_json: JsonOption = False,
) -> None:
    """The public key gateways verify session tickets with, offline (Ed25519, alg EdDSA):
    base64 of its 32 raw bytes, or PEM, or a JWK, as the service manager serves it."""
    key = _tools().run(lambda client: client.ticket_key())
    text = key.public_key_pem.strip() if pem else key.jwk if jwk else key.public_key
    _tools().emit(as_json, _dict(key), text)


# -- identities -------------------------------------------------------------------------------

MsisdnOption = Annotated[
    str | None, typer.Option("--msisdn", help="An E.164 number, e.g. +447700900123.")
]
ImsiOption = Annotated[str | None, typer.Option("--imsi", help="An IMSI (6 to 15 digits).")]
SipOption = Annotated[
    str | None, typer.Option("--sip-uri", help="A SIP URI, e.g. sip:alice@example.com.")
]
UserOption = Annotated[str | None, typer.Option("--user-name", "--username", help="A user name.")]
AccountArgument = Annotated[str, typer.Argument(help="The account id.")]


def _identity(
    msisdn: str | None, imsi: str | None, sip_uri: str | None, user_name: str | None
) -> service_pb2.SubscriberIdentity:
    given = [
        (kind, value)
        for kind, value in (
            (service_pb2.IDENTITY_KIND_MSISDN, msisdn),
            (service_pb2.IDENTITY_KIND_IMSI, imsi),
            (service_pb2.IDENTITY_KIND_SIP_URI, sip_uri),
            (service_pb2.IDENTITY_KIND_USER_NAME, user_name),
        )
        if value is not None
    ]
    if len(given) != 1:
        _tools().fail(
            "give exactly one of --msisdn, --imsi, --sip-uri or --user-name", code=BAD_INPUT
        )
    kind, value = given[0]
    return service_pb2.SubscriberIdentity(kind=kind, value=value)


def _identity_text(identity: service_pb2.SubscriberIdentity) -> str:
    kind = service_pb2.IdentityKind.Name(identity.kind).removeprefix("IDENTITY_KIND_")
    return f"{kind} {identity.value}"


@identity_app.command("add")
def identity_add(
    account: AccountArgument,
    msisdn: MsisdnOption = None,
    imsi: ImsiOption = None,
    sip_uri: SipOption = None,
    user_name: UserOption = None,
    as_json: JsonOption = False,
) -> None:
    """Map a subscriber identity to the account, so a gateway can start sessions for the
    subscriber by it. Each identity names one account."""
    identity = _identity(msisdn, imsi, sip_uri, user_name)

    async def work(client: OperatorClient) -> service_pb2.AccountIdentity:
        await client.account(account)  # NOT_FOUND for an account that does not exist
        return await client.add_identity(account, identity)

    added = _tools().run(work)
    _tools().emit(as_json, _dict(added), f"{added.account_id}: {_identity_text(added.identity)}")


@identity_app.command("remove")
def identity_remove(
    account: AccountArgument,
    msisdn: MsisdnOption = None,
    imsi: ImsiOption = None,
    sip_uri: SipOption = None,
    user_name: UserOption = None,
    as_json: JsonOption = False,
) -> None:
    """Remove an identity from the account."""
    identity = _identity(msisdn, imsi, sip_uri, user_name)
    removed = _tools().run(lambda client: client.remove_identity(account, identity))
    if not removed and not as_json:
        _tools().fail(f"{account} has no identity {_identity_text(identity)}", code=BAD_INPUT)
    _tools().emit(as_json, {"removed": removed}, f"removed {_identity_text(identity)}")


@identity_app.command("list")
def identity_list(account: AccountArgument, as_json: JsonOption = False) -> None:
    """The account's identities."""
    found = _tools().run(lambda client: client.identities(account))
    lines = [_identity_text(item.identity) for item in found]
    _tools().emit(as_json, [_dict(item) for item in found], "\n".join(lines) or "no identities")
