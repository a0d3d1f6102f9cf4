"""The dashboard of a system with mutual TLS and an auth policy (deploy.local.LocalSystem(tls=True)), in headless
Chromium: a viewer signs in with a token and sees the dead letters but no button to act; an operator signs in and
retries one (the shard's audit names the operator); a page of another origin, open in the same browser, cannot act
with the operator's session. Without Chromium it fails, unless SAGA_ALLOW_MISSING_TOOLS names chromium (then skips)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.tls import sync_channel
from deploy.local import LocalSystem, SystemOptions
from protos.saga.v1 import saga_pb2, saga_pb2_grpc
from protos.service_stubs.v1 import control_pb2, control_pb2_grpc
from tests.helpers.coordinator import place_request

from .test_dashboard import CHROMIUM_ARGS, EXPECT_TIMEOUT_MS, require_chromium

REPO = Path(__file__).parents[2]


@pytest.fixture(scope="module", autouse=True)
def chromium() -> str:
    """Checked before the system starts (an autouse fixture of the module comes before the others)."""
    return require_chromium()


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    tmp = tmp_path_factory.mktemp("dash-auth")
    options = SystemOptions(
        tmp / "data", shards=1, tls=True, shard_config="[compensate]\nmax_elapsed_ms = 300\n", stop_timeout_s=10.0
    )
    with LocalSystem(options, log_dir=tmp, cwd=REPO) as s:
        with sync_channel(s.stubs.address, s.client_tls("operator")) as channel:
            rule = control_pb2.FaultRule(method="RefundPayment", order_id_prefix="web-", error_rate=1.0)
            control_pb2_grpc.StubControlStub(channel).SetFaults(
                control_pb2.SetFaultsRequest(rules=[rule], seed=1), timeout=10
            )
        with sync_channel(s.router.address, s.client_tls("client")) as channel:
            stub = saga_pb2_grpc.SagaCoordinatorStub(channel)
            for order_id in ("web-viewer", "web-operator"):
                reply = stub.PlaceOrder(place_request(order_id, items=[("unshippable-x", 1)]), timeout=60)
                assert reply.state == saga_pb2.SAGA_STATE_DEAD_LETTERED, reply
        yield s


class _EvilSite(http.server.BaseHTTPRequestHandler):
    """Another origin: its page tries to press Retry on the dashboard with whatever the browser would send along."""

    target = ""

    def do_GET(self) -> None:
        page = f"""<!doctype html><script>
fetch("{self.target}/api/dead-letters/web-operator/retry", {{method: "POST", credentials: "include",
  headers: {{"Content-Type": "application/json"}}, body: "{{}}"}})
  .then(r => document.title = "status " + r.status).catch(e => document.title = "blocked");
</script>""".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, *args: object) -> None:
        pass


def _dead_letter_open(system: LocalSystem, order_id: str) -> bool:
    with sync_channel(system.router.address, system.client_tls("operator")) as channel:
        admin = saga_pb2_grpc.SagaAdminStub(channel)
        letters = admin.ListDeadLetters(saga_pb2.ListDeadLettersRequest(), timeout=10).dead_letters
    return any(d.order_id == order_id for d in letters)


def _events(system: LocalSystem, order_id: str) -> list[saga_pb2.SagaEvent]:
    with sync_channel(system.router.address, system.client_tls("operator")) as channel:
        saga = saga_pb2_grpc.SagaCoordinatorStub(channel).GetSaga(
            saga_pb2.GetSagaRequest(order_id=order_id, include_events=True), timeout=10
        )
    return list(saga.events)


def test_viewer_reads_operator_acts_and_another_site_cannot(system: LocalSystem, chromium: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    # The page follows the cluster (polls every 1-2 s, each step a round trip to busy shards): generous waits.
    expect.set_options(timeout=EXPECT_TIMEOUT_MS)

    assert system.policies is not None
    url = f"http://{system.router.spec.dashboard}"
    viewer = system.policies.token("vera", ["client"])
    operator = system.policies.token("otto", ["operator"])
    _EvilSite.target = url
    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EvilSite)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/")
            expect(page.locator("#login-form")).to_be_visible()  # nothing to see before signing in

            page.locator("#token").fill(viewer)
            page.locator("#login-form button").click()
            expect(page.get_by_test_id("who")).to_contain_text("vera (read-only)")
            row = page.get_by_test_id("dead-letters").locator('[data-dead-letter="web-viewer"]')
            expect(row).to_contain_text("process_payment")
            expect(row.locator('[data-action="retry"]')).to_be_hidden()

            page.locator("#logout").click()
            expect(page.locator("#login-form")).to_be_visible()
            page.locator("#token").fill(operator)
            page.locator("#login-form button").click()
            expect(page.get_by_test_id("who")).to_have_text("otto")
            row = page.get_by_test_id("dead-letters").locator('[data-dead-letter="web-viewer"]')
            row.locator('[data-action="retry"]').click()
            # The dry run, made in the operator's name too, shows the plan; Confirm retries.
            dialog = page.get_by_test_id("confirm")
            expect(
                dialog.get_by_test_id("plan-calls").locator('[data-call="/shop.v1.PaymentService/RefundPayment"]')
            ).to_have_count(1)
            expect(dialog.get_by_test_id("plan-end")).to_contain_text("DEAD_LETTERED → FAILED")
            dialog.get_by_test_id("confirm-ok").click()
            expect(page.locator("#toast")).to_contain_text("Retried web-viewer")

            # The operator's session is in this browser; a page of another origin tries to use it.
            other = browser.new_page()
            other.goto(f"http://127.0.0.1:{evil.server_address[1]}/")
            expect(other).not_to_have_title("", timeout=15_000)
            assert other.title() in ("blocked", "status 403"), other.title()
            assert errors == []
        finally:
            browser.close()
            evil.shutdown()
    # The operator's retry reached the shard in their name (the refund still fails, so it parks again) ...
    assert any(e.kind == "admin_retry" and "retried by otto" in e.detail for e in _events(system, "web-viewer"))
    # ... and the other site's attempt changed nothing.
    assert _dead_letter_open(system, "web-operator")
    assert not any(e.kind == "admin_retry" for e in _events(system, "web-operator"))
