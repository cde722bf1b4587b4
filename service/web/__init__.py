"""The restoration web page: static files the service mounts at `/` (no build step).

`STATIC_DIR` holds `index.html`, `app.js` and `style.css`; mount it with
`StaticFiles(directory=STATIC_DIR, html=True)` after the API routes so they take precedence.
"""

from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"

__all__ = ["STATIC_DIR"]
