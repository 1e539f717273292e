"""Settings: environment over retain.toml over defaults, table by table; unknown tables and keys,
secrets in the file and bad values are errors that name the table.key and where it came from."""

from __future__ import annotations

from datetime import time, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import Cli

from engine.config import Cap, QuietHours, Settings, load_settings
from engine.errors import InputError

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def write(tmp_path: Path, text: str) -> Path:
    """A retain.toml in `tmp_path`."""
    path = tmp_path / "retain.toml"
    path.write_text(text, encoding="utf-8")
    return path


def error_of(tmp_path: Path, env: dict[str, str] | None = None) -> str:
    """The InputError message load_settings raises."""
    with pytest.raises(InputError) as caught:
        load_settings(tmp_path, env=env or {})
    return str(caught.value)


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, env={})
    assert (settings.database_url, settings.playbooks_dir) == ("sqlite:///retain.db", "playbooks")
    assert (settings.timezone, settings.public_url) == ("UTC", "http://127.0.0.1:8765")
    assert (settings.caps, settings.quiet_hours, settings.email_transport) == ({}, {}, None)
    smtp = settings.smtp
    assert (smtp.host, smtp.port, smtp.tls, smtp.connections, smtp.validate_certs) == \
        (None, 587, "starttls", 8, True)
    assert (smtp.password, settings.secret_key, settings.webhook_secret) == (None, None, None)


def test_file_then_environment(tmp_path: Path) -> None:
    write(tmp_path, '[retain]\ndatabase_url = "sqlite:///file.db"\nplaybooks_dir = "plays"\n')
    assert load_settings(tmp_path, env={}).database_url == "sqlite:///file.db"
    settings = load_settings(tmp_path, env={"RETAIN_DATABASE_URL": "sqlite:///env.db"})
    assert (settings.database_url, settings.playbooks_dir) == ("sqlite:///env.db", "plays")


# (table, key, file value as TOML, env name, env value, read the setting, from file, from env)
PRECEDENCE: list[tuple[str, str, str, str, str, Any, Any, Any]] = [
    ("retain", "timezone", '"Europe/Oslo"', "RETAIN_TIMEZONE", "America/New_York",
     lambda s: s.timezone, "Europe/Oslo", "America/New_York"),
    ("retain", "email_from", '"a@shop.example"', "RETAIN_EMAIL_FROM", "Shop <b@shop.example>",
     lambda s: s.email_from, "a@shop.example", "Shop <b@shop.example>"),
    ("retain", "public_url", '"https://a.example/"', "RETAIN_PUBLIC_URL", "https://b.example",
     lambda s: s.public_url, "https://a.example", "https://b.example"),
    ("retain", "email_dir", '"mail"', "RETAIN_EMAIL_DIR", "outbox",
     lambda s: s.email_dir, "mail", "outbox"),
    ("smtp", "host", '"file.example"', "RETAIN_SMTP_HOST", "env.example",
     lambda s: s.smtp.host, "file.example", "env.example"),
    ("smtp", "port", "2525", "RETAIN_SMTP_PORT", "1025", lambda s: s.smtp.port, 2525, 1025),
    ("smtp", "username", '"file"', "RETAIN_SMTP_USERNAME", "env",
     lambda s: s.smtp.username, "file", "env"),
    ("smtp", "tls", '"tls"', "RETAIN_SMTP_TLS", "none", lambda s: s.smtp.tls, "tls", "none"),
    ("smtp", "connections", "2", "RETAIN_SMTP_CONNECTIONS", "16",
     lambda s: s.smtp.connections, 2, 16),
    ("smtp", "timeout", "5", "RETAIN_SMTP_TIMEOUT", "2.5", lambda s: s.smtp.timeout, 5.0, 2.5),
    ("smtp", "validate_certs", "false", "RETAIN_SMTP_VALIDATE_CERTS", "true",
     lambda s: s.smtp.validate_certs, False, True),
    ("caps", "email", '"2/7d"', "RETAIN_CAPS_EMAIL", "1/1d", lambda s: s.caps.get("email"),
     Cap(2, timedelta(days=7)), Cap(1, timedelta(days=1))),
    ("quiet_hours", "email", '"21:00-08:00"', "RETAIN_QUIET_HOURS_EMAIL", "22:30-07:15",
     lambda s: s.quiet_hours.get("email"), QuietHours(time(21), time(8)),
     QuietHours(time(22, 30), time(7, 15))),
]


@pytest.mark.parametrize(("table", "key", "text", "env_name", "env_value", "read", "from_file",
                          "from_env"), PRECEDENCE, ids=[f"{p[0]}.{p[1]}" for p in PRECEDENCE])
def test_environment_beats_file_beats_default(
        tmp_path: Path, table: str, key: str, text: str, env_name: str, env_value: str,
        read: Any, from_file: Any, from_env: Any) -> None:
    assert read(load_settings(tmp_path, env={})) != from_file
    write(tmp_path, f"[{table}]\n{key} = {text}\n")
    assert read(load_settings(tmp_path, env={})) == from_file
    assert read(load_settings(tmp_path, env={env_name: env_value})) == from_env
    assert read(load_settings(tmp_path, env={env_name: ""})) == from_file  # empty = unset


def test_environment_and_file_merge_within_a_table(tmp_path: Path) -> None:
    write(tmp_path, '[smtp]\nhost = "mail.example"\nport = 2525\n[caps]\nemail = "2/7d"\n')
    settings = load_settings(tmp_path, env={"RETAIN_SMTP_PORT": "1025",
                                            "RETAIN_CAPS_WEBHOOK": "10/1h"})
    assert (settings.smtp.host, settings.smtp.port) == ("mail.example", 1025)
    assert {name: str(cap) for name, cap in settings.caps.items()} == \
        {"email": "2/1w", "webhook": "10/1h"}  # one spelling of 7d


def test_environment_is_os_environ_unless_given(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETAIN_SMTP_HOST", "from-os.example")
    assert load_settings(tmp_path).smtp.host == "from-os.example"
    assert load_settings(tmp_path, env={}).smtp.host is None
    assert Settings().smtp.host is None  # the model itself reads nothing


def test_usual_port_follows_tls(tmp_path: Path) -> None:
    ports = {tls: load_settings(tmp_path, env={"RETAIN_SMTP_TLS": tls}).smtp.port
             for tls in ("none", "starttls", "tls")}
    assert ports == {"none": 25, "starttls": 587, "tls": 465}
    assert load_settings(tmp_path, env={"RETAIN_SMTP_TLS": "tls", "RETAIN_SMTP_PORT": "2465"}
                         ).smtp.port == 2465


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, '[retain]\ndatabse_url = "x"\n')
    with pytest.raises(InputError, match="unknown key 'databse_url' \\(did you mean 'database_url'"):
        load_settings(tmp_path, env={})


def test_every_unknown_table_and_key_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, '[smtp]\nhots = "x"\n[capz]\nemail = "2/7d"\n[retain]\ntimezone = '
                 '"UTC"\n[quiet]\n[smpt]\n')
    assert error_of(tmp_path).splitlines() == [
        f"{path}: [smtp] unknown key 'hots' (did you mean 'host'?)",
        f"{path}: unknown table 'capz' (did you mean 'caps'?)",
        f"{path}: unknown table 'quiet' (did you mean 'quiet_hours'?)",
        f"{path}: unknown table 'smpt' (did you mean 'smtp'?)",
    ]


def test_key_outside_a_table(tmp_path: Path) -> None:
    path = write(tmp_path, 'database_url = "sqlite:///x.db"\nport = 25\n[retain]\ncaps = {}\n')
    assert error_of(tmp_path).splitlines() == [
        f"{path}: 'database_url' is outside a table: put it under [retain]",
        f"{path}: unknown key outside a table 'port' (expected one of: retain, smtp, caps, "
        "quiet_hours, daemon, segment)",
        f"{path}: [retain] caps is a table of its own: write [caps]"]


@pytest.mark.parametrize(("table", "key", "env_name"), [
    ("smtp", "password", "RETAIN_SMTP_PASSWORD"), ("retain", "secret_key", "RETAIN_SECRET_KEY"),
    ("retain", "webhook_secret", "RETAIN_WEBHOOK_SECRET")])
def test_a_secret_in_the_file_is_refused(tmp_path: Path, table: str, key: str,
                                         env_name: str) -> None:
    path = write(tmp_path, f'[{table}]\n{key} = "{WHSEC}"\n')
    message = error_of(tmp_path)
    assert message == (f"{path}: [{table}] {key} is a secret and is never read from a file: set "
                       f"the environment variable {env_name} instead")
    assert WHSEC not in message


def test_secrets_come_from_the_environment_and_never_show(tmp_path: Path) -> None:
    env = {"RETAIN_SMTP_PASSWORD": "hunter2-smtp", "RETAIN_SECRET_KEY": "hunter2-key",
           "RETAIN_WEBHOOK_SECRET": WHSEC}
    settings = load_settings(tmp_path, env=env)
    assert settings.smtp.password is not None and settings.secret_key is not None
    assert settings.webhook_secret is not None
    assert settings.smtp.password.get_secret_value() == "hunter2-smtp"
    assert settings.secret_key.get_secret_value() == "hunter2-key"
    assert settings.webhook_secret.get_secret_value() == WHSEC
    shown = [repr(settings), str(settings), settings.model_dump_json(), str(settings.model_dump())]
    for text in shown:
        assert "hunter2" not in text and WHSEC not in text
        assert "**********" in text


def test_a_bad_webhook_secret_is_named_not_shown(tmp_path: Path) -> None:
    message = error_of(tmp_path, {"RETAIN_WEBHOOK_SECRET": "whsec_hunter2!!"})
    assert message.startswith("environment variable RETAIN_WEBHOOK_SECRET: not a Standard "
                              "Webhooks secret: expected \"whsec_\" followed by the base64")
    assert "hunter2" not in message
    unpadded = WHSEC.removeprefix("whsec_").rstrip("=")  # as connectors/webhook_send.py reads it
    assert load_settings(tmp_path, env={"RETAIN_WEBHOOK_SECRET": unpadded}).webhook_secret


BAD_VALUES = [
    ("caps", "email", '"2/7"', "malformed cap '2/7': expected COUNT/DURATION, like \"2/7d\""),
    ("caps", "email", '"0/7d"', "malformed cap '0/7d'"),
    ("quiet_hours", "email", '"21-8"', "malformed quiet hours '21-8': expected HH:MM-HH:MM"),
    ("retain", "timezone", '"Mars/Olympus"', "unknown time zone 'Mars/Olympus': expected an IANA "
     "name"),
    ("smtp", "tls", '"ssl"', "input should be 'none', 'starttls' or 'tls' (got 'ssl')"),
    ("smtp", "port", '"smtp"', "input should be a valid integer"),
    ("smtp", "port", "70000", "input should be less than or equal to 65535 (got 70000)"),
    ("smtp", "connections", "0", "input should be greater than or equal to 1 (got 0)"),
    ("retain", "public_url", '"http://retain.example"', "'http://retain.example' must be https:// "
     "(RFC 8058: unsubscribe links use HTTPS; plain http only for 127.0.0.1"),
    ("retain", "email_from", '"nobody"', "'nobody' is not an address"),
    ("retain", "email_transport", '"sendmail"', "input should be 'smtp' or 'file'"),
]


@pytest.mark.parametrize(("table", "key", "text", "wanted"), BAD_VALUES,
                         ids=[f"{b[0]}.{b[1]}={b[2]}" for b in BAD_VALUES])
def test_a_bad_value_in_the_file_names_file_table_and_key(tmp_path: Path, table: str, key: str,
                                                          text: str, wanted: str) -> None:
    path = write(tmp_path, f"[{table}]\n{key} = {text}\n")
    message = error_of(tmp_path)
    assert message.startswith(f"{path}: [{table}] {key}: ")
    assert wanted in message


@pytest.mark.parametrize(("env_name", "value", "wanted"), [
    ("RETAIN_CAPS_EMAIL", "two/7d", "[caps] email: malformed cap 'two/7d'"),
    ("RETAIN_QUIET_HOURS_SMS", "25:00-08:00", "[quiet_hours] sms: malformed quiet hours"),
    ("RETAIN_TIMEZONE", "Europe/Olso", "[retain] timezone: unknown time zone 'Europe/Olso'"),
    ("RETAIN_SMTP_TLS", "yes", "[smtp] tls: input should be 'none', 'starttls' or 'tls'"),
    ("RETAIN_SMTP_PORT", "0", "[smtp] port: input should be greater than or equal to 1"),
    ("RETAIN_SMTP_VALIDATE_CERTS", "maybe", "[smtp] validate_certs: input should be a valid "
     "boolean"),
    ("RETAIN_PUBLIC_URL", "http://127.evil.example", "[retain] public_url:"),
    ("RETAIN_PUBLIC_URL", "https://shop.example/?a=1", "[retain] public_url: 'https://shop."
     "example/?a=1' may not carry a query or fragment"),
])
def test_a_bad_value_in_the_environment_names_the_variable(tmp_path: Path, env_name: str,
                                                           value: str, wanted: str) -> None:
    write(tmp_path, '[caps]\nemail = "2/7d"\n[retain]\ntimezone = "UTC"\n')  # env wins
    message = error_of(tmp_path, {env_name: value})
    assert message.startswith(f"environment variable {env_name}: {wanted}")


def test_every_bad_value_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, '[caps]\nemail = "2/7"\n[smtp]\ntls = "ssl"\n')
    lines = error_of(tmp_path, {"RETAIN_TIMEZONE": "Nowhere"}).splitlines()
    assert [line.split(":")[0] for line in lines] == \
        ["environment variable RETAIN_TIMEZONE", str(path), str(path)]


def test_an_unknown_nested_variable_is_named(tmp_path: Path) -> None:
    message = error_of(tmp_path, {"RETAIN_SMTP_HOTS": "mail.example"})
    assert message == ("environment variable RETAIN_SMTP_HOTS: [smtp] hots: unknown setting "
                       "(did you mean 'RETAIN_SMTP_HOST'?)")


def test_a_whole_table_in_one_variable_must_be_json(tmp_path: Path) -> None:
    assert error_of(tmp_path, {"RETAIN_SMTP": "mail.example"}) == (
        "environment variable RETAIN_SMTP: not a JSON object; set one variable per key instead, "
        "like RETAIN_SMTP_HOST")
    assert load_settings(tmp_path, env={"RETAIN_CAPS": '{"email": "3/1d"}'}).caps["email"] == \
        Cap(3, timedelta(days=1))


def test_a_channel_is_a_connector_name(tmp_path: Path) -> None:
    path = write(tmp_path, '[caps]\nEmail = "2/7d"\n')
    assert error_of(tmp_path) == (f"{path}: [caps] Email: 'Email' is not a channel: a connector's "
                                  "name in lower case, like email or webhook")


def test_unrelated_variables_are_ignored(tmp_path: Path) -> None:
    env = {"RETAIN_TEST_PG_URL": "postgresql://x", "RETAIN_UPDATE_SNAPSHOTS": "1"}
    assert load_settings(tmp_path, env=env) == load_settings(tmp_path, env={})


@pytest.mark.parametrize(("url", "kept"), [
    ("http://127.0.0.1:8765/", "http://127.0.0.1:8765"), ("http://localhost", "http://localhost"),
    ("http://[::1]:8000", "http://[::1]:8000"), ("https://retain.example/r/", "https://retain.example/r"),
])
def test_public_url_http_only_on_loopback(tmp_path: Path, url: str, kept: str) -> None:
    assert load_settings(tmp_path, env={"RETAIN_PUBLIC_URL": url}).public_url == kept


def test_email_transport_follows_from_what_is_set(tmp_path: Path) -> None:
    assert load_settings(tmp_path, env={"RETAIN_SMTP_HOST": "mail"}).email_transport == "smtp"
    assert load_settings(tmp_path, env={"RETAIN_SMTP_HOST": "mail", "RETAIN_EMAIL_TRANSPORT":
                                        "file", "RETAIN_EMAIL_DIR": "out"}).email_transport == "file"
    assert error_of(tmp_path, {"RETAIN_EMAIL_TRANSPORT": "file"}) == \
        "settings: email_transport 'file' needs email_dir (RETAIN_EMAIL_DIR)"
    assert error_of(tmp_path, {"RETAIN_EMAIL_TRANSPORT": "smtp"}) == \
        "settings: email_transport 'smtp' needs [smtp] host (RETAIN_SMTP_HOST)"


def test_settings_are_frozen_values(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, env={"RETAIN_CAPS_EMAIL": "2/7d"})
    with pytest.raises(ValueError, match="frozen"):
        settings.timezone = "Europe/Oslo"  # type: ignore[misc]
    changed = settings.model_copy(update={"email_transport": "file", "email_dir": "out"})
    assert (changed.email_transport, settings.email_transport) == ("file", None)
    assert settings.model_dump(mode="json")["caps"] == {"email": "2/1w"}


def test_settings_is_public_for_connectors() -> None:
    import engine

    assert engine.Settings is Settings and "Settings" in engine.__all__


def test_broken_toml_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "retain.toml").write_text("[retain\n")
    with pytest.raises(InputError, match="retain.toml"):
        load_settings(tmp_path, env={})


def test_init_writes_a_config_whose_examples_load(tmp_path: Path, cli: Cli) -> None:
    """The scaffold's commented examples are valid settings once uncommented."""
    assert cli(["init", str(tmp_path)])[0] == 0
    text = (tmp_path / "retain.toml").read_text()
    assert load_settings(tmp_path, env={}).database_url == "sqlite:///retain.db"
    lines = [line.split("  #")[0].removeprefix("# ") for line in text.splitlines()
             if line.startswith(("# [", "# ")) and ("=" in line or line.startswith("# ["))]
    (tmp_path / "retain.toml").write_text(text + "\n".join(lines) + "\n")
    settings = load_settings(tmp_path, env={})
    assert (settings.timezone, settings.smtp.host, str(settings.caps["email"])) == \
        ("UTC", "smtp.mailprovider.example", "2/1w")
    assert str(settings.quiet_hours["email"]) == "21:00-08:00"


def test_cli_db_option_overrides_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             cli: Cli) -> None:
    monkeypatch.setenv("RETAIN_DATABASE_URL", f"sqlite:///{tmp_path / 'env.db'}")
    code, _, _ = cli(["--db", f"sqlite:///{tmp_path / 'flag.db'}", "demo", "--json"])
    assert code == 0
    assert (tmp_path / "flag.db").exists() and not (tmp_path / "env.db").exists()


def test_cli_bad_setting_exits_1_with_the_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  cli: Cli) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RETAIN_QUIET_HOURS_EMAIL", "late")
    code, out, err = cli(["schema"])
    assert code == 1 and out == ""
    assert "environment variable RETAIN_QUIET_HOURS_EMAIL: [quiet_hours] email: malformed" in err
