"""EASE-Grid 2.0 global grids (EPSG:6933) and windows of them.

The global EASE2 grids are defined by NSIDC (Brodzik et al. 2012, 2014,
*EASE-Grid 2.0: Incremental but Significant Improvements for Earth-Gridded
Data Sets*, ISPRS IJGI 1(1), 32-45; NSIDC ``EASE2_M36km.gpd`` etc.): a
Lambert cylindrical equal-area projection on WGS84 with standard parallels at
±30°, and a grid of square cells centred on the projection origin.  The
nested family is derived from the 36 km grid (M09 = M36 / 4, M03 = M36 / 12,
M01 = M36 / 36); the 25 km grid (used by SMOS CATDS and the CETB) has its own
cell size.  Cell centres are therefore a closed form; latitude and longitude
come from the inverse projection (pyproj), constant along rows and columns.

Public API::

    grid = EASE2Grid("M25")
    win = grid.window(lat=(18.8, 20.4), lon=(-156.2, -154.7))
    rows, cols = grid.to_rowcol(lat, lon)
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

__all__ = ["EASE2Grid", "GridWindow", "GridError", "REGIONS", "EPSG"]

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
}


class GridError(ValueError):
    """A grid name, window or coordinate that the grid cannot take."""


def _transformer(inverse: bool):
    from pyproj import Transformer

    if inverse:
        return Transformer.from_crs(f"EPSG:{EPSG}", "EPSG:4326", always_xy=True)
    return Transformer.from_crs("EPSG:4326", f"EPSG:{EPSG}", always_xy=True)


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

    # ---- geometry ---------------------------------------------------------
    @property
    def _parent_spec(self) -> tuple[int, int, float]:
        return _GRIDS[self.name]

    @property
    def cell_size(self) -> float:
        """Cell size in metres."""
        return self._parent_spec[2]

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols)."""
        return (
            self.row_slice.stop - self.row_slice.start,
            self.col_slice.stop - self.col_slice.start,
        )

    @cached_property
    def x(self) -> np.ndarray:
        """Cell-centre x in metres, increasing west to east."""
        ncols, _, cs = self._parent_spec
        cols = np.arange(self.col_slice.start, self.col_slice.stop, dtype=np.float64)
        return (cols + 0.5 - ncols / 2.0) * cs

    @cached_property
    def y(self) -> np.ndarray:
        """Cell-centre y in metres, decreasing north to south."""
        _, nrows, cs = self._parent_spec
        rows = np.arange(self.row_slice.start, self.row_slice.stop, dtype=np.float64)
        return (nrows / 2.0 - rows - 0.5) * cs

    @cached_property
    def lat(self) -> np.ndarray:
        """Latitude (degrees north) of each row's cell centres."""
        _, lat = _transformer(inverse=True).transform(np.zeros_like(self.y), self.y)
        return np.asarray(lat, dtype=np.float64)

    @cached_property
    def lon(self) -> np.ndarray:
        """Longitude (degrees east, -180..180) of each column's cell centres."""
        lon, _ = _transformer(inverse=True).transform(self.x, np.zeros_like(self.x))
        return np.asarray(lon, dtype=np.float64)

    # ---- indexing ---------------------------------------------------------
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
        x, y = _transformer(inverse=False).transform(lon_a, lat_a)
        ncols, nrows, cs = self._parent_spec
        col = np.floor(np.asarray(x) / cs + ncols / 2.0).astype(np.int64)
        row = np.floor(nrows / 2.0 - np.asarray(y) / cs).astype(np.int64)
        row -= self.row_slice.start
        col -= self.col_slice.start
        rows, cols = self.shape
        outside = (row < 0) | (row >= rows) | (col < 0) | (col >= cols) | ~np.isfinite(x)
        if outside.any():
            i = int(np.flatnonzero(outside.ravel())[0])
            raise GridError(
                f"{int(outside.sum())} point(s) lie outside {self!r}; first: "
                f"lat={lat_a.ravel()[i]:.4f}, lon={lon_a.ravel()[i]:.4f}"
            )
        return row, col

    # ---- metadata ---------------------------------------------------------
    @staticmethod
    def crs_attrs() -> dict:
        """CF ``grid_mapping`` attributes of EPSG:6933 (EASE-Grid 2.0 global)."""
        from pyproj import CRS

        crs = CRS.from_epsg(EPSG)
        attrs = crs.to_cf()
        attrs["spatial_ref"] = crs.to_wkt()
        attrs["epsg_code"] = f"EPSG:{EPSG}"
        return attrs

    def coords(self) -> dict:
        """xarray coordinates: ``y``, ``x`` (metres), ``lat(y)``, ``lon(x)``."""
        return {
            "y": ("y", self.y, {"standard_name": "projection_y_coordinate", "units": "m",
                                "long_name": "y coordinate of cell centre"}),
            "x": ("x", self.x, {"standard_name": "projection_x_coordinate", "units": "m",
                                "long_name": "x coordinate of cell centre"}),
            "lat": ("y", self.lat, {"standard_name": "latitude", "units": "degrees_north"}),
            "lon": ("x", self.lon, {"standard_name": "longitude", "units": "degrees_east"}),
        }

    def identity(self) -> dict:
        """Attributes that identify the grid and window in stored datasets."""
        return {
            "ease2_grid": self.name,
            "ease2_row_offset": int(self.row_slice.start),
            "ease2_col_offset": int(self.col_slice.start),
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


class GridWindow(_GridBase):
    """A window (row and column slices) of a named global EASE2 grid."""

    def __init__(self, name: str, row_slice: slice, col_slice: slice):
        if name not in _GRIDS:
            raise GridError(f"unknown EASE2 grid {name!r}; expected one of {sorted(_GRIDS)}")
        ncols, nrows, _ = _GRIDS[name]
        if not (0 <= row_slice.start < row_slice.stop <= nrows
                and 0 <= col_slice.start < col_slice.stop <= ncols):
            raise GridError(f"window rows={row_slice}, cols={col_slice} is outside {name}")
        super().__init__(name, slice(row_slice.start, row_slice.stop),
                         slice(col_slice.start, col_slice.stop))

    @property
    def parent(self) -> EASE2Grid:
        return EASE2Grid(self.name)

    @classmethod
    def from_attrs(cls, attrs: dict, shape: tuple[int, int]) -> GridWindow:
        """Rebuild a window from ``identity()`` attributes and a (rows, cols) shape."""
        try:
            name = attrs["ease2_grid"]
            r0 = int(attrs["ease2_row_offset"])
            c0 = int(attrs["ease2_col_offset"])
        except KeyError as err:
            raise GridError(f"dataset attributes lack {err.args[0]!r}; not an EASE2 window") from None
        return cls(name, slice(r0, r0 + shape[0]), slice(c0, c0 + shape[1]))

    def __repr__(self) -> str:
        r, c = self.row_slice, self.col_slice
        return f"GridWindow({self.name!r}, rows={r.start}:{r.stop}, cols={c.start}:{c.stop})"
