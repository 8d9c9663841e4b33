"""Intake catalogs of sources: entries name an adapter, a URL and its options.

Catalogs are intake-2 native YAML files (``intake.readers.entry.Catalog``;
docs/architecture.md, "Known traps": intake-1 YAML user parameters are silently ignored, so we do
not write that format).  Each entry is a :class:`CasmSource` reader whose
keyword arguments are ``adapter``, ``urlpath``, ``storage_options`` and the
adapter's own options; reading it calls the adapter from
:data:`casm_cloud.sources.ADAPTERS` and returns the canonical lazy dataset.

Relative ``urlpath`` values are stored as ``{CATALOG_DIR}/<path>`` and so
resolve against the folder holding the catalog: a simulated folder can be
moved or copied to a bucket and still opens.  Credentials are never written:
:func:`make_entry` refuses ``storage_options`` that carry secrets and URLs
with embedded passwords; they come from the environment at read time.

Public API::

    entry = make_entry("canonical_zarr", "sources/smos.zarr", kind="smos")
    path = write_catalog({"smos": entry}, "run/catalog.yaml")
    cat = open_catalog(path)
    ds = open_source(cat, "smos")
"""

from __future__ import annotations

import inspect
import posixpath
from collections.abc import Mapping
from urllib.parse import urlsplit

import xarray as xr
from intake.readers.entry import Catalog
from intake.readers.readers import BaseReader

# The catalog's errors live in errors.py so that the source adapters raise them without
# importing the catalog (which reads the adapters).
from casm_cloud.errors import CatalogError, MissingFilesError, SourceError, UserError
from casm_cloud.sources import ADAPTERS, get_adapter
from casm_cloud.sources._common import time_slice
from casm_cloud.storage import secret_keys

__all__ = [
    "CasmSource",
    "CatalogError",
    "SourceError",
    "MissingFilesError",
    "make_entry",
    "write_catalog",
    "open_catalog",
    "open_source",
    "list_sources",
    "describe_sources",
]

_DIR_TOKEN = "{CATALOG_DIR}"

class CasmSource(BaseReader):
    """intake reader: call a casm_cloud source adapter, return a canonical dataset.

    Keyword arguments (stored in the catalog): ``adapter`` (a key of
    :data:`casm_cloud.sources.ADAPTERS`), ``urlpath``, ``storage_options``
    and the adapter's options.
    """

    output_instance = "xarray:Dataset"
    imports = {"xarray"}

    def _read(self, adapter: str, urlpath: str, storage_options: Mapping | None = None,
              **options) -> xr.Dataset:
        fn = get_adapter(adapter)
        return fn(_plain_local(urlpath), storage_options=dict(storage_options or {}) or None,
                  **options)


def _plain_local(urlpath: str) -> str:
    """``file:///a/b`` (what ``{CATALOG_DIR}`` expands to locally) -> ``/a/b``."""
    u = str(urlpath)
    return u[len("file://"):] if u.startswith("file://") else u


def _is_relative(urlpath: str) -> bool:
    u = str(urlpath)
    return not ("://" in u or u.startswith("/") or u.startswith("{") or u.startswith("~"))


def _redacted(url: str) -> str:
    """``url`` without the user name and password it may embed (never repeated in messages)."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]).geturl()


def _check_no_secrets(urlpath: str, storage_options: Mapping | None, where: str) -> None:
    bad = secret_keys(dict(storage_options or {}))
    if bad:
        raise CatalogError(
            f"{where}: storage_options {bad} would write a credential into the catalog; "
            "take credentials from the environment (e.g. GOOGLE_APPLICATION_CREDENTIALS, "
            "AWS_* variables, ~/.netrc) or pass them to open_source() at run time"
        )
    if "://" in str(urlpath):
        parts = urlsplit(str(urlpath))
        if parts.password or (parts.username and "@" in parts.netloc):
            raise CatalogError(
                f"{where}: urlpath embeds a user name or password; take credentials from the "
                "environment instead"
            )


def _check_options(adapter: str, options: Mapping, where: str) -> None:
    """The adapter exists and accepts every option by name."""
    if adapter not in ADAPTERS:
        raise CatalogError(f"{where}: unknown adapter {adapter!r}; expected one of {sorted(ADAPTERS)}")
    params = inspect.signature(get_adapter(adapter)).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    accepted = {n for n, p in params.items()
                if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)} - {"urlpath"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise CatalogError(
            f"{where}: adapter {adapter!r} does not accept option(s) {unknown}; "
            f"it accepts {sorted(accepted - {'storage_options'})}"
        )


def make_entry(adapter: str, urlpath: str, *, kind: str | None = None, description: str = "",
               storage_options: Mapping | None = None, **options) -> CasmSource:
    """A catalog entry that opens ``urlpath`` with ``adapter``.

    Parameters
    ----------
    adapter : str
        A key of :data:`casm_cloud.sources.ADAPTERS`.
    urlpath : str
        Local path, fsspec URL, or a path relative to the catalog's folder.
    kind : str, optional
        Canonical kind, passed to the adapter as ``kind=`` (needed by
        ``canonical_zarr``).
    description : str
        Human-readable description, stored as entry metadata.
    storage_options : mapping, optional
        fsspec options without credentials (e.g. ``{"token": "anon"}``).
    **options
        Further keyword options of the adapter.

    Returns
    -------
    CasmSource
        The intake reader, ready for :func:`write_catalog`.

    Raises
    ------
    CatalogError
        For an unknown adapter, an option the adapter does not accept, or a
        credential in ``storage_options`` or ``urlpath``.
    """
    where = f"entry {_redacted(str(urlpath))!r}"
    if kind is not None:
        options["kind"] = kind
    _check_options(adapter, options, where)
    _check_no_secrets(urlpath, storage_options, where)
    url = str(urlpath)
    if _is_relative(url):
        # intake formats the stored string with its user parameters: other placeholders
        # ({date:%Y%m%d}) are escaped so that {CATALOG_DIR} is still filled in
        rel = posixpath.normpath(url).replace("{", "{{").replace("}", "}}")
        url = f"{_DIR_TOKEN}/{rel}"
    meta = {"description": description}
    if kind is not None:
        meta["kind"] = kind
    return CasmSource(adapter=adapter, urlpath=url,
                      storage_options=dict(storage_options) if storage_options else None,
                      metadata=meta, **options)


def write_catalog(entries: Mapping[str, CasmSource], path: str,
                  storage_options: Mapping | None = None) -> str:
    """Write an intake-2 YAML catalog of ``entries``.

    Parameters
    ----------
    entries : mapping of str to CasmSource
        Entry name -> entry from :func:`make_entry`.
    path : str
        Local path or fsspec URL of the YAML file (its folder is created).
    storage_options : mapping, optional
        fsspec options to write ``path``.

    Returns
    -------
    str
        ``path``.

    Raises
    ------
    CatalogError
        For an empty mapping, a non-entry value, or an entry with credentials.
    """
    if not entries:
        raise CatalogError(f"catalog {path}: no entries to write")
    cat = Catalog()
    for name, entry in entries.items():
        if not isinstance(entry, CasmSource):
            raise CatalogError(
                f"catalog {path}: entry {name!r} is a {type(entry).__name__}; expected a "
                "CasmSource from make_entry()"
            )
        _check_no_secrets(entry.kwargs.get("urlpath", ""), entry.kwargs.get("storage_options"),
                          f"entry {name!r}")
        cat[name] = entry
    from casm_cloud.storage import url_to_fs

    fs, fpath = url_to_fs(path, storage_options)
    fs.makedirs(posixpath.dirname(fpath) or ".", exist_ok=True)
    cat.to_yaml_file(str(path), **dict(storage_options or {}))
    return str(path)


def open_catalog(path: str, storage_options: Mapping | None = None) -> Catalog:
    """Open an intake-2 YAML catalog.

    Raises
    ------
    FileNotFoundError
        If there is no file at ``path``.
    """
    from casm_cloud.storage import exists

    if not exists(path, storage_options):
        raise FileNotFoundError(f"no catalog at {path}")
    return Catalog.from_yaml_file(str(path), storage_options=dict(storage_options or {}))


def _as_catalog(catalog) -> Catalog:
    return catalog if isinstance(catalog, Catalog) else open_catalog(catalog)


def list_sources(catalog) -> list[str]:
    """Names of the entries of ``catalog`` (a Catalog or a path), in stored order."""
    return list(_as_catalog(catalog).entries)


def check_login(catalog, name: str, key: str) -> None:
    """Raise :class:`casm_cloud.credentials.LoginError` (naming ``key`` and the entry) if
    entry ``name`` names a login that is set nowhere here; a pre-flight check, so a run
    without its Earthdata or CATDS login stops before a cluster starts."""
    from casm_cloud.credentials import LoginError, fsspec_options

    kw = _as_catalog(catalog).entries[name].kwargs
    try:  # looks the login up where the entry's files are opened with one
        fsspec_options(str(kw.get("urlpath", "")), kw.get("storage_options"))
    except LoginError as err:
        raise LoginError(f"{key}: catalog entry {name!r} needs a login: {err}") from None


def describe_sources(catalog) -> dict[str, dict]:
    """``{name: {"adapter", "urlpath", "kind", "description"}}`` of every entry."""
    cat = _as_catalog(catalog)
    out = {}
    for name, ent in cat.entries.items():
        kw = ent.kwargs
        out[name] = {"adapter": kw.get("adapter"), "urlpath": kw.get("urlpath"),
                     "kind": kw.get("kind"), "description": ent.metadata.get("description", "")}
    return out


#: The request keywords :func:`open_source` passes to the adapters that take them.
_REQUEST = ("window", "start", "end", "variables", "channels")


def _accepted(adapter: str) -> set[str]:
    params = inspect.signature(get_adapter(adapter)).parameters
    return {n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def _request(adapter: str, window, period, variables, halo_days: int) -> dict:
    """What an adapter is asked for, in the keywords it takes (the rest is done after)."""
    import pandas as pd

    takes = _accepted(adapter)
    out = {}
    if window is not None and "window" in takes:
        out["window"] = window
    if period is not None and {"start", "end"} <= takes:
        start, end = (pd.Timestamp(str(d)) for d in period)
        halo = pd.Timedelta(days=int(halo_days))
        out["start"] = str((start - halo).date())
        out["end"] = str((end + halo).date())
    if variables is not None:
        for key in ("variables", "channels"):
            if key in takes:
                out[key] = list(variables)
                break
    return out


def open_source(catalog, name: str, *, window=None, period=None,
                variables=None, halo_days: int = 0, **overrides) -> xr.Dataset:
    """Open entry ``name`` of ``catalog`` as a canonical, lazy, validated dataset.

    With ``window``, ``period`` and ``variables`` the request is pushed down
    to the adapter: it picks the files of the period and cuts the store to
    the variables, days and cells the window needs *before* it builds dask
    arrays, so the cost of an open follows the request, not the store.  What
    an adapter cannot take is done here after (``casm_cloud.regrid.on_window``:
    cut out, or regridded from another grid; a time and variable selection).

    Parameters
    ----------
    catalog : intake Catalog or str
        An open catalog or the path/URL of one.
    name : str
        Entry name.
    window : casm_cloud.grid.GridWindow, optional
        The grid window to return.
    period : (date, date), optional
        First and last day (inclusive).
    variables : sequence of str, optional
        Canonical variables to keep.
    halo_days : int
        Days added on both sides of ``period`` (what a stage needs around it).
    **overrides
        Replace stored keyword arguments (e.g. ``urlpath=``, an adapter
        option); ``storage_options`` are merged into the stored ones (this is
        how credentials are passed at run time).

    Returns
    -------
    xarray.Dataset

    Raises
    ------
    CatalogError
        If the catalog has no entry ``name`` (the message lists the entries).
    SourceError
        A user error of the entry (a :class:`CatalogError`): missing files, a
        file with the wrong variables, units or grid, a period with no data,
        a window outside the source's grid; the message names the entry, its
        location and what was expected.  Raised before anything is written.
    """

    cat = _as_catalog(catalog)
    if name not in cat.entries:
        raise CatalogError(f"catalog has no source {name!r}; it has {sorted(cat.entries)}")
    stored = cat.entries[name].kwargs
    so = dict(stored.get("storage_options") or {})
    if str(stored.get("urlpath", "")).startswith(_DIR_TOKEN) and not so:
        # A relative entry lives beside the catalog: reach it the same way.
        so = dict(cat.user_parameters.get("STORAGE_OPTIONS") or {})
    so.update(overrides.pop("storage_options", None) or {})
    adapter = stored.get("adapter")
    request = _request(adapter, window, period, variables, halo_days) if adapter in ADAPTERS \
        else {}
    if "urlpath" not in overrides and _DIR_TOKEN in str(stored.get("urlpath", "")) and \
            "CATALOG_DIR" in cat.user_parameters:
        # a relative entry written by hand with other placeholders: intake leaves it as is
        overrides["urlpath"] = str(stored["urlpath"]).replace("{{", "{").replace("}}", "}") \
            .replace(_DIR_TOKEN, str(cat.user_parameters["CATALOG_DIR"]))
    where = f"catalog entry {name!r} ({adapter} at {overrides.get('urlpath', stored.get('urlpath'))})"
    try:
        ds = cat[name].read(storage_options=so or None, **{**request, **overrides})
        if variables is not None:
            missing = [v for v in variables if v not in ds.data_vars]
            if missing:
                raise SourceError(f"has no variable(s) {missing}; it has {sorted(ds.data_vars)}")
            ds = ds[list(variables)]
        if period is not None and "time" in ds.dims:
            import pandas as pd

            halo = pd.Timedelta(days=int(halo_days))
            lo, hi = (pd.Timestamp(str(d)) for d in period)
            held = ds["time"].values
            ds = time_slice(ds, lo - halo, hi + halo)
            if ds.sizes["time"] == 0:
                span = (f"{str(held[0])[:10]}..{str(held[-1])[:10]}" if held.size
                        else "no time steps")
                raise SourceError(f"no data in the period {period[0]}..{period[1]}; it holds "
                                  f"{span}")
        if window is not None:
            from casm_cloud.regrid import on_window

            ds = on_window(ds, window, name=where)
    except CatalogError as err:
        if str(err).startswith("catalog entry"):
            raise
        raise SourceError(f"{where}: {err}") from err
    except (UserError, FileNotFoundError) as err:
        msg = str(err.args[0]) if isinstance(err, FileNotFoundError) and err.args else str(err)
        raise SourceError(f"{where}: {msg}") from err
    return ds
