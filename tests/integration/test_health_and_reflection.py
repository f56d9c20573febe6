"""Every service serves gRPC health checking and reflection (v1alpha and v1)."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from meterline.kernel.reflection import V1_SERVICE, v1_message
from tests.support import tls
from tests.support.stack import InProcessStack

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("role", "services"),
    [
        ("rating", {"meterline.rating.v1.RatingService"}),
        ("billing", {"meterline.billing.v1.BillingManager", "meterline.auth.v1.AuthService"}),
        ("service", {"meterline.service.v1.ServiceManager"}),
    ],
)
async def test_health_and_reflection(stack: InProcessStack, role: str, services: set[str]) -> None:
    address = getattr(stack.endpoints, role)
    async with tls.channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in (*services, ""):
            response = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert response.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        listed = {
            service.name async for reply in call for service in reply.list_services_response.service
        }
        assert services | {"grpc.health.v1.Health"} <= listed


async def _v1_reflection(address: str, request: Message) -> list[Message]:
    """A `grpc.reflection.v1.ServerReflection/ServerReflectionInfo` call, as grpcurl and
    current tools make it, with v1 messages (built from the v1 descriptor)."""
    response_class = v1_message("ServerReflectionResponse")
    async with tls.channel(address) as channel:
        call = channel.stream_stream(
            f"/{V1_SERVICE}/ServerReflectionInfo",
            request_serializer=lambda message: message.SerializeToString(),
            response_deserializer=response_class.FromString,
        )(iter([request]))
        return [reply async for reply in call]


@pytest.mark.parametrize(
    ("role", "service"),
    [
        ("rating", "meterline.rating.v1.RatingService"),
        ("billing", "meterline.billing.v1.BillingManager"),
        ("service", "meterline.service.v1.ServiceManager"),
    ],
)
async def test_reflection_v1(stack: InProcessStack, role: str, service: str) -> None:
    address = getattr(stack.endpoints, role)
    request_class = v1_message("ServerReflectionRequest")
    (listing,) = await _v1_reflection(address, request_class(list_services=""))
    listed = {entry.name for entry in listing.list_services_response.service}  # type: ignore[attr-defined]
    assert {service, V1_SERVICE, "grpc.reflection.v1alpha.ServerReflection"} <= listed
    # A tool then asks for the file that defines each service, v1 reflection included.
    for symbol in (service, V1_SERVICE):
        (found,) = await _v1_reflection(address, request_class(file_containing_symbol=symbol))
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(raw)
            for raw in found.file_descriptor_response.file_descriptor_proto  # type: ignore[attr-defined]
        ]
        assert any(symbol.rpartition(".")[2] in {s.name for s in file.service} for file in files), (
            symbol
        )
