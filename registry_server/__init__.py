"""The registry server: clusters, blocks, vDAGs and vDAG controllers with MongoDB-style
queries and updates (aiohttp; embedded store by default, MongoDB when configured).

Built so far: the query and update engine (``registry_server.query``,
``registry_server.update``). It does not import aios_fast internals.
"""
