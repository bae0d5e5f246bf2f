"""S3 credentials, region and endpoint, read the way AWS tools read them.

One reading serves both clients of the object store: DuckDB (its ``httpfs`` secret,
for the catalog's reads and writes) and `S3Files` (pyarrow, for our own data files).
The sources, first found wins, as in the AWS CLI and SDKs:

- credentials: ``AWS_ACCESS_KEY_ID`` + ``AWS_SECRET_ACCESS_KEY`` (+ ``AWS_SESSION_TOKEN``);
  else the profile's keys in the shared credentials file
  (``AWS_SHARED_CREDENTIALS_FILE``, default ``~/.aws/credentials``, section ``[name]``),
  else in the config file (``AWS_CONFIG_FILE``, default ``~/.aws/config``, section
  ``[profile name]``, or ``[default]``); none at all leaves the choice to the
  platform's credential chain (instance roles and the like);
- region: ``AWS_REGION``, ``AWS_DEFAULT_REGION``, then the profile's ``region``;
- endpoint: ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, then the profile's
  ``endpoint_url``. An endpoint is a non-AWS store (SeaweedFS, MinIO, Ceph): it is
  addressed path-style (``http://host:port/bucket/key``), over plain HTTP when its
  URL says ``http://``;
- profile: ``AWS_PROFILE`` (or ``AWS_DEFAULT_PROFILE``), default ``default``.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from waveform.errors import StorageError

__all__ = ["S3Settings", "is_s3_url", "split_s3_url"]


def is_s3_url(path: str) -> bool:
    return path.startswith("s3://")


def split_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> ``("bucket", "key")`` (the key may be empty)."""
    if not is_s3_url(url):
        raise StorageError(f"{url!r} is not an S3 URL (expected s3://bucket/key)")
    bucket, _, key = url[len("s3://"):].partition("/")
    if not bucket:
        raise StorageError(f"{url!r} names no bucket (expected s3://bucket/key)")
    return bucket, key


@dataclass(frozen=True, slots=True)
class S3Settings:
    """Where the object store is and who we are there."""

    access_key_id: str | None = None
    # Never printed: a repr lands in logs and error messages.
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    region: str | None = None
    #: A non-AWS endpoint as a URL (``http://127.0.0.1:8333``); None for AWS itself.
    endpoint_url: str | None = None

    # ---- derived --------------------------------------------------------------------

    @property
    def has_credentials(self) -> bool:
        return self.access_key_id is not None

    @property
    def use_ssl(self) -> bool:
        """HTTPS unless the endpoint URL says ``http://``."""
        return self.endpoint_url is None or urlsplit(self.endpoint_url).scheme != "http"

    @property
    def scheme(self) -> str:
        return "https" if self.use_ssl else "http"

    @property
    def endpoint(self) -> str | None:
        """``host[:port]`` of a non-AWS endpoint (what DuckDB and pyarrow take)."""
        if self.endpoint_url is None:
            return None
        return urlsplit(self.endpoint_url).netloc

    @property
    def path_style(self) -> bool:
        """Path-style addressing for a non-AWS endpoint (no bucket-name DNS there)."""
        return self.endpoint_url is not None

    # ---- reading --------------------------------------------------------------------

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str] | None = None, *, home: Path | None = None
    ) -> S3Settings:
        """The settings from ``environ`` (default `os.environ`) and the shared files."""
        env = os.environ if environ is None else environ
        home = Path(env.get("HOME") or Path.home()) if home is None else home
        profile = env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE") or "default"
        credentials_file = Path(
            env.get("AWS_SHARED_CREDENTIALS_FILE") or home / ".aws" / "credentials"
        ).expanduser()
        config_file = Path(env.get("AWS_CONFIG_FILE") or home / ".aws" / "config").expanduser()
        from_credentials = _section(credentials_file, profile)
        from_config = _section(
            config_file, profile if profile == "default" else f"profile {profile}"
        )
        if profile == "default" and not from_config:
            from_config = _section(config_file, "profile default")

        key_id, secret, token = _credentials(env, "environment variables AWS_*") or \
            _credentials(from_credentials, f"[{profile}] in {credentials_file}", files=True) or \
            _credentials(from_config, f"the profile {profile!r} in {config_file}", files=True) or \
            (None, None, None)
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or \
            from_config.get("region") or None
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or \
            from_config.get("endpoint_url") or None
        if endpoint is not None:
            parts = urlsplit(endpoint)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise StorageError(
                    f"the S3 endpoint URL {endpoint!r} is not http(s)://host[:port] "
                    "(AWS_ENDPOINT_URL or endpoint_url in the AWS config file)"
                )
            endpoint = endpoint.rstrip("/")
        return cls(key_id, secret, token, region, endpoint)

    # ---- for the clients ------------------------------------------------------------

    def duckdb_secret(self, name: str = "waveform_s3") -> str:
        """The ``CREATE SECRET`` statement for DuckDB's httpfs (scope: every ``s3://``).

        Without credentials the secret takes the platform's credential chain, which the
        ``aws`` extension provides (`needs_aws_extension`).
        """
        params = ["TYPE s3"]
        if self.has_credentials:
            params += [f"KEY_ID {_quote(self.access_key_id or '')}",
                       f"SECRET {_quote(self.secret_access_key or '')}"]
            if self.session_token:
                params.append(f"SESSION_TOKEN {_quote(self.session_token)}")
        else:
            params.append("PROVIDER credential_chain")
        if self.region:
            params.append(f"REGION {_quote(self.region)}")
        if self.endpoint is not None:
            params += [f"ENDPOINT {_quote(self.endpoint)}", "URL_STYLE 'path'"]
        params.append(f"USE_SSL {str(self.use_ssl).lower()}")
        body = ", ".join(params)
        return f"CREATE OR REPLACE SECRET {name} ({body})"

    @property
    def needs_aws_extension(self) -> bool:
        """The credential chain (no keys given) is the ``aws`` extension's."""
        return not self.has_credentials

    def pyarrow_options(self) -> dict[str, Any]:
        """Keyword arguments of `pyarrow.fs.S3FileSystem`."""
        opts: dict[str, Any] = {"scheme": self.scheme}
        if self.has_credentials:
            opts.update(access_key=self.access_key_id, secret_key=self.secret_access_key,
                        session_token=self.session_token)
        if self.region:
            opts["region"] = self.region
        if self.endpoint is not None:
            opts["endpoint_override"] = self.endpoint
            opts["force_virtual_addressing"] = False
        return opts


def _section(path: Path, name: str) -> dict[str, str]:
    """One section of an INI file (empty if the file or the section is absent)."""
    if not path.is_file():
        return {}
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path, encoding="utf-8")
    except configparser.Error as e:
        raise StorageError(f"cannot read the AWS file {path}: {e}") from e
    if not parser.has_section(name):
        return {}
    return {k.lower(): v.strip() for k, v in parser.items(name)}


def _credentials(
    source: Mapping[str, str], where: str, *, files: bool = False
) -> tuple[str, str, str | None] | None:
    """The key pair (and session token) in ``source``, or None; half a pair is an error."""
    names = (("aws_access_key_id", "aws_secret_access_key", "aws_session_token") if files
             else ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"))
    key_id, secret, token = (source.get(n) or None for n in names)
    if key_id is None and secret is None:
        return None
    if key_id is None or secret is None:
        missing = names[0] if key_id is None else names[1]
        raise StorageError(f"{where} give half an S3 key pair: {missing} is missing")
    return key_id, secret, token


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"
