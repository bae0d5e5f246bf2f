"""The gRPC service: handlers, identity, access policy, status codes, server."""
