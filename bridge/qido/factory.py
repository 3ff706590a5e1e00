"""Which ``QidoSource`` the settings ask for: an HTTP PACS, a folder, or the embedded sample folder."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from bridge.qido.folder import FolderQidoSource, pydicom_samples
from bridge.qido.http import HttpQidoSource
from bridge.qido.resilience import CircuitBreaker
from bridge.qido.source import QidoSource
from bridge.settings import Settings


async def open_source(settings: Settings) -> QidoSource:
    """Open the configured source; the caller must ``close()`` it."""
    url = settings.qido_url
    if url is None or url.startswith("file://"):
        folder = Path(unquote(urlsplit(url).path)) if url else pydicom_samples()
        source = FolderQidoSource(folder, quiet=url is None)
        await source.open()
        return source
    return HttpQidoSource(
        url,
        timeout=settings.qido_timeout,
        concurrency=settings.qido_concurrency,
        page_size=settings.qido_page_size,
        max_bytes=settings.qido_max_bytes,
        retries=settings.qido_retries,
        breaker=CircuitBreaker(settings.breaker_threshold, settings.breaker_cooldown),
        username=settings.pacs_username,
        password=settings.pacs_password.get_secret_value() if settings.pacs_password else None,
        token=settings.pacs_token.get_secret_value() if settings.pacs_token else None,
    )
