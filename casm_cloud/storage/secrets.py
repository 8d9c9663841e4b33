"""Which ``storage_options`` keys hold credentials (so they are never written or quoted)."""

from __future__ import annotations

from collections.abc import Mapping

from casm_cloud.credentials import is_login_name

__all__ = ["secret_keys"]

# storage_options keys that hold secrets (gcsfs, s3fs, adlfs, http auth).
_SECRET_KEYS = {
    "token", "key", "secret", "password", "passwd", "client_secret", "session_token",
    "refresh_token", "access_token", "aws_access_key_id", "aws_secret_access_key",
    "aws_session_token", "access_key", "secret_key", "account_key", "sas_token",
    "credentials", "auth", "authorization", "username", "user", "login",
}
# Values of "token" that select a credential *mechanism*, not a secret (gcsfs).
_TOKEN_MODES = {"anon", "google_default", "cloud", "browser", None}


def secret_keys(options: Mapping, prefix: str = "") -> list[str]:
    """Keys of ``storage_options`` (dotted, at any depth, e.g.
    ``client_kwargs.headers.Authorization``) that hold credentials."""
    found = []
    for k, v in options.items():
        if k == "token" and (isinstance(v, bool) or (
                (v is None or isinstance(v, str)) and v in _TOKEN_MODES)):
            continue  # a credential mechanism; a dict token is the key itself
        if k == "login" and is_login_name(v):
            continue  # the name of a login looked up at read time (casm_cloud.credentials)
        if str(k).lower() in _SECRET_KEYS:
            found.append(prefix + str(k))
        elif isinstance(v, Mapping):
            found += secret_keys(v, f"{prefix}{k}.")
    return found
