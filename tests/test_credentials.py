"""Logins as the providers issue them (casm_cloud.credentials): a local FTP server that
demands the CATDS login and a local HTTPS archive that sends every request without a
session through an Earthdata-style login server (302 to the login server, HTTP basic
there, 302 back with a code, a session cookie); each place a login is kept (environment,
mounted secret folder, netrc) reads the same data as the local files, at debug logging,
and neither the password nor the token appears in anything the process prints.

The HTTPS reads run in a fresh process: aiohttp builds its certificate store at import,
and the test's self-signed certificate is trusted the way a user trusts a private CA
(``SSL_CERT_FILE``).
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import os
import secrets
import subprocess
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import yaml

from casm_cloud.catalog import open_catalog, open_source
from casm_cloud.credentials import LoginError, find_login
from casm_cloud.grid import EASE2Grid
from casm_cloud.simulate import write_simulation

PERIOD = ("2015-07-06", "2015-07-08")
USER = "casm-user"
PASSWORD = f"pw-{secrets.token_hex(8)}"
TOKEN = f"tok-{secrets.token_hex(8)}"
CODE = secrets.token_hex(4)
# pyftpdlib 2.x still imports asyncore/asynchat (deprecated in Python 3.11)
pytestmark = pytest.mark.filterwarnings("ignore:The asyn:DeprecationWarning")

_READ = """
import json, logging, sys
logging.basicConfig(level=logging.DEBUG)
from casm_cloud.catalog import open_catalog, open_source
from casm_cloud.errors import UserError
from casm_cloud.grid import EASE2Grid
try:
    ds = open_source(open_catalog(sys.argv[1]), sys.argv[2],
                     window=EASE2Grid("M25").window_by_name("tiny"),
                     period=("2015-07-06", "2015-07-08")).load()
except UserError as err:
    print("casm-cloud: error:", err); sys.exit(2)
print("RESULT", json.dumps({v: float(ds[v].sum()) for v in sorted(ds.data_vars)}))
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("login-world")
    write_simulation(str(out), region="tiny", start=PERIOD[0], end="2015-07-09", seed=0,
                     sources=["truth", "smos", "smap"], layout="provider")
    return out


def _local(world: Path, name: str) -> dict:
    ds = open_source(open_catalog(str(world / "catalog.yaml")), name,
                     window=EASE2Grid("M25").window_by_name("tiny"), period=PERIOD).load()
    return {v: float(ds[v].sum()) for v in sorted(ds.data_vars)}


def _catalog(world: Path, tmp: Path, name: str, base: str, login) -> Path:
    """The world's catalog with entry ``name`` served from ``base`` with ``login``."""
    doc = yaml.safe_load((world / "catalog.yaml").read_text())
    kw = doc["entries"][name]["kwargs"]
    kw["urlpath"] = kw["urlpath"].replace("{CATALOG_DIR}", base)
    kw["storage_options"] = {"login": login}
    path = tmp / f"{name}-catalog.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _read(catalog: Path, name: str, env: dict) -> tuple[int, str, dict | None]:
    run = subprocess.run([sys.executable, "-c", _READ, str(catalog), name], env=env,
                         capture_output=True, text=True, timeout=120)
    text = run.stdout + run.stderr
    found = [ln for ln in run.stdout.splitlines() if ln.startswith("RESULT ")]
    return run.returncode, text, json.loads(found[0][7:]) if found else None


def _error(text: str) -> str:
    """The one error line a refused read prints."""
    lines = [ln for ln in text.splitlines() if ln.startswith("casm-cloud: error: ")]
    assert len(lines) == 1, text
    return lines[0]


def _clean_env(tmp: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("EARTHDATA_", "CATDS_", "NETRC", "CASM_CREDENTIALS"))}
    env.update(HOME=str(tmp), CASM_CREDENTIALS_DIR=str(tmp / "no-secret"), **extra)
    return env


def _ways(tmp: Path, prefix: str, host: str) -> dict[str, dict]:
    """The three places a login is kept, each as the environment of a fresh process."""
    folder = tmp / f"{prefix}-secret"
    folder.mkdir(exist_ok=True)
    (folder / f"{prefix}-username").write_text(USER + "\n")
    (folder / f"{prefix}-password").write_text(PASSWORD + "\n")
    rc = tmp / f"{prefix}-netrc"
    rc.write_text(f"machine {host}\n  login {USER}\n  password {PASSWORD}\n")
    up = prefix.upper()
    return {"environment": _clean_env(tmp, **{f"{up}_USERNAME": USER, f"{up}_PASSWORD": PASSWORD}),
            "secret folder": {**_clean_env(tmp), "CASM_CREDENTIALS_DIR": str(folder)},
            "netrc": _clean_env(tmp, NETRC=str(rc))}


# --------------------------------------------------------------------------- CATDS over FTP
@pytest.fixture(scope="module")
def ftp(world):
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.servers import ThreadedFTPServer

    auth = DummyAuthorizer()
    auth.add_user(USER, PASSWORD, str(world), perm="elr")
    handler = type("Handler", (FTPHandler,), {"authorizer": auth})
    server = ThreadedFTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"handle_exit": False},
                     daemon=True).start()
    yield f"ftp://127.0.0.1:{server.address[1]}"
    server.close_all()


@pytest.mark.parametrize("way", ["environment", "secret folder", "netrc"])
def test_catds_login_from_each_place_reads_smos_over_ftp(world, ftp, tmp_path, way):
    catalog = _catalog(world, tmp_path, "smos", ftp, "catds")
    rc, text, got = _read(catalog, "smos", _ways(tmp_path, "catds", "127.0.0.1")[way])
    assert rc == 0, text
    assert got == pytest.approx(_local(world, "smos"))
    assert PASSWORD not in text


def test_a_refused_or_missing_catds_login_is_one_line_without_the_password(world, ftp,
                                                                          tmp_path):
    catalog = _catalog(world, tmp_path, "smos", ftp, "catds")
    env = _clean_env(tmp_path, CATDS_USERNAME=USER, CATDS_PASSWORD=PASSWORD + "-wrong")
    rc, text, _ = _read(catalog, "smos", env)
    assert rc == 2, text
    line = _error(text)
    assert "refused the CATDS login (user 'casm-user', from the environment" in line
    assert "530" in line and PASSWORD not in text
    rc, text, _ = _read(catalog, "smos", _clean_env(tmp_path))
    assert rc == 2, text
    assert "the CATDS login for 127.0.0.1 is not set: expected the environment variables " \
           "CATDS_USERNAME and CATDS_PASSWORD" in _error(text)


# --------------------------------------------------------------------------- Earthdata over HTTPS
def _certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1 (its own CA), and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "casm-cloud test")])
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, False, False,
                                         False), critical=True)
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                           critical=False)
            .sign(key, hashes.SHA256()))
    crt, pem = folder / "server.crt", folder / "server.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return crt, pem


class _Archive(SimpleHTTPRequestHandler):
    """The data server: files (and folder listings) to a session or a bearer token; anything
    else is sent to the login server, whose code at ``/callback`` opens a session."""

    login_url = ""
    seen: list = []

    def log_message(self, *args):
        pass

    def _guard(self, serve):
        self.seen.append(self.headers.get("Authorization"))
        url = urlsplit(self.path)
        if url.path == "/callback":
            query = parse_qs(url.query)
            if query.get("code") != [CODE]:
                return self.send_error(401)
            self.send_response(302)
            self.send_header("Set-Cookie", "casm-session=open; Path=/; Secure")
            self.send_header("Location", query["next"][0])
            return self.end_headers()
        if self.headers.get("Authorization") == f"Bearer {TOKEN}" or \
                "casm-session=open" in (self.headers.get("Cookie") or ""):
            return serve()
        back = f"https://localhost:{self.server.server_port}/callback?next={quote(self.path)}"
        self.send_response(302)
        self.send_header("Location", f"{self.login_url}/oauth/authorize?redirect_uri="
                                     f"{quote(back, safe='')}")
        self.end_headers()

    def do_GET(self):
        self._guard(super().do_GET)

    def do_HEAD(self):
        self._guard(super().do_HEAD)


class _LoginServer(SimpleHTTPRequestHandler):
    """Earthdata-style login: HTTP basic on ``/oauth/authorize``, then back with a code."""

    seen: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        auth = self.headers.get("Authorization")
        self.seen.append(auth)
        want = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if auth != want:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="Earthdata Login"')
            self.send_header("Content-Length", "0")
            return self.end_headers()
        back = parse_qs(urlsplit(self.path).query)["redirect_uri"][0]
        self.send_response(302)
        self.send_header("Location", f"{back}&code={CODE}")
        self.end_headers()

    do_HEAD = do_GET


@pytest.fixture(scope="module")
def https(world, tmp_path_factory):
    import ssl

    crt, key = _certificate(tmp_path_factory.mktemp("tls"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(crt, key)
    login = ThreadingHTTPServer(("127.0.0.1", 0), _LoginServer)
    data = ThreadingHTTPServer(("localhost", 0), partial(_Archive, directory=str(world)))
    for server in (login, data):
        server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    _Archive.login_url = f"https://127.0.0.1:{login.server_port}"
    yield f"https://localhost:{data.server_port}", crt
    for server in (login, data):
        server.shutdown()


@pytest.mark.parametrize("way", ["environment", "secret folder", "netrc", "token"])
def test_earthdata_login_from_each_place_reads_smap_over_https(world, https, tmp_path, way):
    base, crt = https
    # the login server is 127.0.0.1 here (urs.earthdata.nasa.gov in cloud.yaml)
    catalog = _catalog(world, tmp_path, "smap", base,
                       {"provider": "earthdata", "host": "127.0.0.1"})
    ways = _ways(tmp_path, "earthdata", "127.0.0.1")
    ways["token"] = _clean_env(tmp_path, EARTHDATA_TOKEN=TOKEN)
    _Archive.seen.clear()
    _LoginServer.seen.clear()
    rc, text, got = _read(catalog, "smap", {**ways[way], "SSL_CERT_FILE": str(crt)})
    assert rc == 0, text
    assert got == pytest.approx(_local(world, "smap"))
    assert PASSWORD not in text and TOKEN not in text
    # each secret went to its own server only: the password to the login server, the token
    # to the archive
    assert not any(a and a.startswith("Basic") for a in _Archive.seen)
    assert not any(a and a.startswith("Bearer") for a in _LoginServer.seen)
    assert (way == "token") == (not _LoginServer.seen)


def test_a_refused_earthdata_login_is_one_line_without_the_password(world, https, tmp_path):
    base, crt = https
    catalog = _catalog(world, tmp_path, "smap", base,
                       {"provider": "earthdata", "host": "127.0.0.1"})
    env = _clean_env(tmp_path, EARTHDATA_USERNAME=USER, EARTHDATA_PASSWORD="not-" + PASSWORD,
                     SSL_CERT_FILE=str(crt))
    rc, text, _ = _read(catalog, "smap", env)
    assert rc == 2, text
    line = _error(text)
    assert "refused the NASA Earthdata login " \
        "(user 'casm-user', from the environment" in line and "401" in line
    assert PASSWORD not in text


# --------------------------------------------------------------------------- the lookup itself
def test_lookup_order_and_what_a_login_shows(tmp_path, monkeypatch):
    for key in [k for k in os.environ if k.startswith(("EARTHDATA_", "CATDS_", "NETRC"))]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))
    folder = tmp_path / "secret"
    folder.mkdir()
    monkeypatch.setenv("CASM_CREDENTIALS_DIR", str(folder))
    (tmp_path / ".netrc").write_text(f"machine urs.earthdata.nasa.gov login n password {PASSWORD}\n")
    url = "https://n5eil01u.ecs.nsidc.org/SMAP/x.h5"
    assert find_login("earthdata", url).origin.endswith("(machine urs.earthdata.nasa.gov)")
    (folder / "earthdata-token").write_text(TOKEN)
    assert find_login("earthdata", url).token == TOKEN  # the secret folder before netrc
    monkeypatch.setenv("EARTHDATA_USERNAME", USER)
    monkeypatch.setenv("EARTHDATA_PASSWORD", PASSWORD)
    login = find_login("earthdata", url)  # the environment first
    assert (login.username, login.host) == (USER, "urs.earthdata.nasa.gov")
    assert PASSWORD not in repr(login) and PASSWORD not in str(login) and USER in repr(login)
    # a CATDS login is for the FTP server's own host
    (tmp_path / ".netrc").write_text(f"machine ftp.ifremer.fr login c password {PASSWORD}\n")
    assert find_login("catds", "ftp://ftp.ifremer.fr/Land_products/x.nc").username == "c"
    with pytest.raises(LoginError, match="not a login; expected one of"):
        find_login("bob", url)


def test_a_recipe_without_its_login_stops_before_a_cluster(world, tmp_path, monkeypatch,
                                                          capsys):
    """The run's pre-flight check finds a missing login: one line, exit 2, nothing written."""
    from _tiny import casm_raw

    from casm_cloud.cli import main

    for key in [k for k in os.environ if k.startswith(("EARTHDATA_", "CATDS_", "NETRC"))]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CASM_CREDENTIALS_DIR", str(tmp_path / "none"))
    doc = yaml.safe_load((world / "catalog.yaml").read_text())
    smap = doc["entries"]["smap"]["kwargs"]
    smap["storage_options"] = {"login": "earthdata"}
    smap["urlpath"] = smap["urlpath"].replace("{CATALOG_DIR}", "https://n5eil01u.ecs.nsidc.org")
    for other in ("amsre", "amsr2", "era5"):  # the pre-flight check reads only the names
        doc["entries"].setdefault(other, doc["entries"]["smos"])
    (tmp_path / "catalog.yaml").write_text(yaml.safe_dump(doc))
    raw = casm_raw(tmp_path, tmp_path)
    raw["sources"]["stations"] = str(tmp_path)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(raw))
    assert main(["run", str(tmp_path / "recipe.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("casm-cloud: error: sources.smap: catalog entry 'smap' needs a "
                              "login: the NASA Earthdata login for urs.earthdata.nasa.gov is "
                              "not set"), err
    assert not (tmp_path / "run").exists()
