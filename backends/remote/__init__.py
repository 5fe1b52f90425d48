"""Calls to a backend in another interpreter: ``wire`` (the message format, no pickle), ``client``
(``RemoteBackend``, the Backend methods as round trips) and ``serve`` (the loop on the other side)."""
