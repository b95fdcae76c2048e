"""KtExportHook: connection parsing, client building, test_connection and secret masking."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import threading
import types
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from airflow_provider_ktexport import get_provider_info
from airflow_provider_ktexport.exceptions import KtExportAuthError, KtExportConfigError
from airflow_provider_ktexport.hooks.ktexport import KtExportHook
from airflow_provider_ktexport.transport.sync_client import KtExportClient
from tests.unit.hooks.support import GOOD_KEY, set_conn


class KeyCheckingServer:
    """Answers like the export API: 401 for a wrong key, 500 for an unknown id, one batch on GET."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _reply(self, status: int, body: bytes = b"") -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _authorised(self) -> bool:
                server.requests.append((self.command, self.path))
                return self.headers.get("x-access-token") == GOOD_KEY

            def do_GET(self) -> None:
                if not self._authorised():
                    return self._reply(401, b"invalid token")
                self._reply(200, json.dumps({"id": "b1", "items": [{"type": "telemetry"}]}).encode())

            def do_DELETE(self) -> None:
                if not self._authorised():
                    return self._reply(401, b"invalid token")
                self._reply(200 if self.path == "/v2/stream/b1" else 500)

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def server() -> Iterator[KeyCheckingServer]:
    s = KeyCheckingServer()
    yield s
    s.stop()


def test_hook_attributes() -> None:
    assert KtExportHook.conn_name_attr == "ktexport_conn_id"
    assert KtExportHook.default_conn_name == "ktexport_default"
    assert KtExportHook.conn_type == "ktexport"
    assert KtExportHook.hook_name == "KT Export"
    assert KtExportHook().ktexport_conn_id == "ktexport_default"


def test_init_does_no_io() -> None:
    # The connection does not exist: only using the client may notice.
    hook = KtExportHook("no_such_connection_anywhere")
    with pytest.raises(KtExportConfigError, match="no_such_connection_anywhere.*not defined"):
        hook.get_conn()


def test_client_built_from_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(
        monkeypatch,
        host="https://export.eu1.kt1.io/",
        password=GOOD_KEY,
        extra={
            "auth_location": "query",
            "verify": "false",
            "connect_timeout": "3",
            "read_timeout": 50,
            "long_poll_seconds": "20",
            "max_retries": "2",
            "max_body_bytes": "1048576",
        },
    )
    hook = KtExportHook()
    client = hook.get_conn()
    assert isinstance(client, KtExportClient)
    assert client is hook.client  # built once, kept for the hook's life (keep-alive)
    assert client.base_url == "https://export.eu1.kt1.io"
    assert client.auth_location == "query"
    assert client.settings.verify is False
    assert (client.settings.connect_timeout, client.settings.read_timeout, client.long_poll_seconds) == (
        3.0,
        50.0,
        20.0,
    )
    assert client.settings.max_retries == 2
    assert client.settings.max_body_bytes == 1048576
    assert hook.client_settings().max_body_bytes == 1048576  # what the trigger reads too
    hook.close()


def test_bare_host_port_and_31_style_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(
        monkeypatch,
        "kt_eu",
        host="export.eu1.kt1.io",
        port=8443,
        password=GOOD_KEY,
        extra={"extra__ktexport__auth_location": "header", "extra__ktexport__verify": True},
    )
    client = KtExportHook("kt_eu").client
    assert client.base_url == "https://export.eu1.kt1.io:8443"
    assert client.auth_location == "header"
    assert client.settings.verify is True
    assert client.settings.read_timeout == client.long_poll_seconds + 30


def test_overrides_win_over_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(monkeypatch, host="export.us1.kt1.io", password=GOOD_KEY, extra={"max_retries": 5})
    client = KtExportHook(max_retries=1, pool_size=3).client
    assert client.settings.max_retries == 1 and client.settings.pool_size == 3


def test_unknown_override_is_refused() -> None:
    with pytest.raises(TypeError, match="pool_sise"):
        KtExportHook(pool_sise=3)


@pytest.mark.parametrize(
    ("conn", "fragment"),
    [
        ({"password": GOOD_KEY}, "no host"),
        ({"host": "export.us1.kt1.io"}, "no password"),
        ({"host": "ftp://export.us1.kt1.io", "password": GOOD_KEY}, "scheme"),
        (
            {"host": "export.us1.kt1.io", "password": GOOD_KEY, "extra": {"read_timeout": "soon"}},
            "read_timeout",
        ),
        ({"host": "export.us1.kt1.io", "password": GOOD_KEY, "extra": {"max_retries": 1.5}}, "max_retries"),
        ({"host": "export.us1.kt1.io", "password": GOOD_KEY, "extra": {"verify": 3}}, "verify"),
        (
            {"host": "export.us1.kt1.io", "password": GOOD_KEY, "extra": {"auth_location": "body"}},
            "auth_location",
        ),
    ],
)
def test_bad_connection_is_explained(monkeypatch: pytest.MonkeyPatch, conn: dict, fragment: str) -> None:
    set_conn(monkeypatch, "kt_bad", **conn)
    with pytest.raises(KtExportConfigError, match=fragment) as info:
        KtExportHook("kt_bad").get_conn()
    if fragment in ("no host", "no password"):
        message = str(info.value)
        assert "'kt_bad'" in message and "AIRFLOW_CONN_KT_BAD=" in message
    assert GOOD_KEY not in str(info.value)


def test_client_settings_rebuild_the_same_client(monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(monkeypatch, host="http://127.0.0.1:9", password=GOOD_KEY, extra={"auth_location": "query"})
    hook = KtExportHook(pool_size=2)
    settings = hook.client_settings()
    # Built where it is used: the trigger reads the connection in the triggerer (it serialises
    # only the connection id), so the settings never cross a process boundary with the key.
    assert GOOD_KEY not in repr(settings)
    rebuilt = KtExportClient.from_settings(settings)
    assert (rebuilt.base_url, rebuilt.auth_location, rebuilt.settings.pool_size) == (
        "http://127.0.0.1:9",
        "query",
        2,
    )
    assert asyncio.run(hook.aclient_settings()) == settings


def test_get_batch_and_ack_through_the_hook(
    monkeypatch: pytest.MonkeyPatch, server: KeyCheckingServer
) -> None:
    set_conn(monkeypatch, host=server.url, password=GOOD_KEY, extra={"long_poll_seconds": 1})
    hook = KtExportHook()
    batch = hook.get_batch(deadline=None)
    assert batch is not None and batch.items == [{"type": "telemetry"}]
    assert hook.ack(batch.id) is True
    hook.close()


def test_auth_error_names_the_connection(monkeypatch: pytest.MonkeyPatch, server: KeyCheckingServer) -> None:
    set_conn(monkeypatch, "kt_wrong", host=server.url, password="wrong-key-987654")
    with pytest.raises(KtExportAuthError, match="connection 'kt_wrong'"):
        KtExportHook("kt_wrong").get_batch()
    assert len(server.requests) == 1


def test_test_connection_good_key(monkeypatch: pytest.MonkeyPatch, server: KeyCheckingServer) -> None:
    set_conn(monkeypatch, host=server.url, password=GOOD_KEY)
    ok, message = KtExportHook().test_connection()
    assert ok, message
    assert server.url in message and GOOD_KEY not in message
    # It must not lease data: only one DELETE of an id that cannot exist.
    assert [method for method, _ in server.requests] == ["DELETE"]


def test_test_connection_bad_key(monkeypatch: pytest.MonkeyPatch, server: KeyCheckingServer) -> None:
    bad = "bad-key-" + uuid.uuid4().hex
    set_conn(monkeypatch, host=server.url, password=bad, extra={"auth_location": "query"})
    ok, message = KtExportHook().test_connection()
    assert not ok
    assert "401" in message and "'ktexport_default'" in message
    assert bad not in message
    assert len(server.requests) == 1  # no retry on a refused key


def test_test_connection_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    key = "unreachable-" + uuid.uuid4().hex
    set_conn(monkeypatch, host="http://127.0.0.1:9", password=key, extra={"auth_location": "query"})
    ok, message = KtExportHook(max_retries=0, backoff_base=0.0).test_connection()
    assert not ok and "connection failed" in message
    assert key not in message


@pytest.mark.parametrize("pasted", ["key-part-one\nkey-part-two", "key-part-one key-part-two"])
def test_test_connection_refuses_a_key_with_whitespace_naming_the_connection_not_the_key(
    monkeypatch: pytest.MonkeyPatch, pasted: str
) -> None:
    set_conn(monkeypatch, host="export.us1.kt1.io", password=pasted)
    ok, message = KtExportHook().test_connection()
    assert not ok and "'ktexport_default'" in message and "whitespace" in message
    assert "key-part" not in message


def test_test_connection_bad_config(monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(monkeypatch, host="export.us1.kt1.io")
    ok, message = KtExportHook().test_connection()
    assert not ok and "no password" in message


def test_key_is_registered_with_the_masker(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.log import redact as airflow_redact

    key = "mask-me-" + uuid.uuid4().hex
    assert key in airflow_redact(f"value {key}")  # not masked before the hook saw it
    set_conn(monkeypatch, host="export.us1.kt1.io", password=key)
    KtExportHook().client_settings()
    assert key not in airflow_redact(f"value {key}")


def test_ui_field_behaviour_mirrors_provider_info() -> None:
    (conn_type,) = get_provider_info()["connection-types"]
    declared = conn_type["ui-field-behaviour"]
    behaviour = KtExportHook.get_ui_field_behaviour()
    assert behaviour["hidden_fields"] == declared["hidden-fields"]
    assert behaviour["relabeling"] == declared["relabeling"]
    assert declared["placeholders"].items() <= behaviour["placeholders"].items()


def test_form_hides_the_fields_the_connection_does_not_use() -> None:
    (conn_type,) = get_provider_info()["connection-types"]
    # The base URL carries the port; there is no login or schema.
    assert set(conn_type["ui-field-behaviour"]["hidden-fields"]) == {"schema", "login", "port"}


def test_form_defaults_are_the_clients_defaults() -> None:
    """A form saved untouched must configure the client exactly as no extras would."""
    (conn_type,) = get_provider_info()["connection-types"]
    fields = conn_type["conn-fields"]
    shown = {name: spec["schema"]["default"] for name, spec in fields.items() if "default" in spec["schema"]}
    assert shown == {
        "auth_location": "header",
        "verify": True,
        "long_poll_seconds": 45,
        "connect_timeout": 10,
        "max_retries": 5,
        "max_body_bytes": 64 * 1024 * 1024,
    }
    client_defaults = KtExportClient("https://export.us1.kt1.io", GOOD_KEY)
    for name, value in shown.items():
        assert getattr(client_defaults.settings, name) == value, name
    # read_timeout derives from the long poll, so the form leaves it blank and says so.
    assert "default" not in fields["read_timeout"]["schema"]
    assert "75 s" in fields["read_timeout"]["description"]
    assert client_defaults.settings.read_timeout == 75
    # One field per kind of input: a dropdown, a switch, plain text.
    assert fields["auth_location"]["schema"]["type"] == "string"
    assert fields["auth_location"]["schema"]["enum"] == ["header", "query"]
    assert fields["verify"]["schema"]["type"] == "boolean"
    for text in ("ca_bundle", "proxy"):
        assert fields[text]["schema"] == {"type": ["string", "null"]}


def test_provider_info_hands_out_copies() -> None:
    (first,) = get_provider_info()["connection-types"]
    first["conn-fields"]["auth_location"]["schema"]["default"] = "query"
    (second,) = get_provider_info()["connection-types"]
    assert second["conn-fields"]["auth_location"]["schema"]["default"] == "header"


def _fake_web_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-ins for wtforms / flask_appbuilder / flask_babel (not installed with Airflow 3.3)."""

    class Field:
        def __init__(self, label: str, **kwargs: object) -> None:
            self.label, self.kwargs = label, kwargs

    class StringField(Field):
        pass

    class IntegerField(Field):
        pass

    class BooleanField(Field):
        pass

    modules = {
        "wtforms": {"StringField": StringField, "IntegerField": IntegerField, "BooleanField": BooleanField},
        "wtforms.validators": {
            "Optional": lambda: "optional",
            "NumberRange": lambda **kw: kw,
            "any_of": lambda values: ("any_of", values),
        },
        "flask_appbuilder": {},
        "flask_appbuilder.fieldwidgets": {"BS3TextFieldWidget": lambda: "widget"},
        "flask_babel": {"lazy_gettext": str},
    }
    for name, attrs in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, module)


def test_form_widgets_mirror_provider_info(monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec("wtforms") is None:
        _fake_web_stack(monkeypatch)
    (conn_type,) = get_provider_info()["connection-types"]
    widgets = KtExportHook.get_connection_form_widgets()
    assert set(conn_type["conn-fields"]) <= set(widgets)
    for name, field in conn_type["conn-fields"].items():
        assert (
            str(widgets[name].args[0] if hasattr(widgets[name], "args") else widgets[name].label)
            == field["label"]
        )
    # Only the field classes Airflow 3.1 accepts.
    assert {type(w).__name__ for w in widgets.values()} <= {
        "StringField",
        "IntegerField",
        "BooleanField",
        "UnboundField",
    }


def test_airflow_31_form_shows_the_choice_the_switch_and_the_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The hook's widgets through the stand-ins Airflow's UI service uses for 3.1's form."""
    ui = pytest.importorskip("airflow.api_fastapi.core_api.services.ui.connections")
    mocks = ui.HookMetaService
    _fake_web_stack(monkeypatch)
    wtforms, validators = sys.modules["wtforms"], sys.modules["wtforms.validators"]
    monkeypatch.setattr(wtforms, "StringField", mocks.MockStringField)
    monkeypatch.setattr(wtforms, "IntegerField", mocks.MockIntegerField)
    monkeypatch.setattr(wtforms, "BooleanField", mocks.MockBooleanField)
    monkeypatch.setattr(validators, "Optional", mocks.MockOptional)
    monkeypatch.setattr(validators, "any_of", mocks.MockEnum)
    form = {name: field.param.dump() for name, field in KtExportHook.get_connection_form_widgets().items()}
    assert form["auth_location"]["value"] == "header"
    assert form["auth_location"]["schema"]["enum"] == ["header", "query"]
    assert form["verify"]["value"] is True
    assert form["verify"]["schema"]["type"][0] == "boolean"
    assert form["ca_bundle"]["value"] is None and form["ca_bundle"]["schema"]["type"][0] == "string"
    assert form["proxy"]["value"] is None
    assert form["max_retries"]["value"] == 5 and form["max_retries"]["schema"]["type"][0] == "integer"
    assert float(form["long_poll_seconds"]["value"]) == 45  # a string field on 3.1; the hook parses it
    assert form["read_timeout"]["value"] is None


@pytest.mark.parametrize(
    ("extra", "verify"),
    [
        ({"verify": True, "ca_bundle": "{ca}"}, "{ca}"),
        ({"ca_bundle": "{ca}"}, "{ca}"),
        ({"verify": "true", "ca_bundle": " {ca} "}, "{ca}"),
        ({"verify": "{ca}", "ca_bundle": "{ca}"}, "{ca}"),
        ({"verify": "{ca}"}, "{ca}"),  # connections made before the form had a CA field
        ({"verify": "{ca}", "ca_bundle": ""}, "{ca}"),
        ({"verify": False, "ca_bundle": None}, False),
        ({"verify": True, "ca_bundle": ""}, True),
        ({"extra__ktexport__verify": True, "extra__ktexport__ca_bundle": "{ca}"}, "{ca}"),
    ],
)
def test_ca_bundle_is_folded_into_verify(
    monkeypatch: pytest.MonkeyPatch, tmp_path, extra: dict, verify: object
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not parsed here")
    fill = lambda v: v.replace("{ca}", str(ca)) if isinstance(v, str) else v  # noqa: E731
    set_conn(
        monkeypatch, host="export.us1.kt1.io", password=GOOD_KEY, extra={k: fill(v) for k, v in extra.items()}
    )
    hook = KtExportHook()
    assert hook.client_settings().verify == fill(verify)
    assert hook.client.settings.verify == fill(verify)


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"verify": False, "ca_bundle": "/etc/ssl/ca.pem"}, "'ca_bundle' is set but 'verify' is off"),
        ({"verify": "no", "ca_bundle": "/etc/ssl/ca.pem"}, "'ca_bundle' is set but 'verify' is off"),
        ({"verify": "/etc/ssl/a.pem", "ca_bundle": "/etc/ssl/b.pem"}, "different CA bundles"),
        ({"ca_bundle": True}, "'ca_bundle' must be a CA bundle path"),
    ],
)
def test_conflicting_tls_extras_are_explained(
    monkeypatch: pytest.MonkeyPatch, extra: dict, fragment: str
) -> None:
    set_conn(monkeypatch, "kt_tls", host="export.us1.kt1.io", password=GOOD_KEY, extra=extra)
    with pytest.raises(KtExportConfigError, match=fragment) as info:
        KtExportHook("kt_tls").client_settings()
    assert "'kt_tls'" in str(info.value)


def test_async_settings_mask_secrets_without_a_blocking_call_on_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # In a triggerer SUPERVISOR_COMMS is set: the sync masker's send() is a blocking round trip on
    # the loop, and Airflow 3.2+ raises DeadlockImminentError (a BaseException) from it when
    # another trigger's request is in flight. The async path must use asend() only.
    log_module = pytest.importorskip("airflow.sdk.log")
    if not hasattr(log_module, "amask_secret"):
        pytest.skip("Airflow 3.1 has no async masker: the sync one is the only one")
    from airflow.sdk.execution_time import task_runner

    class Comms:
        def __init__(self) -> None:
            self.sent: list[object] = []
            self.asent: list[object] = []

        def send(self, msg: object) -> None:
            self.sent.append(msg)

        async def asend(self, msg: object) -> None:
            self.asent.append(msg)

    comms = Comms()
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", comms, raising=False)
    set_conn(
        monkeypatch,
        host="https://export.us1.kt1.io",
        password=GOOD_KEY,
        extra={"proxy": "http://user:pr0xy-secret@proxy.corp:3128"},
    )
    settings = asyncio.run(KtExportHook().aclient_settings())
    assert settings.proxy == "http://user:pr0xy-secret@proxy.corp:3128"
    assert comms.sent == []
    masked = [getattr(m, "value", None) for m in comms.asent]
    assert GOOD_KEY in masked and "pr0xy-secret" in masked


def test_the_hook_probe_never_acknowledges_and_counts_a_bad_body_as_data(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow_provider_ktexport.exceptions import KtExportProtocolError

    def bad_body(self: KtExportHook, **kwargs: object) -> None:
        raise KtExportProtocolError(
            "GET answered 200 but the body is not valid JSON", body=b"{", batch_id="x-1"
        )

    monkeypatch.setattr(KtExportHook, "get_batch", bad_body)
    monkeypatch.setattr(KtExportHook, "ack", lambda self, batch_id: pytest.fail("the probe acknowledged"))
    probe = KtExportHook().probe(lease_seconds=60)
    assert probe is not None and (probe.record_count, probe.batch_id) == (None, "x-1")
    assert probe.as_xcom()["record_count"] is None
