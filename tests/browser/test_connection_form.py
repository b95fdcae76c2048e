"""The KT Export connection form as users see it: Admin > Connections > Add Connection in Chromium.

Saves three connections through the real form (defaults untouched; query + CA bundle + edited
numbers; TLS switched off), then builds a KtExportHook from each saved connection, in a process
reading the API server's own database, and checks the client settings it makes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from airflow import __version__ as airflow_version
from packaging.version import Version

from tests.browser.conftest import AirflowUI

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.slow]

API_KEY = "form-test-key-" + uuid.uuid4().hex
WAIT = 20  # seconds for any one thing to appear in the page

#: Builds a hook from each saved connection, as the API server's "Test" button would (its database).
_READ_BACK = r"""
import json, sys
from airflow_provider_ktexport.hooks.ktexport import KtExportHook
key = sys.stdin.read()
out = {}
for conn_id in sys.argv[1:]:
    hook = KtExportHook(conn_id)
    conn = hook.get_connection(conn_id)
    settings = hook.client_settings()
    client = hook.client  # what the client uses: the settings it keeps
    names = ("base_url", "auth_location", "verify", "long_poll_seconds", "connect_timeout",
             "read_timeout", "max_retries", "max_body_bytes")
    out[conn_id] = {
        "extra": conn.extra_dejson,
        "port": conn.port,
        "api_key_ok": settings.api_key == key,  # compared here: the key is never printed
        "client": {name: getattr(client.settings, name) for name in names},
    }
print(json.dumps(out))
"""


@dataclass
class Case:
    """One connection to save through the form: what to change from the form's defaults."""

    name: str
    auth_location: str | None = None
    tls_on: bool = True
    ca_bundle: bool = False
    numbers: dict[str, str] = field(default_factory=dict)
    conn_id: str = ""


CASES = [
    Case("defaults"),
    Case(
        "query_ca",
        auth_location="query",
        ca_bundle=True,
        numbers={"Long poll (s)": "20", "Max retries": "2", "Read timeout (s)": "35.5"},
    ),
    Case("tls_off", tls_on=False),
]

DEFAULTS_SHOWN = {
    "Long poll (s)": "45",
    "Connect timeout (s)": "10",
    "Max retries": "5",
    "Max body (bytes)": "67108864",
    "Read timeout (s)": "",
}


class ConnectionForm:
    """The Add Connection dialog, found the way a user finds things: by the labels it shows."""

    def __init__(self, driver: Any, ui_url: str) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver = driver
        self.ui_url = ui_url
        self.wait = WebDriverWait(driver, WAIT)

    def _clickable(self, xpath: str) -> Any:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec

        return self.wait.until(ec.element_to_be_clickable((By.XPATH, xpath)))

    def open(self) -> None:
        self.driver.get(f"{self.ui_url}/connections")
        self._clickable("//button[normalize-space()='Add Connection']").click()
        self._clickable("//div[@role='dialog']//input[@name='connection_id']")

    def row(self, label: str) -> Any:
        """The form row (label, input, help text) whose label starts with ``label``."""
        return self._clickable(
            f"//div[@role='dialog']//div[@role='group'][.//label[starts-with(normalize-space(.), '{label}')]]"
        )

    def labels(self) -> list[str]:
        """The labels of the rows on screen now."""
        from selenium.webdriver.common.by import By

        found = self.driver.find_elements(By.XPATH, "//div[@role='dialog']//div[@role='group']//label")
        return [label.text.replace("*", "").strip() for label in found if label.is_displayed()]

    def text_input(self, label: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.row(label).find_element(By.CSS_SELECTOR, "input:not([type=hidden]), textarea")

    def choose(self, label: str, option: str) -> None:
        """Pick ``option`` in a dropdown (react-select) by typing it, as a keyboard user would."""
        from selenium.webdriver.common.keys import Keys

        box = self.text_input(label)
        box.send_keys(option)
        box.send_keys(Keys.ENTER)

    def value_becomes(self, label: str, text: str, seconds: float = 5) -> bool:
        """Whether the field shows ``text`` within ``seconds`` (a busy page re-renders late)."""
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            WebDriverWait(self.driver, seconds).until(
                lambda _: self.text_input(label).get_attribute("value") == text
            )
        except TimeoutException:
            return False
        return True

    def type_into(self, label: str, text: str) -> None:
        """Type ``text`` and see it there.

        On a busy machine the extra fields (each key re-renders the whole form) can drop a key
        typed fast; then the value is set once through the input's native setter and an
        ``input`` event, which React handles like typing.
        """
        self.text_input(label).send_keys(text)
        if self.value_becomes(label, text, seconds=3):
            return
        self.driver.execute_script(
            "const [box, text] = arguments;"
            "Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value').set.call(box, text);"
            "box.dispatchEvent(new Event('input', {bubbles: true}));",
            self.text_input(label),
            text,
        )
        got = self.text_input(label).get_attribute("value")
        assert self.value_becomes(label, text), f"typed {text!r} into {label!r}, it shows {got!r}"

    def replace(self, label: str, value: str) -> None:
        from selenium.webdriver.common.keys import Keys

        box = self.text_input(label)
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.BACK_SPACE)
        self.type_into(label, value)
        self.text_input(label).send_keys(Keys.TAB)

    def section(self, title: str) -> None:
        self._clickable(f"//div[@role='dialog']//button[normalize-space()='{title}']").click()

    def save(self) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec

        self._clickable("//div[@role='dialog']//button[normalize-space()='Save']").click()
        self.wait.until(ec.invisibility_of_element_located((By.XPATH, "//div[@role='dialog']")))


def _fill_and_check(form: ConnectionForm, case: Case, ca_path: Path) -> None:
    from selenium.webdriver.common.by import By

    form.open()
    form.type_into("Connection ID", case.conn_id)
    form.choose("Connection Type", "KT Export")

    # Standard fields: what the connection uses, named as the export API names it; no Port.
    form.row("Base URL")
    shown = form.labels()
    for unused in ("Port", "Login", "Schema"):
        assert unused not in shown, f"the form shows an unused field {unused!r}: {shown}"
    assert {"Base URL", "API key"} <= set(shown), shown
    form.type_into("Base URL", "https://export.eu1.kt1.io")
    form.type_into("API key", API_KEY)

    form.section("Extra Fields")
    # The choice starts on header (not null), as a dropdown: its value is in a hidden input.
    auth = form.row("Send the key as")
    assert auth.find_element(By.CSS_SELECTOR, "input[type=hidden]").get_attribute("value") == "header"
    assert "header" in auth.text and "null" not in auth.text
    # TLS is a switch (a checkbox), on; no text box in its row.
    tls = form.row("Verify TLS")
    switch = tls.find_element(By.CSS_SELECTOR, "input[type=checkbox]")
    assert switch.is_selected()
    assert not tls.find_elements(By.CSS_SELECTOR, "input[type=text], textarea")
    # The CA bundle path and the proxy: blank text fields of their own.
    for label in ("CA bundle path", "Proxy URL"):
        box = form.text_input(label)
        assert box.tag_name == "input" and box.get_attribute("value") == "", label
    # The numbers show their defaults; the derived read timeout says its default in words.
    for label, value in DEFAULTS_SHOWN.items():
        assert form.text_input(label).get_attribute("value") == value, label
    assert "75 s" in form.row("Read timeout (s)").text

    if case.auth_location:
        form.choose("Send the key as", case.auth_location)
        assert (
            form.row("Send the key as")
            .find_element(By.CSS_SELECTOR, "input[type=hidden]")
            .get_attribute("value")
            == case.auth_location
        )
    if not case.tls_on:
        tls.find_element(By.CSS_SELECTOR, "[data-part=control], label").click()
        assert not tls.find_element(By.CSS_SELECTOR, "input[type=checkbox]").is_selected()
    if case.ca_bundle:
        form.type_into("CA bundle path", str(ca_path))
    for label, value in case.numbers.items():
        form.replace(label, value)
    if os.environ.get("KTEXPORT_BROWSER_SCREENSHOTS"):
        shots = Path(os.environ["KTEXPORT_BROWSER_SCREENSHOTS"])
        shots.mkdir(parents=True, exist_ok=True)
        form.driver.save_screenshot(str(shots / f"form-{case.name}.png"))
    form.save()


def _read_back(ui: AirflowUI, conn_ids: list[str]) -> dict[str, Any]:
    env = {**ui.env, "_AIRFLOW_PROCESS_CONTEXT": "server"}  # read connections from the metastore
    done = subprocess.run(
        [sys.executable, "-c", _READ_BACK, *conn_ids],
        input=API_KEY,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    Version(airflow_version) < Version("3.2"),
    reason="written against Airflow 3.3's UI (on 3.1.8 the Connections page's Add Connection button "
    "did not appear in time; 3.1's form is checked by tests/unit/test_provider_info.py)",
)
def test_connection_form_saves_what_the_hook_reads(
    airflow_ui: AirflowUI, browser: Any, tmp_path: Path
) -> None:
    ca_path = tmp_path / "private-ca.pem"
    ca_path.write_text("-----BEGIN CERTIFICATE-----\n(not parsed by this test)\n-----END CERTIFICATE-----\n")
    form = ConnectionForm(browser, airflow_ui.url)
    suffix = uuid.uuid4().hex[:8]
    for case in CASES:
        case.conn_id = f"kt_form_{case.name}_{suffix}"
        try:
            _fill_and_check(form, case, ca_path)
        except BaseException:
            shot = tmp_path / f"failed-{case.name}.png"
            browser.save_screenshot(str(shot))
            print(f"screenshot of the form at the failure: {shot}")
            raise

    saved = _read_back(airflow_ui, [case.conn_id for case in CASES])
    defaults, query_ca, tls_off = (saved[case.conn_id] for case in CASES)
    for each in saved.values():
        assert each["api_key_ok"]
        assert each["port"] is None
        assert each["client"]["base_url"] == "https://export.eu1.kt1.io"

    # Untouched, the form configures the client exactly as no extras would.
    assert defaults["client"] == {
        "base_url": "https://export.eu1.kt1.io",
        "auth_location": "header",
        "verify": True,
        "long_poll_seconds": 45.0,
        "connect_timeout": 10.0,
        "read_timeout": 75.0,
        "max_retries": 5,
        "max_body_bytes": 64 * 1024 * 1024,
    }
    assert defaults["extra"].get("verify") is True  # a JSON boolean, not the text "true"

    assert query_ca["client"]["auth_location"] == "query"
    assert query_ca["client"]["verify"] == str(ca_path)
    assert query_ca["extra"]["ca_bundle"] == str(ca_path)
    assert query_ca["client"]["long_poll_seconds"] == 20.0
    assert query_ca["client"]["read_timeout"] == 35.5
    assert query_ca["client"]["max_retries"] == 2
    assert query_ca["client"]["connect_timeout"] == 10.0

    assert tls_off["client"]["verify"] is False
    assert tls_off["extra"]["verify"] is False
    assert tls_off["client"]["auth_location"] == "header"
