"""The background migrations admin page in a real browser (Debian's chromium + chromedriver, Selenium).

As Django's own admin Selenium tests do: a live server (``StaticLiveServerTestCase``, serving the
admin's static files) and a real, headless Chromium. The machine has no network, so the browser
is started with everything that would call out turned off, and with a fresh profile.
"""

import os
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission, User
from django.contrib.staticfiles.testing import StaticLiveServerTestCase
from django.utils import timezone

from safemigrate.models import BackgroundMigration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "pages" / "background-admin.png"

webdriver = pytest.importorskip("selenium.webdriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="BROWSER TESTS SKIPPED: chromium and chromium-driver are not installed (apt-get install chromium "
           "chromium-driver); the admin page promises in docs/pages/background-migrations.md are NOT checked",
)


def start_browser(profile):
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1400,720"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def migration(name, state, **fields):
    values = dict(table_name="shop_customer", columns=["full_name"], kind="sql", spec={}, rows_total=10_000_000,
                  description=f"copy for {name}")
    values.update(fields)
    return BackgroundMigration.objects.create(name=name, state=state, **values)


class BackgroundMigrationAdminTests(StaticLiveServerTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.profile = tempfile.mkdtemp(prefix="safemigrate-chromium-")
        cls.browser = start_browser(cls.profile)
        cls.browser.implicitly_wait(5)

    @classmethod
    def tearDownClass(cls):
        cls.browser.quit()
        shutil.rmtree(cls.profile, ignore_errors=True)
        super().tearDownClass()

    def setUp(self):
        view = Permission.objects.get(codename="view_backgroundmigration")
        control = Permission.objects.get(codename="control_backgroundmigration")
        self.operator = User.objects.create_user("operator", password="pw-operator", is_staff=True)
        self.operator.user_permissions.add(view, control)
        self.viewer = User.objects.create_user("viewer", password="pw-viewer", is_staff=True)
        self.viewer.user_permissions.add(view)
        now = timezone.now()
        migration("shop_customer.rename.name.full_name", "running", rows_done=4_200_000, rows_per_second=18_311,
                  duty_cycle=0.5, batch_size=2400, batches=1750, runner="worker-1:4242:a1b2c3",
                  throttle_reason="transaction_age 312.4 s > 300.0 s: pid 5120 (idle in transaction)")
        migration("shop_order.cast.total", "on_hold", table_name="shop_order", columns=["total__sm_new"],
                  rows_done=830_000, rows_per_second=9_870, duty_cycle=0.5, hold_until=now + timedelta(seconds=30),
                  hold_reason="vacuum 1 > 0: autovacuum pid 4711 scanning heap",
                  throttle_reason="vacuum 1 > 0: autovacuum pid 4711 scanning heap")
        migration("shop.shop_invoice.fill.3f2a9c1d", "failed", table_name="shop_invoice", columns=["currency"],
                  rows_done=120_000, rows_total=2_000_000, error="DataError: value too long for type character "
                  "varying(3)")
        migration("shop_item.bigint.id", "finished", table_name="shop_item", columns=["id__sm_new"],
                  rows_done=10_000_000, rows_per_second=25_000, duty_cycle=0.5, finished_at=now)

    def log_in(self, username, password):
        self.browser.get(f"{self.live_server_url}/admin/login/?next=/admin/safemigrate/backgroundmigration/")
        self.browser.find_element("name", "username").send_keys(username)
        self.browser.find_element("name", "password").send_keys(password)
        self.submit(self.browser.find_element("css selector", "input[type=submit]"))
        self.browser.find_element("id", "result_list")

    def row_text(self, name):
        return self.browser.find_element("xpath", f"//tr[.//*[normalize-space()='{name}']]").text

    def act(self, action, *names):
        from selenium.webdriver.support.ui import Select

        for name in names:
            self.browser.find_element(
                "xpath", f"//tr[.//*[normalize-space()='{name}']]//input[@name='_selected_action']").click()
        Select(self.browser.find_element("name", "action")).select_by_value(action)
        self.submit(self.browser.find_element("css selector", "button[name=index]"))
        return self.browser.find_element("css selector", "ul.messagelist").text

    def submit(self, button):
        """Click and wait for the next page: the page before may carry a message list of its own, and
        reading it while the browser swaps pages fails with a stale element (seen in CI)."""
        from selenium.webdriver.support import expected_conditions
        from selenium.webdriver.support.ui import WebDriverWait

        page = self.browser.find_element("tag name", "html")
        button.click()
        WebDriverWait(self.browser, 30).until(expected_conditions.staleness_of(page))

    def test_the_list_shows_state_progress_rate_eta_and_throttle_reason_and_actions_change_state(self):
        self.log_in("operator", "pw-operator")
        running = self.row_text("shop_customer.rename.name.full_name")
        for expected in ("Running", "42.0%", "18,311", "50%", "5m16s", "transaction_age 312.4 s > 300.0 s"):
            assert expected in running, (expected, running)
        held = self.row_text("shop_order.cast.total")
        assert "On Hold" in held and "vacuum 1 > 0: autovacuum pid 4711" in held and "on hold until" in held
        assert "100.0%" in self.row_text("shop_item.bigint.id")
        assert "DataError: value too long" in self.row_text("shop.shop_invoice.fill.3f2a9c1d")
        self.browser.find_element("id", "toggle-nav-sidebar").click()  # room for the columns
        # The docs' picture is refreshed on request only (it shows clock times): SAFEMIGRATE_DOCS_SCREENSHOT=1.
        target = SCREENSHOT if os.environ.get("SAFEMIGRATE_DOCS_SCREENSHOT") else Path(self.profile) / "admin.png"
        assert self.browser.save_screenshot(str(target))
        assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        message = self.act("pause", "shop_customer.rename.name.full_name", "shop_order.cast.total")
        assert "Paused: shop_customer.rename.name.full_name, shop_order.cast.total." in message
        states = dict(BackgroundMigration.objects.values_list("name", "state"))
        assert states["shop_customer.rename.name.full_name"] == states["shop_order.cast.total"] == "paused"

        message = self.act("resume", "shop_customer.rename.name.full_name")
        assert "Resumed: shop_customer.rename.name.full_name." in message
        message = self.act("retry", "shop.shop_invoice.fill.3f2a9c1d")
        assert "Queued again: shop.shop_invoice.fill.3f2a9c1d." in message
        # Refused like the command refuses: a finished migration cannot be paused.
        message = self.act("pause", "shop_item.bigint.id")
        assert "Cannot pause background migration 'shop_item.bigint.id': it is finished" in message
        states = dict(BackgroundMigration.objects.values_list("name", "state"))
        assert states == {"shop_customer.rename.name.full_name": "queued", "shop_order.cast.total": "paused",
                          "shop.shop_invoice.fill.3f2a9c1d": "queued", "shop_item.bigint.id": "finished"}

    def test_staff_without_the_control_permission_sees_the_list_and_no_actions(self):
        self.log_in("viewer", "pw-viewer")
        assert "Running" in self.row_text("shop_customer.rename.name.full_name")
        assert not self.browser.find_elements("name", "action")
        assert not self.browser.find_elements("name", "_selected_action")
