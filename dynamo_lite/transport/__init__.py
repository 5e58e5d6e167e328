"""Sockets: the asyncio transports that move the :mod:`dynamo_lite.protocol` bytes."""
