"""The nemesis's checker (Jepsen's checker side): a pure function of what the
clients recorded, the servers' final History and the fault's timeline, the
same for every broker and every fault. It never looks at a process or the
network.

An acknowledgement is a Say's echo (its seq, in the epoch of the
connection's Welcome). A Say whose echo did not come in time is
indeterminate: neither counted as stored nor as lost; one whose call ended
with a status is refused. What it counts:

- lost: acknowledged client_ids absent from the final History of every server;
- duplicated: a client_id stored at two positions (in one server's History,
  or seen by clients at two (epoch, seq));
- reused: an (epoch, seq) that clients or Histories saw naming two messages;
  renumbered: an acknowledged message whose final seq (same epoch) is not
  its acknowledged one;
- reader gaps: seqs a reader skipped within one epoch (it resumes with
  resume_after, so it must see every seq once); repeats: seqs seen twice;
- deaf servers: one whose History ends behind another's, or whose reader
  (connected to it across the heal) saw none of the messages acknowledged
  after the heal, or ended behind the final History;
- per writer side: acknowledged, refused, timed out, acknowledged during the
  fault (sent after it began, acknowledged before the heal), and the
  longest stretch without an acknowledgement while that writer was trying."""

from __future__ import annotations

import json
from collections import defaultdict


def read_log(path) -> list[dict]:
    """JSON lines; a torn last line (a killed writer) is skipped."""
    events = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    except FileNotFoundError:
        pass
    return events


def longest_silence(attempts: list[dict], start: float, stop: float) -> float:
    """Longest stretch in [start, stop] with no acknowledgement while the writer tried."""
    if not attempts:
        return round(stop - start, 2)
    acks = sorted(a["t"] for a in attempts if a["outcome"] == "ack")
    edges = [min(a["sent"] for a in attempts)] + acks + [max(a["t"] for a in attempts)]
    return round(max(b - a for a, b in zip(edges, edges[1:])), 2)


def reader_order(events: list[dict]) -> dict:
    """Gaps and repeats in one reader's view, epoch by epoch."""
    gaps, repeats, expected, epoch = [], 0, None, None
    for e in events:
        if e["kind"] == "epoch":
            epoch, expected = e["epoch"], e["from_seq"] + 1
        elif e["kind"] == "reset":
            epoch, expected = None, None
        elif e["kind"] == "msg" and expected is not None and e.get("epoch") == epoch:
            if e["seq"] > expected:
                gaps.append([expected, e["seq"] - 1])
            elif e["seq"] < expected:
                repeats += 1
            expected = max(expected, e["seq"] + 1)
    return {"gaps": gaps, "missed": sum(b - a + 1 for a, b in gaps), "repeats": repeats}


def connected_spans(events: list[dict], end: float) -> list[tuple[str, float, float]]:
    """(server, from, to) for each connection a reader had."""
    spans, current = [], None
    for e in events:
        if e["kind"] == "connected":
            current = (e["server"], e["t"])
        elif e["kind"] in ("lost", "reset") and current is not None:
            spans.append((current[0], current[1], e["t"]))
            current = None
    if current is not None:
        spans.append((current[0], current[1], end))
    return spans


def check(writers: dict[str, list[dict]], readers: dict[str, list[dict]], histories: dict[str, dict],
          servers: dict[str, str], timeline: dict) -> dict:
    """writers/readers: side -> events; histories: side -> {"epoch", "messages": [[seq, cid, user, text]]}
    or {"error"}; servers: side -> address; timeline: start, fault, heal, stop_writing, end (wall clock)."""
    side_of = {addr: side for side, addr in servers.items()}
    attempts = {side: [e for e in evs if e["kind"] == "attempt"] for side, evs in writers.items()}
    acked = {}  # cid -> (epoch, seq, ack time, side)
    for side, atts in attempts.items():
        for a in atts:
            if a["outcome"] == "ack":
                acked.setdefault(a["cid"], (a["epoch"], a["seq"], a["t"], side))

    # Every (epoch, seq) -> cids, and cid -> positions, as anyone saw them.
    names: dict[tuple, set] = defaultdict(set)
    positions: dict[str, set] = defaultdict(set)
    for cid, (epoch, seq, _, _) in acked.items():
        names[(epoch, seq)].add(cid)
        positions[cid].add((epoch, seq))
    for evs in list(writers.values()) + list(readers.values()):
        for e in evs:
            if e["kind"] == "msg" and e.get("cid"):
                names[(e["epoch"], e["seq"])].add(e["cid"])
                positions[e["cid"]].add((e["epoch"], e["seq"]))
    final: dict[str, dict[str, int]] = {}  # side -> cid -> seq
    final_epoch, duplicated = {}, set()
    for side, h in histories.items():
        if "error" in h:
            continue
        final_epoch[side] = h["epoch"]
        seen = {}
        for seq, cid, _user, _text in h["messages"]:
            if not cid:
                continue
            names[(h["epoch"], seq)].add(cid)
            positions[cid].add((h["epoch"], seq))
            if cid in seen and seen[cid] != seq:
                duplicated.add(cid)
            seen[cid] = seq
        final[side] = seen
    # Stored twice as readers saw it: one client_id at two seqs of one epoch.
    reader_positions: dict[tuple, set] = defaultdict(set)
    for evs in readers.values():
        for e in evs:
            if e["kind"] == "msg" and e.get("cid"):
                reader_positions[(e["cid"], e["epoch"])].add(e["seq"])
    duplicated |= {cid for (cid, _), seqs in reader_positions.items() if len(seqs) > 1}
    reused = {f"{e}/{s}": sorted(c) for (e, s), c in names.items() if len(c) > 1}
    stored = set().union(*final.values()) if final else set()
    lost = sorted(cid for cid in acked if cid not in stored)
    renumbered = []
    for cid, (epoch, seq, _, _) in acked.items():
        for side, seen in final.items():
            if final_epoch[side] == epoch and cid in seen and seen[cid] != seq:
                renumbered.append(cid)
                break

    heal, stop = timeline["heal"], timeline["stop_writing"]
    # Acknowledged after the heal and kept: what every server's reader must hear.
    post_heal = {cid for cid, (_, _, t, _) in acked.items() if t > heal and cid in stored}
    # The final last seq, as the most advanced History has it.
    last_seq = max((max(seen.values(), default=0) for seen in final.values()), default=0)
    reader_report, deaf = {}, {}
    for side, evs in readers.items():
        order = reader_order(evs)
        spans = connected_spans(evs, timeline["end"])
        got_post_heal = defaultdict(int)
        for e in evs:
            if e["kind"] == "msg" and e.get("cid") in post_heal:
                got_post_heal[e["server"]] += 1
        last_msg = next((e for e in reversed(evs) if e["kind"] == "msg"), None)
        reader_report[side] = dict(order, post_heal_seen={side_of.get(s, s): n for s, n in got_post_heal.items()},
                                   reconnects=sum(1 for e in evs if e["kind"] == "connected") - 1,
                                   resets=sum(1 for e in evs if e["kind"] == "reset"),
                                   last_seq=last_msg["seq"] if last_msg else None,
                                   last_server=side_of.get(spans[-1][0]) if spans else None)
        for server, t0, t1 in spans:
            s = side_of.get(server, server)
            # Connected across the whole post-heal writing and to the end: it must have heard them.
            if t0 < heal + 1 and t1 >= timeline["end"] - 0.5 and post_heal and got_post_heal[server] == 0:
                deaf.setdefault(s, []).append(f"reader {side} heard none of the {len(post_heal)} messages "
                                              f"acknowledged after the heal")
        if spans and spans[-1][2] >= timeline["end"] - 0.5 and last_msg and last_msg["seq"] < last_seq \
                and last_msg.get("epoch") in final_epoch.values():
            deaf.setdefault(side_of.get(spans[-1][0]), []).append(
                f"reader {side} ended at seq {last_msg['seq']}, History at {last_seq}")
    for side, h in histories.items():
        if "error" in h:
            deaf.setdefault(side, []).append(f"History failed: {h['error']}")
            continue
        missing = stored - set(final[side])
        if missing:
            deaf.setdefault(side, []).append(f"History lacks {len(missing)} messages another server has")

    sides = {}
    for side, atts in attempts.items():
        fault_acks = [a for a in atts if a["outcome"] == "ack" and a["sent"] >= timeline["fault"] and a["t"] <= heal]
        sides[side] = {
            "attempts": len(atts),
            "acknowledged": sum(1 for a in atts if a["outcome"] == "ack"),
            "refused": sum(1 for a in atts if a["outcome"] == "refused"),
            "timed_out": sum(1 for a in atts if a["outcome"] == "timeout"),
            "acknowledged_during_fault": len(fault_acks),
            "unavailable_s": longest_silence(atts, timeline["start"], stop),
            "servers_used": sorted({side_of.get(a["server"], a["server"]) for a in atts}),
        }
    indeterminate = {a["cid"] for atts in attempts.values() for a in atts if a["outcome"] == "timeout"} - set(acked)
    return {
        "acknowledged": len(acked),
        "lost": len(lost),
        "duplicated": len(duplicated),
        "reused": len(reused),
        "renumbered": len(renumbered),
        "reader_gaps": sum(r["missed"] for r in reader_report.values()),
        "reader_repeats": sum(r["repeats"] for r in reader_report.values()),
        "deaf_servers": sorted(deaf),
        "indeterminate": len(indeterminate),
        "acknowledged_after_heal_kept": len(post_heal),
        "stored": len(stored),
        "epochs": sorted(set(final_epoch.values())),
        "sides": sides,
        "readers": reader_report,
        "deaf": deaf,
        "examples": {"lost": lost[:5], "duplicated": sorted(duplicated)[:5], "reused": dict(list(reused.items())[:3]),
                     "renumbered": renumbered[:5]},
    }


def table(summary: dict) -> str:
    """The human view of a summary."""
    rows = [
        ("acknowledged", summary["acknowledged"]),
        ("acknowledged then lost", summary["lost"]),
        ("duplicated", summary["duplicated"]),
        ("seq reused / renumbered", f"{summary['reused']} / {summary['renumbered']}"),
        ("reader gaps (missed seqs) / repeats", f"{summary['reader_gaps']} / {summary['reader_repeats']}"),
        ("deaf servers", ", ".join(f"{s} ({'; '.join(summary['deaf'][s])})" for s in summary["deaf_servers"]) or "none"),
        ("indeterminate (timed out, never acked)", summary["indeterminate"]),
        ("epochs at the end", len(summary["epochs"])),
    ]
    for side, s in sorted(summary["sides"].items()):
        rows.append((f"writer {side}: attempts / acked / refused / timed out",
                     f"{s['attempts']} / {s['acknowledged']} / {s['refused']} / {s['timed_out']}"))
        rows.append((f"writer {side}: acked during the fault; longest unavailable",
                     f"{s['acknowledged_during_fault']}; {s['unavailable_s']:.2f} s"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)
