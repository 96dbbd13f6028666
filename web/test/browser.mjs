// The chat page in real headless Chromium (Debian's /usr/bin/chromium,
// driven by playwright-core), through Envoy to two replicas sharing Redis.
// Run by tests/it/web_chat.rs, which starts them and passes:
//   WEB_URL         the page's origin through Envoy (http://127.0.0.1:PORT)
//   MODE            "chat" (the whole scenario), "never-connected" (Envoy
//                   without its gRPC-Web filter: the page must never say connected)
//                   or "tokens" (replicas with --auth-tokens: token-bob is bob's,
//                   token-eve eve's)
//   ADMINS          the replicas' admin host:port, comma-separated (their
//                   /metrics say how many subscribers each holds)
//   KILL_PID        the replica to SIGKILL mid-test
//   CORS_ORIGIN     the origin Envoy allows; SCREENSHOT  where to save the page
//   LATENCY_POSTS   (optional) alice posts this many more messages, one at a
//                   time; prints the Post-to-render latency at bob, p50/p99
// Prints one line per step and `N passed, N failed`; exits non-zero on failure.
import { chromium } from "playwright-core";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const url = env("WEB_URL");
const results = [];
let failed = 0;

async function step(name, body) {
  const started = Date.now();
  try {
    await body();
    results.push(`ok   ${name} (${Date.now() - started} ms)`);
  } catch (e) {
    failed++;
    results.push(`FAIL ${name}: ${e?.stack ?? e}`);
    throw e;
  }
}

function assert(cond, message) {
  if (!cond) throw new Error(message);
}

/** Polls `check` every 50 ms until it answers truthy, for at most `ms`. */
async function until(what, ms, check) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`not within ${ms} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const messages = (page) =>
  page.$$eval("#messages > *", (els) =>
    els.map((e) => ({ seq: e.dataset.seq, user: e.dataset.user, state: e.dataset.state, text: e.textContent })),
  );
const connected = (page) => page.waitForSelector("#status:has-text('connected')", { timeout: 15000 });

async function subscribersPerReplica() {
  const counts = [];
  for (const admin of env("ADMINS").split(",")) {
    const body = await (await fetch(`http://${admin}/metrics`)).text();
    const line = body.split("\n").find((l) => l.startsWith("chat_subscribers "));
    counts.push(Number(line?.split(" ")[1] ?? 0));
  }
  return counts;
}

/** Gap-free, duplicate-free, in seq order. */
function checkSequence(list, who) {
  const seqs = list.filter((m) => m.state === "acked").map((m) => Number(m.seq));
  for (let i = 1; i < seqs.length; i++) {
    assert(seqs[i] === seqs[i - 1] + 1, `${who}: seqs not contiguous: ${seqs.join(",")}`);
  }
}

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
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
try {
  if (env("MODE") === "never-connected") {
    await step("without the gRPC-Web filter the page never says connected", async () => {
      const page = await browser.newPage();
      await page.goto(`${url}/?room=lobby&user=alice`);
      // Bounded: the page's own retries run for these 5 s; it must stay out.
      const deadline = Date.now() + 5000;
      while (Date.now() < deadline) {
        const status = await page.textContent("#status");
        assert(!/\bconnected\b/.test(status), `the page said ${JSON.stringify(status)}`);
        await page.waitForTimeout(100);
      }
    });
  } else if (env("MODE") === "tokens") {
    const room = `tokens-${Date.now()}`;
    await step("a page whose token is eve's cannot post as bob, the name in its URL", async () => {
      const bob = await (await browser.newContext()).newPage();
      await bob.goto(`${url}/?room=${room}&user=bob&token=token-eve`);
      await bob.waitForSelector("#status:has-text('refused')", { timeout: 15000 });
      const status = await bob.textContent("#status");
      assert(status.includes(`token is "eve"'s; it cannot join as "bob"`), `status ${JSON.stringify(status)}`);
      await bob.fill("#text", "I am bob, says eve");
      await bob.click("#send");
      await until("the impostor's post fails", 5000, async () =>
        (await messages(bob)).some((m) => m.text === "I am bob, says eve" && m.state === "failed"),
      );
      // The real bob posts after it: had the impostor's been stored, it would come first.
      const real = await (await browser.newContext()).newPage();
      await real.goto(`${url}/?room=${room}&user=bob&token=token-bob`);
      await connected(real);
      await real.fill("#text", "the real bob");
      await real.click("#send");
      await until("the real bob's post is acked", 5000, async () =>
        (await messages(real)).some((m) => m.text === "the real bob" && m.state === "acked"),
      );
      const list = await messages(real);
      assert(list.length === 1 && list[0].seq === "1", `the room holds ${JSON.stringify(list)}`);
    });
  } else {
    const room = `web-${Date.now()}`;
    /** Envoy balances streams round robin; while both pages are on one
     * replica, `page` reloads (and resumes) until it is on the other. */
    const spread = async (page) => {
      for (let i = 0; ; i++) {
        const counts = await until("both subscriptions counted", 5000, async () => {
          const c = await subscribersPerReplica();
          return c.reduce((a, b) => a + b, 0) === 2 && c;
        });
        if (counts.every((c) => c === 1)) return;
        assert(i < 10, `both pages stayed on one replica: ${counts}`);
        await page.reload();
        await connected(page);
      }
    };
    const alice = await (await browser.newContext()).newPage();
    const bob = await (await browser.newContext()).newPage();
    await step("alice and bob connect through Envoy, on different replicas", async () => {
      await alice.goto(`${url}/?room=${room}&user=alice`);
      await connected(alice);
      await bob.goto(`${url}/?room=${room}&user=bob`);
      await connected(bob);
      await spread(bob);
    });
    let latencies = [];
    await step("alice posts; her message goes pending then acked, and bob sees it with the same seq within 1 s", async () => {
      for (let n = 1; n <= 3; n++) {
        const text = `hello ${n} from alice`;
        await alice.fill("#text", text);
        // Every state alice's message shows, as the page renders it.
        await alice.evaluate((text) => {
          window.statesSeen = [];
          window.stateObserver?.disconnect();
          window.stateObserver = new MutationObserver(() => {
            const own = [...document.querySelectorAll("#messages > *")].find((e) => e.textContent === text);
            if (own && window.statesSeen.at(-1) !== own.dataset.state) window.statesSeen.push(own.dataset.state);
          });
          window.stateObserver.observe(document.getElementById("messages"), { childList: true, subtree: true, attributes: true });
        }, text);
        const sent = Date.now();
        await alice.click("#send");
        const acked = await until("alice's message acked", 5000, async () => {
          const own = (await messages(alice)).find((m) => m.text === text);
          return own?.state === "acked" && own;
        });
        const seen = await until(`bob sees "${text}"`, 1000, async () =>
          (await messages(bob)).find((m) => m.text === text),
        );
        latencies.push(Date.now() - sent);
        const states = await alice.evaluate(() => window.statesSeen);
        assert(states[0] === "pending" && states.at(-1) === "acked", `alice's message showed ${states}`);
        assert(seen.seq === acked.seq && seen.user === "alice", `bob saw ${JSON.stringify(seen)}, alice ${JSON.stringify(acked)}`);
      }
      console.log(`post-to-render at bob (ms): ${latencies.join(", ")}`);
    });
    const posts = Number(process.env.LATENCY_POSTS ?? 0);
    if (posts > 0) {
      await step(`Post-to-render latency over ${posts} posts`, async () => {
        // Bob's page records when each text appears; alice's click starts the clock.
        await bob.evaluate(() => {
          window.rendered = new Map();
          new MutationObserver(() => {
            for (const e of document.querySelectorAll("#messages > *")) {
              if (!window.rendered.has(e.textContent)) window.rendered.set(e.textContent, performance.timeOrigin + performance.now());
            }
          }).observe(document.getElementById("messages"), { childList: true, subtree: true });
        });
        const took = [];
        for (let n = 0; n < posts; n++) {
          const text = `latency ${n}`;
          await alice.fill("#text", text);
          const sent = Date.now();
          await alice.click("#send");
          const at = await until(`bob renders ${text}`, 5000, () => bob.evaluate((t) => window.rendered.get(t), text));
          took.push(at - sent);
        }
        took.sort((a, b) => a - b);
        const pct = (p) => took[Math.min(took.length - 1, Math.floor((p / 100) * took.length))].toFixed(1);
        console.log(`post-to-render over ${posts} posts (ms): p50 ${pct(50)}, p99 ${pct(99)}, max ${took.at(-1).toFixed(1)}`);
      });
    }
    await step("bob reloads and sees every message once, in order, then new ones", async () => {
      const before = await messages(bob);
      await bob.reload();
      await connected(bob);
      await alice.fill("#text", "after bob's reload");
      await alice.click("#send");
      await until("bob sees the message after his reload", 5000, async () =>
        (await messages(bob)).some((m) => m.text === "after bob's reload"),
      );
      const after = await messages(bob);
      checkSequence(after, "bob");
      assert(after.length === before.length + 1, `bob had ${before.length}, now ${after.length}`);
    });
    const other = `${room}-elsewhere`;
    const mentionsOfBob = async () =>
      bob.$$eval(`#notifications > [data-kind="mention"]`, (els) => els.map((e) => ({ room: e.dataset.room, seq: e.dataset.seq })));
    await step("a mention of bob in a room he never joined shows in his #notifications, with an unread count, once after a reload", async () => {
      const carol = await (await browser.newContext()).newPage();
      await carol.goto(`${url}/?room=${other}&user=carol`);
      await connected(carol);
      const say = async (text) => {
        await carol.fill("#text", text);
        await carol.click("#send");
        await until(`carol's "${text}" acked`, 5000, async () =>
          (await messages(carol)).some((m) => m.text === text && m.state === "acked"),
        );
      };
      await say("hey @bob, look here");
      await until("bob's notification", 5000, async () => (await mentionsOfBob()).length === 1);
      assert(JSON.stringify(await mentionsOfBob()) === JSON.stringify([{ room: other, seq: "1" }]), JSON.stringify(await mentionsOfBob()));
      const count = await bob.getAttribute(`#unread > [data-room="${other}"]`, "data-count");
      assert(count === "1", `unread count ${count}`);
      await bob.reload();
      await connected(bob);
      await say("@bob again");
      await until("bob's second notification", 5000, async () => (await mentionsOfBob()).length >= 2);
      const after = await mentionsOfBob();
      assert(JSON.stringify(after.map((n) => n.seq)) === '["1","2"]', `after the reload bob has ${JSON.stringify(after)}`);
      await carol.close();
    });
    await step("a Post that fails shows failed; a click retries it with the same client_id, stored once", async () => {
      // The network drops the first attempt (the page sees what a lost
      // connection looks like); every attempt's request body is recorded:
      // room, user, text and client_id, as the server would decode them.
      const bodies = [];
      await alice.route("**/chat.v1.Chat/Post", async (route) => {
        bodies.push(route.request().postDataBuffer()?.toString("hex"));
        if (bodies.length === 1) await route.abort("failed");
        else await route.continue();
      });
      await alice.fill("#text", "first attempt fails");
      await alice.click("#send");
      await until("alice's message shows failed", 5000, async () =>
        (await messages(alice)).some((m) => m.text === "first attempt fails" && m.state === "failed"),
      );
      await alice.click(`#messages > [data-state="failed"]`);
      await until("the retry is acked", 5000, async () =>
        (await messages(alice)).some((m) => m.text === "first attempt fails" && m.state === "acked"),
      );
      await alice.unroute("**/chat.v1.Chat/Post");
      assert(bodies.length === 2 && bodies[0] === bodies[1], `the retry sent another request: ${bodies.join(" vs ")}`);
      await until("bob sees the retried message once", 5000, async () =>
        (await messages(bob)).filter((m) => m.text === "first attempt fails").length === 1,
      );
    });
    await step("a replica is SIGKILLed; both pages reconnect and go on", async () => {
      await spread(bob);
      for (const page of [alice, bob]) {
        await page.evaluate(() => {
          window.statusSeen = [];
          new MutationObserver(() =>
            window.statusSeen.push({ text: document.getElementById("status").textContent, at: Date.now() }),
          ).observe(
            document.getElementById("status"),
            { childList: true, subtree: true, characterData: true },
          );
        });
      }
      process.kill(Number(env("KILL_PID")), "SIGKILL");
      const killed = Date.now();
      const lostSubscription = async () => {
        const lost = [];
        for (const page of [alice, bob]) {
          lost.push((await page.evaluate(() => window.statusSeen)).some((s) => s.text === "offline, retrying"));
        }
        return lost;
      };
      // A page's own Post is acked from the Post's answer, not its stream, so
      // wait for the page on the killed replica to notice before posting.
      await until("a page notices its replica is gone", 15000, async () => (await lostSubscription()).some(Boolean));
      await alice.fill("#text", "after the kill");
      await alice.click("#send");
      for (const [name, page] of [["alice", alice], ["bob", bob]]) {
        await until(`${name} sees the message after the kill`, 15000, async () =>
          (await messages(page)).some((m) => m.text === "after the kill" && m.state === "acked"),
        );
        await connected(page);
        checkSequence(await messages(page), name);
      }
      const lost = await lostSubscription();
      // The page's own clock stamps its status changes.
      const seen = await (lost[0] ? alice : bob).evaluate(() => window.statusSeen);
      const back = seen.find((s, i) => i > 0 && /\bconnected\b/.test(s.text) && seen[i - 1].text === "offline, retrying");
      console.log(`the page on the killed replica said connected again ${back ? back.at - killed : "?"} ms after the SIGKILL`);
      assert(lost.filter(Boolean).length === 1, `the page on the killed replica, and only it, lost its subscription: ${lost}`);
      await bob.fill("#text", "bob goes on");
      await bob.click("#send");
      await until("alice sees bob after the kill", 5000, async () =>
        (await messages(alice)).some((m) => m.text === "bob goes on" && m.state === "acked"),
      );
    });
    await step("a CORS preflight from the allowed origin is answered as configured", async () => {
      const origin = env("CORS_ORIGIN");
      const answer = await fetch(`${url}/chat.v1.Chat/Post`, {
        method: "OPTIONS",
        headers: { origin, "access-control-request-method": "POST", "access-control-request-headers": "content-type,x-grpc-web" },
      });
      assert(answer.headers.get("access-control-allow-origin") === origin, `allow-origin ${answer.headers.get("access-control-allow-origin")}`);
      const other = await fetch(`${url}/chat.v1.Chat/Post`, {
        method: "OPTIONS",
        headers: { origin: "http://other.invalid", "access-control-request-method": "POST" },
      });
      assert(other.headers.get("access-control-allow-origin") === null, "another origin was allowed");
    });
    if (process.env.SCREENSHOT) {
      await bob.setViewportSize({ width: 900, height: 520 });
      await bob.screenshot({ path: process.env.SCREENSHOT });
    }
  }
} catch {
  // Reported below.
} finally {
  await browser.close();
}
for (const line of results) console.log(line);
console.log(`${results.length - failed} passed, ${failed} failed`);
process.exit(failed === 0 && results.length > 0 ? 0 : 1);
