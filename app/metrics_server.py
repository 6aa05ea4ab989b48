"""The Prometheus metrics on a port of their own (``DENOISE_METRICS_PORT``), off the API's port.

prometheus_client's threaded HTTP server serves the app's own registry in a daemon thread; it
answers the metrics on any path and logs no requests. Started and stopped by the app's lifespan.
"""

from __future__ import annotations

import logging
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

logger = logging.getLogger(__name__)


class MetricsServer:
    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        # Binds now: a port in use stops the start-up instead of leaving the metrics unserved.
        self._server: WSGIServer
        self._thread: threading.Thread
        self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        logger.info("metrics on http://%s:%d/metrics, not on the API's port", host, port)

    def stop(self) -> None:
        """Stops serving and frees the port; blocks up to the server's 0.5 s poll interval."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
