"""The registry server: clusters, blocks, vDAGs and vDAG controllers with MongoDB-style
queries and updates (aiohttp; embedded store by default, MongoDB when configured).

Filters compile once per request into a ``Filter`` (``registry_server.filters``);
updates are ``registry_server.update``. It does not import aios_fast internals.
"""
