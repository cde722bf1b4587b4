"""The official DiffIR reference fixtures, shipped in `tests/fixtures/official/` and rebuilt where too big.

Each fixture set is one tiny variant run through the official implementation (commit 293f86c, CPU,
float32): `fixtures.pt` holds its inputs and every intermediate and final output. The official state
dicts those numbers came from (about 11 MB per set) are not shipped: they are a seeded default
initialisation with some parameters re-randomised, which `official_state_dict` rebuilds with our
own modules and then checks, tensor by tensor, against the SHA-256 of the official file recorded in
`weights.json`. A rebuild that differs in one bit fails loudly, so the parity tests compare against
exactly the official weights or not at all.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from functools import cache
from pathlib import Path

import torch

from models import DiffIRS1, DiffIRS2, ModelConfig, config_from_official_kwargs

OFFICIAL_DIR = Path(__file__).resolve().parent / "fixtures" / "official"
KEYS_DIR = OFFICIAL_DIR / "keys"
DIGESTS = OFFICIAL_DIR / "weights.json"

# fixture folder -> model kind; the scale comes from the fixture's own metadata
FIXTURE_SETS = {
    "deblur-tiny": "deblur",
    "inpaint-tiny": "inpaint",
    "srgan-x2-tiny": "sr",
    "srgan-x4-tiny": "sr",
    "realsr-x1-tiny": "sr",
}
STAGES = ("S1", "S2")
# The generator's seeds: modules built after torch.manual_seed(0), then re-randomised after manual_seed(1).
INIT_SEED, PERTURB_SEED = 0, 1
_CACHE = tempfile.TemporaryDirectory(prefix="diffir-official-")


@cache
def fixture_data(name: str) -> dict:
    """The official inputs and outputs of one set (`meta["notes"]` documents every key)."""
    return torch.load(OFFICIAL_DIR / name / "fixtures.pt", weights_only=True)


def official_config(name: str, stage: str) -> ModelConfig:
    meta = fixture_data(name)["meta"]
    kwargs = meta["s2_kwargs"] if stage == "S2" else meta["s1_kwargs"]
    return config_from_official_kwargs(name, FIXTURE_SETS[name], kwargs, scale=meta["scale"])


def state_dict_digest(sd: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every key, dtype, shape and value, in state-dict order."""
    h = hashlib.sha256()
    for key, value in sd.items():
        h.update(f"{key}|{value.dtype}|{list(value.shape)}\n".encode())
        h.update(value.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def _rerandomise(net: torch.nn.Module) -> None:
    """The fixture generator's perturbation: every LayerNorm, attention temperature and CPEN/denoiser
    layer gets values that visibly move the output (the default init leaves LayerNorms at 1/0)."""
    torch.manual_seed(PERTURB_SEED)
    for name, p in net.named_parameters():
        if "norm" in name and name.endswith("weight"):
            value = 1 + 0.2 * torch.randn_like(p)
        elif "norm" in name and name.endswith("bias"):
            value = 0.2 * torch.randn_like(p)
        elif name.endswith("temperature"):
            value = torch.empty_like(p).uniform_(0.5, 2.0)
        elif name.startswith(("condition.", "denoise.", "E.")) and name.endswith("weight"):
            value = torch.empty_like(p)
            torch.nn.init.kaiming_normal_(value, a=0.1)  # the CPEN's LeakyReLU(0.1)
            if ".body." in name:  # residual branches start at half scale
                value = value * 0.5
        elif name.startswith(("condition.", "denoise.", "E.")) and name.endswith("bias"):
            value = torch.rand_like(p) * 0.2 - 0.1
        else:
            continue
        p.copy_(value)


@cache
def official_state_dict(name: str, stage: str) -> dict[str, torch.Tensor]:
    """The official `DiffIRS1`/`DiffIRS2` state dict of a set, rebuilt and verified against its digest."""
    cls = DiffIRS2 if stage == "S2" else DiffIRS1
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(INIT_SEED)
        net = cls(official_config(name, stage))
        _rerandomise(net)
        sd = {k: v.detach().clone() for k, v in net.state_dict().items()}
    want = json.loads(DIGESTS.read_text())[name][stage]
    got = state_dict_digest(sd)
    if got != want:
        raise AssertionError(
            f"{name} {stage}: the rebuilt official weights differ from the official file (sha256 {got} != {want}); "
            "a change to module construction order or default init breaks this rebuild"
        )
    return sd


@cache
def official_weights_file(name: str, stage: str) -> Path:
    """The verified official state dict saved as a `.pth` file, as checkpoint loaders expect."""
    path = Path(_CACHE.name) / name / ("state_dict.pth" if stage == "S2" else "state_dict_S1.pth")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(official_state_dict(name, stage), path)
    return path


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Relative max error: max |a - e| / max |e|."""
    return ((actual - expected).abs().max() / expected.abs().max()).item()
