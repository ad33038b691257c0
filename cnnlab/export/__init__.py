"""Deploy what you trained: ``python -m cnnlab.export run=<run> [format=onnx|torchscript|pt2]``.

- :mod:`cnnlab.export.formats`: the model -> model.onnx (torch's dynamo exporter, or the
  TorchScript-based one), model.ts (TorchScript) or model.pt2 (torch.export), and each
  file loaded back as a function numpy (B, C, H, W) float32 -> logits (B, K).
- :mod:`cnnlab.export.parity`: eager vs exported logits on real images.
- :mod:`cnnlab.export.speed`: images/s of any such function.
- :mod:`cnnlab.export.quantize`: onnxruntime static int8 quantization and its accuracy cost.
- :mod:`cnnlab.export.app`: the app (run folder -> ``<run>/export/`` with export.json).

``python -m cnnlab.predict model=<run>/export/model.onnx`` reads the result without torch.
onnx, onnxruntime and onnxscript (the ``export`` extra) are imported only here and there.
"""
