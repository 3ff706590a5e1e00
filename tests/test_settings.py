"""``load_settings``: defaults, one ConfigError naming the variable for each bad value or unknown ``BRIDGE_*`` name,
hidden secrets, derived URLs.

Each test hands ``load_settings`` a plain environ dict; nothing here reads or patches the process environment,
except the one test that checks the process environment is not read.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from bridge.errors import ConfigError
from bridge.settings import VARIABLES, load_settings, nearest_variables, unknown_variables

#: A folder that exists wherever the tests run.
FOLDER_URL = f"file://{Path(__file__).parent / 'data'}"
ROOT = Path(__file__).parent.parent


def test_defaults() -> None:
    settings = load_settings({})

    assert settings.host == "127.0.0.1"
    assert settings.port == 8080
    assert settings.qido_timeout == 30
    assert settings.qido_url is None  # the embedded sample folder (bridge.qido.factory)
    assert settings.wado_url is None
    assert settings.public_wado_url is None
    assert settings.qido_page_size == 0
    assert settings.issuer_systems == {}
    assert settings.zone is None
    assert settings.log_level == "INFO"
    assert settings.pacs_username is None
    assert settings.pacs_password is None
    assert settings.pacs_token is None


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        pytest.param({"BRIDGE_PORT": "9090"}, {"port": 9090}, id="port"),
        pytest.param({"BRIDGE_QIDO_TIMEOUT": "2.5"}, {"qido_timeout": 2.5}, id="timeout"),
        pytest.param({"BRIDGE_LOG_LEVEL": "debug"}, {"log_level": "DEBUG"}, id="log-level-upper-cased"),
        pytest.param({"BRIDGE_QIDO_URL": ""}, {"qido_url": None}, id="empty-qido-url-is-unset"),
        pytest.param(
            {"BRIDGE_QIDO_URL": "https://pacs.test/dicom-web/"}, {"qido_url": "https://pacs.test/dicom-web"},
            id="trailing-slash-dropped",
        ),
        pytest.param({"BRIDGE_QIDO_URL": FOLDER_URL}, {"qido_url": FOLDER_URL}, id="file-folder"),
        pytest.param({"BRIDGE_TIMEZONE": "Europe/Berlin"}, {"timezone": "Europe/Berlin"}, id="timezone"),
        pytest.param(
            {"BRIDGE_PATIENT_ID_SYSTEM": "urn:oid:1.2.3"}, {"patient_id_system": "urn:oid:1.2.3"}, id="system"
        ),
        pytest.param(
            {"BRIDGE_ISSUER_SYSTEMS": '{"HOSP": "urn:oid:1.2.3", "LAB": "https://lab.test/ids"}'},
            {"issuer_systems": {"HOSP": "urn:oid:1.2.3", "LAB": "https://lab.test/ids"}},
            id="issuer-systems-json",
        ),
        pytest.param({"BRIDGE_ISSUER_SYSTEMS": ""}, {"issuer_systems": {}}, id="issuer-systems-empty"),
        pytest.param({"OTHER_PORT": "1", "PORT": "2"}, {"port": 8080}, id="unprefixed-ignored"),
        pytest.param(
            {"BRIDGE_ALLOWED_HOSTS": "FHIR.example.org, ::1,10.0.0.5,"},
            {"allowed_hosts": ("fhir.example.org", "[::1]", "10.0.0.5")}, id="allowed-hosts-list",
        ),
        pytest.param({"BRIDGE_ALLOWED_HOSTS": " "}, {"allowed_hosts": None}, id="allowed-hosts-empty"),
    ],
)  # fmt: skip
def test_good_values(environ: dict[str, str], expected: dict[str, object]) -> None:
    settings = load_settings(environ)

    assert {name: getattr(settings, name) for name in expected} == expected


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        pytest.param({"BRIDGE_QIDO_URL": "ftp://x"}, "BRIDGE_QIDO_URL", id="qido-url-ftp"),
        pytest.param({"BRIDGE_QIDO_URL": "http://"}, "BRIDGE_QIDO_URL", id="qido-url-no-host"),
        pytest.param({"BRIDGE_QIDO_URL": "file://"}, "BRIDGE_QIDO_URL", id="qido-url-file-no-folder"),
        pytest.param({"BRIDGE_QIDO_URL": "file:///no/such/folder"}, "BRIDGE_QIDO_URL", id="qido-url-file-missing"),
        pytest.param({"BRIDGE_QIDO_URL": "file://host/folder"}, "BRIDGE_QIDO_URL", id="qido-url-file-remote"),
        pytest.param({"BRIDGE_QIDO_URL": "https://pacs.test/dw?key=1"}, "BRIDGE_QIDO_URL", id="qido-url-query"),
        pytest.param({"BRIDGE_WADO_URL": "https://pacs.test/dw#x"}, "BRIDGE_WADO_URL", id="wado-url-fragment"),
        pytest.param({"BRIDGE_QIDO_URL": "http://u:p@pacs.test:99999/"}, "BRIDGE_QIDO_URL", id="qido-url-bad-port"),
        pytest.param({"BRIDGE_PORT": "99999"}, "BRIDGE_PORT", id="port-too-high"),
        pytest.param({"BRIDGE_PORT": "abc"}, "BRIDGE_PORT", id="port-not-a-number"),
        pytest.param({"BRIDGE_QIDO_TIMEOUT": "0"}, "BRIDGE_QIDO_TIMEOUT", id="timeout-zero"),
        pytest.param({"BRIDGE_QIDO_CONCURRENCY": "0"}, "BRIDGE_QIDO_CONCURRENCY", id="concurrency-zero"),
        pytest.param({"BRIDGE_QIDO_PAGE_SIZE": "-1"}, "BRIDGE_QIDO_PAGE_SIZE", id="page-size-negative"),
        pytest.param({"BRIDGE_TIMEZONE": "Mars/Base"}, "BRIDGE_TIMEZONE", id="timezone-unknown"),
        pytest.param({"BRIDGE_ISSUER_SYSTEMS": "not-json"}, "BRIDGE_ISSUER_SYSTEMS", id="issuers-not-json"),
        pytest.param({"BRIDGE_ISSUER_SYSTEMS": "[1]"}, "BRIDGE_ISSUER_SYSTEMS", id="issuers-not-an-object"),
        pytest.param({"BRIDGE_ISSUER_SYSTEMS": '{"HOSP": "x"}'}, "BRIDGE_ISSUER_SYSTEMS", id="issuers-not-uri"),
        pytest.param({"BRIDGE_PATIENT_ID_SYSTEM": "no-scheme"}, "BRIDGE_PATIENT_ID_SYSTEM", id="system-not-uri"),
        pytest.param({"BRIDGE_WADO_URL": "http://user:pass@pacs.test/wado"}, "BRIDGE_WADO_URL", id="wado-userinfo"),
        pytest.param({"BRIDGE_WADO_URL": "ftp://pacs.test/wado"}, "BRIDGE_WADO_URL", id="wado-ftp"),
        pytest.param({"BRIDGE_PACS_USERNAME": "alice"}, "BRIDGE_PACS_PASSWORD", id="username-without-password"),
        pytest.param({"BRIDGE_PACS_PASSWORD": "s3cret"}, "BRIDGE_PACS_USERNAME", id="password-without-username"),
        pytest.param(
            {"BRIDGE_PACS_TOKEN": "t0ken", "BRIDGE_PACS_USERNAME": "alice", "BRIDGE_PACS_PASSWORD": "s3cret"},
            "BRIDGE_PACS_TOKEN", id="token-with-username",
        ),
        pytest.param({"BRIDGE_LOG_LEVEL": "LOUD"}, "BRIDGE_LOG_LEVEL", id="log-level-unknown"),
        pytest.param({"BRIDGE_ALLOWED_HOSTS": "https://x"}, "BRIDGE_ALLOWED_HOSTS", id="allowed-hosts-url"),
        pytest.param({"BRIDGE_ALLOWED_HOSTS": "x:8080"}, "BRIDGE_ALLOWED_HOSTS", id="allowed-hosts-port"),
    ],
)  # fmt: skip
def test_bad_value_names_the_variable(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        load_settings(environ)


def test_every_bad_variable_is_named_at_once() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings({"BRIDGE_PORT": "abc", "BRIDGE_LOG_LEVEL": "LOUD"})

    assert "BRIDGE_PORT" in str(raised.value)
    assert "BRIDGE_LOG_LEVEL" in str(raised.value)


@pytest.mark.parametrize(
    "environ",
    [
        pytest.param({"BRIDGE_QIDO_URL": "ftp://alice:s3cret@pacs.test/dicom-web"}, id="bad-qido-url"),
        pytest.param({"BRIDGE_WADO_URL": "http://alice:s3cret@pacs.test/wado"}, id="wado-userinfo"),
        pytest.param({"BRIDGE_PACS_PASSWORD": "s3cret"}, id="password-alone"),
        pytest.param({"BRIDGE_PACS_TOKEN": "s3cret", "BRIDGE_PACS_USERNAME": "alice"}, id="token-and-user"),
    ],
)
def test_config_errors_do_not_show_secrets(environ: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(environ)

    assert "s3cret" not in str(raised.value)


@pytest.mark.parametrize(
    "environ",
    [
        pytest.param({"BRIDGE_PACS_USERNAME": "alice", "BRIDGE_PACS_PASSWORD": "s3cret"}, id="password"),
        pytest.param({"BRIDGE_PACS_TOKEN": "s3cret"}, id="token"),
        pytest.param(
            {"BRIDGE_QIDO_URL": "https://alice:s3cret@pacs.test/dicom-web"},
            id="password-in-qido-url",
        ),
    ],
)
def test_secrets_are_not_in_repr_or_str(environ: dict[str, str]) -> None:
    settings = load_settings(environ)

    assert "s3cret" not in repr(settings)
    assert "s3cret" not in str(settings)


def test_secrets_are_still_readable() -> None:
    settings = load_settings({"BRIDGE_PACS_USERNAME": "alice", "BRIDGE_PACS_PASSWORD": "s3cret"})

    assert settings.pacs_password is not None
    assert settings.pacs_password.get_secret_value() == "s3cret"


@pytest.mark.parametrize(
    ("environ", "public"),
    [
        pytest.param(
            {"BRIDGE_QIDO_URL": "https://pacs.test/qido", "BRIDGE_WADO_URL": "https://viewer.test/wado/"},
            "https://viewer.test/wado", id="explicit",
        ),
        pytest.param({"BRIDGE_QIDO_URL": "https://pacs.test/dicom-web"}, "https://pacs.test/dicom-web", id="derived"),
        pytest.param(
            {"BRIDGE_QIDO_URL": "https://alice:s3cret@pacs.test:8443/dicom-web"}, "https://pacs.test:8443/dicom-web",
            id="derived-without-credentials",
        ),
        pytest.param({"BRIDGE_QIDO_URL": FOLDER_URL}, None, id="file-folder"),
        pytest.param({"BRIDGE_QIDO_URL": FOLDER_URL, "BRIDGE_WADO_URL": "http://pacs.test/wado"},
                     "http://pacs.test/wado", id="file-folder-with-explicit-wado"),
        pytest.param({}, None, id="embedded-samples"),
    ],
)  # fmt: skip
def test_public_wado_url(environ: dict[str, str], public: str | None) -> None:
    assert load_settings(environ).public_wado_url == public


def test_settings_are_frozen() -> None:
    settings = load_settings({})

    with pytest.raises(ValidationError, match="frozen"):
        settings.port = 1
    assert settings.port == 8080


def test_zone_is_the_configured_timezone() -> None:
    zone = load_settings({"BRIDGE_TIMEZONE": "Europe/Berlin"}).zone

    assert zone is not None
    assert zone.key == "Europe/Berlin"


def test_an_environ_dict_replaces_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_PORT", "1")  # the one test that sets the real environment: to see it is ignored

    assert load_settings({}).port == 8080


def test_an_environ_dict_replaces_the_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "bridge.env").write_text("BRIDGE_PORT=1\n")
    monkeypatch.chdir(tmp_path)

    assert load_settings({}).port == 8080


def test_credentials_in_the_qido_url_move_to_the_secret_fields() -> None:
    settings = load_settings({"BRIDGE_QIDO_URL": "https://alice:s%40cret@pacs.test/dicom-web"})
    assert settings.qido_url == "https://pacs.test/dicom-web"
    assert settings.pacs_username == "alice"
    assert settings.pacs_password is not None
    assert settings.pacs_password.get_secret_value() == "s@cret"
    assert settings.public_wado_url == "https://pacs.test/dicom-web"


@pytest.mark.parametrize(
    ("environ", "hosts"),
    [
        ({}, {"localhost", "127.0.0.1", "[::1]"}),
        ({"BRIDGE_HOST": "0.0.0.0", "BRIDGE_AUTH": "none"}, {"localhost", "127.0.0.1", "[::1]"}),
        ({"BRIDGE_HOST": "::", "BRIDGE_AUTH": "none"}, {"localhost", "127.0.0.1", "[::1]"}),
        ({"BRIDGE_HOST": "bridge.lan", "BRIDGE_AUTH": "none"}, {"localhost", "127.0.0.1", "[::1]", "bridge.lan"}),
        ({"BRIDGE_HOST": "fe80::1", "BRIDGE_AUTH": "none"}, {"localhost", "127.0.0.1", "[::1]", "[fe80::1]"}),
        ({"BRIDGE_PUBLIC_URL": "https://fhir.example.org/fhir"}, None),  # links never come from the Host
        ({"BRIDGE_PUBLIC_URL": "https://fhir.example.org/fhir", "BRIDGE_ALLOWED_HOSTS": "fhir.example.org"},
         {"fhir.example.org"}),
        ({"BRIDGE_ALLOWED_HOSTS": "a.example"}, {"a.example"}),
    ],
)  # fmt: skip
def test_link_hosts(environ: dict[str, str], hosts: set[str] | None) -> None:
    assert load_settings(environ).link_hosts == (frozenset(hosts) if hosts is not None else None)


def test_allowed_hosts_are_a_comma_list_in_the_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "bridge.env").write_text("BRIDGE_ALLOWED_HOSTS=a.example,b.example\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BRIDGE_ALLOWED_HOSTS", raising=False)

    assert load_settings().allowed_hosts == ("a.example", "b.example")


@pytest.mark.parametrize(
    ("name", "nearest"),
    [
        ("BRIDGE_CACHE_TTLL", ["BRIDGE_CACHE_TTL"]),
        ("BRIDGE_QIDO_TIMOUT", ["BRIDGE_QIDO_TIMEOUT"]),
        ("bridge_cache_ttll", ["BRIDGE_CACHE_TTL"]),
        ("BRIDGE_PACS_USER", ["BRIDGE_PACS_USERNAME"]),
        ("BRIDGE_TIMEOUT", ["BRIDGE_QIDO_TIMEOUT", "BRIDGE_TIMEZONE"]),  # as near as each other: both named
        ("BRIDGE_FROBNICATE", []),
    ],
)
def test_nearest_variables(name: str, nearest: list[str]) -> None:
    assert nearest_variables(name) == nearest


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        pytest.param({"BRIDGE_CACHE_TTLL": "5"}, "BRIDGE_CACHE_TTLL is not a setting (did you mean BRIDGE_CACHE_TTL?)",
                     id="misspelt"),
        pytest.param({"BRIDGE_QIDO_TIMOUT": "5"},
                     "BRIDGE_QIDO_TIMOUT is not a setting (did you mean BRIDGE_QIDO_TIMEOUT?)", id="misspelt-timeout"),
        pytest.param({"BRIDGE_CACHE_TTLL": ""}, "BRIDGE_CACHE_TTLL is not a setting", id="misspelt-empty"),
        pytest.param({"BRIDGE_FROBNICATE": "1"}, "BRIDGE_FROBNICATE is not a setting (the settings are listed",
                     id="near-nothing"),
    ],
)  # fmt: skip
def test_an_unknown_variable_is_refused(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(environ)

    assert message in str(raised.value)
    assert "the settings are listed in the README's Configuration table" in str(raised.value)


def test_unknown_variables_and_bad_values_are_named_at_once() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings({"BRIDGE_CACHE_TTLL": "5", "BRIDGE_PORT": "abc", "BRIDGE_FROBNICATE": "1"})

    for name in ("BRIDGE_CACHE_TTLL", "BRIDGE_PORT", "BRIDGE_FROBNICATE"):
        assert name in str(raised.value)


def test_an_unknown_variable_in_the_env_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "bridge.env").write_text("BRIDGE_PORT=9090\nBRIDGE_QIDO_TIMOUT=5\n")
    monkeypatch.chdir(tmp_path)

    with pytest.raises(ConfigError, match=re.escape("BRIDGE_QIDO_TIMOUT in config/bridge.env is not a setting")):
        load_settings()


#: ``BRIDGE_`` and a name: a variable written out in a file (not the prefix alone, as in ``BRIDGE_*``).
VARIABLE = re.compile(r"\bBRIDGE_[A-Z][A-Z0-9_]*[A-Z0-9]")


@pytest.mark.parametrize(
    "path",
    ["Dockerfile", "docker-compose.yml", "config/bridge.example.env", "README.md", ".ci/run", "scripts/test",
     *sorted(str(p.relative_to(ROOT)) for p in [*ROOT.glob("scripts/*.py"), *ROOT.glob("docs/*.md")])],
)  # fmt: skip
def test_every_variable_the_project_sets_or_names_is_a_setting(path: str) -> None:
    # The image, the compose file, the benchmarks and the docs would otherwise be refused at start, or mislead.
    assert unknown_variables(VARIABLE.findall((ROOT / path).read_text())) == []


def test_the_lists_the_refusal_points_to_name_every_setting() -> None:
    section = (ROOT / "README.md").read_text().split("\n## Configuration\n")[1].split("\n## ")[0]
    table = "\n".join(line.split(" | ")[0] for line in section.splitlines() if line.startswith("| `BRIDGE_"))
    example = (ROOT / "config" / "bridge.example.env").read_text()

    assert set(VARIABLE.findall(table)) == VARIABLES
    assert set(VARIABLE.findall(example)) == VARIABLES
