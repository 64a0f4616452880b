"""The search server: the JSON API answers as docs/search.md says (fields, filters, GeoJSON / CSV,
thumbnails), bad input gets a 4xx with one line, nothing outside the page's files and the index's
thumbnails is served, the server writes only into its cache folder, 50 concurrent clients get
answers without errors, and the page works in headless Chromium (type a query, see the grid and
the markers, set and draw a box, open a result, more like this), with screenshots kept in
tests/output/search_page/."""

import concurrent.futures
import csv
import io
import json
import time

import numpy as np
import pytest
from search_helpers import OUTPUT, Server, browser_or_skip, export_fresh_model, tiny_index

pytest.importorskip("flask", reason="the search server needs flask (the 'search' extra)")


@pytest.fixture(scope="module")
def sample(tmp_path_factory, tiny_data_dir):
  """An exported model (random weights) and an index of crisis_landmark/tiny's test split (480 patches)."""
  tmp = tmp_path_factory.mktemp("server")
  model_dir, model = export_fresh_model(tmp)
  index = tiny_index(model_dir, model, tiny_data_dir, tmp / "index")
  return {"model_dir": model_dir, "model": model, "index": index, "tmp": tmp, "data_dir": tiny_data_dir}


@pytest.fixture(scope="module")
def client(sample):
  from closp_jax.search_lib import server  # pylint: disable=import-outside-toplevel

  cache = sample["tmp"] / "cache"
  service = server.SearchService(sample["index"], sample["model"], cache_dir=cache, max_k=50, tiles=None)
  app = server.create_app(service)
  app.testing = True
  return app.test_client(), service, cache


def get_json(client, url, status=200):
  resp = client.get(url)
  assert resp.status_code == status, (url, resp.status_code, resp.get_data(as_text=True)[:300])
  return resp.get_json()


def test_search_answers_with_the_documented_fields(client, sample):
  c, _, _ = client
  idx, model = sample["index"], sample["model"]
  body = get_json(c, "/api/search?q=flooded%20area&k=7")
  res = body["results"]
  assert len(res) == 7 and [r["rank"] for r in res] == list(range(1, 8))
  assert {"key", "score", "sensor", "source", "lon", "lat", "labels", "timestamp", "thumbnail"} <= set(res[0])
  # Exact ranking: the model's text embedding against every row.
  scores = idx.embeddings.astype(np.float32) @ model.encode_text(["flooded area"])[0]
  assert [r["key"] for r in res] == [idx.meta["key"][i] for i in np.argsort(-scores, kind="stable")[:7]]
  np.testing.assert_allclose([r["score"] for r in res], np.sort(scores)[::-1][:7], atol=1e-5)
  # Filters: sensor, box, dates.
  s1 = get_json(c, "/api/search?q=water&k=10&sensor=s1")["results"]
  assert len(s1) == 10 and {r["sensor"] for r in s1} == {"s1"}
  lon, lat = idx.meta["lon"], idx.meta["lat"]
  box = (float(np.median(lon)) - 40, float(np.median(lat)) - 20, float(np.median(lon)) + 40, float(np.median(lat)) + 20)
  inside = get_json(c, "/api/search?q=water&k=50&bbox=" + ",".join(f"{v:.4f}" for v in box))["results"]
  n_inside = int(np.sum((lon >= box[0]) & (lon <= box[2]) & (lat >= box[1]) & (lat <= box[3])))
  assert len(inside) == min(50, n_inside) > 0
  assert all(box[0] <= r["lon"] <= box[2] and box[1] <= r["lat"] <= box[3] for r in inside)
  times = sorted(t for t in idx.meta["timestamp"] if t)
  start, end = times[len(times) // 4][:10], times[len(times) // 2][:10]
  dated = get_json(c, f"/api/search?q=water&k=50&start={start}&end={end}")["results"]
  assert dated and all(start <= r["timestamp"][:10] <= end for r in dated)


def test_similar_downloads_and_thumbnails(client, sample):
  c, service, cache = client
  idx = sample["index"]
  key = idx.meta["key"][3]
  res = get_json(c, f"/api/similar?key={key}&k=5")["results"]
  emb = idx.embeddings.astype(np.float32)
  want = [idx.meta["key"][i] for i in np.argsort(-(emb @ emb[3]), kind="stable") if i != 3][:5]
  assert [r["key"] for r in res] == want
  gj = c.get("/api/search?q=water&k=4&format=geojson")
  assert gj.status_code == 200 and gj.mimetype == "application/geo+json"
  assert "attachment" in gj.headers["Content-Disposition"]
  fc = json.loads(gj.get_data())
  assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 4 and fc["query"]["q"] == "water"
  assert fc["features"][0]["geometry"]["type"] == "Point"
  rows = list(csv.DictReader(io.StringIO(c.get("/api/similar?key=" + key + "&k=3&format=csv").get_data(as_text=True))))
  assert [r["key"] for r in rows] == want[:3] and set(rows[0]) >= {"score", "lon", "lat", "labels", "thumbnail"}
  # Thumbnails: S2 true colour and S1 false colour PNGs, rendered once into the cache folder.
  from PIL import Image  # pylint: disable=import-outside-toplevel

  for sensor in ("s2", "s1"):
    r = get_json(c, f"/api/search?q=trees&k=1&sensor={sensor}")["results"][0]
    png = c.get(r["thumbnail"])
    assert png.status_code == 200 and png.mimetype == "image/png"
    img = Image.open(io.BytesIO(png.get_data()))
    assert img.size == (120, 120) and np.asarray(img).std() > 1.0
    assert (cache / "thumbnails" / f"{r['row']}.png").is_file()
  written = [p for p in cache.rglob("*") if p.is_file()]
  assert written and all(p.parent == cache / "thumbnails" and p.suffix == ".png" for p in written)


@pytest.mark.parametrize(
  "url,status,message",
  [
    ("/api/search?q=&k=5", 400, "q is empty"),
    ("/api/search?q=%20%20&k=5", 400, "q is empty"),
    ("/api/search?k=5", 400, "q is empty"),
    ("/api/search?q=water&k=51", 400, "k=51: expected 1 to 50"),
    ("/api/search?q=water&k=0", 400, "k=0: expected 1 to 50"),
    ("/api/search?q=water&k=ten", 400, "k='ten': expected a whole number"),
    ("/api/search?q=water&bbox=1,2,3", 400, "expected MINLON,MINLAT,MAXLON,MAXLAT"),
    ("/api/search?q=water&bbox=0,10,1,5", 400, "MINLAT <= MAXLAT"),
    ("/api/search?q=water&bbox=0,0,1,1e999", 400, "expected MINLON"),
    ("/api/search?q=water&start=tomorrow", 400, "expected YYYY-MM-DD"),
    ("/api/search?q=water&sensor=s3", 400, "sensor must be one of all, s2, s1"),
    ("/api/search?q=water&format=xml", 400, "format='xml'"),
    ("/api/similar?key=no_such_patch&k=5", 404, "unknown key 'no_such_patch'"),
    ("/api/similar?k=5", 400, "key is empty"),
    ("/api/search?q=" + "x" * 3000, 414, "query string over"),
    ("/api/search?q=" + "x" * 600, 400, "at most 500"),
  ],
)
def test_bad_input_is_a_4xx_with_one_line(client, url, status, message):
  c, _, _ = client
  body = get_json(c, url, status)
  assert message in body["error"] and "\n" not in body["error"]


@pytest.mark.parametrize(
  "url",
  [
    "/static/../server.py",
    "/static/%2e%2e/server.py",
    "/static/..%2fserver.py",
    "/static/vendor/../../index.py",
    "/static//etc/passwd",
    "/thumbnails/../index.json",
    "/thumbnails/99999.png",
    "/thumbnails/-1.png",
    "/thumbnails/1.jpg",
    "/thumbnails/1.png.png",
    "/index.json",
    "/embeddings.npy",
    "/etc/passwd",
  ],
)
def test_nothing_outside_the_page_and_thumbnails_is_served(client, url):
  c, _, _ = client
  assert c.get(url).status_code == 404


def test_tile_host_is_the_only_other_image_source(sample):
  from closp_jax.search_lib import server  # pylint: disable=import-outside-toplevel

  for tiles, want in (
    (server.OSM_TILES, "img-src 'self' data: https://tile.openstreetmap.org;"),
    ("https://{s}.tiles.example.org/{z}/{x}/{y}.png", "img-src 'self' data: https://*.tiles.example.org;"),
  ):
    service = server.SearchService(sample["index"], sample["model"], cache_dir=sample["tmp"] / "c2", tiles=tiles)
    csp = server.create_app(service).test_client().get("/").headers["Content-Security-Policy"]
    assert want in csp and "script-src 'self';" in csp


def test_page_files_methods_and_headers(client):
  c, _, _ = client
  page = c.get("/")
  assert page.status_code == 200 and b'id="map"' in page.get_data()
  assert "script-src 'self'" in page.headers["Content-Security-Policy"]
  assert page.headers["X-Content-Type-Options"] == "nosniff"
  for f in (
    "app.js",
    "app.css",
    "vendor/leaflet/leaflet.js",
    "vendor/leaflet-draw/leaflet.draw.js",
    "world/countries-110m.geojson",
  ):
    assert c.get(f"/static/{f}").status_code == 200, f
  assert c.post("/api/search?q=water").status_code == 405
  assert c.post("/api/search", data=b"x" * 5000).status_code in (405, 413)
  info = get_json(c, "/api/info")
  assert info["count"] == 480 and info["max_k"] == 50 and info["tiles"] is None
  assert "img-src 'self' data:;" in page.headers["Content-Security-Policy"]
  # The page loads nothing from other hosts: every script and stylesheet is local.
  html = page.get_data(as_text=True)
  assert "http://" not in html and "https://" not in html


@pytest.fixture(scope="module")
def live(sample):
  """The binary, `closp-search serve`, on 127.0.0.1 with tiles pointing at a local URL that fails
  (the page must fall back to the bundled outline); stops itself after 15 minutes at the latest."""
  cache = sample["tmp"] / "live_cache"
  server = Server(
    sample["index"].folder,
    cache,
    "--tiles",
    "http://127.0.0.1:9/tiles/{z}/{x}/{y}.png",
    data_dir=sample["data_dir"],
    stop_after=900,
  )
  yield server
  server.stop()


def test_fifty_concurrent_clients(live):
  queries = ["water", "trees", "flooded area", "built", "crops"]

  def client(i):
    out = []
    for j in range(3):
      status, body, _ = live.get(f"/api/search?q={queries[(i + j) % 5].replace(' ', '%20')}&k=10")
      out.append((status, [r["key"] for r in body["results"]] if status == 200 else body))
    status, body, _ = live.get("/api/similar?key=nope&k=3")
    out.append((status, body))
    return out

  t = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(50) as pool:
    answers = list(pool.map(client, range(50)))
  seconds = time.perf_counter() - t
  statuses = [s for a in answers for s, _ in a]
  assert statuses.count(200) == 150 and statuses.count(404) == 50, statuses
  # Every client got the same ranking for the same text.
  by_text = {}
  for i, a in enumerate(answers):
    for j, (_, keys) in enumerate(a[:3]):
      by_text.setdefault(queries[(i + j) % 5], set()).add(tuple(keys))
  assert all(len(v) == 1 for v in by_text.values())
  print(f"50 clients x 4 requests: {seconds:.1f} s")


def test_live_server_binds_loopback_and_refuses_paths(live):
  assert live.url.startswith("http://127.0.0.1:")
  assert live.get("/static/../search.py")[0] == 404
  status, body, _ = live.get("/api/search?q=water&k=101")
  assert status == 400 and "k=101" in body["error"]


def _wait(driver, condition, timeout=120.0, what=""):
  end = time.time() + timeout
  while time.time() < end:
    value = driver.execute_script(condition)
    if value:
      return value
    time.sleep(0.2)
  raise AssertionError(f"timed out waiting for {what or condition}")


def _answers(driver) -> int:
  """How many searches the page has answered (document.body.dataset.answers)."""
  return int(driver.execute_script("return document.body.dataset.answers || '0'"))


def _answered(driver, before: int, what: str):
  """Waits until the page answers a search after the `before`-th one, without error."""
  _wait(driver, f"return Number(document.body.dataset.answers || 0) > {before}", what=what)
  assert driver.execute_script("return document.body.dataset.state") == "done", driver.find_element("id", "status").text


def _shot(driver, path):
  """A screenshot once every thumbnail on the page has loaded."""
  _wait(driver, "return Array.from(document.querySelectorAll('img')).every(i => i.complete)", what="images")
  driver.save_screenshot(str(path))


def test_page_in_headless_chromium(live, sample):
  driver = browser_or_skip()
  out = OUTPUT / "search_page"
  out.mkdir(parents=True, exist_ok=True)
  from selenium.webdriver.common.action_chains import ActionChains  # pylint: disable=import-outside-toplevel
  from selenium.webdriver.common.by import By  # pylint: disable=import-outside-toplevel

  try:
    driver.get(live.url + "/")
    _wait(
      driver,
      "return document.body.dataset.ready === '1' && document.body.dataset.outline === 'ready'",
      what="the page and the world outline",
    )
    # The tiles fail (nothing listens there): the bundled outline is the map.
    _wait(driver, "return document.body.dataset.basemap === 'outline'", what="the offline outline")
    _shot(driver, out / "01-start.png")
    # Type a query and search: the grid and the markers.
    q = driver.find_element(By.ID, "q")
    q.send_keys("flooded area")
    k = driver.find_element(By.ID, "k")
    k.clear()
    k.send_keys("12")
    n = _answers(driver)
    driver.find_element(By.ID, "search").click()
    _answered(driver, n, "results")
    _wait(
      driver,
      "return Array.from(document.querySelectorAll('.result img')).every(i => i.complete && i.naturalWidth === 120)",
      what="thumbnails",
    )
    cards = driver.find_elements(By.CSS_SELECTOR, ".result")
    markers = driver.find_elements(By.CSS_SELECTOR, ".leaflet-marker-icon.rank-marker")
    assert len(cards) == 12 and len(markers) == 12
    assert "12 results" in driver.find_element(By.ID, "status").text
    _shot(driver, out / "02-results.png")
    # Set a box by typing it: every result inside it, on the map as a rectangle.
    idx = sample["index"]
    lon, lat = float(np.median(idx.meta["lon"])), float(np.median(idx.meta["lat"]))
    box = [lon - 40, lat - 20, lon + 40, lat + 20]
    bbox = driver.find_element(By.ID, "bbox")
    bbox.send_keys(",".join(f"{v:.2f}" for v in box))
    driver.execute_script("document.getElementById('bbox').dispatchEvent(new Event('change'))")
    n = _answers(driver)
    driver.find_element(By.ID, "search").click()
    _answered(driver, n, "boxed results")
    assert driver.find_elements(By.CSS_SELECTOR, ".result")
    got = driver.execute_script(
      "return Array.from(document.querySelectorAll('.leaflet-marker-icon.rank-marker')).map(m => m.dataset.key)"
    )
    rows = {k: i for i, k in enumerate(idx.meta["key"])}
    assert got and all(
      box[0] - 0.01 <= idx.meta["lon"][rows[k]] <= box[2] + 0.01
      and box[1] - 0.01 <= idx.meta["lat"][rows[k]] <= box[3] + 0.01
      for k in got
    )
    assert driver.find_elements(By.CSS_SELECTOR, "path.leaflet-interactive, path[stroke='#e65100']")
    _shot(driver, out / "03-box-typed.png")
    # Draw a box with the rectangle tool: the box field follows the drawing and the search reruns.
    driver.find_element(By.CSS_SELECTOR, ".leaflet-draw-draw-rectangle").click()
    map_el = driver.find_element(By.ID, "map")
    size = map_el.size
    before = driver.find_element(By.ID, "bbox").get_attribute("value")
    n = _answers(driver)
    ActionChains(driver).move_to_element_with_offset(
      map_el, -size["width"] // 4, -size["height"] // 4
    ).click_and_hold().move_by_offset(size["width"] // 3, size["height"] // 3).pause(0.2).release().perform()
    _answered(driver, n, "results in a drawn box")
    drawn = driver.find_element(By.ID, "bbox").get_attribute("value")
    assert drawn and drawn != before
    minlon, minlat, maxlon, maxlat = map(float, drawn.split(","))
    assert minlon < maxlon and minlat < maxlat
    got = driver.execute_script(
      "return Array.from(document.querySelectorAll('.leaflet-marker-icon.rank-marker')).map(m => m.dataset.key)"
    )
    assert all(
      minlon <= idx.meta["lon"][rows[k]] <= maxlon and minlat <= idx.meta["lat"][rows[k]] <= maxlat for k in got
    )
    _shot(driver, out / "04-box-drawn.png")
    # Clear the box, search again, open a result: its details; then more like this.
    n = _answers(driver)
    driver.find_element(By.ID, "clear-box").click()
    _answered(driver, n, "results without the box")
    assert len(driver.find_elements(By.CSS_SELECTOR, ".result")) == 12
    first = driver.find_elements(By.CSS_SELECTOR, ".result")[1]
    key = first.get_attribute("data-key")
    first.click()
    details = driver.find_element(By.ID, "details")
    _wait(driver, "return !document.getElementById('details').hidden", what="details")
    assert key in details.text and "score" in details.text and "lon, lat" in details.text
    assert driver.find_element(By.CSS_SELECTOR, f".leaflet-marker-icon.selected[data-key='{key}']")
    _shot(driver, out / "05-details.png")
    n = _answers(driver)
    driver.find_element(By.ID, "more").click()
    _answered(driver, n, "more like this")
    assert f"more like {key}" in driver.find_element(By.ID, "status").text
    keys = [c.get_attribute("data-key") for c in driver.find_elements(By.CSS_SELECTOR, ".result")]
    assert len(keys) == 12 and key not in keys
    href = driver.find_element(By.ID, "dl-geojson").get_attribute("href")
    assert "/api/similar?" in href and "format=geojson" in href
    _shot(driver, out / "06-more-like-this.png")
    # Bad input is shown as one line (the box field is free text; the server checks it).
    driver.find_element(By.ID, "bbox").send_keys("1,2,3")
    n = _answers(driver)
    driver.find_element(By.ID, "search").click()
    _wait(driver, f"return Number(document.body.dataset.answers) > {n}", what="the error")
    assert driver.execute_script("return document.body.dataset.state") == "error"
    assert "expected MINLON,MINLAT,MAXLON,MAXLAT" in driver.find_element(By.ID, "status").text
    logs = [
      e
      for e in driver.get_log("browser")
      if e["level"] == "SEVERE" and "127.0.0.1:9/" not in e["message"] and "/api/search" not in e["message"]
    ]
    assert not logs, logs
  finally:
    driver.quit()
  print(f"screenshots: {out}")
  assert (out / "02-results.png").stat().st_size > 10000
