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
