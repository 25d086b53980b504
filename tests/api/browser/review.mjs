// Drives Debian's Chromium through playwright-core over the review page; prints one JSON object.
// Usage: node review.mjs BASE_URL KEY REQUEST_ID XSS_REQUEST_ID SCREENSHOT_DIR (NODE_PATH names playwright-core).
import { createRequire } from "node:module";
const require = createRequire(process.env.NODE_PATH + "/");
const { chromium } = require("playwright-core");

const [base, key, rid, xssRid, shots] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const out = {};
try {
  // without a key: 401 (asked through the context's request API: a page would wait on the login prompt)
  const anonymous = await browser.newContext();
  out.anonymousStatus = (await anonymous.request.get(`${base}/review`)).status();

  const context = await browser.newContext({ httpCredentials: { username: "reviewer", password: key } });
  const page = await context.newPage();
  const dialogs = [];
  page.on("dialog", (d) => { dialogs.push(d.message()); d.dismiss(); });

  await page.goto(`${base}/review?since_hours=0&sort=score_desc`);
  out.listRows = await page.locator("tr.verdict").count();
  out.listIds = await page.locator("tr.verdict td.mono a").allTextContents();
  await page.screenshot({ path: `${shots}/review-list.png`, fullPage: true });

  await page.click(`a[href="/review/${encodeURIComponent(rid)}"]`);
  await page.waitForSelector("#faces");
  out.detailUrl = page.url();
  out.label = await page.locator("#label").textContent();
  out.notice = await page.locator("#notice").textContent().catch(() => null);
  out.faces = await page.locator("tr.face").count();
  out.faceScores = await page.locator("td.fake-score").allTextContents();
  out.threshold = await page.locator("#threshold").textContent();
  out.timelineMarks = await page.locator("#timeline .mark").count();
  // thumbnails came through (authenticated) and decoded as 96 px images
  out.thumbWidths = await page.$$eval("img.thumb", (imgs) => Promise.all(imgs.map((img) =>
    img.complete ? img.naturalWidth : new Promise((ok) => { img.onload = () => ok(img.naturalWidth); img.onerror = () => ok(0); }))));
  await page.screenshot({ path: `${shots}/review-detail.png`, fullPage: true });

  await page.goto(`${base}/review/${encodeURIComponent(xssRid)}`);
  await page.waitForTimeout(500);
  out.xssExecuted = await page.evaluate(() => window.__xss !== undefined);
  out.xssShownAsText = await page.locator("#metadata").textContent();
  out.injectedElements = await page.locator("#metadata script, #metadata img, body > script").count();
  out.dialogs = dialogs;
  await page.screenshot({ path: `${shots}/review-xss.png`, fullPage: true });
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
