"""Secrets kept: credentials a run uses never reach a log line, a store, a marker, a report,
a checkpoint or an error message.

The run is what a hub user or a CronJob does: the run root on a bucket (a real GCS emulator),
the bucket's key file named by ``GOOGLE_APPLICATION_CREDENTIALS`` (the recipe says only
``token: google_default``), other providers' credentials in the environment, and, after the
run, library calls that take the key itself in their ``storage_options`` at run time.  The
key is a real (freshly generated, fake) service-account key whose ``token_uri`` is a local
token server, so the credentials are *used*: every request the workers send to the bucket
carries an access token that gcsfs obtained by signing a JWT with the private key.  The
recipe is the session's tiny CASM recipe (tests/_tiny.py), so the run also shows that a run
root on a bucket gives the product of the local run, bit for bit.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import numpy as np
import pytest
import yaml
from _tiny import CASM_PRODUCT_VARS, casm_raw
from _tiny import product as _product

from casm_cloud.config import ConfigError, recipe_from_dict

#: Loggers raised to DEBUG in this process (caplog) and in the workers (dask's logging config).
DEBUG_LOGGERS = ("casm_cloud", "gcsfs", "fsspec", "urllib3", "aiohttp")


def _fake(what: str) -> str:
    """A fake secret, unique per call: no other string in a run can contain it by chance."""
    return f"FAKE-{what}-{secrets.token_hex(12)}"


# --------------------------------------------------------------------------- a token endpoint
class _TokenServer:
    """The OAuth token endpoint of the fake service account (``token_uri``), on 127.0.0.1.

    Records every JWT assertion it is sent (each signed with the private key) and answers
    each with a fresh fake access token.
    """

    def __init__(self):
        self.assertions: list[str] = []
        self.tokens: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                server.assertions += parse_qs(body).get("assertion", [])
                token = _fake("access-token")
                server.tokens.append(token)
                out = json.dumps({"access_token": token, "expires_in": 3600,
                                  "token_type": "Bearer"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):  # quiet
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/token"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self):
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def token_server():
    server = _TokenServer()
    yield server
    server.close()


def _service_account(token_uri: str) -> dict:
    """A service-account key as Google issues it, with a freshly generated RSA key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return {"type": "service_account", "project_id": "casm-fake-project",
            "private_key_id": secrets.token_hex(20), "private_key": pem,
            "client_email": "casm-runner@casm-fake-project.iam.gserviceaccount.com",
            "client_id": str(secrets.randbelow(10**20)), "token_uri": token_uri,
            "auth_uri": "https://accounts.google.com/o/oauth2/auth"}


def _key_strings(info: dict) -> list[str]:
    """The secret parts of a key: its id and every line of the private key's body."""
    lines = [ln for ln in info["private_key"].splitlines() if ln and "PRIVATE KEY" not in ln]
    return [info["private_key_id"], *lines]


def _log_text(record: logging.LogRecord) -> str:
    """Everything a handler could write of a record: message, traceback, extra fields."""
    fmt = logging.Formatter("%(name)s %(levelname)s %(message)s")
    extra = {k: v for k, v in vars(record).items() if k not in logging.makeLogRecord({}).__dict__
             and k not in ("message", "asctime")}
    return f"{fmt.format(record)} {extra!r}"


def _leaks(texts: dict[str, str], needles: dict[str, str]) -> list[str]:
    return [f"{what} in {where}" for where, text in texts.items()
            for what, needle in needles.items() if needle in text]


# --------------------------------------------------------------------------- the run
def test_a_run_with_credentials_leaks_none_of_them(gcs_emulator, token_server, casm_sources,
                                                   casm_reference, tmp_path, monkeypatch,
                                                   caplog, capfd):
    import gcsfs
    from distributed import Client, LocalCluster

    from casm_cloud import storage
    from casm_cloud.catalog import open_catalog, open_source
    from casm_cloud.recipes import run_recipe
    from casm_cloud.recipes.casm import STAGES
    from casm_cloud.simulate import write_simulation
    from casm_cloud.validation import run_validation

    bucket, emulator = gcs_emulator
    endpoint = emulator["endpoint_url"]
    sources = casm_sources

    # The credentials, where users keep them: a key file named by the environment, and
    # other providers' secrets in environment variables (read by nothing here; nothing
    # may copy them anywhere either).
    info = _service_account(token_server.url)
    key_file = tmp_path / "secrets" / "casm-runner-key.json"
    key_file.parent.mkdir()
    key_file.write_text(json.dumps(info))
    env = {"AWS_ACCESS_KEY_ID": _fake("aws-key-id"), "AWS_SECRET_ACCESS_KEY": _fake("aws-secret"),
           "AWS_SESSION_TOKEN": _fake("aws-session"), "EARTHDATA_USERNAME": _fake("ed-user"),
           "EARTHDATA_PASSWORD": _fake("earthdata-password")}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    monkeypatch.setenv("NO_GCE_CHECK", "true")  # no metadata server here
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    # Worker processes log at DEBUG too (dask's logging config, read when a worker starts).
    for name in DEBUG_LOGGERS:
        monkeypatch.setenv(f"DASK_LOGGING__{name.upper()}", "debug")
    caplog.set_level(logging.DEBUG)
    for name in DEBUG_LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)

    run_root = f"{bucket}/secrets-run-{secrets.token_hex(4)}"
    # In the recipe: where, and the credential *mechanism* only.
    so = {"endpoint_url": endpoint, "token": "google_default"}
    raw = casm_raw(sources, tmp_path)
    raw.update(name="secrets", run_root=run_root, storage_options=so)
    recipe = recipe_from_dict(raw)
    # At run time, as a user passes a key the environment does not hold: the key itself.
    runtime = {"endpoint_url": endpoint, "token": dict(info)}

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        ctx = run_recipe(recipe, client=client, progress=True)
        assert list(ctx.timings) == [s.name for s in STAGES]
        product = storage.open_zarr(recipe.output("product"), runtime, require_complete=True)
        # the run root on a bucket changes no bit of the product
        want = _product(casm_reference[0])
        for name in CASM_PRODUCT_VARS:
            np.testing.assert_array_equal(client.compute(product[name]).result().values,
                                          want[name].values, err_msg=name)
        # Sources simulated straight to the bucket, their catalog opened and read there,
        # each with the key in storage_options.
        catalog = write_simulation(f"{run_root}/runtime-sources", region="tiny",
                                   start="2011-01-01", end="2011-01-31", seed=1,
                                   storage_options=runtime)
        cat = open_catalog(catalog, storage_options=runtime)
        smos = open_source(cat, "smos", storage_options=runtime)
        assert np.isfinite(float(client.compute(smos["tb_h"].mean()).result()))
        table = run_validation({"product": recipe.output("product")}, str(sources / "stations"),
                               f"{run_root}/validate-runtime", min_obs=20, figures=True,
                               storage_options=runtime)
        assert len(table) > 0
        cluster_logs = [client.get_scheduler_logs(), *client.get_worker_logs().values()]
    out, err = capfd.readouterr()

    # The key was used: the workers' and this process's gcsfs signed JWTs with it.
    assert token_server.assertions and token_server.tokens

    needles = {f"${k}": v for k, v in env.items()}
    needles.update({f"key part {i}": s for i, s in enumerate(_key_strings(info))})
    needles.update({f"access token {i}": t for i, t in enumerate(token_server.tokens)})
    needles.update({f"JWT signature {i}": a.rsplit(".", 1)[-1]
                    for i, a in enumerate(token_server.assertions)})

    texts = {"stdout": out, "stderr": err,
             "caplog": "\n".join(_log_text(r) for r in caplog.records),
             "cluster logs": repr(cluster_logs),
             "run summary": repr(ctx.summary), "validation table": table.to_csv()}
    assert "[casm-cloud] export" in out and len(caplog.records) > 100  # logs were captured

    # Every object the run wrote to the bucket (stores, attributes, markers, checkpoints,
    # report, validation), read back as bytes.
    fs = gcsfs.GCSFileSystem(endpoint_url=endpoint, token="anon", skip_instance_cache=True)
    paths = fs.find(run_root)
    blobs = fs.cat(paths)
    names = [p.rsplit("/", 1)[-1] for p in paths]
    for expected in ("zarr.json", "_stage.json", "model.json", "index.html", "metrics.csv",
                     "summary.md"):
        assert expected in names, f"{expected} not written: the grep below would prove nothing"
    assert any(n.endswith(".png") for n in names)
    texts.update({f"gs://{p}": b.decode("latin-1") for p, b in blobs.items()})
    # ...and everything local: the sources and their catalog.
    texts.update({str(p): p.read_bytes().decode("latin-1") for p in sources.rglob("*")
                  if p.is_file()})
    leaks = _leaks(texts, needles)
    assert not leaks, leaks[:20]

    # Markers and attributes are also plain JSON that names no credential key.
    for p, b in blobs.items():
        if p.endswith((".json", ".md", ".csv", ".html")):
            text = b.decode()
            assert "private_key" not in text and "GOOGLE_APPLICATION_CREDENTIALS" not in text, p


# --------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(("section", "options", "keys"), [
    ("storage_options", {"token": "PRIVATE"}, ["token"]),
    ("storage_options", {"key": "AKIAFAKE", "secret": "PRIVATE", "endpoint_url": "http://x"},
     ["key", "secret"]),
    ("storage_options", {"token": {"type": "service_account", "private_key": "PRIVATE"}},
     ["token"]),
    ("sources.storage_options", {"client_kwargs": {"headers": {"Authorization": "PRIVATE"}}},
     ["client_kwargs.headers.Authorization"]),
    ("sources.storage_options", {"password": "PRIVATE", "username": "casm"},
     ["password", "username"]),
])
def test_a_recipe_with_a_credential_is_refused_without_repeating_it(section, options, keys,
                                                                    tmp_path, capsys):
    secret = _fake("recipe-secret")
    options = json.loads(json.dumps(options).replace("PRIVATE", secret))
    raw = casm_raw(tmp_path / "sources", tmp_path)
    if section == "storage_options":
        raw["storage_options"] = options
    else:
        raw["sources"]["storage_options"] = options
    with pytest.raises(ConfigError) as info:
        recipe_from_dict(raw)
    msg = str(info.value)
    assert msg.startswith(f"recipe key '{section}': credentials ("), msg
    for key in keys:
        assert key in msg, msg
    assert "environment" in msg
    # Nor does anything a traceback or a log handler prints of the error.
    printed = "".join(traceback.format_exception(info.value)) + repr(info.value)
    assert secret not in printed

    # The command line: one line, exit code 2, no secret.
    from casm_cloud.cli import main

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.count("\n") == 0 and keys[0] in err, err
    assert secret not in captured.err + captured.out


def test_a_catalog_entry_with_a_credential_is_refused_without_repeating_it():
    from casm_cloud.catalog import CatalogError, make_entry

    secret = _fake("catalog-secret")
    with pytest.raises(CatalogError) as info:
        make_entry("canonical_zarr", "gs://bucket/smos.zarr", kind="smos",
                   storage_options={"secret": secret, "key": "AKIAFAKE"})
    assert "secret" in str(info.value) and secret not in str(info.value)
    assert secret not in "".join(traceback.format_exception(info.value))


def test_a_catalog_entry_with_a_password_in_its_url_is_refused_without_repeating_it():
    from casm_cloud.catalog import CatalogError, make_entry

    secret = _fake("catalog-secret")
    with pytest.raises(CatalogError) as info:
        make_entry("canonical_zarr", f"https://casm:{secret}@example.org/smos.zarr", kind="smos")
    assert "password" in str(info.value)
    assert secret not in str(info.value)


def test_a_catalog_entry_with_a_key_as_token_is_refused_without_repeating_it():
    from casm_cloud.catalog import CatalogError, make_entry

    secret = _fake("catalog-secret")
    with pytest.raises(CatalogError) as info:
        make_entry("canonical_zarr", "gs://bucket/smos.zarr", kind="smos",
                   storage_options={"token": {"type": "service_account", "private_key": secret}})
    assert "token" in str(info.value) and secret not in str(info.value)
