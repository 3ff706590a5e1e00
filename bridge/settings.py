"""The service's settings, read once at start from ``BRIDGE_*`` environment variables.

An optional file ``config/bridge.env`` (same variables, one per line) is read too; the environment wins.
Nothing else in the package reads the environment: everything receives a ``Settings`` or a value derived
from it. Secrets are ``SecretStr`` so that they never show in ``repr`` or logs. A ``BRIDGE_*`` name that is no
setting stops the start too: a misspelt variable would otherwise be ignored and its setting keep its default.
"""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from bridge import bases
from bridge.datatypes import URI
from bridge.errors import ConfigError

ENV_PREFIX = "BRIDGE_"
ENV_FILE = "config/bridge.env"


def _check_http_url(value: str) -> str:
    """A DICOMweb base URL: http(s), a host, a path; no query or fragment (they would be dropped or leaked)."""
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - raises on a port out of range
    except ValueError as exc:
        raise ValueError(f"has an invalid port: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL, got {_redact(value)!r}")
    if parts.query or parts.fragment:
        raise ValueError("must be a base URL (scheme, host, path) without ?query or #fragment")
    return value.rstrip("/")


def _redact(url: str) -> str:
    """The URL without user name and password, for messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host  # an IPv6 literal keeps its brackets
    try:
        if parts.port:
            netloc += f":{parts.port}"
    except ValueError:
        netloc += ":" + parts.netloc.rsplit(":", 1)[-1]  # keep the bad port for the validator to name
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


_WILDCARDS = ("", "0.0.0.0", "::")
_HOST_NAME = re.compile(r"(?:[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?\.)*[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?\.?")


def is_loopback(host: str) -> bool:
    """Whether a listen address reaches this machine alone (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return False


def host_name(name: str) -> str:
    """A host name or address as a Host header carries it: lower case, an IPv6 address in brackets, no port."""
    name = name.strip().lower()
    try:
        address = ipaddress.ip_address(name.removeprefix("[").removesuffix("]"))
    except ValueError:
        if not _HOST_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a host name or address (give names without scheme or port)") from None
        return name.rstrip(".")
    return f"[{address}]" if address.version == 6 else str(address)


def web_origin(value: str) -> str:
    """An origin as a browser sends it in ``Origin``: ``scheme://host[:port]``, lower case, without a default port
    or a trailing slash; or ``*``. ``null`` (sandboxed frames, files) is refused: any page can send it."""
    value = value.strip()
    if value == "*":
        return value
    parts = urlsplit(value)
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"origin {value!r} has an invalid port: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        raise ValueError(f"{value!r} is not an origin: give scheme://host[:port], e.g. https://viewer.example.org")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"origin {value!r} has a path: an origin is scheme://host[:port] alone")
    host = parts.hostname
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != {"http": 80, "https": 443}[parts.scheme]:
        netloc += f":{port}"
    return f"{parts.scheme}://{netloc}"


class Settings(BaseSettings):
    """Typed, immutable configuration. See the README's configuration table for each variable."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=ENV_FILE, frozen=True, extra="ignore", validate_default=True
    )

    qido_url: str | None = None
    wado_url: str | None = None
    #: The bridge's own public base URL (``https://host/fhir``) for links; unset: taken from each request.
    public_url: str | None = None
    #: Serve the PACS's DICOMweb under ``/dicom-web`` with the app's token, and give viewers that address (the
    #: Endpoint's). Off: viewers are sent straight to the PACS (refused with BRIDGE_AUTH=smart).
    dicomweb_gateway: bool = True
    #: Host header names (any port) a request under /fhir may carry: the names links may be built from when
    #: ``public_url`` is unset. None: loopback names and ``host`` (see ``link_hosts``).
    allowed_hosts: Annotated[tuple[str, ...] | None, NoDecode] = None
    #: Web origins (``https://app.example.org``) whose pages may call /fhir from a browser (CORS); ``*`` any
    #: origin (with BRIDGE_AUTH=smart only). Empty: no CORS headers, and a preflight gets 405.
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    #: A second listener for /healthz, /readyz (with the reason) and /metrics, which then leave the public one.
    admin_port: Annotated[int, Field(ge=0, le=65535)] | None = None
    admin_host: str = "127.0.0.1"
    #: /readyz on the public listener says why the PACS is unavailable (its host and port, the error).
    health_details: bool = False
    qido_timeout: Annotated[float, Field(gt=0, le=3600)] = 30.0
    qido_concurrency: Annotated[int, Field(ge=1, le=256)] = 8
    #: Retries of one PACS request after a connection failure or a 502/503 (jittered backoff, within the deadline).
    qido_retries: Annotated[int, Field(ge=0, le=10)] = 2
    #: Consecutive PACS failures that open the circuit breaker, and the seconds it stays open.
    breaker_threshold: Annotated[int, Field(ge=1, le=1000)] = 5
    breaker_cooldown: Annotated[float, Field(gt=0, le=3600)] = 30.0
    #: Seconds in-flight requests get to finish after SIGTERM, before the PACS session and cache are closed.
    shutdown_timeout: Annotated[float, Field(ge=0, le=600)] = 15.0
    #: Seconds a client gets to send a request's headers (from its connection's start or its previous response,
    #: so an idle keep-alive connection is closed after as long) and, separately, its body.
    client_read_timeout: Annotated[float, Field(gt=0, le=3600)] = 15.0
    #: Seconds a whole client request may take, every PACS request and retry included.
    request_deadline: Annotated[float, Field(gt=0, le=3600)] = 60.0
    #: Rows asked per QIDO request (``limit``); 0 sends no limit and pages only when the PACS says there is more.
    qido_page_size: Annotated[int, Field(ge=0, le=100_000)] = 0
    #: The largest PACS answer accepted, in bytes; a larger one is a 502, not exhausted memory.
    qido_max_bytes: Annotated[int, Field(ge=1024)] = 256 * 1024 * 1024
    pacs_username: str | None = None
    pacs_password: SecretStr | None = None
    pacs_token: SecretStr | None = None
    #: Identifier system (a URI) for PatientID when the PACS gives no IssuerOfPatientID.
    patient_id_system: str | None = None
    #: IssuerOfPatientID value -> identifier system URI, as a JSON object.
    issuer_systems: dict[str, str] = Field(default_factory=dict)
    #: How a Patient id relates to the DICOM PatientID in ``patient=Patient/<id>``: a template with one
    #: ``{PatientID}``, e.g. ``mrn-{PatientID}`` when the EHR's Patient ids wrap the PACS's PatientIDs.
    patient_reference: str = "{PatientID}"
    #: IANA zone assumed for study times without TimezoneOffsetFromUTC; unset gives date-only ``started``.
    timezone: str | None = None
    log_level: str = "INFO"
    #: The bridge's own log lines on standard error: ``text``, or ``json`` (one object per line).
    log_format: Literal["text", "json"] = "text"
    #: One JSON line per request on standard output.
    access_log: bool = True
    #: Where synthesized studies are cached: unset keeps them in this process; redis://… shares them.
    cache_url: SecretStr | None = None
    cache_ttl: Annotated[float, Field(ge=0)] = 300.0
    cache_stale_while_revalidate: Annotated[float, Field(ge=0)] = 600.0
    cache_stale_if_error: Annotated[float, Field(ge=0)] = 86_400.0
    cache_max_bytes: Annotated[int, Field(ge=0)] = 256 * 1024 * 1024
    #: A forced read (``Cache-Control: no-cache``) reads the PACS only if the study's entry is at least this old.
    cache_min_reread: Annotated[float, Field(ge=0)] = 5.0
    #: Seconds a 404 or 409 is remembered (in the cache, shared through Redis); 0: not at all.
    cache_negative_ttl: Annotated[float, Field(ge=0)] = 30.0
    #: Seconds between scheduled refreshes of the cache; 0 turns the refresher off.
    refresh_interval: Annotated[float, Field(ge=0)] = 0.0
    #: The scheduled refresh also reads studies of the last N days into the cache; 0: none.
    refresh_prewarm_days: Annotated[int, Field(ge=0, le=3650)] = 0
    #: What one search may cost the PACS to find its candidates, across every level: requests, and rows read.
    search_max_queries: Annotated[int, Field(ge=1, le=1000)] = 30
    search_max_rows: Annotated[int, Field(ge=1, le=1_000_000)] = 5000
    #: ``none``: no authorization (allowed unset only while listening on loopback); ``smart``: SMART on FHIR
    #: bearer tokens on every FHIR request.
    auth: Literal["none", "smart"] | None = None
    #: The authorization server: its JWKS (and endpoints, for discovery) found through its
    #: /.well-known/openid-configuration or smart-configuration.
    auth_issuer: str | None = None
    #: The JWKS URL directly, instead of through the issuer's metadata.
    auth_jwks_url: str | None = None
    #: The ``aud`` a token must name; unset: the bridge's public FHIR base URL (BRIDGE_PUBLIC_URL).
    auth_audience: str | None = None
    #: RFC 7662 introspection, for opaque tokens, with the bridge's own client credentials.
    auth_introspection_url: str | None = None
    auth_client_id: str | None = None
    auth_client_secret: SecretStr | None = None
    #: The JWT claim holding the patient context (a FHIR Patient id).
    auth_patient_claim: str = "patient"
    #: A JSON file: client id -> the FHIR Patient ids a ``system/`` token of that client may see (or ``"*"``).
    auth_client_policy: Path | None = None
    #: The clinical FHIR server whose Patient ids tokens carry; set, a Patient's identifiers decide its PatientID.
    clinical_fhir_url: str | None = None
    #: Where audit events go: ``stdout``, ``off``, or a file path (one JSON AuditEvent per line). Unset:
    #: ``stdout`` once BRIDGE_AUTH is chosen, ``off`` in the unconfigured loopback default (see ``audit_sink``).
    audit_log: str | None = None
    #: Requests per second one client may make (by token client id, else by address); 0: no limit.
    rate_limit: Annotated[float, Field(ge=0)] = 0.0
    #: Requests a client may make at once above the rate; 0: one second's worth.
    rate_limit_burst: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="before")
    @classmethod
    def _credentials_out_of_url(cls, data: Any) -> Any:
        """Move ``user:password@`` out of BRIDGE_QIDO_URL into the credential fields, where they stay secret."""
        if not isinstance(data, dict) or not isinstance(data.get("qido_url"), str):
            return data
        parts = urlsplit(data["qido_url"])
        if parts.scheme not in ("http", "https") or (parts.username is None and parts.password is None):
            return data
        data = dict(data)
        data["qido_url"] = _redact(data["qido_url"])
        if not (data.get("pacs_username") or data.get("pacs_token")):
            data["pacs_username"] = unquote(parts.username or "")
            data["pacs_password"] = unquote(parts.password or "")
        return data

    @field_validator("qido_url")
    @classmethod
    def _qido_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if value.startswith("file://"):
            parts = urlsplit(value)
            if parts.netloc not in ("", "localhost") or not parts.path:
                raise ValueError("a file URL needs an absolute folder path: file:///srv/dicom")
            if not Path(unquote(parts.path)).is_dir():
                raise ValueError(f"{unquote(parts.path)} is not a folder")
            return value
        return _check_http_url(value)

    @field_validator("wado_url")
    @classmethod
    def _wado_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        checked = _check_http_url(value)
        if urlsplit(checked).username or urlsplit(checked).password:
            # The address is given to every client: it must never carry credentials.
            raise ValueError("must not contain a user name or password")
        return checked

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        return _check_http_url(value) if value else None

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _allowed_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [name for name in (part.strip() for part in value.split(",")) if name]
            if not value:
                return None
        if isinstance(value, list | tuple):
            return tuple(host_name(str(name)) for name in value)
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _cors_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple):
            origins = tuple(web_origin(str(origin)) for origin in value)
            if "*" in origins and len(origins) > 1:
                raise ValueError("give either * or a list of origins, not both")
            return origins
        return value

    @field_validator("patient_id_system")
    @classmethod
    def _system(cls, value: str | None) -> str | None:
        if value and not URI.match(value):
            raise ValueError(f"must be an absolute URI such as urn:oid:1.2.3 or https://…, got {value!r}")
        return value or None

    @field_validator("issuer_systems", mode="before")
    @classmethod
    def _issuers(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(f'must be a JSON object such as {{"HOSP": "urn:oid:1.2.3"}}: {exc}') from exc
        if isinstance(value, dict):
            for issuer, system in value.items():
                if not isinstance(system, str) or not URI.match(system):
                    raise ValueError(f"the system for issuer {issuer!r} must be an absolute URI")
        return value

    @field_validator("auth_issuer", "auth_jwks_url", "auth_introspection_url", "clinical_fhir_url")
    @classmethod
    def _auth_urls(cls, value: str | None) -> str | None:
        return _check_http_url(value) if value else None

    @field_validator("cache_url")
    @classmethod
    def _cache_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        if urlsplit(value.get_secret_value()).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("patient_reference")
    @classmethod
    def _patient_reference(cls, value: str) -> str:
        if value.count("{PatientID}") != 1 or value.replace("{PatientID}", "").count("{"):
            raise ValueError("must contain {PatientID} exactly once, e.g. {PatientID} or mrn-{PatientID}")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str | None) -> str | None:
        if not value:
            return None
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r} (e.g. Europe/Berlin)") from exc
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return level

    @model_validator(mode="after")
    def _credentials(self) -> Settings:
        if self.pacs_token and (self.pacs_username or self.pacs_password):
            raise ValueError("give either BRIDGE_PACS_TOKEN or BRIDGE_PACS_USERNAME/PASSWORD, not both")
        if bool(self.pacs_username) != (self.pacs_password is not None):
            raise ValueError("BRIDGE_PACS_USERNAME and BRIDGE_PACS_PASSWORD go together")
        return self

    @model_validator(mode="after")
    def _authorization(self) -> Settings:
        if self.auth is None and not is_loopback(self.host):
            raise ValueError(
                f"BRIDGE_AUTH must be set when the bridge listens on {self.host}, which is not a loopback address: "
                "BRIDGE_AUTH=smart (with BRIDGE_AUTH_ISSUER or BRIDGE_AUTH_JWKS_URL) to require SMART on FHIR "
                "tokens, or BRIDGE_AUTH=none to serve every patient's imaging to anyone who can reach it"
            )
        if self.auth == "smart":
            if not (self.auth_issuer or self.auth_jwks_url or self.auth_introspection_url):
                raise ValueError(
                    "BRIDGE_AUTH=smart needs BRIDGE_AUTH_ISSUER, BRIDGE_AUTH_JWKS_URL or BRIDGE_AUTH_INTROSPECTION_URL"
                )
            if not (self.auth_audience or self.public_url):
                raise ValueError(
                    "BRIDGE_AUTH=smart needs BRIDGE_AUTH_AUDIENCE or BRIDGE_PUBLIC_URL: the audience tokens must name"
                )
        if self.clinical_fhir_url and not (self.patient_id_system or self.issuer_systems):
            raise ValueError(
                "BRIDGE_CLINICAL_FHIR_URL needs BRIDGE_PATIENT_ID_SYSTEM or BRIDGE_ISSUER_SYSTEMS: the identifier "
                "systems of the PACS's PatientIDs, which pick a Patient's identifier there"
            )
        if self.cors_origins == ("*",) and self.auth != "smart":
            raise ValueError(
                "BRIDGE_CORS_ORIGINS=* needs BRIDGE_AUTH=smart: without tokens, being able to reach the bridge is the "
                "only credential, and * would let any web page opened on this network read every study; list the "
                "origins of the apps instead"
            )
        if self.auth_introspection_url and not (self.auth_client_id and self.auth_client_secret):
            raise ValueError("BRIDGE_AUTH_INTROSPECTION_URL needs BRIDGE_AUTH_CLIENT_ID and BRIDGE_AUTH_CLIENT_SECRET")
        if self.auth == "smart" and self.public_wado_url is not None:
            # Viewers send the app's token to the Endpoint's address and nowhere else: that must be the gateway.
            if not self.dicomweb_gateway:
                raise ValueError(
                    "BRIDGE_DICOMWEB_GATEWAY=false with BRIDGE_AUTH=smart would send viewers straight to the PACS, "
                    "which cannot take the app's token and must not be opened to browsers: remove "
                    "BRIDGE_DICOMWEB_GATEWAY=false (the gateway is on by default)"
                )
            if not self.public_url:
                raise ValueError(
                    "BRIDGE_AUTH=smart with a PACS over HTTP needs BRIDGE_PUBLIC_URL: the DICOMweb gateway's public "
                    "address (its origin + /dicom-web) is the Endpoint viewers send their token to"
                )
        return self

    @property
    def audit_sink(self) -> str:
        """Where audit events go. Unset, ``stdout`` wherever authorization was chosen (BRIDGE_AUTH set: any
        deployment, since off loopback it must be), and ``off`` only in the unconfigured loopback default, the
        try-it mode of the README's first command."""
        if self.audit_log:
            return self.audit_log
        return "stdout" if self.auth is not None else "off"

    @property
    def auth_mode(self) -> Literal["none", "smart"]:
        return self.auth or "none"

    @property
    def audience(self) -> str | None:
        """The ``aud`` tokens must carry: BRIDGE_AUTH_AUDIENCE, else the public FHIR base URL."""
        return self.auth_audience or self.public_url

    @property
    def audiences(self) -> tuple[str, ...]:
        """Every ``aud`` a token may carry: BRIDGE_AUTH_AUDIENCE alone, else each FHIR base under the public URL
        (``…/fhir``, ``…/fhir/r4``, ``…/fhir/r5``: a SMART app names the base it launched against)."""
        if self.auth_audience:
            return (self.auth_audience,)
        if self.public_url:
            root = self.public_url.rstrip("/")
            return tuple(base.url(root) for base in (bases.NEGOTIATED, bases.R4, bases.R5))
        return ()

    @property
    def public_wado_url(self) -> str | None:
        """The WADO-RS base URL given to viewers: BRIDGE_WADO_URL, else the QIDO URL without credentials."""
        if self.wado_url:
            return self.wado_url
        if self.qido_url and not self.qido_url.startswith("file://"):
            return _redact(self.qido_url)
        return None

    @property
    def gateway_url(self) -> str | None:
        """The DICOMweb gateway's public base: the origin of BRIDGE_PUBLIC_URL + ``/dicom-web``; None when the
        gateway is off or BRIDGE_PUBLIC_URL is unset (the public origin is then known per request only)."""
        if not (self.dicomweb_gateway and self.public_url):
            return None
        parts = urlsplit(self.public_url)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/dicom-web"

    @property
    def endpoint_address(self) -> str | None:
        """The Endpoint's address: the gateway's public URL when the gateway is on and BRIDGE_PUBLIC_URL set;
        else, for a PACS over HTTP, its WADO-RS (gateway off, or auth none only); for a folder, None (the
        gateway's address is then each request's origin + ``/dicom-web``, see ``endpoint_per_request``)."""
        if self.public_wado_url is None:
            return self.gateway_url  # a folder: only the gateway serves its pixels
        return self.gateway_url or self.public_wado_url

    @property
    def endpoint_per_request(self) -> bool:
        """Whether the Endpoint's address is the gateway at each request's own origin: a folder served by the
        gateway (the embedded default) without BRIDGE_PUBLIC_URL."""
        return self.dicomweb_gateway and self.public_wado_url is None and self.gateway_url is None

    @property
    def link_hosts(self) -> frozenset[str] | None:
        """The Host names a request under /fhir may carry, or None for any (links then come from ``public_url``).

        Without ``public_url`` links are built from the request's Host, which the client chooses: only names the
        operator allows may shape them. By default those are the loopback names and ``host`` when it is one
        address, not a wildcard; BRIDGE_ALLOWED_HOSTS replaces them (and applies with ``public_url`` too)."""
        if self.allowed_hosts is not None:
            return frozenset(self.allowed_hosts)
        if self.public_url:
            return None
        names = {"localhost", "127.0.0.1", "[::1]"}
        if self.host not in _WILDCARDS:
            with contextlib.suppress(ValueError):  # not a name a Host header could carry: nothing to add
                names.add(host_name(self.host))
        return frozenset(names)

    @property
    def zone(self) -> ZoneInfo | None:
        return ZoneInfo(self.timezone) if self.timezone else None


class _GivenSettings(Settings):
    """Settings from the values given to the constructor alone: no environment, no file."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


#: Every variable that is a setting.
VARIABLES = frozenset(f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields)

#: Where a person finds the variables, for a name that is none of them.
LISTED_AT = "the settings are listed in the README's Configuration table and in config/bridge.example.env"


def unknown_variables(names: Iterable[str], where: str = "") -> list[str]:
    """A problem for each ``BRIDGE_*`` name that is no setting, naming the nearest settings when some are near.

    Names are compared ignoring case, as the settings are read. ``where`` says where the names were found.
    """
    problems = []
    for name in sorted(names):
        variable = name.upper()
        if not variable.startswith(ENV_PREFIX) or variable in VARIABLES:
            continue
        near = nearest_variables(variable)
        hint = f" (did you mean {' or '.join(near)}?)" if near else ""
        problems.append(f"{name}{where} is not a setting{hint}")
    return problems


def nearest_variables(name: str) -> list[str]:
    """The settings nearest to ``name``: the closest, and up to two about as close (``BRIDGE_TIMEOUT`` has two)."""
    # Compared without the prefix that every name shares, which would make any two names look alike.
    suffix = name.upper().removeprefix(ENV_PREFIX)
    scored = []
    for variable in sorted(VARIABLES):
        score = difflib.SequenceMatcher(None, suffix, variable.removeprefix(ENV_PREFIX)).ratio()
        if score >= 0.6:  # difflib.get_close_matches's cutoff
            scored.append((score, variable))
    best = max((score for score, _ in scored), default=0.0)
    return [variable for score, variable in sorted(scored, key=lambda pair: -pair[0]) if score >= best - 0.1][:3]


def _names_in_env_file() -> list[str]:
    """The names ``config/bridge.env`` gives, found as ``Settings()`` finds the file (upper-cased: it ignores case)."""
    return [name.upper() for name in DotEnvSettingsSource(Settings).env_vars]


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the settings once; ``environ`` replaces the process environment and the file (for tests).

    Raises ``ConfigError`` naming each bad variable, and each ``BRIDGE_*`` name that is no setting.
    """
    if environ is None:
        unknown = unknown_variables(os.environ) + unknown_variables(_names_in_env_file(), f" in {ENV_FILE}")
    else:
        unknown = unknown_variables(environ)
    problems = list(unknown)
    try:
        settings = Settings() if environ is None else _GivenSettings(**_values(environ))
    except ValidationError as exc:
        for error in exc.errors():
            where = error["loc"][0] if error["loc"] else ""
            name = f"{ENV_PREFIX}{str(where).upper()}" if where else "settings"
            problems.append(f"{name}: {error['msg'].removeprefix('Value error, ')}")
    except SettingsError as exc:
        # Raised before validation when a JSON-valued variable does not parse.
        problems.append(f"{ENV_PREFIX}ISSUER_SYSTEMS is not valid JSON ({exc})")
    if problems:
        raise ConfigError("invalid configuration: " + "; ".join(problems) + (f" ({LISTED_AT})" if unknown else ""))
    return settings


def _values(environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings' fields and values an environment gives."""
    return {key.removeprefix(ENV_PREFIX).lower(): value for key, value in environ.items() if key.startswith(ENV_PREFIX)}
