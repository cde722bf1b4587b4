"""`models.tf32`: the one TF32 switch; the legacy `allow_tf32` flags are never touched, so reading either API
after using it does not raise (torch 2.13 raises on a mix), and the service sets TF32 through it."""

from __future__ import annotations

import torch

from models.tf32 import set_tf32, tf32, tf32_enabled


def test_the_context_switches_matmuls_and_convolutions_and_restores_both():
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    before = matmul.fp32_precision, conv.fp32_precision
    with tf32(True):
        assert tf32_enabled() and conv.fp32_precision == "tf32"
        with tf32(False):
            assert not tf32_enabled() and (matmul.fp32_precision, conv.fp32_precision) == ("ieee", "ieee")
        assert tf32_enabled()
    assert (matmul.fp32_precision, conv.fp32_precision) == before


def test_the_service_switches_the_same_setting():
    from service.runtime import devices

    before = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    try:
        set_tf32(False)
        devices.enable_tf32()
        assert devices.tf32_enabled() and tf32_enabled()
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = before
