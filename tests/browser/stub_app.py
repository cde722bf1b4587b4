"""A stand-in for the service's HTTP contract, for developing the page before the service exists.

Only used when `service` cannot be started (see conftest.py); the real tests run the real service.
Run by hand: `.venv/bin/python -m uvicorn tests.browser.stub_app:app --port 8001`.
"""

from __future__ import annotations

import io
import os
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image, ImageOps

from service.web import STATIC_DIR

TASKS = {
    "deblur": {"variant": "tiny-deblur", "scale": 1, "needs_mask": False},
    "sr-x4": {"variant": "tiny-sr", "scale": 4, "needs_mask": False},
    "inpaint": {"variant": "tiny-inpaint", "scale": 1, "needs_mask": True},
}
LIMITS = {"max_body_bytes": 4 * 1024 * 1024, "max_input_pixels": 200 * 200, "max_output_pixels": 300 * 300}

app = FastAPI()


def error(status: int, code: str, message: str) -> JSONResponse:
    rid = uuid.uuid4().hex
    return JSONResponse({"code": code, "message": message, "request_id": rid}, status, headers={"X-Request-ID": rid})


@app.get("/tasks")
def tasks() -> dict:
    return {"tasks": [{"name": k, **v, "limits": LIMITS} for k, v in TASKS.items()]}


@app.post("/restore/{task}")
async def restore(task: str, request: Request, format: str = "png", quality: int = 90) -> Response:
    key = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
    if key != os.environ.get("DIFFIR_API_KEY", key):
        return error(401, "unauthorized", "missing or wrong API key")
    if task not in TASKS:
        return error(404, "unknown_task", f"no task named {task!r}")
    form = await request.form()
    try:
        img = Image.open(io.BytesIO(await form["image"].read()))
        img.load()
    except Exception:
        return error(415, "unsupported_format", "the image is not in a supported format (png, jpeg, webp)")
    img = img.convert("RGB")
    if task == "deblur":
        out = ImageOps.posterize(img, 3)
    elif task == "sr-x4":
        out = img.resize((img.width * 4, img.height * 4), Image.NEAREST)
    else:
        mask = Image.open(io.BytesIO(await form["mask"].read())).convert("L")
        if mask.size != img.size:
            return error(422, "bad_mask", "the mask is not the image's size")
        out = img.copy()
        out.paste((0, 255, 0), mask=mask)
    buf = io.BytesIO()
    out.save(buf, format={"jpeg": "JPEG", "webp": "WEBP"}.get(format, "PNG"), quality=quality)
    rid = uuid.uuid4().hex
    headers = {"Server-Timing": "decode;dur=1.2, queue;dur=0.1, inference;dur=12.5, encode;dur=2", "X-Request-ID": rid}
    return Response(buf.getvalue(), media_type=f"image/{format}", headers=headers)


app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="web")
