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
// #text and #send say; #notifications holds one element per notification
// (data-kind "mention", data-room, data-seq), kept in localStorage and
// resumed after the last one stored; #unread one element per room with
// mentions the user has not read there (data-room, data-count: mentions of
// messages after the last seq the page stored for that room).

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

/** A notification as the page keeps it. */
interface Note {
  seq: string;
  kind: string;
  room: string;
  messageSeq: string;
  from: string;
  text: string;
}

interface SavedNotes {
  epoch: string;
  lastSeq: string;
  notes: Note[];
}

/** Retries `once` for ever with a capped backoff; stops on a refusal. */
async function keep(once: () => Promise<void>, reset: () => void, onLost: () => void) {
  let backoff = 200;
  for (;;) {
    try {
      await once();
      backoff = 200;
    } catch (e) {
      if (e instanceof ConnectError && e.code === Code.OutOfRange) {
        // The history was reset: start afresh.
        reset();
      } else if (e instanceof ConnectError && (e.code === Code.PermissionDenied || e.code === Code.InvalidArgument || e.code === Code.Unauthenticated)) {
        setStatus(`refused: ${e.rawMessage}`, false);
        return;
      }
      console.warn("stream lost", e);
    }
    onLost();
    await new Promise((r) => setTimeout(r, backoff));
    backoff = Math.min(backoff * 2, 2000);
  }
}

function load<T>(key: string, empty: T): T {
  try {
    const text = localStorage.getItem(key);
    if (text) return JSON.parse(text) as T;
  } catch {
    localStorage.removeItem(key);
  }
  return empty;
}

function start(room: string, user: string, token: string | null) {
  const auth: Interceptor = (next) => async (req) => {
    if (token) req.header.set("authorization", `Bearer ${token}`);
    return next(req);
  };
  const transport = createGrpcWebTransport({ baseUrl: location.origin, interceptors: [auth] });
  const chat = createClient(Chat, transport);
  const key = `greet-chat:${room}:${user}`;

  let saved = load<Saved>(key, { epoch: "", lastSeq: "0", messages: [] });
  const notesKey = `greet-notes:${user}`;
  let notes = load<SavedNotes>(notesKey, { epoch: "", lastSeq: "0", notes: [] });
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
    renderNotes();
  };

  const renderNotes = () => {
    $("notifications").replaceChildren(
      ...notes.notes.map((n) => {
        const li = document.createElement("li");
        Object.assign(li.dataset, { kind: n.kind, room: n.room, seq: n.seq });
        li.textContent = `${n.from} in ${n.room}: ${n.text}`;
        return li;
      }),
    );
    // Unread: mentions of messages after the last seq stored for their room.
    const unread = new Map<string, number>();
    const lastSeen = (r: string) =>
      r === room ? saved.lastSeq : load<Saved>(`greet-chat:${r}:${user}`, { epoch: "", lastSeq: "0", messages: [] }).lastSeq;
    for (const n of notes.notes) {
      if (cmp(n.messageSeq, lastSeen(n.room)) > 0) unread.set(n.room, (unread.get(n.room) ?? 0) + 1);
    }
    $("unread").replaceChildren(
      ...[...unread].sort().map(([r, count]) => {
        const li = document.createElement("li");
        Object.assign(li.dataset, { room: r, count: String(count) });
        const a = Object.assign(document.createElement("a"), { textContent: `${r} (${count})` });
        a.href = `?${new URLSearchParams({ room: r, user, ...(token ? { token } : {}) })}`;
        li.append(a);
        return li;
      }),
    );
  };

  /** One Notifications call, until it ends; throws what ended it. */
  async function notificationsOnce() {
    const resume = notes.epoch !== "" && notes.lastSeq !== "0";
    const request = resume ? { user, resumeAfter: BigInt(notes.lastSeq), epoch: notes.epoch } : { user };
    for await (const ev of chat.notifications(request)) {
      const e = ev.event;
      if (e.case === "welcome") {
        if (!resume) notes = { epoch: "", lastSeq: "0", notes: [] };
        notes.epoch = e.value.epoch;
      } else if (e.case === "notification" && cmp(e.value.seq.toString(), notes.lastSeq) > 0) {
        const n = e.value;
        notes.lastSeq = n.seq.toString();
        notes.notes.push({
          seq: n.seq.toString(),
          kind: n.kind,
          room: n.room,
          messageSeq: n.messageSeq.toString(),
          from: n.from,
          text: n.text,
        });
        notes.notes = notes.notes.slice(-KEEP);
        localStorage.setItem(notesKey, JSON.stringify(notes));
        renderNotes();
      }
    }
  }

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

  const offline = () => setStatus("offline, retrying", false);
  void keep(
    subscribeOnce,
    () => {
      saved = { epoch: "", lastSeq: "0", messages: [] };
      messages.clear();
      save();
    },
    offline,
  );
  void keep(
    notificationsOnce,
    () => {
      notes = { epoch: "", lastSeq: "0", notes: [] };
      localStorage.removeItem(notesKey);
    },
    () => {},
  );
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
