// closp-search page: a search form, a thumbnail grid and a Leaflet map over the JSON API
// (docs/search.md). No framework, no build step; Leaflet and Leaflet.draw are vendored (VENDORED.md).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, results: [], markers: new Map(), selected: null, box: null, last: null, answers: 0 };

// ---- the map ------------------------------------------------------------------------------------
const map = L.map("map", { worldCopyJump: true, minZoom: 1 }).setView([30, 10], 2);
const outline = L.layerGroup().addTo(map);
const markers = L.layerGroup().addTo(map);
const drawn = new L.FeatureGroup().addTo(map);
let tiles = null;

fetch("/static/world/countries-110m.geojson").then((r) => r.json()).then((world) => {
  L.geoJSON(world, { style: { color: "#7b8a97", weight: 0.8, fillColor: "#eef0e8", fillOpacity: 1 },
                     interactive: false }).addTo(outline);
  document.body.dataset.outline = "ready";
});

function setBasemap(text) { map.attributionControl.setPrefix(text); }

function startTiles(url, attribution) {
  // Tiles when they load; the bundled world outline (always underneath) when they do not.
  if (!url) { setBasemap("offline map: Natural Earth outline"); document.body.dataset.basemap = "outline"; return; }
  tiles = L.tileLayer(url, { maxZoom: 18, attribution: attribution || "" });
  let loaded = 0, failed = 0;
  tiles.on("tileload", () => { loaded += 1; document.body.dataset.basemap = "tiles"; });
  tiles.on("tileerror", () => {
    failed += 1;
    if (!loaded && failed >= 2 && tiles) {
      map.removeLayer(tiles);
      tiles = null;
      setBasemap("offline map: Natural Earth outline (tiles unreachable)");
      document.body.dataset.basemap = "outline";
    }
  });
  tiles.addTo(map);
}

const drawControl = new L.Control.Draw({
  position: "topleft",
  draw: { polyline: false, polygon: false, circle: false, marker: false, circlemarker: false,
          rectangle: { showArea: false, shapeOptions: { color: "#e65100", weight: 2, fillOpacity: 0.05 } } },
  edit: { featureGroup: drawn, edit: false, remove: false },
});
map.addControl(drawControl);

function fmt(x, n) { return Number(x).toFixed(n); }

function setBox(bounds, fromInput) {
  drawn.clearLayers();
  state.box = bounds;
  if (!bounds) { if (!fromInput) $("bbox").value = ""; return; }
  L.rectangle(bounds, { color: "#e65100", weight: 2, fillOpacity: 0.05, interactive: false }).addTo(drawn);
  if (!fromInput) {
    const sw = bounds.getSouthWest(), ne = bounds.getNorthEast();
    $("bbox").value = [fmt(L.Util.wrapNum(sw.lng, [-180, 180], true), 4), fmt(sw.lat, 4),
                       fmt(L.Util.wrapNum(ne.lng, [-180, 180], true), 4), fmt(ne.lat, 4)].join(",");
  }
}

map.on(L.Draw.Event.CREATED, (e) => {
  setBox(e.layer.getBounds(), false);
  if ($("q").value.trim()) run();
});

$("clear-box").addEventListener("click", () => { setBox(null, false); if ($("q").value.trim()) run(); });

$("bbox").addEventListener("change", () => {
  const parts = $("bbox").value.split(",").map(Number);
  if (parts.length === 4 && parts.every(Number.isFinite)) {
    setBox(L.latLngBounds([parts[1], parts[0]], [parts[3], parts[2]]), true);
  } else if (!$("bbox").value.trim()) {
    setBox(null, true);
  }
});

// ---- searching ----------------------------------------------------------------------------------
function params(extra) {
  const p = new URLSearchParams(extra);
  p.set("k", $("k").value || "20");
  if ($("sensor").value !== "all") p.set("sensor", $("sensor").value);
  if ($("bbox").value.trim()) p.set("bbox", $("bbox").value.trim());
  if ($("start").value) p.set("start", $("start").value);
  if ($("end").value) p.set("end", $("end").value);
  return p;
}

function status(text, error) {
  $("status").textContent = text;
  $("status").classList.toggle("error", !!error);
}

async function call(path, p, what) {
  status(`Searching ${what} ...`);
  document.body.dataset.state = "busy";
  let body;
  try {
    const resp = await fetch(`${path}?${p}`);
    body = await resp.json();
    if (!resp.ok) throw new Error(body.error || `HTTP ${resp.status}`);
  } catch (err) {
    status(`Error: ${err.message}`, true);
    document.body.dataset.state = "error";
    document.body.dataset.answers = String(++state.answers);
    return;
  }
  state.last = { path, p };
  show(body.results, what);
  document.body.dataset.state = "done";
  document.body.dataset.answers = String(++state.answers);   // how many searches have been answered
}

function run() {
  const q = $("q").value.trim();
  if (!q) { status("Type what to look for first.", true); return; }
  call("/api/search", params({ q }), `"${q}"`);
}

function moreLike(key) { call("/api/similar", params({ key }), `more like ${key}`); }

$("form").addEventListener("submit", (e) => { e.preventDefault(); run(); });

// ---- showing ------------------------------------------------------------------------------------
function where(r) { return r.lon === null ? "no location" : `${fmt(r.lon, 4)}, ${fmt(r.lat, 4)}`; }

function show(results, what) {
  state.results = results;
  state.selected = null;
  $("details").hidden = true;
  const grid = $("results");
  grid.replaceChildren();
  markers.clearLayers();
  state.markers.clear();
  const located = [];
  for (const r of results) {
    const card = document.createElement("div");
    card.className = "result";
    card.dataset.key = r.key;
    card.title = `${r.key}\n${r.labels.join(", ")}`;
    const img = document.createElement("img");
    img.src = r.thumbnail;
    img.alt = `${r.sensor.toUpperCase()} ${r.key}`;
    img.loading = "lazy";
    card.append(img);
    const l1 = document.createElement("div");
    l1.className = "line";
    const score = document.createElement("b");
    score.textContent = fmt(r.score, 3);
    const sensor = document.createElement("span");
    sensor.className = r.sensor === "s1" ? "sensor-s1" : "sensor-s2";
    sensor.textContent = r.sensor.toUpperCase();
    l1.append(`#${r.rank} `, score, " ", sensor);   // text nodes only: metadata never becomes markup
    const l2 = document.createElement("div");
    l2.className = "line labels";
    l2.textContent = r.labels.join(", ") || "(no labels)";
    const l3 = document.createElement("div");
    l3.className = "line";
    l3.textContent = `${r.source} · ${(r.timestamp || "").slice(0, 10) || "no date"}`;
    card.append(l1, l2, l3);
    card.addEventListener("click", () => select(r.key, true));
    grid.append(card);
    if (r.lon !== null) {
      const icon = L.divIcon({ className: `rank-marker ${r.sensor === "s1" ? "s1" : "s2"}`, html: String(Number(r.rank)),
                               iconSize: [22, 22] });
      const m = L.marker([r.lat, r.lon], { icon, title: `#${r.rank} ${r.key}`, riseOnHover: true });
      m.on("click", () => select(r.key, false));
      m.addTo(markers);
      m.getElement().dataset.key = r.key;
      state.markers.set(r.key, m);
      located.push([r.lat, r.lon]);
    }
  }
  if (located.length) map.fitBounds(L.latLngBounds(located).pad(0.3), { maxZoom: 8 });
  const links = state.last;
  for (const [id, f] of [["dl-geojson", "geojson"], ["dl-csv", "csv"]]) {
    const p = new URLSearchParams(links.p);
    p.set("format", f);
    $(id).href = `${links.path}?${p}`;
  }
  $("downloads").hidden = !results.length;
  status(results.length ? `${results.length} results for ${what} (${located.length} on the map)`
                        : `No results for ${what}: nothing passes the filters.`);
}

function select(key, pan) {
  const r = state.results.find((x) => x.key === key);
  if (!r) return;
  state.selected = key;
  for (const el of document.querySelectorAll(".result")) el.classList.toggle("selected", el.dataset.key === key);
  for (const [k, m] of state.markers) m.getElement().classList.toggle("selected", k === key);
  const card = document.querySelector(`.result[data-key="${CSS.escape(key)}"]`);
  if (card) card.scrollIntoView({ block: "nearest" });
  const m = state.markers.get(key);
  if (m && pan) map.panTo(m.getLatLng());
  const d = $("details");
  d.replaceChildren();
  const img = document.createElement("img");
  img.src = r.thumbnail;
  img.alt = r.key;
  const dl = document.createElement("dl");
  const rows = [["key", r.key], ["rank", `#${r.rank}`], ["score", fmt(r.score, 4)],
                ["sensor", r.sensor === "s2" ? "Sentinel-2 (true colour B4, B3, B2)" : "Sentinel-1 (VV, VH, VV-VH dB)"],
                ["source", r.source], ["lon, lat", where(r)], ["date", r.timestamp || "unknown"],
                ["labels", r.labels.join(", ") || "none"]];
  for (const [k, v] of rows) {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v;
    dl.append(dt, dd);
  }
  const more = document.createElement("button");
  more.id = "more";
  more.type = "button";
  more.textContent = "More like this";
  more.addEventListener("click", () => moreLike(r.key));
  const box = document.createElement("div");
  box.append(dl, more);
  d.append(img, box);
  d.hidden = false;
  d.dataset.key = key;
}

// ---- start --------------------------------------------------------------------------------------
fetch("/api/info").then((r) => r.json()).then((info) => {
  state.info = info;
  $("k").max = info.max_k;
  startTiles(info.tiles, info.attribution);
  const n = info.count.toLocaleString("en");
  status(`${n} patches (S2 ${info.sensors.s2}, S1 ${info.sensors.s1})` +
         (info.time_range ? `, ${info.time_range[0]} to ${info.time_range[1]}` : "") +
         ". Type a query; draw a box with the square tool to search inside it.");
  document.body.dataset.ready = "1";
});
