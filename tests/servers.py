"""The real backend servers the tests start (`waveform.devservers`)."""

from waveform.devservers import (
    PostgresServer,
    S3Server,
    free_ports,
    pg_bin,
    postgres_server,
    seaweedfs_server,
    weed_bin,
)

__all__ = ["PostgresServer", "S3Server", "free_ports", "pg_bin", "postgres_server",
           "seaweedfs_server", "weed_bin"]
