"""The HTTP layer: aiohttp.web handlers, the per-request envelope and the application factory."""
