// The cluster monitor's live part: redraw the tables from the server-sent snapshots, and
// press Make Not-Ready / Ready.  No library, nothing from the internet.
"use strict";

const csrf = document.querySelector('meta[name="csrf-token"]').content;
const pending = new Map();  // node id -> command in progress ("drain"/"ready"), shown until done

function cell(tr, text, cls) {
  const td = document.createElement("td");
  if (cls) td.className = cls;
  td.textContent = text;
  tr.appendChild(td);
  return td;
}

function progress(n) {
  const what = pending.get(n.id);
  if (what === "drain") {
    if (n.state === "NOT_READY" && n.drained) { pending.delete(n.id); return "drained"; }
    return n.state === "NOT_READY" ? `draining: ${n.work} left` : "asking the controller\u2026";
  }
  if (what === "ready") {
    if (n.state === "READY") { pending.delete(n.id); return ""; }
    return "making ready\u2026";
  }
  return n.state === "NOT_READY" && n.drained ? "drained" : "";
}

function drawNodes(nodes) {
  const body = document.querySelector("#nodes tbody");
  const rows = [];
  for (const n of nodes) {
    const tr = document.createElement("tr");
    tr.dataset.node = n.id;
    tr.dataset.state = n.state;
    tr.dataset.drained = n.drained ? "yes" : "no";
    cell(tr, n.region ? `${n.id} (${n.region})` : n.id, "id");
    cell(tr, n.role);
    cell(tr, n.state + (n.drained ? " (drained)" : ""), "state state-" + n.state);
    cell(tr, n.controller ? `controller (epoch ${n.epoch})` : (n.backup ? "backup" : ""));
    const addr = cell(tr, "");
    for (const [k, a] of Object.entries(n.addresses).sort()) {
      addr.appendChild(document.createTextNode(`${k} ${a}`));
      addr.appendChild(document.createElement("br"));
    }
    cell(tr, String(n.work), "work");
    cell(tr, n.uptime);
    const faults = cell(tr, String(n.fault_count));
    if (n.faults.length) faults.title = n.faults.map(f => `${f.task}: ${f.error}`).join("\n");
    cell(tr, `${n.host} / ${n.pid}`);
    const act = cell(tr, "", "actions");
    const status = document.createElement("span");
    status.className = "progress";
    status.textContent = progress(n) + (n.drain_error ? ` (${n.drain_error})` : "");
    // Another region's instance: its own region's monitor drains it (this controller cannot).
    if (n.local === false) {}
    else if (n.state === "READY") act.appendChild(button("Make Not-Ready", "drain", n.id));
    else if (n.state === "NOT_READY") act.appendChild(button("Ready", "ready", n.id));
    act.appendChild(status);
    rows.push(tr);
  }
  body.replaceChildren(...rows);
}

function drawTransitions(list) {
  const body = document.querySelector("#transitions tbody");
  body.replaceChildren(...list.slice().reverse().map(t => {
    const tr = document.createElement("tr");
    cell(tr, t.at); cell(tr, t.node); cell(tr, t.what); cell(tr, t.detail);
    return tr;
  }));
}

function button(label, command, id) {
  const b = document.createElement("button");
  b.textContent = label;
  b.className = "cmd-" + command;
  b.disabled = pending.has(id);
  b.addEventListener("click", () => send(command, id));
  return b;
}

async function send(command, id) {
  const msg = document.getElementById("message");
  pending.set(id, command);
  msg.className = "message";
  msg.textContent = `${command === "drain" ? "Make Not-Ready" : "Ready"}: ${id}\u2026`;
  try {
    const r = await fetch(`/monitor/nodes/${encodeURIComponent(id)}/${command}`,
                          {method: "POST", headers: {"X-CSRF-Token": csrf}, credentials: "same-origin"});
    const body = await r.json();
    if (!r.ok) {
      pending.delete(id);
      msg.className = "message bad";
      msg.textContent = `${id}: ${body.error}`;
    } else {
      msg.textContent = `${id}: the controller accepted ${command}`;
    }
  } catch (e) {
    pending.delete(id);
    msg.className = "message bad";
    msg.textContent = `${id}: ${e}`;
  }
}

function connect() {
  const live = document.getElementById("live");
  const source = new EventSource("/monitor/events");
  source.addEventListener("cluster", e => {
    const snap = JSON.parse(e.data);
    drawNodes(snap.nodes);
    drawTransitions(snap.transitions);
    const cut = (snap.unreachable || []).join(", ");
    live.textContent = cut ? `live; regions out of reach: ${cut}` : "live";
    live.className = cut ? "live off" : "live on";
  });
  source.addEventListener("trouble", e => {
    live.textContent = "bus trouble: " + JSON.parse(e.data);
    live.className = "live off";
  });
  source.onerror = () => { live.textContent = "reconnecting\u2026"; live.className = "live off"; };
}

connect();
