"""Private numba kernels: NumPy in, NumPy out, compiled with ``cache=True``.

Nothing here knows about labels, dask or storage; the labelled wrappers in the
package (for example :mod:`casm_cloud.seasonal`) call these on plain arrays.
"""
