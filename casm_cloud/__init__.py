"""casm_cloud: long-term machine-learning soil-moisture records on the Pangeo stack."""

# pyproj must load its PROJ database before netCDF4's bundled libraries are
# loaded, or the first CRS created afterwards fails ("no database context
# specified") and the process may abort.  Importing it first is enough.
import pyproj  # noqa: F401

__version__ = "0.1.0"
