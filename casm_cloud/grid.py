"""Named global grids and windows of them: EASE-Grid 2.0 (EPSG:6933) and ERA5's 0.25° lat/lon.

The global EASE2 grids are defined by NSIDC (Brodzik et al. 2012, 2014,
*EASE-Grid 2.0: Incremental but Significant Improvements for Earth-Gridded
Data Sets*, ISPRS IJGI 1(1), 32-45; NSIDC ``EASE2_M36km.gpd`` etc.): a
Lambert cylindrical equal-area projection on WGS84 with standard parallels at
±30°, and a grid of square cells centred on the projection origin.  The
nested family is derived from the 36 km grid (M09 = M36 / 4, M03 = M36 / 12,
M01 = M36 / 36); the 25 km grid (used by SMOS CATDS and the CETB) has its own
cell size.  Cell centres are therefore a closed form; latitude and longitude
come from the inverse projection (pyproj), constant along rows and columns.

``LatLonGrid("ERA5_0p25")`` is ERA5's regular 0.25° latitude/longitude grid
(EPSG:4326; cell centres on multiples of 0.25°, as ECMWF distributes it),
cut to the quasi-global band 90° N – 60° S that SoMo.ml covers (601 × 1440
cells), longitudes -180 … 179.75.  It has the same API and the same
dimension names as the EASE2 grids, so stages do not care which grid they
run on: dimensions ``y`` (latitude of the row, decreasing) and ``x``
(longitude of the column, increasing), both in degrees, with the 1-D
coordinates ``lat(y)``, ``lon(x)`` that every grid carries.

Public API::

    grid = EASE2Grid("M25")                     # or LatLonGrid("ERA5_0p25")
    win = grid.window(lat=(18.8, 20.4), lon=(-156.2, -154.7))
    rows, cols = grid.to_rowcol(lat, lon)
    same = GridWindow.from_attrs(ds.attrs, (ds.sizes["y"], ds.sizes["x"]))
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

from casm_cloud.errors import UserError

__all__ = ["EASE2Grid", "LatLonGrid", "GridWindow", "GridError", "REGIONS", "EPSG",
           "LATLON_GRIDS", "grid_by_name"]

EPSG = 6933

# (columns, rows, cell size in metres), from NSIDC's grid parameter definitions.
_M36 = 36032.220840584
_GRIDS: dict[str, tuple[int, int, float]] = {
    "M36": (964, 406, _M36),
    "M25": (1388, 584, 25025.2600081),
    "M09": (3856, 1624, _M36 / 4),  # 9008.055210146
    "M03": (11568, 4872, _M36 / 12),
    "M01": (34704, 14616, _M36 / 36),
}

#: Regular lat/lon grids: name -> (north-most row centre, west-most column centre,
#: step in degrees, rows, columns).
LATLON_GRIDS: dict[str, tuple[float, float, float, int, int]] = {
    "ERA5_0p25": (90.0, -180.0, 0.25, 601, 1440),   # 90 N .. 60 S, -180 .. 179.75
}

# Named regions (lat south, north; lon west, east) used by demos and catalogs.
REGIONS: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    # A small mid-latitude window with a climate gradient (humid east, dry
    # west): central US Great Plains.  Sized for the 2-core demo.
    "demo": ((35.0, 40.0), (-101.0, -95.0)),
    "tiny": ((37.0, 38.5), (-99.0, -97.5)),
    "hawaii": ((18.8, 20.4), (-156.2, -154.7)),
    "great_plains": ((30.0, 49.0), (-105.0, -90.0)),
    "europe": ((35.0, 60.0), (-10.0, 30.0)),
    "conus": ((24.0, 50.0), (-125.0, -66.0)),
    "global": ((-85.044, 85.044), (-180.0, 180.0)),
    # SoMo.ml's domain: 90 N - 60 S (on EASE2 it stops at the grid's 85.04 N).
    "quasi_global": ((-60.0, 90.0), (-180.0, 180.0)),
}


class GridError(UserError, ValueError):
    """A grid name, window or coordinate that the grid cannot take."""


def _transformer(inverse: bool):
    from pyproj import Transformer

    if inverse:
        return Transformer.from_crs(f"EPSG:{EPSG}", "EPSG:4326", always_xy=True)
    return Transformer.from_crs("EPSG:4326", f"EPSG:{EPSG}", always_xy=True)


def _full_shape(name: str) -> tuple[int, int]:
    if name in LATLON_GRIDS:
        return LATLON_GRIDS[name][3], LATLON_GRIDS[name][4]
    ncols, nrows, _ = _GRIDS[name]
    return nrows, ncols


def _cf_crs(epsg: int) -> dict:
    from pyproj import CRS

    crs = CRS.from_epsg(epsg)
    attrs = crs.to_cf()
    attrs["spatial_ref"] = crs.to_wkt()
    attrs["epsg_code"] = f"EPSG:{epsg}"
    return attrs


class _GridBase:
    def __init__(self, name: str, row_slice: slice, col_slice: slice):
        self.name = name
        self.row_slice = row_slice
        self.col_slice = col_slice

    def _key(self) -> tuple:
        r, c = self.row_slice, self.col_slice
        return (self.name, r.start, r.stop, c.start, c.stop)

    def __eq__(self, other) -> bool:
        return isinstance(other, _GridBase) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    @property
    def kind(self) -> str:
        """``"ease2"`` (EPSG:6933 metres) or ``"latlon"`` (regular degrees, EPSG:4326)."""
        return "latlon" if self.name in LATLON_GRIDS else "ease2"

    @property
    def epsg(self) -> int:
        return 4326 if self.kind == "latlon" else EPSG

    # ---- geometry ---------------------------------------------------------
    @property
    def _parent_spec(self) -> tuple[int, int, float]:
        if self.kind == "latlon":
            _, _, step, nrows, ncols = LATLON_GRIDS[self.name]
            return ncols, nrows, step
        return _GRIDS[self.name]

    @property
    def cell_size(self) -> float:
        """Cell size in the units of ``x``/``y``: metres (EASE2) or degrees (lat/lon)."""
        return self._parent_spec[2]

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols)."""
        return (
            self.row_slice.stop - self.row_slice.start,
            self.col_slice.stop - self.col_slice.start,
        )

    def _rows(self) -> np.ndarray:
        return np.arange(self.row_slice.start, self.row_slice.stop, dtype=np.float64)

    def _cols(self) -> np.ndarray:
        return np.arange(self.col_slice.start, self.col_slice.stop, dtype=np.float64)

    @cached_property
    def x(self) -> np.ndarray:
        """Cell-centre x, increasing west to east: metres (EASE2) or degrees east (lat/lon)."""
        if self.kind == "latlon":
            _, west, step, _, _ = LATLON_GRIDS[self.name]
            return np.round(west + step * self._cols(), 10)
        ncols, _, cs = self._parent_spec
        return (self._cols() + 0.5 - ncols / 2.0) * cs

    @cached_property
    def y(self) -> np.ndarray:
        """Cell-centre y, decreasing north to south: metres (EASE2) or degrees north (lat/lon)."""
        if self.kind == "latlon":
            north, _, step, _, _ = LATLON_GRIDS[self.name]
            return np.round(north - step * self._rows(), 10)
        _, nrows, cs = self._parent_spec
        return (nrows / 2.0 - self._rows() - 0.5) * cs

    @cached_property
    def lat(self) -> np.ndarray:
        """Latitude (degrees north) of each row's cell centres."""
        if self.kind == "latlon":
            return self.y.copy()
        _, lat = _transformer(inverse=True).transform(np.zeros_like(self.y), self.y)
        return np.asarray(lat, dtype=np.float64)

    @cached_property
    def lon(self) -> np.ndarray:
        """Longitude (degrees east, -180..180) of each column's cell centres."""
        if self.kind == "latlon":
            return self.x.copy()
        lon, _ = _transformer(inverse=True).transform(self.x, np.zeros_like(self.x))
        return np.asarray(lon, dtype=np.float64)

    # ---- indexing ---------------------------------------------------------
    def _global_rowcol(self, lat: np.ndarray, lon: np.ndarray):
        """(row, col, finite) of the parent grid's nearest cells, before window checks."""
        if self.kind == "latlon":
            north, west, step, _, ncols = LATLON_GRIDS[self.name]
            row = np.floor((north - lat) / step + 0.5).astype(np.int64)
            col = np.mod(np.floor((lon - west) / step + 0.5).astype(np.int64), ncols)
            return row, col, np.ones(row.shape, dtype=bool)
        x, y = _transformer(inverse=False).transform(lon, lat)
        ncols, nrows, cs = self._parent_spec
        col = np.floor(np.asarray(x) / cs + ncols / 2.0).astype(np.int64)
        row = np.floor(nrows / 2.0 - np.asarray(y) / cs).astype(np.int64)
        return row, col, np.isfinite(x)

    def to_rowcol(self, lat, lon) -> tuple[np.ndarray, np.ndarray]:
        """Nearest cell (row, col) of points, relative to this grid or window.

        Parameters
        ----------
        lat, lon : array_like
            Points in degrees (WGS84).

        Returns
        -------
        rows, cols : numpy.ndarray of int64
            Same shape as the broadcast inputs.

        Raises
        ------
        GridError
            If any point is not finite or falls outside this grid (or window).
        """
        lat_a, lon_a = np.broadcast_arrays(
            np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
        )
        bad = ~(np.isfinite(lat_a) & np.isfinite(lon_a))
        if bad.any():
            i = int(np.flatnonzero(bad.ravel())[0])
            raise GridError(
                f"point {i} (lat={lat_a.ravel()[i]}, lon={lon_a.ravel()[i]}) is not a finite "
                "coordinate"
            )
        row, col, finite = self._global_rowcol(lat_a, lon_a)
        row = row - self.row_slice.start
        col = col - self.col_slice.start
        rows, cols = self.shape
        outside = (row < 0) | (row >= rows) | (col < 0) | (col >= cols) | ~finite
        if outside.any():
            i = int(np.flatnonzero(outside.ravel())[0])
            raise GridError(
                f"{int(outside.sum())} point(s) lie outside {self!r}; first: "
                f"lat={lat_a.ravel()[i]:.4f}, lon={lon_a.ravel()[i]:.4f}"
            )
        return row, col

    # ---- metadata ---------------------------------------------------------
    def crs_attrs(self) -> dict:
        """CF ``grid_mapping`` attributes: EPSG:6933 (EASE2) or EPSG:4326 (lat/lon)."""
        return _cf_crs(self.epsg)

    def coords(self) -> dict:
        """xarray coordinates: ``y``, ``x`` (metres or degrees), ``lat(y)``, ``lon(x)``."""
        if self.kind == "latlon":
            ya = {"units": "degrees_north", "long_name": "latitude of cell centre (grid row)"}
            xa = {"units": "degrees_east", "long_name": "longitude of cell centre (grid column)"}
        else:
            ya = {"standard_name": "projection_y_coordinate", "units": "m",
                  "long_name": "y coordinate of cell centre"}
            xa = {"standard_name": "projection_x_coordinate", "units": "m",
                  "long_name": "x coordinate of cell centre"}
        return {
            "y": ("y", self.y, ya),
            "x": ("x", self.x, xa),
            "lat": ("y", self.lat, {"standard_name": "latitude", "units": "degrees_north"}),
            "lon": ("x", self.lon, {"standard_name": "longitude", "units": "degrees_east"}),
        }

    def identity(self) -> dict:
        """Attributes that identify the grid and window in stored datasets."""
        p = "latlon" if self.kind == "latlon" else "ease2"
        return {
            f"{p}_grid": self.name,
            f"{p}_row_offset": int(self.row_slice.start),
            f"{p}_col_offset": int(self.col_slice.start),
        }

    def window(self, lat: tuple[float, float], lon: tuple[float, float]) -> GridWindow:
        """The window of cells whose centres lie in a lat/lon box.

        Parameters
        ----------
        lat : (south, north)
        lon : (west, east), degrees east in -180..180; west < east.

        Raises
        ------
        GridError
            For an empty or inverted box.
        """
        (south, north), (west, east) = lat, lon
        if not (south < north and west < east):
            raise GridError(
                f"window lat={lat}, lon={lon}: expected (south, north) and (west, east) "
                "with south < north and west < east"
            )
        rows_in = np.flatnonzero((self.lat >= south) & (self.lat <= north))
        cols_in = np.flatnonzero((self.lon >= west) & (self.lon <= east))
        if rows_in.size == 0 or cols_in.size == 0:
            raise GridError(f"window lat={lat}, lon={lon} holds no cell of {self!r}")
        r0 = self.row_slice.start + int(rows_in[0])
        c0 = self.col_slice.start + int(cols_in[0])
        return GridWindow(
            self.name, slice(r0, self.row_slice.start + int(rows_in[-1]) + 1),
            slice(c0, self.col_slice.start + int(cols_in[-1]) + 1),
        )

    def window_by_name(self, name: str) -> GridWindow:
        """A named region (see ``REGIONS``) as a window of this grid."""
        try:
            lat, lon = REGIONS[name]
        except KeyError:
            raise GridError(
                f"unknown region {name!r}; expected one of {sorted(REGIONS)}"
            ) from None
        return self.window(lat=lat, lon=lon)

    def subwindow(self, rows: slice, cols: slice) -> GridWindow:
        """Window from row/column slices relative to this grid or window."""
        r0, r1, _ = rows.indices(self.shape[0])
        c0, c1, _ = cols.indices(self.shape[1])
        if r1 <= r0 or c1 <= c0:
            raise GridError(f"empty sub-window rows={rows}, cols={cols} of {self!r}")
        return GridWindow(
            self.name,
            slice(self.row_slice.start + r0, self.row_slice.start + r1),
            slice(self.col_slice.start + c0, self.col_slice.start + c1),
        )


class EASE2Grid(_GridBase):
    """A whole global EASE-Grid 2.0 grid: ``EASE2Grid("M36" | "M25" | "M09")``."""

    def __init__(self, name: str):
        if name not in _GRIDS:
            raise GridError(f"unknown EASE2 grid {name!r}; expected one of {sorted(_GRIDS)}")
        ncols, nrows, _ = _GRIDS[name]
        super().__init__(name, slice(0, nrows), slice(0, ncols))

    def __repr__(self) -> str:
        return f"EASE2Grid({self.name!r})"


class LatLonGrid(_GridBase):
    """A whole regular lat/lon grid: ``LatLonGrid("ERA5_0p25")`` (see :data:`LATLON_GRIDS`)."""

    def __init__(self, name: str = "ERA5_0p25"):
        if name not in LATLON_GRIDS:
            raise GridError(f"unknown lat/lon grid {name!r}; expected one of "
                            f"{sorted(LATLON_GRIDS)}")
        nrows, ncols = _full_shape(name)
        super().__init__(name, slice(0, nrows), slice(0, ncols))

    def __repr__(self) -> str:
        return f"LatLonGrid({self.name!r})"


def grid_by_name(name: str) -> EASE2Grid | LatLonGrid:
    """The whole grid of a name: an EASE2 grid (``"M25"``) or a lat/lon one (``"ERA5_0p25"``)."""
    if name in LATLON_GRIDS:
        return LatLonGrid(name)
    if name in _GRIDS:
        return EASE2Grid(name)
    raise GridError(f"unknown grid {name!r}; expected one of {sorted(_GRIDS) + sorted(LATLON_GRIDS)}")


class GridWindow(_GridBase):
    """A window (row and column slices) of a named global grid (EASE2 or lat/lon)."""

    def __init__(self, name: str, row_slice: slice, col_slice: slice):
        if name not in _GRIDS and name not in LATLON_GRIDS:
            raise GridError(f"unknown grid {name!r}; expected one of "
                            f"{sorted(_GRIDS) + sorted(LATLON_GRIDS)}")
        nrows, ncols = _full_shape(name)
        if not (0 <= row_slice.start < row_slice.stop <= nrows
                and 0 <= col_slice.start < col_slice.stop <= ncols):
            raise GridError(f"window rows={row_slice}, cols={col_slice} is outside {name}")
        super().__init__(name, slice(row_slice.start, row_slice.stop),
                         slice(col_slice.start, col_slice.stop))

    @property
    def parent(self) -> EASE2Grid | LatLonGrid:
        return grid_by_name(self.name)

    @classmethod
    def from_attrs(cls, attrs: dict, shape: tuple[int, int]) -> GridWindow:
        """Rebuild a window from ``identity()`` attributes and a (rows, cols) shape."""
        prefix = "latlon" if "latlon_grid" in attrs else "ease2"
        try:
            name = attrs[f"{prefix}_grid"]
            r0 = int(attrs[f"{prefix}_row_offset"])
            c0 = int(attrs[f"{prefix}_col_offset"])
        except KeyError as err:
            raise GridError(f"dataset attributes lack {err.args[0]!r}; not a window of a named "
                            "grid") from None
        return cls(name, slice(r0, r0 + shape[0]), slice(c0, c0 + shape[1]))

    def __repr__(self) -> str:
        r, c = self.row_slice, self.col_slice
        return f"GridWindow({self.name!r}, rows={r.start}:{r.stop}, cols={c.start}:{c.stop})"
