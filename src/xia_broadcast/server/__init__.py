"""The xia-broadcast server: configuration, authentication, the handshake, publishing, operations.

Transports live beside each other: :mod:`.native` (the standalone server, one asyncio protocol per socket,
pre-framed writes) and :mod:`.asgi` (a Starlette application to mount into an existing app). Both use the
same :class:`~.service.Service`.
"""
