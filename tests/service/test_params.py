"""One table of request parameters, run against the server (in-process app) and `diffir-restore` (local):
both apply `service.params`, so each refuses exactly what the other refuses, with the same code and message,
and both accept the edge values with byte-identical results."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import httpx
import pytest

from service.cli import main
from service.params import MAX_SEED
from tests.service.conftest import encode, gradient, make_settings, start_app

PNG = {"content-type": "image/png"}
REFUSED = [
    ("seed", "-1"),
    ("seed", "abc"),
    ("seed", ""),
    ("seed", "1.0"),
    ("seed", "+5"),
    ("seed", "1_000"),
    ("seed", str(MAX_SEED + 1)),
    ("seed", "99999999999999999999"),  # a valid Python int, once a traceback deep in the generator
    ("quality", "0"),
    ("quality", "101"),
    ("quality", "500"),
    ("quality", "95.5"),
    ("format", "gif"),
    ("format", "PNG"),
    ("timeout", "0"),
    ("timeout", "0.001"),
    ("timeout", "4.9e-324"),
    ("timeout", "1e3"),
    ("timeout", "inf"),
    ("timeout", "nan"),
    ("timeout", "-1"),
    ("timeout", "86400.5"),
]
ACCEPTED = {"seed": str(MAX_SEED), "format": "webp", "quality": "100", "timeout": "86400"}
"""The edges of every range at once: both accept them and give the same bytes."""


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "in.png"
    path.write_bytes(encode(gradient(40, 24)))
    return path


@pytest.fixture
def cli_env(monkeypatch, checkpoints) -> None:
    for key in [k for k in os.environ if k.startswith("DIFFIR_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("DIFFIR_TASKS", json.dumps({"deblur": {"checkpoint": str(checkpoints["deblur"])}}))
    monkeypatch.setenv("DIFFIR_DEVICE", "cpu")
    monkeypatch.setenv("DIFFIR_BACKEND", "torch")


def _settings(checkpoints):
    return make_settings({"deblur": checkpoints["deblur"]}, warmup_size=0, backend="torch")


@pytest.mark.anyio
async def test_the_cli_refuses_what_the_server_refuses(checkpoints, image: Path, tmp_path: Path, cli_env, capsys):
    async for live in start_app(_settings(checkpoints)):
        for name, value in REFUSED:
            r = await live.client.post("/restore/deblur", params={name: value}, content=image.read_bytes(), headers=PNG)
            assert r.status_code == 422 and r.json()["code"] == "bad_parameter", (name, value, r.text)
            server_message = r.json()["message"]
            capsys.readouterr()  # the app's own log lines

            code = main(["deblur", str(image), "-o", str(tmp_path / "out"), f"--{name}", value])
            err = capsys.readouterr().err
            assert code == 2, (name, value, err)
            assert err.splitlines() == [f"diffir-restore: bad_parameter: {server_message}"], (name, value, err)
            assert not (tmp_path / "out").exists()


@pytest.mark.anyio
async def test_a_parameter_given_twice_is_refused(checkpoints, image: Path) -> None:
    async for live in start_app(_settings(checkpoints)):
        r = await live.client.post("/restore/deblur?seed=1&seed=2", content=image.read_bytes(), headers=PNG)
        assert r.status_code == 422 and r.json()["code"] == "bad_parameter" and "given 2 times" in r.json()["message"]


def test_the_edges_are_accepted_by_both_with_the_same_bytes(checkpoints, image: Path, tmp_path: Path, cli_env):
    async def served() -> httpx.Response:
        async for live in start_app(_settings(checkpoints)):
            return await live.client.post("/restore/deblur", params=ACCEPTED, content=image.read_bytes(), headers=PNG)
        raise AssertionError("the app did not start")

    r = asyncio.run(served())  # the local CLI runs its own event loop: not inside the test's
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp", r.text
    flags = [arg for name, value in ACCEPTED.items() for arg in (f"--{name}", value)]
    assert main(["deblur", str(image), "-o", str(tmp_path / "out"), *flags]) == 0
    assert (tmp_path / "out" / "in.webp").read_bytes() == r.content
