"""The HTTP layer: aiohttp.web handlers, the error middleware and the application factory."""
