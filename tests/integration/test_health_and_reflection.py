"""Every service serves gRPC health checking and reflection."""

from __future__ import annotations

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

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
