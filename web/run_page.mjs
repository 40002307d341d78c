// Drive an llmc web bundle in headless Chromium (WebGPU on its software adapter) and print JSON results.
// usage: node web/run_page.mjs BUNDLE_DIR '{"ids": [...], "max_tokens": N, "text": "..."}'
//        node web/run_page.mjs BUNDLE_DIR '{"chat": ["turn 1", "turn 2"], "max_tokens": N, "screenshot": "x.png"}'
// Serves BUNDLE_DIR on 127.0.0.1 (a secure context, as WebGPU needs), opens index.html, waits for the
// model to load, then either runs greedy generation on the given prompt ids (and tokenizes `text` in the
// page), or types each chat turn into the page and clicks Send (greedy), saves a screenshot, reloads the
// page and reports which weight shards each load fetched from the server.
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";

const [bundle, requestJson] = process.argv.slice(2);
const request = JSON.parse(requestJson || "{}");
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".json": "application/json", ".wasm": "application/wasm" };

const served = []; // every file the server sent, in order
const server = http.createServer((req, res) => {
  const rel = decodeURIComponent(new URL(req.url, "http://x").pathname).replace(/^\/+/, "") || "index.html";
  served.push(rel);
  const file = path.resolve(bundle, rel);
  if (!file.startsWith(path.resolve(bundle)) || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, { "Content-Type": TYPES[path.extname(file)] || "application/octet-stream" });
  fs.createReadStream(file).pipe(res);
});
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const url = `http://127.0.0.1:${server.address().port}/index.html`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-webgpu-adapter=swiftshader"],
});
const logs = [];
let result;
try {
  const page = await browser.newPage();
  page.on("console", (msg) => logs.push(`[${msg.type()}] ${msg.text()}`));
  page.on("pageerror", (err) => logs.push(`[pageerror] ${err.message}`));
  if (request.chat) {
    result = await chat(page);
  } else {
    result = await generate(page);
  }
} catch (err) {
  result = { ok: false, error: String(err && err.message ? err.message : err), logs };
} finally {
  await browser.close();
  server.close();
}
result.logs = logs;
process.stdout.write(JSON.stringify(result) + "\n");
process.exit(result.ok ? 0 : 1);

async function chat(page) {
  const shardsFetched = () => served.filter((f) => f.startsWith("params_shard_")).length;
  const load = async (action) => {
    const before = shardsFetched();
    const started = Date.now();
    await action();
    const ready = await page.evaluate(() => window.llmcReady);
    return { ready, seconds: (Date.now() - started) / 1000, shards_fetched: shardsFetched() - before };
  };
  const first = await load(() => page.goto(url));
  await page.fill("#temperature", "0");
  await page.fill("#max-tokens", String(request.max_tokens || 8));
  const turns = [];
  for (const text of request.chat) {
    await page.fill("#input", text);
    await page.click("#send");
    const reply = await page.evaluate(() => window.llmcPending);
    const status = await page.textContent("#status");
    turns.push({ ...reply, status });
  }
  const transcript = await page.$$eval(".message .text", (nodes) => nodes.map((n) => n.textContent));
  if (request.screenshot) await page.screenshot({ path: request.screenshot, fullPage: true });
  const second = await load(() => page.reload());
  return { ok: true, first_load: first, second_load: second, turns, transcript };
}

async function generate(page) {
  if (request.hide_webgpu) {
    // a browser without WebGPU: the page must say so
    await page.addInitScript(() => Object.defineProperty(Navigator.prototype, "gpu", { get: () => undefined }));
  }
  const started = Date.now();
  await page.goto(url);
  let ready;
  try {
    ready = await page.evaluate(() => window.llmcReady);
  } catch (err) {
    const shown = await page.textContent("#error");
    throw new Error(`${err.message} | the page shows: ${shown}`);
  }
  const loadSeconds = (Date.now() - started) / 1000;
  const genStarted = Date.now();
  const tokens = await page.evaluate(
    ([ids, n]) => window.llmcGenerate(ids, n, false),
    [request.ids, request.max_tokens || 8]
  );
  const generateSeconds = (Date.now() - genStarted) / 1000;
  const encoded = request.text === undefined ? null : await page.evaluate((t) => window.llmcTokenizer.encode(t), request.text);
  const decoded = await page.evaluate((ids) => window.llmcTokenizer.decode(ids), tokens);
  return { ok: true, tokens, encoded, decoded, load_seconds: loadSeconds, generate_seconds: generateSeconds, ready };
}
