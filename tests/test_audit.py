"""The audit log: every request to patient data becomes one valid R5 AuditEvent, written off the request path;
a slow or broken sink stops patient data rather than losing its audit; no bearer token is written anywhere."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import stat
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bridge.auth.auditevent import Access, Observer, audit_event, patient_reference, search_query
from bridge.auth.grant import AuditFacts, Claims, Grant
from bridge.auth.tokens import TokenVerifier
from bridge.errors import AuditUnavailable, ConfigError, Forbidden
from bridge.logs import json_line_safe
from bridge.qido.source import QidoSource
from bridge.settings import Settings, load_settings
from bridge.web import app as app_module
from bridge.web.app import FHIR_ROUTES, create_app
from bridge.web.audit import AUDIT_LOG, AuditLog, FileSink, Lines, StreamSink
from bridge.web.keys import AUDITED, GRANT
from bridge.web.server import server_options
from tests.support.fhircheck import validate
from tests.support.standin_tokens import Verifier, claims
from tests.support.waiting import eventually
from tests.test_authz import SECOND_OF_P1
from tests.test_authz import pacs as patients_pacs
from tests.test_cache import STUDY, pacs
from tests.test_cli import clean_env, run
from tests.test_observe import samples

OBSERVER = Observer("replica-1", "https://imaging.example.org/fhir")
SECRET = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXRva2VuLWJvZHk.c2lnbmF0dXJl"  # a bearer token that must never be written


def access(**changes: Any) -> Access:
    """A successful read by a patient app's user, changed as asked."""
    fields: dict[str, Any] = {
        "ended": 1764255600.25, "seconds": 0.0125, "request_id": "req-1", "method": "GET", "interaction": "read",
        "status": 200, "client_id": "viewer-app", "subject": "practitioner-7", "patient": "pat-123",
        "address": "10.0.0.8", "target": f"/fhir/ImagingStudy/{STUDY}", "form": None, "read_id": STUDY,
        "named": (), "returned": (), "refused": (),
    }  # fmt: skip
    fields.update(changes)
    return Access(**fields)


def search(**changes: Any) -> Access:
    return access(**{"interaction": "search-type", "read_id": None, "target": "/fhir/ImagingStudy?patient=pat-123",
                     **changes})  # fmt: skip


def coding(concept: dict[str, Any]) -> tuple[str, str]:
    (first,) = concept["coding"]
    return first["system"], first["code"]


def entities(event: dict[str, Any], role: str) -> list[dict[str, Any]]:
    return [e for e in event["entity"] if "role" in e and coding(e["role"])[1] == role]


def studies(event: dict[str, Any]) -> dict[str, str]:
    """Each study entity's id -> its disposition."""
    return {e["what"]["reference"].removeprefix("ImagingStudy/"): e["detail"][0]["valueString"]
            for e in entities(event, "4")}  # fmt: skip


def request_id(event: dict[str, Any]) -> str:
    (entity,) = [e for e in event["entity"] if "identifier" in e.get("what", {})]
    assert coding(entity["what"]["identifier"]["type"])[1] == "XrequestId"
    value: str = entity["what"]["identifier"]["value"]
    return value


def query(event: dict[str, Any]) -> str:
    (entity,) = entities(event, "24")
    return base64.b64decode(entity["query"]).decode()


# The builder ---------------------------------------------------------------------------------------------------


def test_a_read_is_a_valid_r5_audit_event_of_who_read_which_study() -> None:
    event = audit_event(access(), OBSERVER)
    validate(event)
    assert coding(event["category"][0]) == ("http://terminology.hl7.org/CodeSystem/audit-event-type", "rest")
    assert coding(event["code"]) == ("http://hl7.org/fhir/restful-interaction", "read")
    assert event["action"] == "R"
    assert (event["occurredDateTime"], event["recorded"]) == ("2025-11-27T15:00:00.237Z", "2025-11-27T15:00:00.250Z")
    assert coding({"coding": [event["outcome"]["code"]]}) == (
        "http://terminology.hl7.org/CodeSystem/audit-event-outcome", "0"
    )  # fmt: skip
    client, user, bridge = event["agent"]
    assert (client["who"]["identifier"]["value"], client["requestor"], client["networkString"]) == (
        "viewer-app", False, "10.0.0.8"
    )  # fmt: skip
    assert (user["who"]["identifier"]["value"], user["requestor"]) == ("practitioner-7", True)
    assert (bridge["requestor"], bridge["networkUri"]) == (False, "https://imaging.example.org/fhir")
    assert event["source"]["observer"]["identifier"]["value"] == "replica-1"
    assert event["patient"] == {"reference": "Patient/pat-123"}
    assert [e["what"] for e in entities(event, "1")] == [{"reference": "Patient/pat-123"}]
    assert studies(event) == {STUDY: "returned"}
    assert request_id(event) == "req-1"
    assert not entities(event, "24")  # a read has no query


@pytest.mark.parametrize(
    ("status", "code"),
    [(200, "0"), (304, "0"), (400, "4"), (401, "4"), (403, "4"), (404, "4"), (429, "4"), (500, "8"), (502, "8"),
     (503, "8"), (504, "8")],
)  # fmt: skip
def test_the_outcome_follows_the_http_status(status: int, code: str) -> None:
    event = audit_event(access(status=status), OBSERVER)
    validate(event)
    assert event["outcome"]["code"]["code"] == code
    assert event["outcome"]["detail"] == [{"text": f"HTTP {status}"}]


def test_a_search_records_its_query_the_patients_named_and_each_study_returned_or_refused() -> None:
    event = audit_event(
        search(target="/fhir/ImagingStudy?patient=pat-123&modality=CT", named=["pat-123", "Patient/other"],
               returned=["2.25.1", "2.25.2"], refused=["2.25.3"]),
        OBSERVER,
    )  # fmt: skip
    validate(event)
    assert (coding(event["code"])[1], event["action"]) == ("search-type", "E")
    assert query(event) == "/fhir/ImagingStudy?patient=pat-123&modality=CT"
    assert studies(event) == {"2.25.1": "returned", "2.25.2": "returned", "2.25.3": "refused"}
    # The token's patient context once, then each other patient named.
    assert [e["what"] for e in entities(event, "1")] == [{"reference": "Patient/pat-123"},
                                                         {"reference": "Patient/other"}]  # fmt: skip


def test_a_post_search_records_its_form_as_its_query() -> None:
    event = audit_event(
        search(method="POST", target="/fhir/ImagingStudy/_search?_count=5", form=b"patient=pat-123&modality=MR"),
        OBSERVER,
    )
    validate(event)
    assert query(event) == "/fhir/ImagingStudy/_search?_count=5&patient=pat-123&modality=MR"


@pytest.mark.parametrize(
    ("target", "form", "recorded"),
    [
        (f"/fhir/ImagingStudy?patient=p&access_token={SECRET}", None, "/fhir/ImagingStudy?patient=p"),
        (f"/fhir/ImagingStudy?access_token={SECRET}&patient=p&", None, "/fhir/ImagingStudy?patient=p"),
        # however it is spelt
        (f"/fhir/ImagingStudy?access%5Ftoken={SECRET}&access_token+={SECRET}", None, "/fhir/ImagingStudy"),
        ("/fhir/ImagingStudy/_search", f"access_token={SECRET}&patient=p".encode(),
         "/fhir/ImagingStudy/_search?patient=p"),
        ("/fhir/ImagingStudy?patient=p", None, "/fhir/ImagingStudy?patient=p"),
        ("/fhir/Patient/p/ImagingStudy", None, "/fhir/Patient/p/ImagingStudy"),
    ],
)  # fmt: skip
def test_a_search_query_never_keeps_an_access_token(target: str, form: bytes | None, recorded: str) -> None:
    assert search_query(target, form) == recorded.encode()
    event = audit_event(search(target=target, form=form), OBSERVER)
    assert SECRET not in orjson.dumps(event).decode()
    assert SECRET not in query(event)


@pytest.mark.parametrize(
    ("status", "returned", "refused", "disposition"),
    [
        (200, [], [], "returned"),  # a read its handler said nothing of: served
        (304, [], [], "returned"),
        (404, [], [], "requested"),  # not found: named all the same
        (401, [], [], "requested"),  # refused before anything was read
        (403, [], [STUDY], "refused"),  # another patient's
        (200, [STUDY], [], "returned"),
    ],
)
def test_a_read_names_its_study_whatever_its_answer(
    status: int, returned: list[str], refused: list[str], disposition: str
) -> None:
    event = audit_event(access(status=status, returned=returned, refused=refused), OBSERVER)
    validate(event)
    assert studies(event) == {STUDY: disposition}


def test_without_a_token_the_client_is_its_address_and_the_requestor() -> None:
    event = audit_event(access(client_id=None, subject=None, patient=None), OBSERVER)
    validate(event)
    client, _bridge = event["agent"]
    assert (client["who"], client["requestor"], client["networkString"]) == (
        {"display": "unidentified client"}, True, "10.0.0.8"
    )  # fmt: skip
    assert "patient" not in event
    assert not entities(event, "1")


def test_a_backend_service_whose_subject_is_itself_is_one_requesting_agent() -> None:
    event = audit_event(access(client_id="pacs-sync", subject="pacs-sync", patient=None), OBSERVER)
    validate(event)
    client, bridge = event["agent"]
    assert (client["who"]["identifier"]["value"], client["requestor"], bridge["requestor"]) == (
        "pacs-sync",
        True,
        False,
    )


@pytest.mark.parametrize(
    ("named", "what"),
    [
        ("pat-1", {"reference": "Patient/pat-1"}),
        ("Patient/pat-1", {"reference": "Patient/pat-1"}),
        ("https://ehr.example.org/fhir/Patient/pat-1", {"reference": "https://ehr.example.org/fhir/Patient/pat-1"}),
        ("urn:oid:1.2.3|PAT-1", {"identifier": {"system": "urn:oid:1.2.3", "value": "PAT-1"}}),
        ("|PAT-1", {"identifier": {"value": "PAT-1"}}),
    ],
)
def test_a_patient_named_by_id_reference_or_identifier(named: str, what: dict[str, Any]) -> None:
    assert patient_reference(named) == what
    validate(audit_event(search(named=[named]), OBSERVER))


HOSTILE = '\x00\u2028"\\</script>'


@pytest.mark.parametrize(
    "case",
    [
        access(),
        search(named=["a", HOSTILE], returned=["2.25.1"], refused=["2.25.2"], form=HOSTILE.encode()),
        access(client_id=HOSTILE, subject=None, patient=HOSTILE, address=None, status=404),
        access(request_id=HOSTILE),
        access(ended=1764255600.9999, seconds=0.9999),
    ],
)
def test_lines_splice_times_and_ids_into_the_same_json_as_built_whole(case: Access) -> None:
    lines = Lines(OBSERVER)
    for n in range(3):  # the first builds the shape; the others reuse it with other times and ids
        again = case._replace(request_id=f"{case.request_id}-{n}", ended=case.ended + n * 1.0005)
        assert lines(again) == json_line_safe(
            orjson.dumps(audit_event(again, OBSERVER), option=orjson.OPT_APPEND_NEWLINE)
        )


@pytest.mark.parametrize(
    "change",
    [
        {"method": "POST"}, {"interaction": "vread"}, {"status": 404}, {"client_id": "other"}, {"subject": "other"},
        {"patient": "other"}, {"address": "10.0.0.9"}, {"target": "/fhir/ImagingStudy?x"}, {"form": b"a=b"},
        {"read_id": "2.25.8"}, {"named": ["other"]}, {"returned": ["2.25.8"]}, {"refused": ["2.25.8"]},
    ],
)  # fmt: skip
def test_lines_tell_apart_events_that_differ_in_anything_but_their_times_and_id(change: dict[str, Any]) -> None:
    lines = Lines(OBSERVER)
    lines(access())  # the shape of the usual read, held
    changed = access(**change)
    assert lines(changed) == json_line_safe(
        orjson.dumps(audit_event(changed, OBSERVER), option=orjson.OPT_APPEND_NEWLINE)
    )


def test_lines_keep_a_bounded_number_of_shapes() -> None:
    lines = Lines(OBSERVER, size=8)
    for n in range(50):
        lines(access(read_id=f"2.25.{n}"))
    assert len(lines._shapes) <= 8


# The log ------------------------------------------------------------------------------------------------------


def fields(case: Access) -> tuple[Any, ...]:
    return tuple(case)


async def test_events_are_written_as_json_lines_off_the_request_path() -> None:
    stream = io.BytesIO()
    log = AuditLog("stdout", OBSERVER)
    log.open(StreamSink(stream))
    for n in range(3):
        log._pending.append(fields(access(request_id=f"r{n}")))
    assert stream.getvalue() == b""  # nothing written until the writer's turn
    await log.flush()
    events = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [request_id(event) for event in events] == ["r0", "r1", "r2"]
    assert log.held == 0


class BlockedSink:
    """A sink whose writes wait until released: standard output read by nobody."""

    description = "blocked"

    def __init__(self) -> None:
        self.released = threading.Event()
        self.data = b""

    def write(self, data: bytes) -> tuple[int, Exception | None]:
        self.released.wait(timeout=30)
        self.data += data
        return len(data), None

    def close(self) -> None:
        pass


async def test_events_being_written_still_count_against_the_limit() -> None:
    sink = BlockedSink()
    log = AuditLog("blocked", OBSERVER, max_pending=2)
    log.open(sink)
    log._pending += [fields(access(request_id="r0")), fields(access(request_id="r1"))]
    flushing = asyncio.create_task(log.flush())
    try:
        await eventually(lambda: not log._pending, what="the batch handed to the writer")
        assert log.held == 2  # on their way to a sink that does not answer: not yet written
        with pytest.raises(AuditUnavailable):
            log.admit()
    finally:
        sink.released.set()
        await flushing
    assert log.held == 0
    log.admit()


class FlakySink:
    """Writes at most ``room`` bytes, then fails (as a full disk does), until given more room."""

    description = "flaky"

    def __init__(self, room: int) -> None:
        self.room = room
        self.data = b""

    def write(self, data: bytes) -> tuple[int, Exception | None]:
        written = data[: self.room]
        self.data += written
        self.room -= len(written)
        return len(written), (OSError(28, "No space left on device") if len(written) < len(data) else None)

    def close(self) -> None:
        pass


async def test_a_failed_write_is_resumed_where_it_stopped_and_nothing_is_lost_or_split(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = FlakySink(room=700)  # the first line is cut in its middle
    log = AuditLog("flaky", OBSERVER)
    log.open(sink)
    for n in range(3):
        log._pending.append(fields(access(request_id=f"r{n}")))
    await log.flush()
    assert 0 < log.held <= 3  # the unwritten events are held, and count against the limit
    log._pending.append(fields(access(request_id="r3")))
    await log.flush()  # failing still: said once per outage, not once per attempt
    assert 0 < log.held <= 4
    sink.room = 1 << 20
    await log.flush()
    assert [request_id(orjson.loads(line)) for line in sink.data.splitlines()] == ["r0", "r1", "r2", "r3"]
    assert log.held == 0
    errors = [r for r in caplog.records if r.name == "bridge.web.audit" and r.levelno == logging.ERROR]
    assert [e.getMessage().count("No space left on device") for e in errors] == [1]  # once, not per retry


def test_the_file_sink_appends_resumes_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_bytes(b"kept\n")
    sink = FileSink(path)
    try:
        assert sink.write(b"one\n") == (4, None)
    finally:
        sink.close()
    assert path.read_bytes() == b"kept\none\n"
    new = tmp_path / "new.log"
    FileSink(new).close()
    assert stat.S_IMODE(new.stat().st_mode) & 0o077 == 0  # it names patients: not for the group or others


def test_a_file_that_cannot_be_opened_stops_the_start_naming_the_setting(tmp_path: Path) -> None:
    log = AuditLog(str(tmp_path / "missing" / "audit.log"), OBSERVER)
    with pytest.raises(ConfigError, match="BRIDGE_AUDIT_LOG"):
        log.open()


def test_serve_stops_at_start_when_the_audit_file_cannot_be_opened(tmp_path: Path) -> None:
    missing = tmp_path / "missing" / "audit.log"
    result = run("serve", "--port", "0", env={**clean_env(), "BRIDGE_AUDIT_LOG": str(missing)}, cwd=tmp_path,
                 timeout=20)  # fmt: skip
    assert result.returncode == 2
    assert f"BRIDGE_AUDIT_LOG: cannot open {missing} for appending" in result.stderr
    assert "Traceback" not in result.stderr


# End to end -----------------------------------------------------------------------------------------------------


def settings_for(path: Path, **environ: str) -> Settings:
    return load_settings({"BRIDGE_QIDO_URL": "http://pacs/dicom-web", "BRIDGE_AUDIT_LOG": str(path), **environ})


Authorize = Callable[[web.Request], tuple[Grant, AuditFacts]]


async def start(
    settings: Settings,
    authorize: Authorize | None = None,
    source: QidoSource | None = None,
    verifier: TokenVerifier | None = None,
) -> TestClient:
    """The bridge on the in-memory PACS (``source``, else one study); ``authorize`` stands in for the
    authorization step with authorization off (it sets the request's grant and audit facts before the handler);
    ``verifier`` verifies tokens with BRIDGE_AUTH=smart."""
    app = create_app(settings, source or pacs(), verifier)
    if authorize is not None:

        @web.middleware
        async def authorized(request: web.Request, handler: Any) -> web.StreamResponse:
            request[GRANT], request[AUDITED] = authorize(request)
            response: web.StreamResponse = await handler(request)
            return response

        app.middlewares.append(authorized)
    server = TestServer(app)
    # As `imaging-bridge serve` runs it: aiohttp's own access log (the full request line) off.
    await server.start_server(access_log=None, **server_options(settings))
    client = TestClient(server)
    await client.start_server()
    return client


async def written(client: TestClient, path: Path) -> list[dict[str, Any]]:
    await client.app[AUDIT_LOG].flush()
    return [orjson.loads(line) for line in read(path).splitlines()]


def read(path: Path) -> bytes:
    return path.read_bytes()


@pytest.fixture
async def audited(tmp_path: Path) -> AsyncIterator[tuple[TestClient, Path]]:
    path = tmp_path / "audit.log"
    client = await start(settings_for(path))
    yield client, path
    await client.close()


async def test_every_request_to_patient_data_writes_one_event(audited: tuple[TestClient, Path]) -> None:
    client, path = audited
    answers = [
        await client.get(f"/fhir/ImagingStudy/{STUDY}"),  # a miss
        await client.get(f"/fhir/ImagingStudy/{STUDY}"),  # a hit: audited all the same
        await client.get("/fhir/ImagingStudy/2.25.404"),
        await client.get("/fhir/ImagingStudy?_id=2.25.7&_count=5"),
        await client.post("/fhir/ImagingStudy/_search", data={"_id": STUDY, "modality": "CT"}),
    ]
    assert [a.status for a in answers] == [200, 200, 404, 200, 200]
    events = await written(client, path)
    for event in events:
        validate(event)
    assert [request_id(e) for e in events] == [a.headers["X-Request-ID"] for a in answers]
    assert [(coding(e["code"])[1], e["outcome"]["code"]["code"]) for e in events] == [
        ("read", "0"), ("read", "0"), ("read", "4"), ("search-type", "0"), ("search-type", "0")
    ]  # fmt: skip
    assert studies(events[0]) == {STUDY: "returned"}
    assert studies(events[2]) == {"2.25.404": "requested"}
    assert query(events[3]) == "/fhir/ImagingStudy?_id=2.25.7&_count=5"
    assert query(events[4]) == f"/fhir/ImagingStudy/_search?_id={STUDY}&modality=CT"
    assert studies(events[4]) == {STUDY: "returned"}  # a search's studies, with authorization off too


async def test_requests_that_serve_no_patient_data_are_not_audited(audited: tuple[TestClient, Path]) -> None:
    client, path = audited
    for url in ("/fhir/metadata", "/healthz", "/metrics", "/fhir/nowhere", "/fhir/Endpoint/x"):
        await client.get(url)
    await client.get(f"/fhir/ImagingStudy/{STUDY}")
    assert [coding(e["code"])[1] for e in await written(client, path)] == ["read"]


async def test_the_grant_and_what_the_handler_did_are_what_is_recorded(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    claims = Claims(client_id="viewer-app", subject="dr-who", scope="patient/ImagingStudy.rs", patient="pat-123",
                    expires_at=None)  # fmt: skip

    def authorize(request: web.Request) -> tuple[Grant, AuditFacts]:
        return Grant(claims), AuditFacts(action="search", returned=[STUDY], refused=["2.25.9"], patients=["pat-123"])

    client = await start(settings_for(path), authorize)
    try:
        assert (await client.get("/fhir/ImagingStudy?patient=pat-123")).status == 200
        (event,) = await written(client, path)
    finally:
        await client.close()
    validate(event)
    client_agent, user, _ = event["agent"]
    assert (client_agent["who"]["identifier"]["value"], user["who"]["identifier"]["value"]) == ("viewer-app", "dr-who")
    assert event["patient"] == {"reference": "Patient/pat-123"}
    assert studies(event) == {STUDY: "returned", "2.25.9": "refused"}


async def test_a_refused_request_is_audited_as_a_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 403 from the authorization step, inside the envelope (here a stand-in wrapped round each FHIR handler),
    is audited with the client it knows."""
    claims = Claims(client_id="other-app", subject=None, scope="patient/Observation.rs", patient=None,
                    expires_at=None)  # fmt: skip

    def refusing(handler: Any) -> Any:
        async def authorize(request: web.Request) -> web.StreamResponse:
            request[GRANT], request[AUDITED] = Grant(claims), AuditFacts(action="read")
            raise Forbidden("no ImagingStudy scope")

        return authorize

    monkeypatch.setattr(app_module, "FHIR_ROUTES", [r._replace(handler=refusing(r.handler)) for r in FHIR_ROUTES])
    path = tmp_path / "audit.log"
    client = await start(settings_for(path))
    try:
        answer = await client.get(f"/fhir/ImagingStudy/{STUDY}")
        (event,) = await written(client, path)
    finally:
        await client.close()
    assert answer.status == 403
    validate(event)
    assert event["outcome"]["code"]["code"] == "4"
    assert event["agent"][0]["who"]["identifier"]["value"] == "other-app"
    assert studies(event) == {STUDY: "requested"}


async def test_off_writes_nothing(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    client = await start(settings_for(tmp_path / "unused", BRIDGE_AUDIT_LOG="off", BRIDGE_ACCESS_LOG="false"))
    try:
        assert AUDIT_LOG not in client.app
        assert (await client.get(f"/fhir/ImagingStudy/{STUDY}")).status == 200
    finally:
        await client.close()
    assert b"AuditEvent" not in capsysbinary.readouterr().out
    assert not (tmp_path / "unused").exists()


def test_audit_is_on_once_authorization_is_chosen_and_off_only_in_the_unconfigured_default() -> None:
    assert load_settings({}).audit_sink == "off"  # the try-it mode: loopback, nothing configured
    assert load_settings({"BRIDGE_AUTH": "none"}).audit_sink == "stdout"
    assert load_settings({"BRIDGE_HOST": "0.0.0.0", "BRIDGE_AUTH": "none"}).audit_sink == "stdout"
    assert load_settings({"BRIDGE_AUDIT_LOG": "stdout"}).audit_sink == "stdout"
    assert load_settings({"BRIDGE_AUTH": "none", "BRIDGE_AUDIT_LOG": "off"}).audit_sink == "off"


async def test_stdout_by_default_once_authorization_is_chosen_and_what_is_left_is_written_at_shutdown(
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    client = await start(load_settings({"BRIDGE_QIDO_URL": "http://pacs/dicom-web", "BRIDGE_ACCESS_LOG": "false",
                                        "BRIDGE_AUTH": "none"}))  # fmt: skip
    try:
        answer = await client.get(f"/fhir/ImagingStudy/{STUDY}")
    finally:
        await client.close()  # no flush asked: the shutdown writes what waits
    (line,) = capsysbinary.readouterr().out.splitlines()
    assert request_id(orjson.loads(line)) == answer.headers["X-Request-ID"]


async def test_while_the_sink_cannot_keep_up_patient_data_is_refused_not_served_unaudited(tmp_path: Path) -> None:
    client = await start(settings_for(tmp_path / "audit.log"))
    audit = client.app[AUDIT_LOG]
    sink = BlockedSink()
    audit.open(sink)
    audit.max_pending = 2
    try:
        before = samples(await (await client.get("/metrics")).text())
        served = [await client.get(f"/fhir/ImagingStudy/{STUDY}") for _ in range(2)]
        assert [a.status for a in served] == [200, 200]
        refused = await client.get(f"/fhir/ImagingStudy/{STUDY}")
        assert (refused.status, refused.headers["Retry-After"]) == (503, "1")
        body = await refused.json()
        validate(body)
        assert body["issue"][0]["code"] == "transient"
        assert (await client.get("/fhir/metadata")).status == 200  # no patient data: served
        after = samples(await (await client.get("/metrics")).text())
        key = ("bridge_audit_refused_total", frozenset())
        assert after[key] - before.get(key, 0.0) == 1
        sink.released.set()
        await audit.flush()
        again = await client.get(f"/fhir/ImagingStudy/{STUDY}")
        assert again.status == 200
        await audit.flush()
    finally:
        sink.released.set()
        await client.close()
    # The two served and the one served after, each audited; the refusal (nothing read) is counted, not written.
    ids = [request_id(orjson.loads(line)) for line in sink.data.splitlines()]
    assert ids == [a.headers["X-Request-ID"] for a in [*served, again]]


async def test_no_bearer_token_is_written_in_any_log_metric_or_error(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "audit.log"
    client = await start(settings_for(path))  # the access log on standard output, the audit log in the file
    header = {"Authorization": f"Bearer {SECRET}"}
    try:
        answers = [
            await client.get(f"/fhir/ImagingStudy/{STUDY}", headers=header),
            await client.get(f"/fhir/ImagingStudy/2.25.404?access_token={SECRET}", headers=header),
            await client.get(f"/fhir/ImagingStudy?_id={STUDY}&access_token={SECRET}", headers=header),
            await client.post("/fhir/ImagingStudy/_search", data={"_id": STUDY, "access_token": SECRET}),
            await client.get(f"/fhir/nowhere?access_token={SECRET}", headers=header),
            await client.get("/metrics", headers=header),
        ]
        bodies = [await answer.text() for answer in answers]
        events = await written(client, path)
    finally:
        await client.close()
    assert len(events) == 4
    assert all(SECRET not in body for body in bodies)  # errors included (an unknown parameter, a 404)
    assert SECRET.encode() not in read(path)
    assert all(SECRET not in query(event) for event in events if entities(event, "24"))  # not even in base64
    out = capsysbinary.readouterr()
    assert b"/fhir/ImagingStudy" in out.out  # the access log was written, without the token
    assert SECRET.encode() not in out.out + out.err
    assert all(SECRET not in record.getMessage() for record in caplog.records)


# With BRIDGE_AUTH=smart (a stand-in verifier: tests/test_authz.py's patients and tokens) ---------------------------


def smart_settings(path: Path, **environ: str) -> Settings:
    return settings_for(path, BRIDGE_AUTH="smart", BRIDGE_AUTH_JWKS_URL="https://auth.example.org/jwks",
                        BRIDGE_PUBLIC_URL="https://fhir.example.org/fhir", **environ)  # fmt: skip


async def test_with_tokens_each_access_names_its_client_user_patient_and_what_it_saw(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    verifier = Verifier()
    client = await start(smart_settings(path), source=patients_pacs(), verifier=verifier)
    patient = {"Authorization": "Bearer patient:P1"}  # client "app", user "user-1", Patient P1
    try:
        answers = [
            await client.get("/fhir/ImagingStudy/2.25.1", headers=patient),
            await client.get("/fhir/ImagingStudy/2.25.3", headers=patient),  # P2's: answered as if it did not exist
            await client.get("/fhir/ImagingStudy?_count=50", headers=patient),
            await client.get("/fhir/Patient/P1/ImagingStudy", headers=patient),
            await client.get("/fhir/ImagingStudy?patient=P2", headers=patient),
            await client.get("/fhir/ImagingStudy/2.25.1", headers={"Authorization": "Bearer forged"}),
            await client.get("/fhir/ImagingStudy/2.25.1"),
        ]
        events = await written(client, path)
    finally:
        await client.close()
    assert [a.status for a in answers] == [200, 404, 200, 200, 403, 401, 401]
    for event in events:
        validate(event)
    assert [request_id(e) for e in events] == [a.headers["X-Request-ID"] for a in answers]
    assert [e["outcome"]["code"]["code"] for e in events] == ["0", "4", "0", "0", "4", "4", "4"]
    for event in events[:5]:
        client_agent, user, _ = event["agent"]
        assert (client_agent["who"]["identifier"]["value"], user["who"]["identifier"]["value"]) == ("app", "user-1")
        assert event["patient"] == {"reference": "Patient/P1"}
    assert studies(events[0]) == {"2.25.1": "returned"}
    assert studies(events[1]) == {"2.25.3": "refused"}
    assert studies(events[2]) == {"2.25.1": "returned", SECOND_OF_P1: "returned"}
    assert studies(events[3]) == {"2.25.1": "returned", SECOND_OF_P1: "returned"}
    assert query(events[3]) == "/fhir/Patient/P1/ImagingStudy"  # the compartment names its patient in the path
    assert query(events[4]) == "/fhir/ImagingStudy?patient=P2"
    for refused in events[5:]:  # no verified token: the client is its address
        assert refused["agent"][0]["who"] == {"display": "unidentified client"}
        assert "patient" not in refused
        assert studies(refused) == {"2.25.1": "requested"}


async def test_with_tokens_no_bearer_token_is_written_in_any_log_metric_or_error(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "audit.log"
    verifier = Verifier()
    verifier.extra[SECRET] = claims("patient/ImagingStudy.rs", patient="P1")
    forged = SECRET[::-1]
    client = await start(smart_settings(path), source=patients_pacs(), verifier=verifier)
    try:
        answers = [
            await client.get("/fhir/ImagingStudy/2.25.1", headers={"Authorization": f"Bearer {SECRET}"}),
            await client.get("/fhir/ImagingStudy/2.25.3", headers={"Authorization": f"Bearer {SECRET}"}),
            await client.get("/fhir/ImagingStudy?patient=P2", headers={"Authorization": f"Bearer {SECRET}"}),
            await client.get("/fhir/ImagingStudy/2.25.1", headers={"Authorization": f"Bearer {forged}"}),
            await client.get(
                f"/fhir/ImagingStudy?_count=5&access_token={forged}", headers={"Authorization": f"Bearer {SECRET}"}
            ),
            await client.get("/metrics"),
        ]
        bodies = [await answer.text() for answer in answers]
        events = await written(client, path)
    finally:
        await client.close()
    assert [a.status for a in answers] == [200, 404, 403, 401, 400, 200]
    assert len(events) == 5
    out, err = capsysbinary.readouterr()
    assert b'"path":"/fhir/ImagingStudy' in out  # the access log was written, on standard output
    logged = read(path) + out + err + "".join(r.getMessage() for r in caplog.records).encode()
    for token in (SECRET, forged):
        assert all(token not in body for body in bodies)
        assert token.encode() not in logged
        assert all(token not in query(event) for event in events if entities(event, "24"))
