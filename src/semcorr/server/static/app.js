// semcorr serve: click a point on the source, see its match on the target. No build step.
"use strict";

const state = { source: null, target: null, points: [], samples: null, busy: 0 };
const $ = (id) => document.getElementById(id);

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function setState(name) { document.body.dataset.state = name; }

async function api(path, options = {}) {
  const response = await fetch(path, options);
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail; } catch (_) { /* not JSON */ }
    if (typeof detail !== "string") detail = JSON.stringify(detail);
    throw new Error(`${response.status}: ${detail}`);
  }
  return response;
}

function postJSON(path, body) {
  return api(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
}

function colour(index) { return `hsl(${(index * 67) % 360}, 90%, 50%)`; }

// Image pixels <-> position in the displayed stage (pixel centres at +0.5, any display scale).
function eventToPixel(event, img) {
  const rect = img.getBoundingClientRect();
  return [
    ((event.clientX - rect.left) / rect.width) * img.naturalWidth - 0.5,
    ((event.clientY - rect.top) / rect.height) * img.naturalHeight - 0.5,
  ];
}

function placeMarker(stage, img, point, index, prefix, last, score) {
  const marker = document.createElement("div");
  marker.className = "marker" + (last ? " last" : "");
  marker.id = `${prefix}-${index}`;
  marker.dataset.x = point[0].toFixed(2);
  marker.dataset.y = point[1].toFixed(2);
  marker.style.left = `${((point[0] + 0.5) / img.naturalWidth) * 100}%`;
  marker.style.top = `${((point[1] + 0.5) / img.naturalHeight) * 100}%`;
  marker.style.background = colour(index);
  const label = document.createElement("span");
  label.textContent = String(index + 1);
  marker.appendChild(label);
  if (score !== undefined) marker.title = `#${index + 1}: score ${score.toFixed(3)}`;
  stage.appendChild(marker);
}

function clearMarkers() {
  document.querySelectorAll(".marker").forEach((m) => m.remove());
  document.querySelector("#matches tbody").replaceChildren();
}

function drawSourceMarkers() {
  state.points.forEach((p, i) =>
    placeMarker($("source-stage"), $("source-image"), p, i, "source", i === state.points.length - 1));
}

function fillTable(result) {
  const body = document.querySelector("#matches tbody");
  body.replaceChildren();
  result.points.forEach((p, i) => {
    const row = document.createElement("tr");
    const cells = [
      String(i + 1),
      `${state.points[i][0].toFixed(1)}, ${state.points[i][1].toFixed(1)}`,
      `${p[0].toFixed(1)}, ${p[1].toFixed(1)}`,
      result.scores[i].toFixed(3),
    ];
    for (const text of cells) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.appendChild(cell);
    }
    body.appendChild(row);
  });
}

function matchRequest() {
  return {
    source: state.source.id,
    target: state.target.id,
    points: state.points,
    pose_align: $("pose-align").checked,
    refine: $("refine").value,
  };
}

function showHeatmap() {
  const heat = $("heatmap");
  const last = state.points[state.points.length - 1];
  if (!last || !$("show-heat").checked) { heat.hidden = true; return; }
  const query = new URLSearchParams({
    source: state.source.id, target: state.target.id,
    x: last[0].toFixed(3), y: last[1].toFixed(3), pose_align: $("pose-align").checked,
  });
  heat.src = `/api/heatmap?${query}`;
  heat.hidden = false;
}

async function refresh() {
  clearMarkers();
  $("download").disabled = state.points.length === 0;
  if (!state.source || !state.target || state.points.length === 0) {
    $("heatmap").hidden = true;
    return;
  }
  drawSourceMarkers();
  setState("matching");
  try {
    const result = await (await postJSON("/api/match", matchRequest())).json();
    result.points.forEach((p, i) =>
      placeMarker($("target-stage"), $("target-image"), p, i, "match",
        i === result.points.length - 1, result.scores[i]));
    fillTable(result);
    $("pose").textContent = `(pose: ${result.pose})`;
    showHeatmap();
    setStatus(`${result.points.length} point(s) matched.`);
    setState("matched");
  } catch (error) {
    setStatus(error.message, true);
    setState("error");
  }
}

function loadInto(img, info) {
  return new Promise((resolve, reject) => {
    img.onload = () => resolve();
    img.onerror = () => reject(new Error(`cannot display ${info.name}`));
    img.src = `/api/images/${encodeURIComponent(info.id)}`;
  });
}

async function setPair() {
  state.points = [];
  clearMarkers();
  $("heatmap").hidden = true;
  $("download").disabled = true;
  if (!state.source || !state.target) { setState("half"); return; }
  setState("computing");
  setStatus("Computing features of the pair…");
  try {
    const pair = await (await postJSON("/api/pair",
      { source: state.source.id, target: state.target.id })).json();
    $("pose").textContent = `(pose alignment: ${pair.aligned_pose})`;
    setStatus("Ready: click points on the source.");
    setState("ready");
  } catch (error) {
    setStatus(error.message, true);
    setState("error");
  }
}

async function useImages(source, target) {
  try {
    if (source) { state.source = source; $("source-name").textContent = source.name; }
    if (target) { state.target = target; $("target-name").textContent = target.name; }
    await Promise.all([
      source ? loadInto($("source-image"), source) : null,
      target ? loadInto($("target-image"), target) : null,
    ]);
  } catch (error) {
    setStatus(error.message, true);
    setState("error");
    return;
  }
  await setPair();
}

async function loadSamples() {
  setStatus("Loading the samples…");
  try {
    if (!state.samples) {
      state.samples = await (await api("/api/samples")).json();
      const select = $("sample-target");
      select.replaceChildren();
      state.samples.images.slice(1).forEach((info, i) => {
        const option = document.createElement("option");
        option.value = String(i + 1);
        option.textContent = info.name;
        select.appendChild(option);
      });
    }
    const images = state.samples.images;
    await useImages(images[0], images[Number($("sample-target").value || 1)]);
  } catch (error) {
    setStatus(error.message, true);
    setState("error");
  }
}

async function upload(input, role) {
  const file = input.files[0];
  if (!file) return;
  setStatus(`Uploading ${file.name}…`);
  try {
    const response = await api(`/api/images?name=${encodeURIComponent(file.name)}`, {
      method: "POST",
      headers: { "Content-Type": "application/octet-stream" },
      body: file,
    });
    const info = await response.json();
    await useImages(role === "source" ? info : null, role === "target" ? info : null);
  } catch (error) {
    setStatus(error.message, true);
    setState("error");
  }
  input.value = "";
}

async function download() {
  try {
    const blob = await (await postJSON("/api/matches.json", matchRequest())).blob();
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = "matches.json";
    link.click();
    URL.revokeObjectURL(link.href);
  } catch (error) {
    setStatus(error.message, true);
  }
}

function onSourceClick(event) {
  if (!state.source || !state.target || document.body.dataset.state === "computing") return;
  state.points.push(eventToPixel(event, $("source-image")));
  refresh();
}

window.addEventListener("DOMContentLoaded", () => {
  $("load-samples").addEventListener("click", loadSamples);
  $("sample-target").addEventListener("change", () => { if (state.samples) loadSamples(); });
  $("upload-source").addEventListener("change", (e) => upload(e.target, "source"));
  $("upload-target").addEventListener("change", (e) => upload(e.target, "target"));
  $("source-image").addEventListener("click", onSourceClick);
  $("pose-align").addEventListener("change", refresh);
  $("refine").addEventListener("change", refresh);
  $("show-heat").addEventListener("change", showHeatmap);
  $("clear").addEventListener("click", () => { state.points = []; refresh(); });
  $("download").addEventListener("click", download);
});
