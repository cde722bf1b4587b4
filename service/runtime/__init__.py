"""Model execution behind one interface (`Backend`): torch eager, TorchScript, ONNX Runtime."""

from service.runtime.base import Backend, ModelInfo
from service.runtime.loader import load_backend

__all__ = ["Backend", "ModelInfo", "load_backend"]
