// Opens the status page in Debian's chromium (headless, through puppeteer-core), waits for
// its first refresh, and reports as JSON on stdout: the text of each number on the page, how
// many dark pixels each number paints in a screenshot of its element (text that is in the
// DOM but not drawn — hidden, zero-sized, same colour as the background — paints none), and
// whether the page kept refreshing. Writes a full-page screenshot to the given path.
//
// Usage: node status-page.mjs URL SCREENSHOT.png   (CHROMIUM=/path/to/chromium to override)
// Exits 2 when chromium cannot be found or started: the caller fails loudly, never skips.

import { existsSync, writeFileSync } from "node:fs";
import puppeteer from "puppeteer-core";
import { PNG } from "pngjs";

const [url, screenshotPath] = process.argv.slice(2);
if (!url || !screenshotPath) {
  console.error("usage: node status-page.mjs URL SCREENSHOT.png");
  process.exit(64);
}

const candidates = [process.env.CHROMIUM, "/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"];
const executablePath = candidates.find((p) => p && existsSync(p));
if (!executablePath) {
  console.error("status-page: no chromium found (apt-get install chromium, or set CHROMIUM)");
  process.exit(2);
}

const NUMBERS = [
  "accepted-rate", "accepted-total", "rejected-total", "stored-rate", "stored-total",
  "p50", "p95", "p99", "processed-count", "queue-depth", "dead-letters", "error-rate",
];

/** Pixels clearly darker than the page's light card background: glyph strokes. */
function darkPixels(png) {
  const image = PNG.sync.read(png);
  let dark = 0;
  for (let i = 0; i < image.data.length; i += 4) {
    const [r, g, b] = [image.data[i], image.data[i + 1], image.data[i + 2]];
    if ((r + g + b) / 3 < 128) dark += 1;
  }
  return dark;
}

let browser;
try {
  browser = await puppeteer.launch({
    executablePath,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"],
  });
} catch (e) {
  console.error(`status-page: cannot start ${executablePath}: ${e.message}`);
  process.exit(2);
}

try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1200, height: 800 });
  const consoleErrors = [];
  page.on("console", (m) => m.type() === "error" && consoleErrors.push(m.text()));
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  await page.goto(url, { waitUntil: "load", timeout: 15000 });
  await page.waitForSelector("body[data-ready='true']", { timeout: 15000 });
  const firstState = await page.$eval("#state", (e) => e.textContent);
  // Let a second refresh happen: the rates need two samples, and the page must keep polling.
  await page.waitForFunction((first) => document.querySelector("#state").textContent !== first, { timeout: 15000 }, firstState);

  const numbers = {};
  const painted = {};
  for (const id of NUMBERS) {
    const element = await page.$(`#${id}`);
    numbers[id] = await element.evaluate((e) => e.textContent);
    painted[id] = darkPixels(await element.screenshot({ type: "png" }));
  }
  const full = await page.screenshot({ type: "png", fullPage: true });
  writeFileSync(screenshotPath, full);
  const state = await page.$eval("#state", (e) => e.textContent);
  console.log(JSON.stringify({ numbers, painted, state, consoleErrors, screenshotBytes: full.length }));
} finally {
  await browser.close();
}
