"""diffir-serve's HTTP service: `POST /restore/{task}` with per-task dynamic batching.

Entry points: `python -m service` (server), `python -m service restore ...` (local files),
`service.http.app.create_app(settings)` (the ASGI app), `service.client` (HTTP client). Depends on
`models` only; never on `training` (enforced by import-linter).
"""
