"""casm_cloud: long-term machine-learning soil-moisture records on the Pangeo stack."""

# pyproj must load its PROJ database before netCDF4's bundled libraries are
# loaded, or the first CRS created afterwards fails ("no database context
# specified") and the process may abort.  Importing it first is enough.
import pyproj  # noqa: F401

__version__ = "0.1.0"

# google-auth logs its token requests at DEBUG with the signed JWT assertion (exchangeable
# for an access token) in the record's extras; a JSON log handler would print it.  Keep
# that logger at INFO so no casm_cloud run at -vv (or a test's DEBUG capture) carries it.
import logging as _logging

_logging.getLogger("google").setLevel(_logging.INFO)
