// DiffIR restoration page: plain browser JavaScript, no build step, no third-party code.
// Talks to the service it is served by, with relative URLs (so it also works behind a path prefix):
//   GET  tasks              -> the configured tasks and the server's limits
//   POST restore/<task>     -> multipart `image` (+ `mask` for inpainting); image bytes back
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const els = {
    form: $("form"), task: $("task"), taskInfo: $("task-info"),
    imageInput: $("image-input"), dropzone: $("dropzone"), dropText: $("image-drop-text"), imageInfo: $("image-info"),
    maskEditor: $("mask-editor"), paintStage: $("paint-stage"), paintBase: $("paint-base"), maskCanvas: $("mask-canvas"),
    brushCursor: $("brush-cursor"), brushSize: $("brush-size"), brushSizeOut: $("brush-size-out"),
    toolBrush: $("tool-brush"), toolEraser: $("tool-eraser"), undo: $("undo"), clear: $("clear"),
    maskInput: $("mask-input"), maskInfo: $("mask-info"),
    seed: $("seed"), format: $("format"), quality: $("quality"), qualityLabel: $("quality-label"), apiKey: $("api-key"),
    restore: $("restore"), cancel: $("cancel"), progressBox: $("progress-box"), progress: $("progress"),
    status: $("status"), error: $("error"),
    result: $("result"), compareSlider: $("compare-slider"), upscale: $("upscale"), upscaleLabel: $("upscale-label"),
    zoom: $("zoom"), download: $("download"), viewport: $("compare-viewport"), stage: $("compare-stage"),
    afterImg: $("after-img"), beforeCanvas: $("before-canvas"), divider: $("divider"),
    resultInfo: $("result-info"), timing: $("timing"),
  };

  const state = {
    tasks: [],
    tasksLoaded: false,
    file: null, // the File the user gave (sent as-is)
    image: null, // decoded HTMLImageElement, or null when the browser cannot show the file
    imageUrl: null,
    width: 0,
    height: 0,
    tool: "brush",
    painting: null, // {x, y} of the last point while a stroke is in progress
    undoStack: [],
    maskPixels: 0,
    rawMask: null, // a mask file sent as-is, for images the browser cannot show
    xhr: null,
    timer: 0,
    result: null, // {url, blob, width, height, scale, task, ...}
    zoomed: false,
  };

  // ---------------------------------------------------------------- small helpers
  const first = (...values) => values.find((v) => v !== undefined && v !== null);
  const num = (v) => (v === undefined || v === null || v === "" || Number.isNaN(Number(v)) ? null : Number(v));

  function formatBytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
    return `${(n / 1024 / 1024).toFixed(n < 10 * 1024 * 1024 ? 2 : 1)} MiB`;
  }
  function formatPixels(n) {
    if (n >= 1e6) return `${(n / 1e6).toFixed(n >= 1e7 ? 1 : 2)} MP`;
    return `${n.toLocaleString("en")} px`;
  }
  function setBodyState(s) {
    document.body.dataset.state = s;
  }
  function authHeaders() {
    const key = els.apiKey.value.trim();
    return key ? { Authorization: `Bearer ${key}` } : {};
  }
  function currentTask() {
    return state.tasks.find((t) => t.name === els.task.value) || null;
  }

  // ---------------------------------------------------------------- errors and status
  function clearError() {
    els.error.hidden = true;
    els.error.replaceChildren();
    if (document.body.dataset.state === "error") setBodyState("idle");
  }
  function showError(message, details = []) {
    const msg = document.createElement("p");
    msg.className = "msg";
    msg.textContent = message;
    els.error.replaceChildren(msg);
    const extra = details.filter(Boolean);
    if (extra.length) {
      const d = document.createElement("p");
      d.className = "detail";
      d.textContent = extra.join(" · ");
      els.error.append(d);
    }
    els.error.hidden = false;
    setBodyState("error");
  }
  function setStatus(text) {
    els.status.textContent = text;
  }

  /** Turn an error response (any shape the service or a proxy might give) into {code, message}. */
  async function readApiError(status, statusText, blob) {
    let text = "";
    try {
      text = blob ? await blob.text() : "";
    } catch {
      text = "";
    }
    let code = null;
    let message = null;
    let requestId = null;
    try {
      const body = JSON.parse(text);
      const err = body && typeof body.error === "object" && body.error !== null ? body.error : body;
      code = first(err.code, typeof body.error === "string" ? body.error : undefined) ?? null;
      requestId = first(err.request_id, body.request_id) ?? null;
      message = first(err.message, err.detail && typeof err.detail === "string" ? err.detail : undefined) ?? null;
      if (!message && Array.isArray(err.detail)) {
        message = err.detail.map((d) => [d.loc && d.loc.slice(1).join("."), d.msg].filter(Boolean).join(": ")).join("; ");
      }
      if (message && typeof message !== "string") message = JSON.stringify(message);
    } catch {
      // not JSON: a proxy page or plain text
    }
    if (!message) {
      const plain = text && text.length < 300 && !/<html/i.test(text) ? text.trim() : "";
      message = plain || `The server answered HTTP ${status}${statusText ? ` ${statusText}` : ""}.`;
    }
    return { code, message, requestId };
  }

  // ---------------------------------------------------------------- tasks
  function normalizeTasks(json) {
    let list;
    let container = json;
    if (Array.isArray(json)) list = json;
    else if (json && Array.isArray(json.tasks)) list = json.tasks;
    else if (json && json.tasks && typeof json.tasks === "object") {
      list = Object.entries(json.tasks).map(([name, t]) => ({ name, ...t }));
    } else if (json && typeof json === "object") {
      container = {};
      list = Object.entries(json).map(([name, t]) => ({ name, ...t }));
    } else list = [];
    const globalLimits = (container && container.limits) || {};
    return list
      .map((t) => {
        const limits = { ...globalLimits, ...(t.limits || {}) };
        const lim = (...names) => num(first(...names.flatMap((n) => [limits[n], t[n]])));
        return {
          name: String(first(t.name, t.task, "")),
          variant: first(t.variant, t.model, t.preset, ""),
          description: first(t.description, t.title, ""),
          scale: num(first(t.scale, t.upscale, 1)) || 1,
          needsMask: Boolean(first(t.needs_mask, t.requires_mask, t.mask, t.mask_required, false)),
          maxBodyBytes: lim("max_body_bytes", "max_upload_bytes", "max_request_bytes"),
          maxInputPixels: lim("max_input_pixels", "max_pixels"),
          maxOutputPixels: lim("max_output_pixels"),
          maxSide: lim("max_side", "max_input_side", "max_edge"),
          formats: outputFormats(first(t.formats, t.output_formats, (container || {}).formats, null)),
        };
      })
      .filter((t) => t.name);
  }

  function outputFormats(f) {
    if (Array.isArray(f)) return f; // a plain list of output formats
    if (f && Array.isArray(f.output)) return f.output; // {input: [...], output: [...]}
    return null;
  }

  async function loadTasks() {
    els.task.disabled = true;
    try {
      const res = await fetch("tasks", { headers: { Accept: "application/json", ...authHeaders() } });
      if (!res.ok) {
        const { code, message } = await readApiError(res.status, res.statusText, await res.blob());
        showError(`Could not load the task list: ${message}`, [code && `code: ${code}`, `HTTP ${res.status}`]);
        els.task.replaceChildren(new Option("No tasks available", ""));
        return;
      }
      const json = await res.json();
      state.tasks = normalizeTasks(json);
      state.serverReady = json && typeof json === "object" && "ready" in json ? Boolean(json.ready) : true;
    } catch (e) {
      showError(`Could not reach the server to load the task list (${e.message}).`);
      els.task.replaceChildren(new Option("No tasks available", ""));
      return;
    }
    state.tasksLoaded = true;
    const previous = els.task.value;
    els.task.replaceChildren(
      ...state.tasks.map((t) => new Option(t.description ? `${t.name} — ${t.description}` : t.name, t.name)),
    );
    if (!state.tasks.length) els.task.replaceChildren(new Option("The server has no tasks configured", ""));
    if (previous && state.tasks.some((t) => t.name === previous)) els.task.value = previous;
    els.task.disabled = !state.tasks.length;
    clearError();
    setBodyState("idle");
    if (!state.serverReady) setStatus("The server is still warming up its models; the first restore may wait.");
    onTaskChange();
  }

  function onTaskChange() {
    const t = currentTask();
    if (!t) {
      els.taskInfo.textContent = "";
    } else {
      const parts = [];
      if (t.variant) parts.push(`model ${t.variant}`);
      parts.push(t.scale > 1 ? `output ${t.scale}× larger` : "output same size");
      if (t.needsMask) parts.push("needs a mask (white = hole)");
      const limits = [];
      if (t.maxInputPixels) limits.push(`input ≤ ${formatPixels(t.maxInputPixels)}`);
      if (t.maxOutputPixels) limits.push(`output ≤ ${formatPixels(t.maxOutputPixels)}`);
      if (t.maxSide) limits.push(`side ≤ ${t.maxSide} px`);
      if (t.maxBodyBytes) limits.push(`upload ≤ ${formatBytes(t.maxBodyBytes)}`);
      els.taskInfo.textContent = parts.join(" · ") + (limits.length ? ` · limits: ${limits.join(", ")}` : "");
      if (Array.isArray(t.formats) && t.formats.length) {
        for (const opt of els.format.options) opt.disabled = opt.value !== "" && !t.formats.includes(opt.value);
        if (els.format.selectedOptions[0]?.disabled) els.format.value = "";
      }
    }
    updateMaskEditor();
    refreshValidity();
  }

  // ---------------------------------------------------------------- the image
  function imageProblems(t) {
    const problems = [];
    if (!state.file || !t) return problems;
    if (t.maxBodyBytes && state.file.size > t.maxBodyBytes) {
      problems.push(`The file is ${formatBytes(state.file.size)}; the server accepts at most ${formatBytes(t.maxBodyBytes)}.`);
    }
    if (state.image) {
      const px = state.width * state.height;
      if (t.maxInputPixels && px > t.maxInputPixels) {
        problems.push(
          `The image has ${formatPixels(px)}; ${t.name} accepts at most ${formatPixels(t.maxInputPixels)}.`,
        );
      }
      const outPx = px * t.scale * t.scale;
      if (t.maxOutputPixels && outPx > t.maxOutputPixels) {
        problems.push(
          `The ${t.scale}× output would have ${formatPixels(outPx)}; the server makes at most ${formatPixels(t.maxOutputPixels)}.`,
        );
      }
      if (t.maxSide && Math.max(state.width, state.height) > t.maxSide) {
        problems.push(`The longest side is ${Math.max(state.width, state.height)} px; at most ${t.maxSide} px is accepted.`);
      }
    }
    return problems;
  }

  function refreshValidity() {
    const t = currentTask();
    const busy = Boolean(state.xhr);
    let ready = Boolean(t && state.file);
    els.imageInfo.classList.remove("bad");
    if (state.file) {
      const desc = [state.file.name || "pasted image", formatBytes(state.file.size)];
      if (state.image) {
        desc.push(`${state.width} × ${state.height} px`);
        if (t && t.scale > 1) desc.push(`→ ${state.width * t.scale} × ${state.height * t.scale} px`);
      } else {
        desc.push("your browser cannot show this file; the server decides whether it can read it");
      }
      const problems = imageProblems(t);
      if (problems.length) {
        ready = false;
        els.imageInfo.classList.add("bad");
        els.imageInfo.textContent = `${desc.join(" · ")}. ${problems.join(" ")}`;
      } else {
        els.imageInfo.textContent = desc.join(" · ");
      }
    } else {
      els.imageInfo.textContent = "";
    }
    if (t && t.needsMask && state.file) {
      if (!state.image) {
        // The browser cannot show the image (e.g. TIFF): no painting, but an uploaded mask goes as-is.
        ready = ready && Boolean(state.rawMask);
        els.maskInfo.textContent = state.rawMask
          ? `Mask ${state.rawMask.name} is sent as-is (it must have the image's size).`
          : "This browser cannot show the image, so the mask cannot be painted; upload a mask file instead.";
      } else if (state.maskPixels === 0) {
        ready = false;
        els.maskInfo.textContent = "Paint over the part to fill (or upload a mask) to enable Restore.";
      } else {
        const pct = (100 * state.maskPixels) / (state.width * state.height);
        els.maskInfo.textContent = `Hole: ${pct < 0.1 ? "<0.1" : pct.toFixed(1)}% of the image; sent as a ${state.width} × ${state.height} PNG mask.`;
      }
    }
    els.restore.disabled = busy || !ready;
  }

  async function setImageFile(file) {
    if (!file) return;
    clearError();
    if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
    state.file = file;
    state.image = null;
    state.width = state.height = 0;
    state.imageUrl = URL.createObjectURL(file);
    const img = new Image();
    img.decoding = "async";
    img.src = state.imageUrl;
    try {
      await img.decode();
      if (state.file !== file) return; // replaced meanwhile
      state.image = img;
      state.width = img.naturalWidth;
      state.height = img.naturalHeight;
    } catch {
      if (state.file !== file) return;
    }
    // A thumbnail inside the drop zone.
    const thumb = els.dropzone.querySelector("img") || document.createElement("img");
    if (state.image) {
      thumb.src = state.imageUrl;
      thumb.alt = "";
      if (!thumb.parentNode) els.dropzone.prepend(thumb);
    } else thumb.remove();
    els.dropText.textContent = "Drop another image, or choose a different file";
    resetMask();
    hideResult();
    updateMaskEditor();
    refreshValidity();
  }

  // ---------------------------------------------------------------- mask painting
  const maskCtx = els.maskCanvas.getContext("2d", { willReadFrequently: true });
  const MASK_COLOR = "#ff1f5a";
  const MASK_RGB = [0xff, 0x1f, 0x5a, 255];

  function resetMask() {
    state.rawMask = null;
    state.undoStack = [];
    state.maskPixels = 0;
    if (!state.image) return;
    els.maskCanvas.width = state.width;
    els.maskCanvas.height = state.height;
    maskCtx.clearRect(0, 0, state.width, state.height);
    els.paintBase.src = state.imageUrl;
    fitStage(els.paintStage, state.width, state.height, 60);
    const longSide = Math.max(state.width, state.height);
    els.brushSize.max = String(Math.max(64, Math.round(longSide / 3)));
    setBrushSize(Math.max(3, Math.round(longSide / 24)));
    updateMaskButtons();
  }

  function updateMaskEditor() {
    const t = currentTask();
    els.maskEditor.hidden = !(t && t.needsMask && state.file);
    const canPaint = Boolean(state.image);
    els.paintStage.parentElement.hidden = !canPaint;
    for (const el of [els.brushSize, els.toolBrush, els.toolEraser]) el.disabled = !canPaint;
  }

  function fitStage(stage, w, h, maxVh) {
    stage.style.aspectRatio = `${w} / ${h}`;
    stage.style.width = `min(100%, ${((maxVh * w) / h).toFixed(3)}vh)`;
  }

  function setBrushSize(v) {
    const size = Math.max(1, Math.min(Number(els.brushSize.max), Math.round(v)));
    els.brushSize.value = String(size);
    els.brushSizeOut.textContent = `${size} px`;
  }

  function setTool(tool) {
    state.tool = tool;
    els.toolBrush.setAttribute("aria-pressed", String(tool === "brush"));
    els.toolEraser.setAttribute("aria-pressed", String(tool === "eraser"));
  }

  function pushUndo() {
    const maxSnapshots = Math.max(3, Math.floor((256 * 1024 * 1024) / (state.width * state.height * 4)));
    state.undoStack.push(maskCtx.getImageData(0, 0, state.width, state.height));
    while (state.undoStack.length > Math.min(30, maxSnapshots)) state.undoStack.shift();
  }

  /** Make the painted mask binary (what is shown is exactly what is sent) and count its hole pixels. */
  function countMask() {
    const img = maskCtx.getImageData(0, 0, state.width, state.height);
    const data = img.data;
    let n = 0;
    let changed = false;
    for (let i = 0; i < data.length; i += 4) {
      const a = data[i + 3];
      if (a === 0 || a === 255) {
        n += a === 255;
        continue;
      }
      changed = true;
      if (a >= 128) {
        [data[i], data[i + 1], data[i + 2], data[i + 3]] = MASK_RGB;
        n++;
      } else data[i] = data[i + 1] = data[i + 2] = data[i + 3] = 0;
    }
    if (changed) maskCtx.putImageData(img, 0, 0);
    state.maskPixels = n;
    updateMaskButtons();
    refreshValidity();
  }

  function updateMaskButtons() {
    els.undo.disabled = state.undoStack.length === 0;
    els.clear.disabled = state.maskPixels === 0;
  }

  function canvasPoint(e) {
    const r = els.maskCanvas.getBoundingClientRect();
    return {
      x: ((e.clientX - r.left) * els.maskCanvas.width) / r.width,
      y: ((e.clientY - r.top) * els.maskCanvas.height) / r.height,
    };
  }

  function strokeTo(p) {
    maskCtx.save();
    maskCtx.globalCompositeOperation = state.tool === "eraser" ? "destination-out" : "source-over";
    maskCtx.strokeStyle = maskCtx.fillStyle = MASK_COLOR;
    maskCtx.lineWidth = Number(els.brushSize.value);
    maskCtx.lineCap = maskCtx.lineJoin = "round";
    const from = state.painting || p;
    if (from.x === p.x && from.y === p.y) {
      maskCtx.beginPath();
      maskCtx.arc(p.x, p.y, maskCtx.lineWidth / 2, 0, Math.PI * 2);
      maskCtx.fill();
    } else {
      maskCtx.beginPath();
      maskCtx.moveTo(from.x, from.y);
      maskCtx.lineTo(p.x, p.y);
      maskCtx.stroke();
    }
    maskCtx.restore();
    state.painting = p;
  }

  /** Show the brush outline at (x, y) in image pixels. */
  function showBrushAt(x, y) {
    const r = els.maskCanvas.getBoundingClientRect();
    const k = r.width / els.maskCanvas.width;
    const d = Number(els.brushSize.value) * k;
    Object.assign(els.brushCursor.style, {
      left: `${x * k}px`,
      top: `${y * k}px`,
      width: `${d}px`,
      height: `${d}px`,
    });
    els.brushCursor.hidden = false;
  }
  function moveBrushCursor(e) {
    const p = canvasPoint(e);
    showBrushAt(p.x, p.y);
  }

  els.maskCanvas.addEventListener("pointerdown", (e) => {
    if (!state.image || e.button > 0) return;
    e.preventDefault();
    els.maskCanvas.setPointerCapture(e.pointerId);
    pushUndo();
    state.painting = null;
    strokeTo(canvasPoint(e));
  });
  els.maskCanvas.addEventListener("pointermove", (e) => {
    moveBrushCursor(e);
    if (state.painting) strokeTo(canvasPoint(e));
  });
  const endStroke = () => {
    if (!state.painting) return;
    state.painting = null;
    countMask();
  };
  els.maskCanvas.addEventListener("pointerup", endStroke);
  els.maskCanvas.addEventListener("pointercancel", endStroke);
  els.maskCanvas.addEventListener("pointerleave", () => {
    els.brushCursor.hidden = true;
  });
  // Keyboard painting: arrows move the brush, Shift+arrows paint along the way, Space or Enter paints a dot.
  const ARROWS = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
  let keyCursor = null;
  els.maskCanvas.addEventListener("focus", () => {
    if (!state.image) return;
    keyCursor = keyCursor || { x: state.width / 2, y: state.height / 2 };
    showBrushAt(keyCursor.x, keyCursor.y);
  });
  els.maskCanvas.addEventListener("blur", () => {
    els.brushCursor.hidden = true;
  });
  els.maskCanvas.addEventListener("keydown", (e) => {
    if (!state.image) return;
    if (e.key in ARROWS && !e.ctrlKey && !e.metaKey && !e.altKey) {
      e.preventDefault();
      keyCursor = keyCursor || { x: state.width / 2, y: state.height / 2 };
      const step = Math.max(1, Math.round(Number(els.brushSize.value) / 2));
      const [dx, dy] = ARROWS[e.key];
      const next = {
        x: Math.min(state.width - 0.5, Math.max(0.5, keyCursor.x + dx * step)),
        y: Math.min(state.height - 0.5, Math.max(0.5, keyCursor.y + dy * step)),
      };
      if (e.shiftKey) {
        pushUndo();
        state.painting = keyCursor;
        strokeTo(next);
        state.painting = next;
        endStroke();
      }
      keyCursor = next;
      showBrushAt(keyCursor.x, keyCursor.y);
    } else if (e.key === " " || e.key === "Enter") {
      e.preventDefault();
      keyCursor = keyCursor || { x: state.width / 2, y: state.height / 2 };
      pushUndo();
      state.painting = null;
      strokeTo(keyCursor);
      endStroke();
    } else if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "z") {
      e.preventDefault();
      undo();
    } else if (e.key === "[" || e.key === "]") {
      e.preventDefault();
      setBrushSize(Number(els.brushSize.value) * (e.key === "]" ? 1.25 : 0.8) + (e.key === "]" ? 1 : -1));
    } else if (e.key.toLowerCase() === "e") {
      setTool(state.tool === "eraser" ? "brush" : "eraser");
    }
  });

  function undo() {
    const snap = state.undoStack.pop();
    if (!snap) return;
    maskCtx.putImageData(snap, 0, 0);
    countMask();
  }
  els.undo.addEventListener("click", undo);
  els.clear.addEventListener("click", () => {
    pushUndo();
    maskCtx.clearRect(0, 0, state.width, state.height);
    countMask();
  });
  els.brushSize.addEventListener("input", () => setBrushSize(Number(els.brushSize.value)));
  els.toolBrush.addEventListener("click", () => setTool("brush"));
  els.toolEraser.addEventListener("click", () => setTool("eraser"));

  els.maskInput.addEventListener("change", async () => {
    const file = els.maskInput.files[0];
    els.maskInput.value = "";
    if (!file || !state.file) return;
    if (!state.image) {
      state.rawMask = file;
      refreshValidity();
      return;
    }
    const img = new Image();
    const url = URL.createObjectURL(file);
    img.src = url;
    try {
      await img.decode();
    } catch {
      els.maskInfo.textContent = `This browser cannot read ${file.name} as an image.`;
      URL.revokeObjectURL(url);
      return;
    }
    // Resize (nearest) to the image's own resolution, then white (luma > 127) = hole.
    const tmp = document.createElement("canvas");
    tmp.width = state.width;
    tmp.height = state.height;
    const tctx = tmp.getContext("2d", { willReadFrequently: true });
    tctx.imageSmoothingEnabled = false;
    tctx.drawImage(img, 0, 0, state.width, state.height);
    URL.revokeObjectURL(url);
    const src = tctx.getImageData(0, 0, state.width, state.height);
    const out = maskCtx.createImageData(state.width, state.height);
    for (let i = 0; i < src.data.length; i += 4) {
      // the service's rule: a hole where luminance × alpha is at least one half
      const luma = (0.299 * src.data[i] + 0.587 * src.data[i + 1] + 0.114 * src.data[i + 2]) * (src.data[i + 3] / 255);
      if (luma >= 127.5) out.data.set(MASK_RGB, i);
    }
    pushUndo();
    maskCtx.putImageData(out, 0, 0);
    countMask();
    if (img.naturalWidth !== state.width || img.naturalHeight !== state.height) {
      els.maskInfo.textContent += ` (the ${img.naturalWidth} × ${img.naturalHeight} mask was resized to the image.)`;
    }
  });

  /** The painted mask as a binary PNG at the image's own resolution: white = hole, black = keep. */
  function maskBlob() {
    const src = maskCtx.getImageData(0, 0, state.width, state.height);
    const out = new ImageData(state.width, state.height);
    for (let i = 0; i < src.data.length; i += 4) {
      const v = src.data[i + 3] >= 128 ? 255 : 0;
      out.data[i] = out.data[i + 1] = out.data[i + 2] = v;
      out.data[i + 3] = 255;
    }
    const c = document.createElement("canvas");
    c.width = state.width;
    c.height = state.height;
    c.getContext("2d").putImageData(out, 0, 0);
    return new Promise((resolve) => c.toBlob(resolve, "image/png"));
  }

  // ---------------------------------------------------------------- restore
  function setBusy(busy) {
    els.restore.textContent = busy ? "Restoring…" : "Restore";
    els.cancel.hidden = !busy;
    els.progressBox.hidden = !busy;
    els.form.setAttribute("aria-busy", String(busy));
    els.task.disabled = busy || !state.tasks.length;
    els.imageInput.disabled = busy;
    if (!busy) {
      clearInterval(state.timer);
      state.xhr = null;
    }
    refreshValidity();
  }

  let preparing = false; // between the click and the request (the mask PNG is encoded first)
  async function restore() {
    if (preparing) return;
    preparing = true;
    try {
      await startRestore();
    } finally {
      preparing = false;
    }
  }

  async function startRestore() {
    const t = currentTask();
    if (!t || !state.file || state.xhr) return;
    clearError();
    const problems = imageProblems(t);
    if (problems.length) return showError(problems.join(" "));

    const body = new FormData();
    body.append("image", state.file, state.file.name || "image.png");
    if (t.needsMask) {
      const mask = state.image ? await maskBlob() : state.rawMask;
      body.append("mask", mask, state.image ? "mask.png" : mask.name);
      if (t.maxBodyBytes && state.file.size + mask.size > t.maxBodyBytes) {
        return showError(
          `The image and its mask are ${formatBytes(state.file.size + mask.size)} together; the server accepts at most ${formatBytes(t.maxBodyBytes)}.`,
        );
      }
    }
    const params = new URLSearchParams();
    const seed = els.seed.value.trim();
    if (seed !== "") params.set("seed", seed);
    if (els.format.value) params.set("format", els.format.value);
    if (els.format.value !== "png" && els.quality.value !== "") params.set("quality", els.quality.value);

    const xhr = new XMLHttpRequest();
    state.xhr = xhr;
    const started = performance.now();
    let phase = "Uploading";
    const sent = { file: state.file, image: state.image, width: state.width, height: state.height, task: t, seed };
    xhr.open("POST", `restore/${encodeURIComponent(t.name)}?${params}`);
    xhr.responseType = "blob";
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    xhr.setRequestHeader("Accept", "image/*, application/json");
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) els.progress.value = e.loaded / e.total;
    };
    xhr.upload.onload = () => {
      phase = "Restoring on the server";
      els.progress.removeAttribute("value"); // indeterminate while the model runs
    };
    xhr.onload = async () => {
      const elapsed = performance.now() - started;
      const requestId = xhr.getResponseHeader("X-Request-ID");
      if (xhr.status >= 200 && xhr.status < 300) {
        try {
          await showResult(sent, xhr.response, {
            elapsed,
            requestId,
            serverTiming: xhr.getResponseHeader("Server-Timing"),
            contentType: xhr.getResponseHeader("Content-Type") || xhr.response.type,
          });
          setStatus(`Done in ${(elapsed / 1000).toFixed(2)} s.`);
          setBodyState("done");
        } catch (e) {
          showError(`The server answered, but this browser could not show the result (${e.message}).`, [
            requestId && `request id: ${requestId}`,
          ]);
          setStatus("");
        }
      } else {
        const err = await readApiError(xhr.status, xhr.statusText, xhr.response);
        const rid = requestId || err.requestId;
        const retry = xhr.getResponseHeader("Retry-After");
        showError(err.message, [
          err.code && `code: ${err.code}`,
          `HTTP ${xhr.status}`,
          retry && `retry after ${retry} s`,
          rid && `request id: ${rid}`,
        ]);
        setStatus("");
        if (xhr.status === 401) {
          els.apiKey.closest("details").open = true;
          els.apiKey.focus();
        }
      }
      setBusy(false);
    };
    xhr.onerror = () => {
      showError("The request failed: the server could not be reached or closed the connection.");
      setStatus("");
      setBusy(false);
    };
    xhr.onabort = () => {
      setStatus("Cancelled.");
      setBodyState("idle");
      setBusy(false);
    };
    els.progress.value = 0;
    setBodyState("busy");
    setBusy(true);
    const tick = () => setStatus(`${phase}… ${((performance.now() - started) / 1000).toFixed(1)} s`);
    tick();
    state.timer = setInterval(tick, 100);
    xhr.send(body);
  }

  els.form.addEventListener("submit", (e) => {
    e.preventDefault();
    restore();
  });
  els.cancel.addEventListener("click", () => state.xhr && state.xhr.abort());

  // ---------------------------------------------------------------- result and comparison
  function parseServerTiming(header) {
    if (!header) return [];
    return header
      .split(",")
      .map((s) => s.trim())
      .filter(Boolean)
      .map((entry) => {
        const [name, ...params] = entry.split(";").map((s) => s.trim());
        const metric = { name, dur: null, desc: "" };
        for (const p of params) {
          const i = p.indexOf("=");
          if (i < 0) continue;
          const key = p.slice(0, i).trim().toLowerCase();
          let value = p.slice(i + 1).trim();
          if (value.startsWith('"') && value.endsWith('"')) value = value.slice(1, -1);
          if (key === "dur") metric.dur = Number.parseFloat(value);
          else if (key === "desc") metric.desc = value;
        }
        return metric;
      });
  }

  function formatMs(ms) {
    return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(ms < 10 ? 1 : 0)} ms`;
  }

  function fillTiming(metrics, elapsed) {
    const tbody = els.timing.tBodies[0];
    tbody.replaceChildren();
    const row = (label, value) => {
      const tr = tbody.insertRow();
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = label;
      tr.append(th);
      tr.insertCell().textContent = value;
    };
    for (const m of metrics) row(m.desc || m.name, m.dur === null || Number.isNaN(m.dur) ? "—" : formatMs(m.dur));
    const timed = metrics.filter((m) => m.dur !== null && !Number.isNaN(m.dur));
    if (timed.length > 1) row("server total", formatMs(timed.reduce((sum, m) => sum + m.dur, 0)));
    if (!metrics.length) row("(no Server-Timing header)", "");
    row("round trip (browser)", formatMs(elapsed));
  }

  function extensionFor(contentType) {
    const type = (contentType || "").split(";")[0].trim().toLowerCase();
    return { "image/png": "png", "image/jpeg": "jpg", "image/webp": "webp" }[type] || els.format.value || "png";
  }

  function downloadName(sent, contentType) {
    const base = (sent.file.name || "image").replace(/\.[^.]*$/, "").replace(/[^\w.-]+/g, "_") || "image";
    const seed = sent.seed !== "" ? `-seed${sent.seed}` : "";
    return `${base}-${sent.task.name}${seed}.${extensionFor(contentType)}`;
  }

  function hideResult() {
    els.result.hidden = true;
    if (state.result) URL.revokeObjectURL(state.result.url);
    state.result = null;
  }

  async function showResult(sent, blob, info) {
    const url = URL.createObjectURL(blob);
    const img = els.afterImg;
    img.src = url;
    await img.decode();
    if (state.result) URL.revokeObjectURL(state.result.url);
    const width = img.naturalWidth;
    const height = img.naturalHeight;
    state.result = { ...sent, url, blob, width, height, ...info };
    els.result.dataset.width = String(width);
    els.result.dataset.height = String(height);

    const scale = sent.task.scale;
    els.upscaleLabel.hidden = !(sent.image && (width !== sent.width || height !== sent.height));
    drawBefore();
    setZoom(state.zoomed);
    setDivider(Number(els.compareSlider.value));

    const name = downloadName(sent, info.contentType);
    els.download.href = url;
    els.download.download = name;
    els.download.textContent = `Download ${name}`;

    const notes = [`${sent.task.name}: ${sent.width || "?"} × ${sent.height || "?"} → ${width} × ${height} px`];
    notes.push(`${formatBytes(blob.size)} ${extensionFor(info.contentType).toUpperCase()}`);
    if (sent.image && (width !== sent.width * scale || height !== sent.height * scale)) {
      notes.push(`expected ${sent.width * scale} × ${sent.height * scale}`);
    }
    if (info.requestId) notes.push(`request id ${info.requestId}`);
    els.resultInfo.textContent = notes.join(" · ");
    fillTiming(parseServerTiming(info.serverTiming), info.elapsed);
    els.result.hidden = false;
    els.result.dataset.state = "done";
    if (window.matchMedia("(max-width: 760px)").matches) els.result.scrollIntoView({ block: "start" });
  }

  /** Keys cubic (a = -0.5) weights for resampling `n` source samples to `m`, pixel centres aligned. */
  function cubicTaps(n, m) {
    const idx = new Int32Array(m * 4);
    const wts = new Float32Array(m * 4);
    const k = (x) => {
      const a = -0.5;
      x = Math.abs(x);
      if (x <= 1) return (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1;
      if (x < 2) return a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a;
      return 0;
    };
    for (let o = 0; o < m; o++) {
      const s = ((o + 0.5) * n) / m - 0.5;
      const base = Math.floor(s);
      let sum = 0;
      for (let j = 0; j < 4; j++) {
        const si = base - 1 + j;
        idx[o * 4 + j] = Math.min(n - 1, Math.max(0, si));
        wts[o * 4 + j] = k(s - si);
        sum += wts[o * 4 + j];
      }
      for (let j = 0; j < 4; j++) wts[o * 4 + j] /= sum;
    }
    return { idx, wts };
  }

  /** Plain separable bicubic upscaling of RGBA pixels, so the "before" side is an honest baseline. */
  function bicubicResize(src, sw, sh, dw, dh) {
    const cx = cubicTaps(sw, dw);
    const cy = cubicTaps(sh, dh);
    const tmp = new Float32Array(dw * sh * 4);
    for (let y = 0; y < sh; y++) {
      const row = y * sw * 4;
      for (let x = 0; x < dw; x++) {
        let r = 0;
        let g = 0;
        let b = 0;
        let a = 0;
        for (let j = 0; j < 4; j++) {
          const p = row + cx.idx[x * 4 + j] * 4;
          const w = cx.wts[x * 4 + j];
          r += src[p] * w;
          g += src[p + 1] * w;
          b += src[p + 2] * w;
          a += src[p + 3] * w;
        }
        const q = (y * dw + x) * 4;
        tmp[q] = r;
        tmp[q + 1] = g;
        tmp[q + 2] = b;
        tmp[q + 3] = a;
      }
    }
    const out = new ImageData(dw, dh);
    const d = out.data; // Uint8ClampedArray rounds and clamps
    for (let y = 0; y < dh; y++) {
      for (let x = 0; x < dw; x++) {
        let r = 0;
        let g = 0;
        let b = 0;
        let a = 0;
        for (let j = 0; j < 4; j++) {
          const p = (cy.idx[y * 4 + j] * dw + x) * 4;
          const w = cy.wts[y * 4 + j];
          r += tmp[p] * w;
          g += tmp[p + 1] * w;
          b += tmp[p + 2] * w;
          a += tmp[p + 3] * w;
        }
        const q = (y * dw + x) * 4;
        d[q] = r;
        d[q + 1] = g;
        d[q + 2] = b;
        d[q + 3] = a;
      }
    }
    return out;
  }

  function drawBefore() {
    const r = state.result;
    if (!r) return;
    const c = els.beforeCanvas;
    c.width = r.width;
    c.height = r.height;
    const ctx = c.getContext("2d");
    ctx.clearRect(0, 0, c.width, c.height);
    if (!r.image) return;
    const upscaled = r.width !== r.image.naturalWidth || r.height !== r.image.naturalHeight;
    if (!upscaled) {
      ctx.drawImage(r.image, 0, 0);
    } else if (els.upscale.value === "nearest") {
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(r.image, 0, 0, r.width, r.height);
    } else {
      const s = document.createElement("canvas");
      s.width = r.image.naturalWidth;
      s.height = r.image.naturalHeight;
      const sctx = s.getContext("2d", { willReadFrequently: true });
      sctx.drawImage(r.image, 0, 0);
      const src = sctx.getImageData(0, 0, s.width, s.height).data;
      ctx.putImageData(bicubicResize(src, s.width, s.height, r.width, r.height), 0, 0);
    }
    c.setAttribute(
      "aria-label",
      upscaled ? `Input image (before), upscaled with ${els.upscale.value} for comparison` : "Input image (before)",
    );
  }
  els.upscale.addEventListener("change", drawBefore);

  function setDivider(v) {
    v = Math.max(0, Math.min(100, v));
    els.compareSlider.value = String(v);
    els.compareSlider.setAttribute("aria-valuetext", `${Math.round(v)}% before, ${Math.round(100 - v)}% after`);
    els.beforeCanvas.style.clipPath = `inset(0 ${100 - v}% 0 0)`;
    els.divider.style.left = `${v}%`;
  }
  els.compareSlider.addEventListener("input", () => setDivider(Number(els.compareSlider.value)));

  let dragging = false;
  const dividerFromPointer = (e) => {
    const r = els.stage.getBoundingClientRect();
    setDivider((100 * (e.clientX - r.left)) / r.width);
  };
  els.stage.addEventListener("pointerdown", (e) => {
    if (e.button > 0) return;
    dragging = true;
    if (e.pointerType === "mouse") els.stage.setPointerCapture(e.pointerId);
    dividerFromPointer(e);
  });
  els.stage.addEventListener("pointermove", (e) => dragging && dividerFromPointer(e));
  for (const ev of ["pointerup", "pointercancel"]) els.stage.addEventListener(ev, () => (dragging = false));

  function setZoom(zoomed) {
    state.zoomed = zoomed;
    els.zoom.setAttribute("aria-pressed", String(zoomed));
    els.zoom.textContent = zoomed ? "Fit to view" : "Zoom 1:1";
    els.stage.classList.toggle("zoomed", zoomed);
    const r = state.result;
    if (!r) return;
    if (zoomed) {
      const dpr = window.devicePixelRatio || 1;
      els.stage.style.aspectRatio = "";
      els.stage.style.width = `${r.width / dpr}px`;
      els.stage.style.height = `${r.height / dpr}px`;
      const v = Number(els.compareSlider.value) / 100;
      els.viewport.scrollLeft = (r.width / dpr) * v - els.viewport.clientWidth / 2;
      els.viewport.scrollTop = (r.height / dpr - els.viewport.clientHeight) / 2;
    } else {
      els.stage.style.height = "";
      fitStage(els.stage, r.width, r.height, 75);
    }
  }
  els.zoom.addEventListener("click", () => setZoom(!state.zoomed));

  // ---------------------------------------------------------------- inputs: pick, drop, paste
  els.imageInput.addEventListener("change", () => {
    const file = els.imageInput.files[0];
    if (file) setImageFile(file);
  });
  // An image dropped anywhere on the page is taken (and the browser never navigates away to it).
  window.addEventListener("dragover", (e) => {
    e.preventDefault();
    if (e.dataTransfer) e.dataTransfer.dropEffect = "copy";
  });
  window.addEventListener("drop", (e) => {
    e.preventDefault();
    els.dropzone.classList.remove("over");
    const file = e.dataTransfer && e.dataTransfer.files[0];
    if (file && !state.xhr) setImageFile(file);
  });
  els.dropzone.addEventListener("dragenter", () => els.dropzone.classList.add("over"));
  els.dropzone.addEventListener("dragover", () => els.dropzone.classList.add("over"));
  els.dropzone.addEventListener("dragleave", () => els.dropzone.classList.remove("over"));
  document.addEventListener("paste", (e) => {
    if (state.xhr || e.target.matches?.("input[type=password], input[type=number], input[type=text]")) return;
    const item = [...(e.clipboardData?.items || [])].find((i) => i.kind === "file" && i.type.startsWith("image/"));
    if (item) setImageFile(item.getAsFile());
  });

  els.task.addEventListener("change", () => {
    hideResult();
    clearError();
    onTaskChange();
  });
  els.format.addEventListener("change", () => {
    els.qualityLabel.hidden = els.format.value === "png";
    els.quality.disabled = els.format.value === "png";
  });
  els.apiKey.addEventListener("change", () => {
    if (!state.tasksLoaded) loadTasks();
  });

  setBodyState("loading");
  loadTasks();
})();
