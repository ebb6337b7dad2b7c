/* SkyReels-V1 web page: submit a job, follow it over SSE, play the result, browse past jobs.
 * Plain browser JavaScript, no build step and nothing loaded from outside this server. */
"use strict";

/** A new element with a class name. */
function classedElement(tag, className) {
  const node = document.createElement(tag);
  node.className = className;
  return node;
}

(function () {
  const API = "/v1";
  const modelCards = {}; // model id -> {task, defaults, limits}, from GET /v1/models (the server's registry)
  let adapters = []; // the server's LoRA adapters, from GET /v1/loras: {id, models, rank, ...}
  const STANDARD_SIZES = [
    ["960x544", "landscape"],
    ["544x960", "portrait"],
    ["720x720", "square"],
  ];
  const TERMINAL = new Set(["completed", "failed", "cancelled"]);
  const GALLERY_PAGE = 12;
  const POLL_MS = 1000;

  const PHASE_TEXT = {
    queued: "Queued",
    encoding_text: "Encoding the prompt",
    encoding_image: "Encoding the image",
    denoising: "Denoising",
    decoding: "Decoding the video",
    done: "Done",
  };

  const $ = (id) => document.getElementById(id);
  const el = {
    form: $("job-form"),
    model: $("model"),
    imageField: $("image-field"),
    image: $("image"),
    prompt: $("prompt"),
    negative: $("negative-prompt"),
    size: $("size"),
    customSizeField: $("custom-size-field"),
    customSize: $("custom-size"),
    frames: $("frames"),
    steps: $("steps"),
    seed: $("seed"),
    guidance: $("guidance"),
    embedded: $("embedded-guidance"),
    fps: $("fps"),
    loraField: $("lora-field"),
    loraList: $("lora-list"),
    error: $("error"),
    submit: $("submit"),
    progress: $("progress"),
    pct: $("progress-pct"),
    status: $("status"),
    meta: $("job-meta"),
    cancel: $("cancel"),
    download: $("download"),
    player: $("player"),
    gallery: $("gallery"),
    galleryEmpty: $("gallery-empty"),
    loadMore: $("load-more"),
    refresh: $("refresh"),
  };

  const state = {
    jobId: null, // the job shown in the "Current job" panel
    job: null,
    source: null, // EventSource following state.jobId
    pollTimer: null,
    nextCursor: null, // last_id of the gallery's last page, while more follow
    submitting: false,
  };

  // ---------------------------------------------------------------- helpers

  function jobUrl(id, suffix) {
    return `${API}/videos/${encodeURIComponent(id)}${suffix || ""}`;
  }

  function contentUrl(job, variant) {
    // completed_at changes if a job id were ever reused; it also keeps caches honest
    const stamp = job && job.completed_at ? `&t=${encodeURIComponent(job.completed_at)}` : "";
    return `${jobUrl(job.id, "/content")}?variant=${variant}${stamp}`;
  }

  /** Turn any error body the server may send into one readable message. */
  function errorText(status, body, rawText) {
    if (body && typeof body === "object") {
      const err = body.error;
      if (err && typeof err === "object") {
        const msg = err.message || JSON.stringify(err);
        return err.code ? `${msg} [${err.code}]` : msg;
      }
      if (typeof err === "string") return err;
      if (Array.isArray(body.detail)) {
        // FastAPI/pydantic validation errors
        return body.detail
          .map((d) => {
            const loc = Array.isArray(d.loc) ? d.loc.filter((p) => p !== "body").join(".") : "";
            return loc ? `${loc}: ${d.msg}` : d.msg;
          })
          .join("\n");
      }
      if (typeof body.detail === "string") return body.detail;
      if (typeof body.message === "string") return body.message;
    }
    if (rawText && rawText.trim()) return rawText.trim().slice(0, 2000);
    return `HTTP ${status}`;
  }

  // ---------------------------------------------------------------- API key (servers with keys answer 401)

  const KEY_NAME = "skyreels_api_key";

  function apiKey() {
    return localStorage.getItem(KEY_NAME) || "";
  }

  function rememberKey(key) {
    localStorage.setItem(KEY_NAME, key);
    // <video>, <img> and EventSource cannot send headers: the server accepts this cookie on reads (GET) only
    document.cookie = `${KEY_NAME}=${encodeURIComponent(key)}; path=/; SameSite=Strict`;
  }

  function withKey(options) {
    const key = apiKey();
    if (!key) return options;
    const opts = Object.assign({}, options);
    opts.headers = Object.assign({}, opts.headers, { Authorization: `Bearer ${key}` });
    return opts;
  }

  if (apiKey()) rememberKey(apiKey());

  /** fetch() that throws an Error carrying the server's message on a non-2xx answer; asks for an API key on 401. */
  async function api(url, options) {
    let resp;
    try {
      resp = await fetch(url, withKey(options));
    } catch (e) {
      throw new Error(`Cannot reach the server (${e.message || e}).`);
    }
    if (resp.status === 401) {
      const key = window.prompt(apiKey() ? "That API key was refused. API key:" : "This server needs an API key:");
      if (key && key.trim()) {
        rememberKey(key.trim());
        return api(url, options);
      }
    }
    const text = await resp.text();
    let body = null;
    if (text) {
      try {
        body = JSON.parse(text);
      } catch (_) {
        body = null;
      }
    }
    if (!resp.ok) {
      let msg = errorText(resp.status, body, text);
      if (resp.status === 429) {
        const retry = resp.headers.get("Retry-After");
        msg = `Too many jobs for now${retry ? `; try again in ${retry} s` : "; try again shortly"}. ${msg}`;
      }
      const err = new Error(msg);
      err.status = resp.status;
      err.body = body;
      throw err;
    }
    return body;
  }

  function showError(message) {
    el.error.textContent = "";
    if (!message) {
      el.error.hidden = true;
      return;
    }
    el.error.textContent = message;
    el.error.hidden = false;
  }

  function markInvalid(input, bad) {
    if (bad) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  }

  function fmtSeconds(s) {
    if (s == null || !isFinite(s)) return "";
    return s < 10 ? `${s.toFixed(1)} s` : `${Math.round(s)} s`;
  }

  function fmtDuration(s) {
    if (s < 60) return `${Math.max(1, Math.round(s))} s`;
    const minutes = Math.round(s / 60);
    return minutes < 60 ? `${minutes} min` : `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
  }

  function fmtTime(ts) {
    if (!ts) return "";
    const d = new Date(ts * 1000);
    const today = new Date().toDateString() === d.toDateString();
    return today
      ? d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" })
      : d.toLocaleDateString(undefined, { month: "short", day: "numeric" });
  }

  function statusLabel(status) {
    return (status || "").replace("_", " ");
  }

  // ---------------------------------------------------------------- models & form

  async function loadModels() {
    try {
      const body = await api(`${API}/models`);
      const models = (body && Array.isArray(body.data) ? body.data : []).filter((m) => m.id);
      if (!models.length) return;
      for (const m of models) modelCards[m.id] = m;
      const ids = models.map((m) => m.id);
      const previous = el.model.value;
      el.model.textContent = "";
      for (const id of ids) {
        const opt = document.createElement("option");
        opt.value = id;
        opt.textContent = id;
        el.model.appendChild(opt);
      }
      if (ids.includes(previous)) el.model.value = previous;
    } catch (e) {
      // keep the built-in options; the server still validates the model on submit
      console.warn("GET /v1/models failed:", e);
    }
    onModelChange();
    el.model.dataset.loaded = "true"; // the list is final: tests (and scripts) wait for this
  }

  async function loadAdapters() {
    try {
      const body = await api(`${API}/loras`);
      adapters = (body && Array.isArray(body.data) ? body.data : []).filter((a) => a.id && a.models.length);
    } catch (e) {
      console.warn("GET /v1/loras failed:", e);
    }
    renderAdapters();
    el.loraList.dataset.loaded = "true";
  }

  /** One row per adapter that fits the chosen model: a checkbox and its scale; choices survive a re-render. */
  function renderAdapters() {
    const chosen = Object.fromEntries(chosenAdapters().map((a) => [a.name, a.scale]));
    const usable = adapters.filter((a) => a.models.includes(el.model.value));
    el.loraList.textContent = "";
    for (const adapter of usable) {
      const li = classedElement("li", "lora");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.id = `lora-${adapter.id}`;
      box.value = adapter.id;
      box.checked = adapter.id in chosen;
      const label = document.createElement("label");
      label.htmlFor = box.id;
      label.textContent = adapter.id;
      const scale = document.createElement("input");
      scale.type = "number";
      scale.step = "0.05";
      scale.value = adapter.id in chosen ? chosen[adapter.id] : "1.0";
      scale.className = "lora-scale";
      scale.setAttribute("aria-label", `${adapter.id} scale`);
      li.append(box, label, scale);
      el.loraList.appendChild(li);
    }
    el.loraField.hidden = usable.length === 0;
  }

  function chosenAdapters() {
    return Array.from(el.loraList.querySelectorAll("li.lora"))
      .filter((li) => li.querySelector("input[type=checkbox]").checked)
      .map((li) => ({
        name: li.querySelector("input[type=checkbox]").value,
        scale: Number(li.querySelector("input.lora-scale").value),
      }));
  }

  function isI2V() {
    const task = modelCards[el.model.value] && modelCards[el.model.value].task;
    return task ? task === "i2v" : /(^|-)i2v($|-)/.test(el.model.value);
  }

  function onModelChange() {
    const i2v = isI2V();
    el.imageField.hidden = !i2v;
    el.image.required = i2v;
    if (!i2v) markInvalid(el.image, false);
    applyDefaults(modelCards[el.model.value]);
    renderAdapters();
  }

  /** The model's recommended size, frames and steps, so that a plain Generate finishes in reasonable time. */
  function applyDefaults(card) {
    if (!card || !card.defaults) return;
    const d = card.defaults;
    const sizes = STANDARD_SIZES.filter(([value]) => value !== d.size);
    el.size.textContent = "";
    const [w, h] = d.size.split("x");
    for (const [value, label] of [[d.size, "recommended"], ...sizes]) {
      const [sw, sh] = value.split("x");
      el.size.appendChild(new Option(`${sw} × ${sh} (${label})`, value));
    }
    el.size.appendChild(new Option("Custom…", "custom"));
    el.size.value = d.size;
    el.frames.value = d.num_frames;
    el.steps.value = d.num_inference_steps;
    el.guidance.value = d.guidance_scale;
    el.fps.value = d.fps;
    if (card.limits) {
      el.frames.max = card.limits.max_frames;
      el.steps.max = card.limits.max_inference_steps;
    }
    $("defaults-help").textContent =
      `Recommended for ${card.id}: ${w} × ${h}, ${d.num_frames} frames, ${d.num_inference_steps} steps.`;
    onSizeChange();
  }

  function onSizeChange() {
    const custom = el.size.value === "custom";
    el.customSizeField.hidden = !custom;
    el.customSize.required = custom;
    if (custom) el.customSize.focus();
    else markInvalid(el.customSize, false);
  }

  /** Read the form; returns {params, file} or throws an Error naming what is wrong. */
  function readForm() {
    const problems = [];
    [el.prompt, el.customSize, el.frames, el.steps, el.seed, el.guidance, el.embedded, el.fps, el.image].forEach(
      (i) => markInvalid(i, false)
    );

    const prompt = el.prompt.value.trim();
    if (!prompt) {
      problems.push("Enter a prompt.");
      markInvalid(el.prompt, true);
    }

    let size = el.size.value;
    if (size === "custom") {
      const m = el.customSize.value.trim().match(/^(\d+)\s*[xX×]\s*(\d+)$/);
      if (!m) {
        problems.push('Custom size must look like WIDTHxHEIGHT, e.g. "640x384".');
        markInvalid(el.customSize, true);
      } else {
        size = `${parseInt(m[1], 10)}x${parseInt(m[2], 10)}`;
      }
    }

    function intField(input, name, { optional = false, min = null } = {}) {
      const raw = input.value.trim();
      if (raw === "") {
        if (optional) return null;
        problems.push(`${name} is required.`);
        markInvalid(input, true);
        return null;
      }
      const v = Number(raw);
      if (!Number.isInteger(v) || (min != null && v < min)) {
        problems.push(`${name} must be a whole number${min != null ? ` ≥ ${min}` : ""}.`);
        markInvalid(input, true);
        return null;
      }
      return v;
    }

    function floatField(input, name) {
      const raw = input.value.trim();
      const v = Number(raw);
      if (raw === "" || !isFinite(v)) {
        problems.push(`${name} must be a number.`);
        markInvalid(input, true);
        return null;
      }
      return v;
    }

    const params = {
      model: el.model.value,
      prompt,
      size,
      num_frames: intField(el.frames, "Frames", { min: 1 }),
      num_inference_steps: intField(el.steps, "Steps", { min: 1 }),
      guidance_scale: floatField(el.guidance, "Guidance scale"),
      embedded_guidance_scale: floatField(el.embedded, "Embedded guidance scale"),
      fps: intField(el.fps, "Frames per second", { min: 1 }),
      priority: "interactive", // someone is watching: ahead of batch backlogs (a key without it gets 403)
    };
    const negative = el.negative.value.trim();
    if (negative) params.negative_prompt = negative;
    const seed = intField(el.seed, "Seed", { optional: true });
    if (seed != null) params.seed = seed;
    const loras = chosenAdapters();
    if (loras.some((a) => !isFinite(a.scale))) problems.push("Each chosen LoRA needs a numeric scale.");
    if (loras.length) params.loras = loras;

    let file = null;
    if (isI2V()) {
      file = el.image.files && el.image.files[0];
      if (!file) {
        problems.push("Choose a first-frame image for image-to-video.");
        markInvalid(el.image, true);
      }
    }

    if (problems.length) throw new Error(problems.join("\n"));
    return { params, file };
  }

  async function onSubmit(ev) {
    ev.preventDefault();
    if (state.submitting) return;
    showError(null);
    let form;
    try {
      form = readForm();
    } catch (e) {
      showError(e.message);
      return;
    }

    let options;
    if (form.file) {
      const fd = new FormData();
      for (const [k, v] of Object.entries(form.params)) fd.append(k, typeof v === "object" ? JSON.stringify(v) : String(v));
      fd.append("input_reference", form.file, form.file.name || "image");
      options = { method: "POST", body: fd };
    } else {
      options = {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(form.params),
      };
    }

    state.submitting = true;
    el.submit.disabled = true;
    el.submit.textContent = "Submitting…";
    try {
      const job = await api(`${API}/videos`, options);
      upsertCard(job, { prepend: true });
      follow(job);
    } catch (e) {
      if (!e.status) showError(e.message);
      else if (e.status >= 500) showError(`Server error (HTTP ${e.status}):\n${e.message}`);
      else showError(`The server refused the request (HTTP ${e.status}):\n${e.message}`);
    } finally {
      state.submitting = false;
      el.submit.disabled = false;
      el.submit.textContent = "Generate";
    }
  }

  // ---------------------------------------------------------------- following one job

  function stopFollowing() {
    if (state.source) {
      state.source.close();
      state.source = null;
    }
    if (state.pollTimer) {
      clearTimeout(state.pollTimer);
      state.pollTimer = null;
    }
  }

  /** Show `job` in the current-job panel and, unless it has finished, follow it over SSE. */
  function follow(job) {
    stopFollowing();
    const changed = state.jobId !== job.id;
    state.jobId = job.id;
    state.job = null;
    if (changed) resetPlayer();
    render(job);
    if (TERMINAL.has(job.status)) return;

    const id = job.id;
    let source;
    try {
      source = new EventSource(jobUrl(id, "/events"));
    } catch (e) {
      poll(id);
      return;
    }
    state.source = source;
    source.onmessage = (msg) => {
      if (state.jobId !== id) return;
      let data;
      try {
        data = JSON.parse(msg.data);
      } catch (_) {
        return;
      }
      if (!data || data.id !== id) return;
      render(data);
      if (TERMINAL.has(data.status)) stopFollowing();
    };
    source.onerror = () => {
      // The stream closed before a terminal status (server restart, proxy timeout, ...):
      // fall back to polling the job, which also catches a finish we missed.
      if (state.source !== source) return;
      source.close();
      state.source = null;
      poll(id);
    };
  }

  function poll(id) {
    if (state.jobId !== id) return;
    api(jobUrl(id))
      .then((job) => {
        if (state.jobId !== id) return;
        render(job);
        if (!TERMINAL.has(job.status)) state.pollTimer = setTimeout(() => poll(id), POLL_MS);
      })
      .catch((e) => {
        if (state.jobId !== id) return;
        if (e.status === 404) {
          render(null);
          el.status.textContent = "This job no longer exists.";
          return;
        }
        state.pollTimer = setTimeout(() => poll(id), POLL_MS * 3);
      });
  }

  function describe(job) {
    switch (job.status) {
      case "queued": {
        const pos = job.queue_position;
        const paused = job.preemptions ? ` (paused ${job.preemptions}× for interactive jobs; resumes at step ${job.current_step})` : "";
        if (pos == null) return `Queued${paused}`;
        return (pos <= 0 ? "Queued — next in line" : `Queued — position ${pos} in the queue`) + paused;
      }
      case "in_progress": {
        let text = PHASE_TEXT[job.phase] || job.phase || "Running";
        if (job.phase === "denoising" && job.total_steps) {
          text += ` — step ${job.current_step} / ${job.total_steps}`;
        }
        if (job.eta_seconds != null) text += ` — about ${fmtDuration(job.eta_seconds)} left`;
        return text;
      }
      case "completed": {
        const took = job.completed_at && (job.started_at || job.created_at)
          ? job.completed_at - (job.started_at || job.created_at)
          : null;
        return `Completed${took != null ? ` in ${fmtSeconds(took)}` : ""}`;
      }
      case "failed": {
        const err = job.error;
        return `Failed: ${err ? `${err.message}${err.code ? ` [${err.code}]` : ""}` : "unknown error"}`;
      }
      case "cancelled":
        return "Cancelled";
      default:
        return job.status || "";
    }
  }

  function render(job) {
    if (!job) {
      el.progress.value = 0;
      el.pct.textContent = "0%";
      el.cancel.hidden = true;
      el.download.hidden = true;
      el.meta.textContent = "";
      el.status.className = "status";
      return;
    }
    if (job.id !== state.jobId) return;
    const previous = state.job;
    state.job = job;

    const pct = job.status === "completed" ? 100 : Math.max(0, Math.min(100, Number(job.progress) || 0));
    el.progress.value = pct;
    el.pct.textContent = `${Math.round(pct)}%`;
    el.progress.setAttribute("aria-valuetext", `${Math.round(pct)}%`);
    el.status.textContent = describe(job);
    el.status.className = `status ${job.status}`;

    const meta = [job.model, job.size, `${job.num_frames} frames`, `${job.num_inference_steps} steps`];
    if (job.seed != null) meta.push(`seed ${job.seed}`);
    const metrics = job.metrics && Object.keys(job.metrics).length
      ? Object.entries(job.metrics).map(([k, v]) => `${k} ${fmtSeconds(v)}`).join(", ")
      : "";
    el.meta.textContent = meta.filter(Boolean).join(" · ") + (metrics ? ` — ${metrics}` : "");

    const running = !TERMINAL.has(job.status);
    el.cancel.hidden = !running;
    el.cancel.disabled = false;

    if (job.status === "completed") {
      if (!previous || previous.status !== "completed" || el.player.hidden) showVideo(job);
    }
    upsertCard(job);
    highlightActive();
  }

  function resetPlayer() {
    el.player.pause();
    el.player.removeAttribute("src");
    el.player.load();
    el.player.hidden = true;
    el.download.hidden = true;
  }

  function showVideo(job) {
    const src = contentUrl(job, "video");
    el.player.muted = true; // autoplay is only allowed muted
    el.player.loop = true;
    if (el.player.getAttribute("src") !== src) el.player.src = src;
    el.player.hidden = false;
    const p = el.player.play();
    if (p && p.catch) p.catch(() => {}); // autoplay refused: the controls are there
    el.download.href = src;
    el.download.setAttribute("download", `${job.id}.mp4`);
    el.download.hidden = false;
  }

  async function onCancel() {
    const id = state.jobId;
    if (!id) return;
    el.cancel.disabled = true;
    try {
      const job = await api(jobUrl(id, "/cancel"), { method: "POST" });
      if (job && job.id) render(job);
    } catch (e) {
      if (e.status === 409) {
        // it finished meanwhile: show how it ended
        poll(id);
        return;
      }
      el.cancel.disabled = false;
      showError(`Cancel failed: ${e.message}`);
    }
  }

  // ---------------------------------------------------------------- gallery

  function cardFor(id) {
    return el.gallery.querySelector(`li[data-id="${CSS.escape(id)}"]`);
  }

  function buildCard(job) {
    const li = classedElement("li", "card");
    li.dataset.id = job.id;

    const open = document.createElement("button");
    open.type = "button";
    open.className = "card-open";
    open.addEventListener("click", () => openJob(li.dataset.id));

    const thumb = classedElement("div", "thumb");
    open.appendChild(thumb);

    const body = classedElement("div", "card-body");
    const badge = classedElement("span", "badge");
    const prompt = classedElement("span", "card-prompt");
    body.append(badge, prompt);
    open.appendChild(body);

    const foot = classedElement("div", "card-foot");
    const when = classedElement("span", "meta");
    const del = document.createElement("button");
    del.type = "button";
    del.className = "card-delete";
    del.textContent = "Delete";
    del.addEventListener("click", (ev) => {
      ev.stopPropagation();
      deleteJob(li.dataset.id);
    });
    foot.append(when, del);

    li.append(open, foot);
    return li;
  }

  function fillCard(li, job) {
    const status = job.status;
    const thumb = li.querySelector(".thumb");
    const thumbKey = status === "completed" ? contentUrl(job, "thumbnail") : `status:${status}`;
    if (thumb.dataset.key !== thumbKey) {
      thumb.dataset.key = thumbKey;
      thumb.textContent = "";
      if (status === "completed") {
        const img = document.createElement("img");
        img.loading = "lazy";
        img.alt = "";
        img.src = thumbKey;
        img.addEventListener("error", () => {
          thumb.textContent = "no preview";
        });
        thumb.appendChild(img);
      } else {
        thumb.textContent = status === "in_progress" ? "generating…" : statusLabel(status);
      }
    }
    const badge = li.querySelector(".badge");
    badge.className = `badge ${status}`;
    badge.textContent = status === "in_progress" && job.progress ? `running ${job.progress}%` : statusLabel(status);
    const prompt = li.querySelector(".card-prompt");
    prompt.textContent = job.prompt || "(no prompt)";
    li.title = job.prompt || "";
    li.querySelector(".card-open").setAttribute(
      "aria-label",
      `${status === "completed" ? "Play" : "Show"} video: ${job.prompt || job.id} (${statusLabel(status)})`
    );
    li.querySelector(".card-delete").setAttribute("aria-label", `Delete video: ${job.prompt || job.id}`);
    li.querySelector(".card-foot .meta").textContent = [fmtTime(job.created_at), job.size].filter(Boolean).join(" · ");
  }

  function upsertCard(job, { prepend = false } = {}) {
    let li = cardFor(job.id);
    if (!li) {
      if (!prepend) return; // updates for jobs not in the gallery are not shown there
      li = buildCard(job);
      el.gallery.prepend(li);
    }
    fillCard(li, job);
    el.galleryEmpty.hidden = el.gallery.children.length > 0;
  }

  function highlightActive() {
    for (const li of el.gallery.children) li.classList.toggle("active", li.dataset.id === state.jobId);
  }

  async function loadGallery(reset) {
    const params = new URLSearchParams({ limit: String(GALLERY_PAGE) });
    if (!reset && state.nextCursor) params.set("after", state.nextCursor);
    el.loadMore.disabled = true;
    try {
      const body = await api(`${API}/videos?${params}`);
      if (reset) el.gallery.textContent = "";
      const jobs = (body && body.data) || [];
      for (const job of jobs) {
        let li = cardFor(job.id);
        if (!li) {
          li = buildCard(job);
          el.gallery.appendChild(li);
        }
        fillCard(li, job);
      }
      state.nextCursor = body && body.has_more ? body.last_id : null;
      el.loadMore.hidden = !state.nextCursor;
      el.galleryEmpty.hidden = el.gallery.children.length > 0;
      highlightActive();
    } catch (e) {
      showError(`Could not load past videos: ${e.message}`);
    } finally {
      el.loadMore.disabled = false;
    }
  }

  async function openJob(id) {
    showError(null);
    try {
      const job = await api(jobUrl(id));
      follow(job);
      if (job.status === "completed") {
        el.player.scrollIntoView({ behavior: "smooth", block: "nearest" });
      }
    } catch (e) {
      showError(e.status === 404 ? "That video no longer exists." : e.message);
      if (e.status === 404) removeCard(id);
    }
  }

  function removeCard(id) {
    const li = cardFor(id);
    if (li) li.remove();
    el.galleryEmpty.hidden = el.gallery.children.length > 0;
  }

  async function deleteJob(id) {
    const li = cardFor(id);
    const btn = li && li.querySelector(".card-delete");
    if (btn) btn.disabled = true;
    try {
      await api(jobUrl(id), { method: "DELETE" });
    } catch (e) {
      if (e.status !== 404) {
        if (btn) btn.disabled = false;
        showError(`Delete failed: ${e.message}`);
        return;
      }
    }
    removeCard(id);
    if (state.jobId === id) {
      stopFollowing();
      state.jobId = null;
      state.job = null;
      resetPlayer();
      render(null);
      el.status.className = "status";
      el.status.textContent = "The video was deleted.";
    }
  }

  /** Cards of unfinished jobs other than the followed one: refresh them now and then. */
  async function refreshRunningCards() {
    if (document.visibilityState === "hidden") return;
    const ids = [...el.gallery.querySelectorAll(".badge.queued, .badge.in_progress")]
      .map((b) => b.closest("li").dataset.id)
      .filter((id) => id !== state.jobId)
      .slice(0, 8);
    for (const id of ids) {
      try {
        const job = await api(jobUrl(id));
        upsertCard(job);
      } catch (e) {
        if (e.status === 404) removeCard(id);
      }
    }
  }

  // ---------------------------------------------------------------- wiring

  el.form.addEventListener("submit", onSubmit);
  el.model.addEventListener("change", onModelChange);
  el.size.addEventListener("change", onSizeChange);
  el.cancel.addEventListener("click", onCancel);
  el.loadMore.addEventListener("click", () => loadGallery(false));
  el.refresh.addEventListener("click", () => loadGallery(true));
  el.image.addEventListener("change", () => markInvalid(el.image, false));

  onModelChange();
  onSizeChange();
  loadModels().then(loadAdapters);
  loadGallery(true);
  setInterval(refreshRunningCards, 3000);

  // for tests and debugging
  window.skyreelsPage = { state, follow, loadGallery };
})();
