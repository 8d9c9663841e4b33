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


class _UserErrorOfATask(_logging.Filter):
    """Drop distributed's "Compute Failed" record of a task that raised a casm_cloud user
    error (a store gone, bad input met in a worker): the client raises that error again,
    and the command line prints it in one line; the worker's multi-line record would only
    repeat it.  A task's bug keeps its record."""

    def filter(self, record: _logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Compute Failed"):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        raised = str(args[3]).split("(", 1)[0].strip() if len(args) > 3 else ""
        return raised not in _user_error_names()


def _user_error_names() -> set[str]:
    from casm_cloud.errors import UserError

    names, todo = set(), [UserError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo += cls.__subclasses__()
    return names


class _StoreGivenUpOn(_logging.Filter):
    """Drop gcsfs' record of a request it gives up on because the store cannot be reached
    (logged at ERROR with the whole traceback, then raised): casm_cloud.storage turns that
    error into one ``StoreUnreachableError`` naming the store.  Other records stay."""

    def filter(self, record: _logging.LogRecord) -> bool:
        err = record.exc_info[1] if record.exc_info else None
        if err is None or "retries" not in str(record.msg) and "retriable" not in str(record.msg):
            return True
        from casm_cloud.storage import _is_unreachable

        return not _is_unreachable(err)


class _ClusterClosing(_logging.Filter):
    """Drop what workers log when their cluster is closed while tasks still run, as after a
    stage failed or the command was interrupted (its tasks may be waiting on a store that
    is gone): running tasks cancelled (``Async instruction ... ended with
    CancelledError``), a worker process that did not stop in time killed (``Worker process
    still alive after ...``), a heartbeat that found the scheduler already gone.  That is
    what closing the cluster means then; the command's own line says why it stopped."""

    def filter(self, record: _logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not (msg.startswith("Async instruction for") and msg.endswith("CancelledError")
                    or msg.startswith("Worker process still alive after")
                    or msg.startswith("Failed to communicate with scheduler during heartbeat")
                    and record.exc_info is not None
                    and type(record.exc_info[1]).__name__ == "CommClosedError")


# These run wherever casm_cloud is imported, dask workers included (a task's code imports it).
_logging.getLogger("distributed.worker").addFilter(_UserErrorOfATask())
_logging.getLogger("distributed.worker").addFilter(_ClusterClosing())
_logging.getLogger("distributed.worker.state_machine").addFilter(_ClusterClosing())
_logging.getLogger("distributed.nanny").addFilter(_ClusterClosing())
_logging.getLogger("gcsfs").addFilter(_StoreGivenUpOn())
