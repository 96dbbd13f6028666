// The chat page: chat.v1.Chat over gRPC-Web, through the Envoy that serves
// this page (same origin). Subscribe for the room's events, Post to say.
// The room's messages and the last seq seen are kept in localStorage, so a
// reload resumes after that seq (no gap, no duplicate); a lost stream
// (a replica killed, silence past three heartbeats) resumes by itself.
//
// Test hooks (docs/web.md; keep them): /?room=R&user=U(&token=T) joins at
// once; #status says "connected" while subscribed; #messages holds one
// element per message with data-seq, data-user, data-state
// (pending|acked|failed), in seq order, the user's unacknowledged last;
// #text and #send say; #notifications.

import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { Chat } from "gen/chat_pb";

interface Stored {
  seq: string; // a uint64, kept as text
  user: string;
  text: string;
  clientId: string;
}

interface Own {
  clientId: string;
  text: string;
  state: "pending" | "failed";
}

/** What survives a reload, per room and user. */
interface Saved {
  epoch: string;
  lastSeq: string;
  messages: Stored[];
}

const KEEP = 500; // messages kept in localStorage per room
const params = new URLSearchParams(location.search);
const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

function setStatus(text: string, live: boolean) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("live", live);
}

function start(room: string, user: string, token: string | null) {
  const auth: Interceptor = (next) => async (req) => {
    if (token) req.header.set("authorization", `Bearer ${token}`);
    return next(req);
  };
  const transport = createGrpcWebTransport({ baseUrl: location.origin, interceptors: [auth] });
  const chat = createClient(Chat, transport);
  const key = `greet-chat:${room}:${user}`;

  let saved: Saved = { epoch: "", lastSeq: "0", messages: [] };
  try {
    const text = localStorage.getItem(key);
    if (text) saved = JSON.parse(text) as Saved;
  } catch {
    localStorage.removeItem(key);
  }
  const messages = new Map<string, Stored>(saved.messages.map((m) => [m.seq, m]));
  const own: Own[] = [];
  const present = new Set<string>();

  const save = () => {
    const kept = [...messages.values()].sort((a, b) => cmp(a.seq, b.seq)).slice(-KEEP);
    localStorage.setItem(key, JSON.stringify({ epoch: saved.epoch, lastSeq: saved.lastSeq, messages: kept }));
  };

  const render = () => {
    const list = $("messages");
    const stick = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
    const items: HTMLElement[] = [];
    for (const m of [...messages.values()].sort((a, b) => cmp(a.seq, b.seq))) {
      items.push(item(m.seq, m.user, m.text, "acked"));
    }
    for (const o of own) {
      const li = item("", user, o.text, o.state);
      // A failed message is retried by a click on it, with its client id.
      if (o.state === "failed") li.onclick = () => post(o);
      items.push(li);
    }
    list.replaceChildren(...items);
    if (stick) list.scrollTop = list.scrollHeight;
    $("presence").replaceChildren(
      ...[...present].sort().map((u) => Object.assign(document.createElement("li"), { textContent: u })),
    );
  };

  const stored = (m: Stored) => {
    messages.set(m.seq, m);
    const mine = own.findIndex((o) => m.clientId !== "" && o.clientId === m.clientId);
    if (mine >= 0) own.splice(mine, 1);
    if (cmp(m.seq, saved.lastSeq) > 0) saved.lastSeq = m.seq;
  };

  /** Posts `o`, reusing its client id on a retry: a resend is stored once. */
  async function post(o: Own) {
    o.state = "pending";
    render();
    try {
      const answer = await chat.post({ room, user, text: o.text, clientId: o.clientId }, { timeoutMs: 15000 });
      if (own.includes(o)) {
        own.splice(own.indexOf(o), 1);
        messages.set(answer.seq.toString(), { seq: answer.seq.toString(), user, text: o.text, clientId: o.clientId });
      }
    } catch (e) {
      o.state = "failed";
      console.warn("post failed", e);
    }
    save();
    render();
  }

  $<HTMLFormElement>("say").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $<HTMLInputElement>("text");
    const text = input.value;
    if (!text) return;
    input.value = "";
    const o: Own = { clientId: crypto.randomUUID(), text, state: "pending" };
    own.push(o);
    void post(o);
  });

  /** One Subscribe call, until it ends; throws what ended it. */
  async function subscribeOnce() {
    const abort = new AbortController();
    let heartbeatMs = 15000;
    let heard = Date.now();
    const watchdog = setInterval(() => {
      if (Date.now() - heard > 3 * heartbeatMs) abort.abort(new Error("no heartbeat"));
    }, 500);
    const resume = saved.epoch !== "" && saved.lastSeq !== "0";
    const request = resume
      ? { room, user, resumeAfter: BigInt(saved.lastSeq), epoch: saved.epoch }
      : { room, user };
    try {
      for await (const ev of chat.subscribe(request, { signal: abort.signal })) {
        heard = Date.now();
        const e = ev.event;
        switch (e.case) {
          case "welcome":
            heartbeatMs = Math.max(e.value.heartbeatMs, 100);
            if (!resume) {
              // A fresh join: the backlog that follows is the room's tail.
              messages.clear();
              saved.lastSeq = "0";
            }
            saved.epoch = e.value.epoch;
            present.clear();
            setStatus(`connected as ${user}`, true);
            break;
          case "message":
            stored({
              seq: e.value.seq.toString(),
              user: e.value.user,
              text: e.value.text,
              clientId: e.value.clientId,
            });
            save();
            break;
          case "joined":
            present.add(e.value.user);
            break;
          case "left":
            present.delete(e.value.user);
            break;
        }
        render();
      }
    } finally {
      clearInterval(watchdog);
    }
  }

  (async () => {
    let backoff = 200;
    for (;;) {
      try {
        await subscribeOnce();
        backoff = 200;
      } catch (e) {
        if (e instanceof ConnectError && e.code === Code.OutOfRange) {
          // The room's history was reset: join afresh.
          saved = { epoch: "", lastSeq: "0", messages: [] };
          messages.clear();
          save();
        } else if (e instanceof ConnectError && (e.code === Code.PermissionDenied || e.code === Code.InvalidArgument || e.code === Code.Unauthenticated)) {
          setStatus(`refused: ${e.rawMessage}`, false);
          return;
        }
        console.warn("subscription lost", e);
      }
      setStatus("offline, retrying", false);
      await new Promise((r) => setTimeout(r, backoff));
      backoff = Math.min(backoff * 2, 2000);
    }
  })();
  render();
}

function cmp(a: string, b: string): number {
  const [x, y] = [BigInt(a), BigInt(b)];
  return x < y ? -1 : x > y ? 1 : 0;
}

function item(seq: string, user: string, text: string, state: string): HTMLElement {
  const li = document.createElement("li");
  li.dataset.seq = seq;
  li.dataset.user = user;
  li.dataset.state = state;
  // The element's text is the message's; seq and user show through CSS.
  li.textContent = text;
  return li;
}

const room = params.get("room");
const user = params.get("user") ?? "";
if (room) {
  $("room").textContent = room;
  start(room, user, params.get("token"));
} else {
  const form = $<HTMLFormElement>("join");
  form.hidden = false;
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new URLSearchParams({ room: $<HTMLInputElement>("join-room").value, user: $<HTMLInputElement>("join-user").value });
    location.search = next.toString();
  });
}
