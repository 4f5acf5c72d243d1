//! The live status page, in a real headless browser (Debian's chromium, driven by
//! tests/browser/status-page.mjs): after traffic, every number on the page is the one
//! `/status.json` reports, and each is actually painted on the screenshot.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use support::{blocking_client, eventually, post_user, wait_for_user, TestServer};

fn page_number(text: &str) -> f64 {
    text.replace(',', "").trim_end_matches(" %").parse().unwrap_or_else(|_| panic!("not a number: {text:?}"))
}

#[test]
fn the_status_page_renders_the_live_numbers_in_a_headless_browser() {
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        browser_dir.join("node_modules/puppeteer-core").exists(),
        "the browser driver is not installed: run `npm ci --prefix tests/browser` (scripts/test does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let client = blocking_client();
    for i in 0..25 {
        let body = json!({"id": format!("status-{i}"), "name": "Status Person", "email": format!("s{i}@example.com")});
        assert_eq!(post_user(&client, &server, &body.to_string()).0, 202);
    }
    assert_eq!(post_user(&client, &server, "{oops").0, 400);
    assert_eq!(post_user(&client, &server, r#"{"name": "x"}"#).0, 400);
    let poison = json!({
        "Data": {"message": "{\"name\": \"P\", \"email\": \"bad\"}"},
        "Metadata": {"MessageId": "status-poison", "DeliveryCount": "1"}
    });
    let r = client.post(server.url("/ingest-consume")).json(&poison).send().unwrap();
    assert_eq!(r.status(), 200);
    for i in 0..25 {
        wait_for_user(&client, &server, &format!("status-{i}"), Duration::from_secs(10));
    }
    let mut status = Value::Null;
    eventually("the queue is drained", Duration::from_secs(10), || {
        status = client.get(server.url("/status.json")).send().unwrap().json().unwrap();
        status["queue"]["depth"] == 0 && status["messages"]["stored"] == 25
    });

    let screenshot = dir.path().join("status.png");
    let output = Command::new("node")
        .arg(browser_dir.join("status-page.mjs"))
        .arg(server.url("/status"))
        .arg(&screenshot)
        .output()
        .expect("cannot run node: Node 20 is needed for the browser test");
    assert!(
        output.status.success(),
        "the browser check failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("the browser check prints JSON");
    let numbers = &report["numbers"];
    let text = |id: &str| numbers[id].as_str().unwrap_or_else(|| panic!("no #{id} in {report}")).to_owned();

    assert_eq!(report["consoleErrors"], json!([]), "{report}");
    assert_eq!(text("accepted-total"), "25");
    assert_eq!(text("stored-total"), "25");
    assert_eq!(text("rejected-total"), "2");
    assert_eq!(text("processed-count"), "25");
    assert_eq!(text("queue-depth"), "0");
    assert_eq!(text("dead-letters"), "1");
    assert_eq!(text("error-rate"), "0.00 %");
    // Percentiles: the page shows the service's figures, rounded to two decimals.
    for (id, key) in [("p50", "p50Ms"), ("p95", "p95Ms"), ("p99", "p99Ms")] {
        let expected = status["processingTime"][key].as_f64().unwrap();
        let shown = page_number(&text(id));
        assert!(shown > 0.0 && (shown - expected).abs() < 0.01, "{id}: page {shown}, service {expected}");
    }
    // Rates are numbers once two refreshes have happened (zero now that the load is over).
    page_number(&text("accepted-rate"));
    page_number(&text("stored-rate"));
    assert!(report["state"].as_str().unwrap().contains("embedded backend"), "{report}");

    // Each number is drawn, not merely present in the DOM: its glyphs darken pixels.
    for (id, pixels) in report["painted"].as_object().unwrap() {
        let glyphs = text(id).chars().filter(|c| !c.is_whitespace()).count() as u64;
        assert!(pixels.as_u64().unwrap() >= 5 * glyphs, "#{id} paints {pixels} dark pixels: {report}");
    }
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "screenshot of {} bytes", png.len());
}
