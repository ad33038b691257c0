"""The three export formats: write a model to a file, and load the file back as a function.

Every exported model takes ``input`` float32 (B, C, H, W), normalised as in training, and
returns ``logits`` float32 (B, K); B is dynamic. Each loader returns a function
numpy (B, C, H, W) -> numpy (B, K), so parity and speed treat every format alike.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

FORMATS = {"onnx": "model.onnx", "torchscript": "model.ts", "pt2": "model.pt2"}  # format -> file name
EXPORTERS = ("auto", "dynamo", "legacy")  # ONNX: auto = dynamo, falling back to legacy where it fails
INPUT, OUTPUT = "input", "logits"
DYNAMIC_AXES = {INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}

Runner = Callable[[Any], Any]


def require(*packages: str) -> None:
    """One line naming the ``export`` extra when one of ``packages`` is not installed."""
    import importlib.util

    from cnnlab.errors import ConfigError

    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        raise ConfigError(f"{', '.join(missing)} is not installed: pip install -e '.[export]' (onnx, onnxruntime, "
                          "onnxscript; make install installs them)")


def opset_range(exporter: str) -> tuple[int, int]:
    """The ONNX opsets this torch can emit with ``exporter`` (its own constants)."""
    from torch.onnx import _constants as c

    top = c.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET if exporter == "legacy" else c.ONNX_MAX_OPSET
    return c.ONNX_MIN_OPSET, top


def _batch_dim() -> Any:
    import torch

    return torch.export.Dim("batch", min=1, max=65536)


def export_onnx(model: Any, example: Any, path: Path, opset: int | None, exporter: str) -> dict[str, Any]:
    """Write ``model`` to ``path`` as ONNX; return {exporter, fallback (why dynamo failed, or None),
    opset (the one in the file)}. ``example``: a (B>=2, C, H, W) tensor, B>=2 so that torch.export
    does not specialise the batch dimension to 1."""
    import onnx

    fallback = None
    if exporter in ("auto", "dynamo"):
        try:
            _export_dynamo(model, example, path, opset)
            used = "dynamo"
        except Exception as e:
            if exporter == "dynamo":
                raise
            from cnnlab.errors import first_line

            fallback = f"{type(e).__name__}: {first_line(e)}"[:300]
            path.unlink(missing_ok=True)
            exporter = "legacy"
    if exporter == "legacy":
        _export_legacy(model, example, path, opset)
        used = "legacy"
    m = onnx.load(str(path), load_external_data=False)
    file_opset = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    return {"exporter": used, "fallback": fallback, "opset": int(file_opset)}


def _export_dynamo(model: Any, example: Any, path: Path, opset: int | None) -> None:
    """torch.onnx.export(dynamo=True): torch.export's graph, translated by onnxscript.
    Its progress lines ("[torch.onnx] Obtain model graph ...") go to stdout: kept off the console."""
    import torch

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(model, (example,), None, dynamo=True, input_names=[INPUT], output_names=[OUTPUT],
                                 dynamic_shapes=({0: _batch_dim()},), opset_version=opset, optimize=True)
        # One file: the weights inside (external_data=False), so model.onnx is self-contained (< 2 GB).
        prog.save(str(path), external_data=False)


def _export_legacy(model: Any, example: Any, path: Path, opset: int | None) -> None:
    """torch.onnx.export(dynamo=False): the TorchScript-based exporter (trace), deprecated but
    still the one that covers some graphs the dynamo exporter cannot."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its DeprecationWarning: we chose it, the record says so
        torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes=DYNAMIC_AXES, opset_version=opset, do_constant_folding=True)


def export_torchscript(model: Any, example: Any, path: Path) -> dict[str, Any]:
    """torch.jit.trace (eval mode: no training-only branch such as GoogLeNet's aux heads), saved."""
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit's FutureWarning (deprecated in favour of torch.export)
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(path))
    return {"exporter": "torch.jit.trace", "fallback": None, "opset": None}


def export_pt2(model: Any, example: Any, path: Path) -> dict[str, Any]:
    """torch.export.export (an ExportedProgram with a dynamic batch), saved as .pt2."""
    import torch

    ep = torch.export.export(model, (example,), dynamic_shapes=({0: _batch_dim()},))
    torch.export.save(ep, str(path))
    return {"exporter": "torch.export", "fallback": None, "opset": None}


def export_model(fmt: str, model: Any, example: Any, path: Path, opset: int | None, exporter: str) -> dict[str, Any]:
    """Dispatch on ``fmt`` (one of FORMATS)."""
    if fmt == "onnx":
        return export_onnx(model, example, path, opset, exporter)
    if fmt == "torchscript":
        return export_torchscript(model, example, path)
    return export_pt2(model, example, path)


def ort_session(path: str | Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session; ``threads``: intra-op threads (None: onnxruntime's default)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    so.log_severity_level = 3  # errors only: no "removing initializer" chatter
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def load_runner(fmt: str, path: Path, threads: int | None = None) -> Runner:
    """The exported file as a function numpy float32 (B, C, H, W) -> numpy (B, K)."""
    import numpy as np

    if fmt == "onnx":
        sess = ort_session(path, threads)
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's FutureWarning
        module = torch.jit.load(str(path)) if fmt == "torchscript" else torch.export.load(str(path)).module()

    def run(x: Any) -> Any:
        with torch.inference_mode():
            return module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()

    return run


def eager_runner(model: Any) -> Runner:
    """The eager PyTorch model as the same kind of function (the reference)."""
    import numpy as np
    import torch

    def run(x: Any) -> Any:
        with torch.inference_mode():
            return model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).float().numpy()

    return run
