"""Logins for the archives that need one: NASA Earthdata (SMAP, AMSR-E and AMSR2 at NSIDC)
and CATDS (SMOS L3TB on the CATDS FTP server).

A catalog entry names its login, never the secret: ``storage_options: {login: earthdata}``
(or ``{login: {provider: earthdata, host: urs.uat.earthdata.nasa.gov}}`` for another login
server, e.g. Earthdata's test one).  The secret is looked up by the process that reads the
files (a dask worker, or the client before a cluster starts), in this order, each place
being where that provider's users already keep it:

1. the environment: ``EARTHDATA_TOKEN`` or ``EARTHDATA_USERNAME`` + ``EARTHDATA_PASSWORD``
   (earthaccess' names); ``CATDS_USERNAME`` + ``CATDS_PASSWORD``;
2. a mounted secret folder, ``$CASM_CREDENTIALS_DIR`` (default
   ``/var/run/secrets/casm-cloud``, where ``deploy/`` mounts the Kubernetes Secret
   ``casm-cloud-credentials``): one file per key, ``earthdata-token``,
   ``earthdata-username``, ``earthdata-password``, ``catds-username``, ``catds-password``;
3. a netrc file (``$NETRC`` or ``~/.netrc``): ``machine <login host> login … password …``
   (``urs.earthdata.nasa.gov``; the CATDS FTP server's own host name).

How each is used: FTP (CATDS) gets the user name and password of the FTP session.  HTTPS
(Earthdata) gets an ``Authorization`` header added by an aiohttp client middleware, which
aiohttp runs for every request of a redirect chain: a token goes only to the host the
catalog names, a user name and password (HTTP basic) only to the login host, over HTTPS
only; the login server's redirect back sets the data server's session cookie, as in a
browser.  aiohttp's own ``trust_env`` netrc support would also send the netrc password to
any host that has a line in the file; the middleware keeps each secret for its own host,
and gives the environment and the mounted secret the same path as netrc.

A secret is never part of a task graph, a log line, a repr or an error message: the graph
carries only the login's name, the lookup happens where the file is opened, and
:class:`Login`'s repr shows the user name and a fingerprint.  See ``docs/real_data.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from casm_cloud.errors import UserError

__all__ = ["LOGINS", "SECRETS_DIR", "LoginError", "Login", "find_login", "fsspec_options",
           "is_login_name", "refusals"]

#: Where ``deploy/`` mounts the Kubernetes Secret (override: ``CASM_CREDENTIALS_DIR``).
SECRETS_DIR = "/var/run/secrets/casm-cloud"


@dataclasses.dataclass(frozen=True)
class _Provider:
    title: str
    env: str                 # prefix of the environment variables and secret files
    login_host: str | None   # None: the data server itself (FTP)
    token: bool              # whether the provider issues bearer tokens


#: The logins a catalog entry may name.
LOGINS: dict[str, _Provider] = {
    "earthdata": _Provider("NASA Earthdata", "EARTHDATA", "urs.earthdata.nasa.gov", True),
    "catds": _Provider("CATDS", "CATDS", None, False),
}


class LoginError(UserError, PermissionError):
    """A login that is not set anywhere it is looked up, or that the server refused; the
    message says where it was looked up (never the secret)."""


_FINGERPRINT_KEY = os.urandom(16)


@dataclasses.dataclass(frozen=True)
class Login:
    """A resolved login: ``token`` or ``username`` + ``password``, for ``host``."""

    name: str
    host: str
    origin: str  # where it was found, e.g. "the environment (EARTHDATA_TOKEN)"
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    token: str | None = dataclasses.field(default=None, repr=False)

    def __repr__(self) -> str:
        # a fingerprint keyed per process: tells two secrets apart (fsspec's cache keys on
        # it) without giving a weak password away to an offline guess
        secret = (self.token or self.password or "").encode()
        mark = hmac.new(_FINGERPRINT_KEY, secret, hashlib.sha256).hexdigest()[:8]
        return (f"Login({self.name!r}, host={self.host!r}, username={self.username!r}, "
                f"secret={mark}, from {self.origin})")

    __str__ = __repr__

    def describe(self) -> str:
        who = "a token" if self.token else f"user {self.username!r}"
        return f"the {LOGINS[self.name].title} login ({who}, from {self.origin})"


def is_login_name(value) -> bool:
    """Whether a ``login`` storage option names a login (a key of :data:`LOGINS`, or a
    mapping with such a ``provider`` and a ``host``) rather than holding a secret."""
    if isinstance(value, str):
        return value in LOGINS
    return (isinstance(value, Mapping) and set(value) <= {"provider", "host"}
            and value.get("provider") in LOGINS)


def _spec(value, url: str) -> tuple[str, str]:
    """(login name, host the secret is for) of a ``login`` option and the URL it opens."""
    if not is_login_name(value):
        raise LoginError(f"storage_options.login: {value!r} is not a login; expected one of "
                         f"{sorted(LOGINS)} (or {{provider: …, host: …}})")
    name, host = (value, None) if isinstance(value, str) else (value["provider"],
                                                               value.get("host"))
    return name, host or LOGINS[name].login_host or (urlsplit(url).hostname or "")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except (FileNotFoundError, NotADirectoryError):
        return None


def find_login(value, url: str) -> Login:
    """The login a ``login`` option names, for the files at ``url`` (see the module doc).

    Raises
    ------
    LoginError
        If the login is set nowhere: the message lists the places looked at.
    """
    name, host = _spec(value, url)
    p = LOGINS[name]
    env = os.environ
    if p.token and env.get(f"{p.env}_TOKEN"):
        return Login(name, host, f"the environment ({p.env}_TOKEN)", token=env[f"{p.env}_TOKEN"])
    user, pw = env.get(f"{p.env}_USERNAME"), env.get(f"{p.env}_PASSWORD")
    if user and pw:
        return Login(name, host, f"the environment ({p.env}_USERNAME, {p.env}_PASSWORD)",
                     username=user, password=pw)
    folder = Path(env.get("CASM_CREDENTIALS_DIR", SECRETS_DIR))
    key = p.env.lower()
    token = _read(folder / f"{key}-token") if p.token else None
    if token:
        return Login(name, host, f"the secret {folder / f'{key}-token'}", token=token)
    user, pw = _read(folder / f"{key}-username"), _read(folder / f"{key}-password")
    if user and pw:
        return Login(name, host, f"the secret folder {folder}", username=user, password=pw)
    rc = Path(env["NETRC"]) if env.get("NETRC") else Path.home() / ".netrc"
    try:
        found = netrc.netrc(str(rc)).authenticators(host) if rc.is_file() else None
    except netrc.NetrcParseError as err:  # its message quotes the line: say only where
        raise LoginError(f"{rc}: not a valid netrc file (line {err.lineno})") from None
    if found and found[0] and found[2]:
        return Login(name, host, f"{rc} (machine {host})", username=found[0], password=found[2])
    extra = f"{p.env}_TOKEN, or " if p.token else ""
    files = f"{key}-token or " if p.token else ""
    raise LoginError(
        f"the {p.title} login for {host} is not set: expected the environment variables "
        f"{extra}{p.env}_USERNAME and {p.env}_PASSWORD, the files {files}{key}-username and "
        f"{key}-password in {folder} (a mounted Kubernetes Secret; CASM_CREDENTIALS_DIR), "
        f"or a 'machine {host}' line in {rc}")


class _HeaderFor:
    """aiohttp client middleware: ``Authorization`` on the requests to one host, over HTTPS.

    aiohttp runs a session's middlewares for each request of a redirect chain, so the
    header reaches the login server (or the data server, for a token) and nothing else.
    """

    def __init__(self, login: Login, host: str):
        self.login, self.host = login, host

    def __repr__(self) -> str:  # fsspec keys its cached file systems on the options' repr
        return f"_HeaderFor({self.login!r}, {self.host!r})"

    def _value(self) -> str:
        import aiohttp

        if self.login.token:
            return f"Bearer {self.login.token}"
        return aiohttp.BasicAuth(self.login.username, self.login.password).encode()

    async def __call__(self, request, handler):
        if request.url.scheme == "https" and request.url.host == self.host:
            request.headers["Authorization"] = self._value()
        return await handler(request)


def fsspec_options(url: str, storage_options: Mapping | None) -> dict:
    """fsspec options for ``url``: ``storage_options`` with a ``login`` name replaced by what
    that protocol takes (FTP user name and password; an HTTPS client middleware)."""
    so = dict(storage_options or {})
    if "login" not in so:
        return so
    spec = so.pop("login")
    proto = str(url).split("://", 1)[0] if "://" in str(url) else "file"
    if proto == "file":  # the archives unpacked into a folder: nothing to log in to
        return so
    login = find_login(spec, url)
    if proto == "ftp":  # host and port too: a chained (simplecache::) URL does not pass them
        where = urlsplit(str(url))
        return {**so, "host": where.hostname, "port": where.port or 21,
                "username": login.username, "password": login.password}
    if proto in ("http", "https"):
        host = urlsplit(str(url)).hostname if login.token else login.host
        client = dict(so.get("client_kwargs") or {})
        client["middlewares"] = (*client.get("middlewares", ()), _HeaderFor(login, host))
        return {**so, "client_kwargs": client}
    raise LoginError(f"storage_options.login: {url} is neither FTP nor HTTPS; a login is "
                     f"for the CATDS FTP server or the Earthdata HTTPS archives")


@contextlib.contextmanager
def refusals(url: str, storage_options: Mapping | None):
    """Around an open of ``url``: a server refusing the entry's login (FTP 530, HTTP 401/403)
    raises :class:`LoginError` naming the login and where it came from (never the secret)."""
    try:
        yield
    except Exception as err:
        refusal = _refused(err, url, storage_options)
        if refusal is None:
            raise
        raise refusal from None


def _refused(err: BaseException, url: str, storage_options: Mapping | None) -> LoginError | None:
    so = dict(storage_options or {})
    if "login" not in so:
        return None
    text = str(err)
    status = getattr(err, "status", None) or getattr(err, "code", None)
    ftp = type(err).__name__ == "error_perm" and text.startswith("530")
    if not (ftp or status in (401, 403)):
        return None
    try:
        who = find_login(so["login"], url).describe()
    except LoginError:
        who = "the login"
    return LoginError(f"{url}: the server refused {who}: "
                      f"{text.splitlines()[0] if text else type(err).__name__}")
