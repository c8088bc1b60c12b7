// The clipforge search page: text and image queries, a grid of results, zero-shot classification.
// Plain JavaScript, no build step, nothing loaded from elsewhere. The server returns only the k results asked for,
// and thumbnails are fetched when they come near the viewport, so the page is as fast on 100,000 items as on 100.
//
// A token (for `clipforge serve --token T`) comes from the URL fragment (/#token=T, never sent to the server by the
// browser) or the token field, and goes in an Authorization header on every call, thumbnails included: they are
// fetched as blobs and shown through object URLs, so the token never appears in a URL or the server's logs.
"use strict";

const $ = (id) => document.getElementById(id);
let token = "";
let generation = 0; // the newest search; older responses and thumbnails are dropped
let objectUrls = [];
let observer = null;

function readToken() {
  const hash = new URLSearchParams(window.location.hash.slice(1));
  token = hash.get("token") || sessionStorage.getItem("clipforge-token") || "";
  if (hash.has("token")) {
    sessionStorage.setItem("clipforge-token", token);
    history.replaceState(null, "", window.location.pathname + window.location.search);
  }
  $("token").value = token;
}

function headers(json) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  if (token) h["Authorization"] = "Bearer " + token;
  return h;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function call(path, body) {
  const response = await fetch(path, {method: "POST", headers: headers(true), body: JSON.stringify(body)});
  let data = null;
  try {
    data = await response.json();
  } catch (e) {
    data = {error: response.statusText};
  }
  if (response.status === 401) {
    $("token-box").open = true;
    $("token").focus();
  }
  if (!response.ok) throw new Error((data && data.error) || ("HTTP " + response.status));
  return data;
}

function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result); // a data: URL; the server accepts it as base64
    reader.onerror = () => reject(new Error("could not read " + file.name));
    reader.readAsDataURL(file);
  });
}

// -- results -----------------------------------------------------------------------------------------------------

function clearResults() {
  if (observer) observer.disconnect();
  objectUrls.forEach((url) => URL.revokeObjectURL(url));
  objectUrls = [];
  $("results").replaceChildren();
}

async function loadThumbnail(img, mine) {
  try {
    const response = await fetch("/images/" + img.dataset.id, {headers: headers(false)});
    if (!response.ok || mine !== generation) return;
    const url = URL.createObjectURL(await response.blob());
    if (mine !== generation) {
      URL.revokeObjectURL(url);
      return;
    }
    objectUrls.push(url);
    img.src = url;
  } catch (e) {
    img.classList.add("missing");
  }
}

function render(results, what, mine) {
  clearResults();
  const grid = $("results");
  observer = new IntersectionObserver((entries) => {
    for (const entry of entries) {
      if (!entry.isIntersecting) continue;
      observer.unobserve(entry.target);
      loadThumbnail(entry.target, mine);
    }
  }, {rootMargin: "400px"});
  const fragment = document.createDocumentFragment();
  results.forEach((r, rank) => {
    const item = document.createElement("li");
    item.className = "result";
    item.dataset.id = String(r.id);
    item.dataset.score = String(r.score);
    const img = document.createElement("img");
    img.dataset.id = String(r.id);
    img.alt = r.caption || r.path;
    img.width = 160;
    img.height = 160;
    const caption = document.createElement("p");
    caption.className = "caption";
    caption.textContent = r.caption || r.path;
    caption.title = r.path;
    const score = document.createElement("p");
    score.className = "score";
    score.textContent = "#" + (rank + 1) + " · score " + r.score.toFixed(3) + " · id " + r.id;
    const similar = document.createElement("button");
    similar.type = "button";
    similar.className = "link";
    similar.textContent = "Similar";
    similar.setAttribute("aria-label", "Find items similar to " + (r.caption || "item " + r.id));
    similar.addEventListener("click", () => similarTo(r.id));
    item.append(img, score, caption, similar);
    fragment.append(item);
    observer.observe(img);
  });
  grid.append(fragment);
  $("status").textContent = results.length + " result" + (results.length === 1 ? "" : "s") + " for " + what + ".";
}

async function search(body, what) {
  const mine = ++generation;
  showError("");
  $("status").textContent = "Searching for " + what + "…";
  try {
    const data = await call("/search", {...body, k: Number($("k").value)});
    if (mine === generation) render(data.results, what, mine);
  } catch (e) {
    if (mine !== generation) return;
    $("status").textContent = "The search failed.";
    showError(e.message);
  }
}

async function similarTo(id) {
  // The item's own thumbnail as an image query: no extra route, and it works on any collection.
  try {
    const response = await fetch("/images/" + id, {headers: headers(false)});
    if (!response.ok) throw new Error("could not read item " + id);
    const blob = await response.blob();
    await imageQuery(new File([blob], "item-" + id + ".jpg", {type: blob.type}), "items like #" + id);
  } catch (e) {
    showError(e.message);
  }
}

async function imageQuery(file, what) {
  if (!file) return;
  try {
    const data = await readFile(file);
    const preview = $("query-preview");
    preview.src = data;
    preview.alt = "query image " + file.name;
    preview.hidden = false;
    await search({image: data}, what || "the image " + file.name);
  } catch (e) {
    showError(e.message);
  }
}

// -- classification ----------------------------------------------------------------------------------------------

function lines(text, commas) {
  return text.split(commas ? /[\n,]/ : /\n/).map((s) => s.trim()).filter((s) => s.length > 0);
}

async function classify(event) {
  event.preventDefault();
  showError("");
  const file = $("classify-image").files[0];
  const labels = lines($("labels").value, true);
  const templates = lines($("templates").value, false);
  if (!file || labels.length === 0) {
    showError("Choose an image and type at least one label.");
    return;
  }
  $("classify-status").textContent = "Classifying…";
  try {
    const image = await readFile(file);
    const preview = $("classify-preview");
    preview.src = image;
    preview.hidden = false;
    const body = {image: image, labels: labels};
    if (templates.length) body.templates = templates;
    const data = await call("/classify", body);
    const list = $("probabilities");
    list.replaceChildren();
    for (const r of data.results) {
      const item = document.createElement("li");
      item.className = "bar";
      item.dataset.probability = String(r.probability);
      const percent = (100 * r.probability).toFixed(1) + "%";
      const name = document.createElement("span");
      name.className = "label";
      name.textContent = r.label;
      const meter = document.createElement("span");
      meter.className = "meter";
      meter.setAttribute("aria-hidden", "true");
      const fill = document.createElement("span");
      fill.style.width = Math.max(0.5, 100 * r.probability) + "%";
      meter.append(fill);
      const value = document.createElement("span");
      value.className = "value";
      value.textContent = percent;
      item.append(name, meter, value);
      list.append(item);
    }
    const best = data.results[0];
    $("classify-status").textContent = "Most likely: " + best.label + " (" + (100 * best.probability).toFixed(1) +
      "%, " + (data.scoring === "sigmoid" ? "each label scored on its own" : "probabilities sum to 100%") + ").";
  } catch (e) {
    $("classify-status").textContent = "The classification failed.";
    showError(e.message);
  }
}

// -- set-up ------------------------------------------------------------------------------------------------------

async function about() {
  try {
    const response = await fetch("/healthz");
    const h = await response.json();
    $("about").textContent = h.size.toLocaleString() + " items · " + h.model + " (" + h.family + ", " + h.dim +
      "-d)" + (h.auth ? " · token required" : "");
    if (h.auth && !token) $("token-box").open = true;
  } catch (e) {
    $("about").textContent = "The server does not answer.";
  }
}

function setUp() {
  readToken();
  about();
  window.addEventListener("hashchange", () => {
    if (new URLSearchParams(window.location.hash.slice(1)).has("token")) {
      readToken();
      about();
    }
  });
  $("text-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("query").value.trim();
    if (text) search({text: text}, "“" + text + "”");
  });
  $("image-query").addEventListener("change", (event) => imageQuery(event.target.files[0]));
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    token = $("token").value.trim();
    sessionStorage.setItem("clipforge-token", token);
    about();
    showError("");
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    imageQuery(event.dataTransfer.files[0]);
  });
  $("classify-form").addEventListener("submit", classify);
  $("classify-image").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) readFile(file).then((data) => {
      $("classify-preview").src = data;
      $("classify-preview").hidden = false;
    });
  });
  $("query").focus();
}

document.addEventListener("DOMContentLoaded", setUp);
