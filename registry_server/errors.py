"""The registry server's own small error tree (independent of aios_fast's)."""


class RegistryError(Exception):
    """Base class; ``status`` is the HTTP status an API answer should carry."""

    status = 500


class QueryError(RegistryError, ValueError):
    """An invalid filter, projection, sort or option (HTTP 400)."""

    status = 400


class UpdateError(RegistryError, ValueError):
    """An invalid update document or one that cannot apply to the document (HTTP 400)."""

    status = 400


class SchemaError(RegistryError, ValueError):
    """A document that misses a required field or has one of the wrong type (HTTP 400)."""

    status = 400


class NotFound(RegistryError, KeyError):
    """No document with that id (HTTP 404)."""

    status = 404

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"


class Conflict(RegistryError):
    """A document with that id already exists (HTTP 409)."""

    status = 409


class StoreLocked(RegistryError):
    """Another process has the embedded store open (the server refuses to start)."""


class StoreUnusable(RegistryError):
    """The embedded store's file is not a registry database, is damaged, or holds
    documents whose JSON is broken (the server refuses to start, with one line)."""


class StoreFull(RegistryError):
    """The disk (or the store's size limit) is full: the write was not made (HTTP 507)."""

    status = 507


class StoreFailed(RegistryError):
    """The store could not make a write for another reason (HTTP 503)."""

    status = 503


class Stale(Conflict):
    """The document changed between its read and a conditional write (the caller reads
    again and retries; HTTP 409 if it gives up)."""
