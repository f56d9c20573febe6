"""gRPC server reflection, as both `grpc.reflection.v1.ServerReflection` (what grpcurl and
current tools ask first) and `grpc.reflection.v1alpha.ServerReflection` (older tools).

grpcio-reflection implements only v1alpha. The v1 protocol is the same messages under
another package name, so the one implementation answers both: its handler is registered
a second time under the v1 name, and a copy of the v1alpha file descriptor renamed to
`grpc/reflection/v1/reflection.proto` goes into the default pool, so reflection can
describe the v1 service too (and clients can build v1 messages from it)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.message import Message
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1ALPHA_SERVICE = reflection.SERVICE_NAME
V1_SERVICE = "grpc.reflection.v1.ServerReflection"
V1_FILE = "grpc/reflection/v1/reflection.proto"
_V1ALPHA_PACKAGE = ".grpc.reflection.v1alpha."
_V1_PACKAGE = ".grpc.reflection.v1."


def v1_file() -> FileDescriptor:
    """The v1 reflection protocol's file descriptor, added to the default pool once."""
    pool = descriptor_pool.Default()
    try:
        return pool.FindFileByName(V1_FILE)
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = V1_FILE
    proto.package = "grpc.reflection.v1"
    proto.ClearField("options")  # v1alpha's language packages
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(_V1ALPHA_PACKAGE):
                field.type_name = _V1_PACKAGE + field.type_name[len(_V1ALPHA_PACKAGE) :]
    for service in proto.service:
        for method in service.method:
            method.input_type = _V1_PACKAGE + method.input_type[len(_V1ALPHA_PACKAGE) :]
            method.output_type = _V1_PACKAGE + method.output_type[len(_V1ALPHA_PACKAGE) :]
    pool.Add(proto)
    return pool.FindFileByName(V1_FILE)


def v1_message(name: str) -> type[Message]:
    """A v1 message class, e.g. "ServerReflectionRequest" (for clients and tests)."""
    descriptor = v1_file().message_types_by_name[name]
    return message_factory.GetMessageClass(descriptor)


def enable_reflection(server: grpc.aio.Server, service_names: Sequence[str]) -> None:
    """Serve reflection (v1 and v1alpha) on `server`, listing `service_names` and both
    reflection services."""
    v1_file()
    servicer = reflection.aio.ReflectionServicer(  # type: ignore[attr-defined]
        (*service_names, V1_SERVICE, V1ALPHA_SERVICE)
    )
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    # The same messages on the wire: v1alpha's classes decode and encode v1 calls.
    v1 = grpc.method_handlers_generic_handler(
        V1_SERVICE,
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((v1,))
