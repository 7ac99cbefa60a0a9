// Drives Debian's chromium (playwright-core, no browser download) against a running gateway and
// prints what the browser saw as one JSON object on stdout; tests/it/browser.rs starts the
// gateway, runs this, and asserts on the JSON. Every wait has a deadline.
//
//   node run.mjs SCENARIO
//
// Scenarios:
//   demo-page            the demo page streams a completion (no cut)
//   demo-page-resume     the demo page, its connection cut mid-stream: it resumes by itself
//   cross-origin         a page on another origin streams through fetch() with CORS; a page on
//                        an origin not allowed is blocked
//   event-source-resume  a page on another origin starts a stream with fetch(), cuts it after
//                        CUT_AFTER events, and an EventSource resumes it from there
//
// Environment: TIDEGATE_URL (the gateway, http://127.0.0.1:PORT), OTHER_ORIGIN (an allowed
// origin serving any HTML page), REFUSED_ORIGIN (an origin not allowed, likewise), TOKENS and
// DELAY_MS (the mock pacing the demo page asks for), CUT_AFTER (events before a cut), API
// (the demo page's API: chat, the default, or responses),
// CHROMIUM (default /usr/bin/chromium).
import { chromium } from "playwright-core";

const SCENARIO_DEADLINE_MS = 60_000;
const STEP_DEADLINE_MS = 20_000;

const scenario = process.argv[2];
const gateway = requiredEnv("TIDEGATE_URL");
const env = (name, fallback) => process.env[name] ?? fallback;

function requiredEnv(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`run.mjs: ${name} is not set`);
    process.exit(2);
  }
  return value;
}

// The whole run has a deadline: a hung browser must not hang the test.
const deadline = setTimeout(() => {
  console.error(`run.mjs: ${scenario} did not finish within ${SCENARIO_DEADLINE_MS} ms`);
  process.exit(3);
}, SCENARIO_DEADLINE_MS);

// The flags this machine's chromium needs (no sandbox as root, no background connections to a
// network that is closed here). playwright adds --headless and a fresh, empty profile directory
// (--user-data-dir) of its own for every launch.
const browser = await chromium.launch({
  executablePath: env("CHROMIUM", "/usr/bin/chromium"),
  headless: true,
  chromiumSandbox: false,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});

/** A new page whose console errors, page errors and failed requests are collected. */
async function newPage(context) {
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_DEADLINE_MS);
  const problems = [];
  page.on("console", (message) => {
    if (message.type() === "error") problems.push(`console: ${message.text()}`);
  });
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  return { page, problems };
}

/** The demo page: fills the form, sends, optionally cuts once after `cutAfterTokens` tokens,
 * and waits for the page to say it is done (or failed). */
async function demoPage(context, cutAfterTokens) {
  const { page, problems } = await newPage(context);
  const response = await page.goto(`${gateway}/`);
  const headers = response.headers();
  await page.getByLabel(/^Tokens/).fill(env("TOKENS", "30"));
  await page.getByLabel(/^Delay between tokens/).fill(env("DELAY_MS", "20"));
  await page.getByLabel("Prompt", { exact: true }).fill("Hello from chromium");
  await page.getByLabel("API", { exact: true }).selectOption(env("API", "chat"));
  await page.getByRole("button", { name: "Send" }).click();
  let cut = false;
  if (cutAfterTokens !== null) {
    await page.waitForFunction(
      (n) => Number(document.getElementById("count").textContent) >= n,
      cutAfterTokens,
    );
    await page.getByRole("button", { name: "Cut the connection" }).click();
    cut = true;
  }
  await page.waitForFunction(() => ["done", "failed"].includes(document.body.dataset.state));
  const shown = await page.evaluate(() => ({
    state: document.body.dataset.state,
    text: document.getElementById("answer").textContent,
    status: document.getElementById("status").textContent,
    notes: [...document.querySelectorAll("#notes li")].map((li) => li.textContent),
    ttft: document.getElementById("ttft").textContent,
    rate: document.getElementById("rate").textContent,
    tokens: Number(document.getElementById("count").textContent),
    stream_id: document.getElementById("stream-id").textContent,
  }));
  return {
    http_status: response.status(),
    content_type: headers["content-type"] ?? null,
    content_security_policy: headers["content-security-policy"] ?? null,
    cut,
    ...shown,
    problems,
  };
}

/** In the page: a streaming chat completion with fetch(), its events read with a
 * ReadableStream reader. Stops after `cutAfter` events (aborting the fetch) when given. */
function streamInPage({ gateway, cutAfter }) {
  return (async () => {
    const controller = new AbortController();
    const response = await fetch(`${gateway}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model: "mock-1",
        stream: true,
        messages: [{ role: "user", content: "Hello from another origin" }],
      }),
      signal: controller.signal,
    });
    const out = {
      status: response.status,
      stream_id: response.headers.get("x-tidegate-stream-id"),
      resume_token: response.headers.get("x-tidegate-resume-token"),
      request_id: response.headers.get("x-request-id"),
      ids: [],
      text: "",
      done: false,
      cut: false,
    };
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let pending = "";
    // Bounded by the stream, which ends with [DONE], or by the cut.
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      pending += decoder.decode(value, { stream: true }).replaceAll("\r\n", "\n");
      let end;
      while ((end = pending.indexOf("\n\n")) !== -1) {
        const block = pending.slice(0, end);
        pending = pending.slice(end + 2);
        let data = null;
        for (const line of block.split("\n")) {
          if (line.startsWith("id:")) out.ids.push(line.slice(3).trim());
          if (line.startsWith("data:")) data = line.slice(5).trim();
        }
        if (data === null) continue;
        if (data === "[DONE]") {
          out.done = true;
        } else {
          out.text += JSON.parse(data).choices?.[0]?.delta?.content ?? "";
        }
        if (cutAfter !== null && out.ids.length >= cutAfter && !out.done) {
          controller.abort();
          out.cut = true;
          return out;
        }
      }
    }
    return out;
  })();
}

/** Runs streamInPage in `page` (by source: evaluate cannot carry a function argument). With
 * `settle`, a rejected fetch is reported as `{ rejected }` instead of thrown. */
function streamFrom(page, args, settle = false) {
  const call = `(${streamInPage.toString()})(${JSON.stringify(args)})`;
  return page.evaluate(
    settle ? `${call}.catch((error) => ({ rejected: error.name + ": " + error.message }))` : call,
  );
}

/** A page on another origin streams with CORS; a page on a refused origin is blocked. */
async function crossOrigin(context) {
  const { page, problems } = await newPage(context);
  await page.goto(`${requiredEnv("OTHER_ORIGIN")}/`);
  const allowed = await streamFrom(page, { gateway, cutAfter: null });
  const refusedPage = await newPage(context);
  await refusedPage.page.goto(`${requiredEnv("REFUSED_ORIGIN")}/`);
  const refused = await streamFrom(refusedPage.page, { gateway, cutAfter: null }, true);
  return { origin: requiredEnv("OTHER_ORIGIN"), ...allowed, refused, problems };
}

/** In the page: an EventSource on the resume URL; collects every message until [DONE]. */
function eventSourceInPage({ url, deadlineMs }) {
  return new Promise((resolve) => {
    const out = { ids: [], text: "", done: false, errors: 0, opened: false };
    const source = new EventSource(url);
    const timer = setTimeout(() => {
      source.close();
      resolve({ ...out, timed_out: true });
    }, deadlineMs);
    source.onopen = () => {
      out.opened = true;
    };
    source.onmessage = (event) => {
      out.ids.push(event.lastEventId);
      if (event.data === "[DONE]") {
        // EventSource treats [DONE] as just another message and would reconnect: close it.
        out.done = true;
        source.close();
        clearTimeout(timer);
        resolve(out);
        return;
      }
      out.text += JSON.parse(event.data).choices?.[0]?.delta?.content ?? "";
    };
    source.onerror = () => {
      out.errors += 1;
      // Closed by the server before [DONE] (an error answer, or a stream that failed): the
      // browser would retry on its own; report what happened instead.
      if (source.readyState === EventSource.CLOSED || out.errors >= 3) {
        source.close();
        clearTimeout(timer);
        resolve(out);
      }
    };
  });
}

/** A stream started with fetch() on another origin, cut after CUT_AFTER events, resumed with an
 * EventSource from the last id seen. */
async function eventSourceResume(context) {
  const { page, problems } = await newPage(context);
  await page.goto(`${requiredEnv("OTHER_ORIGIN")}/`);
  const cutAfter = Number(env("CUT_AFTER", "3"));
  const before = await streamFrom(page, { gateway, cutAfter });
  const lastId = before.ids.at(-1) ?? "0";
  const url =
    `${gateway}/v1/streams/${encodeURIComponent(before.stream_id ?? "")}` +
    `?token=${encodeURIComponent(before.resume_token ?? "")}` +
    `&last_event_id=${encodeURIComponent(lastId)}`;
  const after = await page.evaluate(eventSourceInPage, { url, deadlineMs: STEP_DEADLINE_MS });
  return {
    before,
    after,
    resumed_after: lastId,
    text: before.text + after.text,
    problems,
  };
}

let result;
const context = await browser.newContext();
try {
  switch (scenario) {
    case "demo-page":
      result = await demoPage(context, null);
      break;
    case "demo-page-resume":
      result = await demoPage(context, Number(env("CUT_AFTER", "3")));
      break;
    case "cross-origin":
      result = await crossOrigin(context);
      break;
    case "event-source-resume":
      result = await eventSourceResume(context);
      break;
    default:
      console.error(`run.mjs: unknown scenario ${JSON.stringify(scenario)}`);
      process.exitCode = 2;
  }
} catch (error) {
  result = { error: `${error.name}: ${error.message}` };
} finally {
  await browser.close();
  clearTimeout(deadline);
}
if (result !== undefined) console.log(JSON.stringify(result));
