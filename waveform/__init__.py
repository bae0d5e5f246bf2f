"""waveform: the ECG service of a national imaging archive."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Client", "__version__"]


def __getattr__(name: str) -> object:
    # `waveform.Client` without importing grpc for everything else that imports waveform.
    if name == "Client":
        from waveform.client import Client

        return Client
    raise AttributeError(f"module 'waveform' has no attribute {name!r}")
