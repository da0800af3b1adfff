// The live topology page of glimpse-agent. It reads the agent's own HTTP
// API only: /v1/zones (every 2 s), /v1/topology (every 5 s) and, for the
// product chosen, a websocket subscription to every address of the product
// with every health (/v1/subscribe), which keeps the tree of services and
// the instances of the chosen address current as changes are pushed.
// Everything from the agent is put into the page as text, never as markup.
"use strict";

(() => {
  const zonesEvery = 2000;
  const topologyEvery = 5000;
  const maxProductsShown = 500;

  const state = {
    zone: "",
    product: "",
    address: "",
    zones: [],
    products: [],
    // instances holds the last state of every address of the product
    // chosen: address → instances.
    instances: new Map(),
    ws: null,
    index: 0, // the last index the subscription delivered, to resume
    seen: new Set(), // addresses a resynced subscription mentioned
    retry: 0,
    timers: { zones: 0, topology: 0, reconnect: 0 },
  };

  const $ = (selector) => document.querySelector(selector);

  // el makes an element with attributes (data-* and class included) and
  // children (strings become text nodes).
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null) continue;
      if (k === "class") e.className = v;
      else e.setAttribute(k, String(v));
    }
    for (const c of children) e.append(c);
    return e;
  }

  async function getJSON(path) {
    const r = await fetch(path, { cache: "no-store", headers: { Accept: "application/json" } });
    let body = {};
    try {
      body = await r.json();
    } catch (e) {
      // an empty or non-JSON body: the status says enough
    }
    if (!r.ok) throw new Error(body.error || `${r.status} ${r.statusText}`);
    return body;
  }

  function setLive(s, text) {
    const live = $("#live");
    live.dataset.state = s;
    live.textContent = text;
  }

  // The selection lives in the location's hash: #/zone/product/address.
  // A part that does not decode (a hand-edited link) selects nothing.
  function readHash() {
    const decode = (part) => {
      try {
        return decodeURIComponent(part);
      } catch {
        return "";
      }
    };
    const [zone = "", product = "", address = ""] = location.hash.replace(/^#\/?/, "").split("/").map(decode);
    return { zone, product, address };
  }

  function writeHash() {
    const parts = [state.zone, state.product, state.address].filter(Boolean).map(encodeURIComponent);
    const hash = "#/" + parts.join("/");
    if (location.hash !== hash) history.replaceState(null, "", hash);
  }

  // ---- zones ----

  async function refreshZones() {
    clearTimeout(state.timers.zones);
    try {
      const body = await getJSON("/v1/zones");
      state.zones = body.zones || [];
      $("#zones-error").hidden = true;
      if (!state.zone) {
        const local = state.zones.find((z) => z.local);
        if (local) selectZone(local.zone);
      }
      renderZones();
    } catch (e) {
      $("#zones-error").textContent = "the agent did not answer: " + e.message;
      $("#zones-error").hidden = false;
    }
    state.timers.zones = setTimeout(refreshZones, zonesEvery);
  }

  function renderZones() {
    const rows = state.zones.map((z) => {
      const failing = z.failing || [];
      const stale = z.seconds_stale > 0 ? `${Math.round(z.seconds_stale)} s` : "0";
      const tr = el("tr", {
        class: "selectable" + (z.zone === state.zone ? " selected" : ""),
        "data-zone": z.zone,
        "data-synced": z.synced,
        "data-stale": z.seconds_stale,
        title: z.error || (z.watched ? "" : "not watched: choosing it starts watching it"),
      },
        el("td", {}, z.zone + (z.local ? " (local)" : "")),
        el("td", { class: z.synced ? "passing" : z.watched ? "warning" : "muted" }, z.synced ? "yes" : z.watched ? "not yet" : "not watched"),
        el("td", { class: z.seconds_stale > 0 ? "critical" : "" }, stale),
        el("td", { class: "count" }, String(z.products)),
        el("td", { class: "count" }, String(z.watched_products)),
        el("td", { class: "count" }, String(z.instances)),
        el("td", { class: failing.length ? "critical" : "muted", title: failing.map((f) => `${f.product}: ${f.error}`).join("\n") },
          failing.length ? failing.map((f) => f.product).join(", ") : "none"),
      );
      tr.addEventListener("click", () => selectZone(z.zone));
      return tr;
    });
    $("#zones tbody").replaceChildren(...rows);
  }

  function selectZone(zone) {
    if (zone === state.zone) return;
    state.zone = zone;
    state.products = [];
    selectProduct("");
    $("#zone-name").textContent = zone;
    renderZones();
    refreshTopology();
  }

  // ---- products ----

  async function refreshTopology() {
    clearTimeout(state.timers.topology);
    const zone = state.zone;
    if (zone) {
      try {
        const body = await getJSON("/v1/topology?zone=" + encodeURIComponent(zone));
        if (zone !== state.zone) return; // another zone was chosen meanwhile
        state.products = Object.entries(body.products || {}).map(([name, p]) => ({ name, watched: p.watched, error: p.error }));
        renderProducts();
      } catch (e) {
        $("#products").replaceChildren(el("li", { class: "error" }, e.message));
      }
    }
    state.timers.topology = setTimeout(refreshTopology, topologyEvery);
  }

  function renderProducts() {
    const filter = $("#filter").value.trim().toLowerCase();
    const shown = state.products.filter((p) => p.name.includes(filter));
    const items = shown.slice(0, maxProductsShown).map((p) => {
      const li = el("li", {
        class: p.name === state.product ? "selected" : "",
        "data-product": p.name,
        "data-watched": p.watched,
        title: p.error || "",
      },
        el("span", { class: "name" + (p.error ? " critical" : "") }, p.name),
        el("span", { class: "muted" }, p.error ? "failing" : p.watched ? "watched" : ""),
      );
      li.addEventListener("click", () => selectProduct(p.name));
      return li;
    });
    if (shown.length > maxProductsShown) {
      items.push(el("li", { class: "muted" }, `${shown.length - maxProductsShown} more: filter to find them`));
    }
    $("#products").replaceChildren(...items);
  }

  function selectProduct(product) {
    if (product === state.product && state.ws) return;
    state.product = product;
    state.address = "";
    state.instances.clear();
    state.index = 0;
    subscribe();
    renderProducts();
    renderTree();
    renderInstances();
    writeHash();
  }

  // ---- the subscription ----

  function subscribe() {
    clearTimeout(state.timers.reconnect);
    if (state.ws) {
      state.ws.onclose = null;
      state.ws.close(1000);
      state.ws = null;
    }
    if (!state.product) {
      setLive("idle", "no product chosen");
      return;
    }
    const q = new URLSearchParams();
    q.set("address", `*.*.*.${state.product}.${state.zone}`);
    q.set("health", "any");
    q.set("synced", "true");
    if (state.index > 0) q.set("index", String(state.index));
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/v1/subscribe?${q}`);
    state.ws = ws;
    state.seen = new Set();
    setLive("connecting", "connecting");
    ws.onmessage = (ev) => {
      const m = JSON.parse(ev.data);
      if (m.type === "synced") {
        if (!m.resumed) {
          // Snapshots of every address there is came first: an address
          // not among them went away while the page was not connected.
          for (const a of [...state.instances.keys()]) {
            if (!state.seen.has(a)) state.instances.delete(a);
          }
        }
        state.retry = 0;
        setLive("live", "live");
      } else {
        state.seen.add(m.address);
        state.index = Math.max(state.index, m.index);
        if (m.instances && m.instances.length) state.instances.set(m.address, m.instances);
        else state.instances.delete(m.address);
      }
      renderTree();
      renderInstances();
    };
    ws.onclose = (ev) => {
      if (state.ws !== ws) return;
      state.ws = null;
      const wait = Math.min(10000, 500 * 2 ** state.retry++);
      setLive("down", `disconnected (${ev.code}${ev.reason ? ": " + ev.reason : ""}); again in ${Math.round(wait / 1000)} s`);
      state.timers.reconnect = setTimeout(subscribe, wait);
    };
  }

  // ---- the tree: env → job → service, with health counts ----

  function counts(instances) {
    const c = { passing: 0, warning: 0, critical: 0 };
    for (const i of instances) c[i.health] = (c[i.health] || 0) + 1;
    return c;
  }

  function add(into, c) {
    for (const k of Object.keys(c)) into[k] += c[k];
  }

  function countSpans(c) {
    return ["passing", "warning", "critical"].map((h) => el("span", { class: `count ${h}`, title: h }, String(c[h])));
  }

  function renderTree() {
    if (!state.product) {
      $("#tree-title").textContent = "Choose a product";
      $("#tree").replaceChildren();
      return;
    }
    $("#tree-title").textContent = `${state.product}.${state.zone}`;
    // env → job → service → address
    const envs = new Map();
    for (const [address, instances] of state.instances) {
      const [service, job, env] = address.split(".");
      if (!envs.has(env)) envs.set(env, new Map());
      const jobs = envs.get(env);
      if (!jobs.has(job)) jobs.set(job, new Map());
      jobs.get(job).set(service, { address, c: counts(instances) });
    }
    const byName = (a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0);
    const envItems = [...envs].sort(byName).map(([env, jobs]) => {
      const envCount = { passing: 0, warning: 0, critical: 0 };
      const jobItems = [...jobs].sort(byName).map(([job, services]) => {
        const jobCount = { passing: 0, warning: 0, critical: 0 };
        const serviceItems = [...services].sort(byName).map(([service, s]) => {
          add(jobCount, s.c);
          const li = el("li", {
            class: s.address === state.address ? "selected" : "",
            "data-address": s.address,
            "data-passing": s.c.passing,
            "data-warning": s.c.warning,
            "data-critical": s.c.critical,
          }, el("div", { class: "row" }, el("span", { class: "name" }, service), ...countSpans(s.c)));
          li.addEventListener("click", () => selectAddress(s.address));
          return li;
        });
        add(envCount, jobCount);
        return el("li", { "data-job": job },
          el("div", { class: "row" }, el("span", { class: "name" }, job), ...countSpans(jobCount)),
          el("ul", {}, ...serviceItems));
      });
      return el("li", { "data-env": env },
        el("div", { class: "row" }, el("span", { class: "name" }, env), ...countSpans(envCount)),
        el("ul", {}, ...jobItems));
    });
    if (envItems.length === 0) {
      envItems.push(el("li", { class: "muted" }, state.ws ? "no instances" : "connecting"));
    }
    $("#tree").replaceChildren(...envItems);
  }

  // ---- the instances of the address chosen ----

  function selectAddress(address) {
    state.address = address;
    renderTree();
    renderInstances();
    writeHash();
  }

  function renderInstances() {
    const body = $("#instances tbody");
    if (!state.address) {
      $("#instances-title").textContent = "Choose a service";
      body.replaceChildren();
      return;
    }
    $("#instances-title").textContent = state.address;
    const instances = [...(state.instances.get(state.address) || [])];
    instances.sort((a, b) => (a.address + ":" + a.port).localeCompare(b.address + ":" + b.port));
    const rows = instances.map((i) => el("tr", { "data-instance": `${i.address}:${i.port}`, "data-health": i.health },
      el("td", {}, i.address),
      el("td", { class: "count" }, String(i.port)),
      el("td", { class: i.health }, i.health),
      el("td", {}, i.node),
      el("td", { class: "muted" }, i.provider || "-"),
    ));
    if (rows.length === 0) rows.push(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "no instances")));
    body.replaceChildren(...rows);
  }

  // ---- start ----

  function start() {
    const h = readHash();
    $("#filter").addEventListener("input", renderProducts);
    if (h.zone) {
      selectZone(h.zone);
      if (h.product) selectProduct(h.product);
      if (h.address) selectAddress(h.address);
    }
    refreshZones();
    if (!h.zone) setLive("idle", "no product chosen");
  }

  start();
})();
