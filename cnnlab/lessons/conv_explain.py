"""Convolution and pooling worked out by hand, for learners: plain loops over lists of lists,
so each output value is visibly "the sum (or max / mean) of a window". The ``torch_*``
helpers compute the same with PyTorch, so the demos can show that the two agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

from cnnlab.errors import ConfigError

Matrix = list[list[float]]
PoolMode = Literal["max", "avg"]


class LessonInputError(ConfigError, ValueError):
    """A value given to a lesson cannot be used; the message names the offending value."""


# --------------------------------------------------------------------------- validation
def as_matrix(value: Any, name: str) -> Matrix:
    """Return ``value`` as a non-empty rectangular list of float rows, or raise LessonInputError."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise LessonInputError(f"{name} must be a non-empty 2-D list of numbers, got {value!r}")
    rows: Matrix = []
    for r, row in enumerate(value):
        if isinstance(row, (str, bytes)) or not isinstance(row, Sequence) or not row:
            raise LessonInputError(f"{name} must be a non-empty 2-D list of numbers; row {r} is {row!r}")
        cells = []
        for c, v in enumerate(row):
            # bool is an int subclass, but True/False in a matrix is almost surely a typo.
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise LessonInputError(f"{name}[{r}][{c}] must be a finite number, got {v!r}")
            cells.append(float(v))
        rows.append(cells)
    width = len(rows[0])
    for r, row in enumerate(rows):
        if len(row) != width:
            raise LessonInputError(f"{name} is not rectangular: row 0 has {width} value(s) but row {r} "
                                   f"has {len(row)} ({_plain(value)})")
    return rows


def check_int(value: Any, name: str, minimum: int) -> int:
    """Return ``value`` if it is an int >= ``minimum``, else raise LessonInputError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise LessonInputError(f"{name} must be {kind}, got {value!r}")
    return value


def _plain(value: Any) -> str:
    """Compact text for a (possibly OmegaConf) nested list, for error messages."""
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return "[" + ", ".join(_plain(v) for v in value) + "]"
    return repr(value)


def _shape(m: Matrix) -> tuple[int, int]:
    return len(m), len(m[0])


# --------------------------------------------------------------------------- output sizes
def _rounded(h: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """floor((h + 2p - d(k-1) - 1)/s) + 1, or ceil instead of floor when ``ceil_mode``."""
    # Python's // rounds towards -inf, like PyTorch's div_rtn; ceil(a/s) == (a + s - 1)//s.
    return (h + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1


def out_size(h: int, k: int, s: int = 1, p: int = 0, d: int = 1, ceil_mode: bool = False) -> int:
    """Output length along one axis, exactly as PyTorch computes it for conv and pooling.

    With ``ceil_mode`` (pooling only) PyTorch then drops the last window if it would
    *start* in the right padding, i.e. when (out-1)*s >= h + p: every window must start
    inside the input or the left padding.
    """
    n = _rounded(h, k, s, p, d, ceil_mode)
    return n - 1 if ceil_mode and (n - 1) * s >= h + p else n


def formula_text(h: int, k: int, s: int = 1, p: int = 0, d: int = 1, ceil_mode: bool = False,
                 axis: str = "H") -> str:
    """The output-size formula with the numbers filled in (one line; two with ceil_mode).

    >>> formula_text(5, 3)
    'H_out = floor((5 + 2*0 - 1*(3-1) - 1)/1) + 1 = 3'
    """
    raw = _rounded(h, k, s, p, d, ceil_mode)
    line = f"{axis}_out = {'ceil' if ceil_mode else 'floor'}(({h} + 2*{p} - {d}*({k}-1) - 1)/{s}) + 1 = {raw}"
    if not ceil_mode:
        return line
    # Explain PyTorch's extra ceil_mode rule, whether or not it fires, so learners see it.
    pad, start = " " * len(f"{axis}_out = "), (raw - 1) * s
    if start >= h + p:
        return (f"{line}\n{pad}last window would start at ({raw}-1)*{s} = {start} >= {axis} + p = {h} + {p}"
                f" -> in the right padding, dropped: {axis}_out = {raw - 1}")
    return f"{line}\n{pad}last window starts at ({raw}-1)*{s} = {start} < {axis} + p = {h} + {p} -> inside, kept"


# --------------------------------------------------------------------------- convolution
def check_conv_args(x: Matrix, k: Matrix, stride: int, padding: int, dilation: int) -> tuple[int, int]:
    """Validate conv hyper-parameters against the shapes; return the output shape."""
    for value, name, minimum in ((stride, "stride", 1), (padding, "padding", 0), (dilation, "dilation", 1)):
        check_int(value, name, minimum)
    (h, w), (kh, kw) = _shape(x), _shape(k)
    span_h, span_w = dilation * (kh - 1) + 1, dilation * (kw - 1) + 1  # the input cells a kernel spans
    if span_h > h + 2 * padding or span_w > w + 2 * padding:
        raise LessonInputError(f"kernel {kh}x{kw} (dilation {dilation}, spans {span_h}x{span_w}) is bigger than "
                               f"the padded input {h + 2 * padding}x{w + 2 * padding} (input {h}x{w}, "
                               f"padding {padding})")
    return out_size(h, kh, stride, padding, dilation), out_size(w, kw, stride, padding, dilation)


def _window(x: Matrix, kh: int, kw: int, i: int, j: int, stride: int, padding: int,
            dilation: int) -> list[tuple[float, int, int]]:
    """(input value, a, b) under kernel tap (a, b) for output[i][j]; 0 in the zero padding."""
    h, w = _shape(x)
    taps = []
    for a in range(kh):
        for b in range(kw):
            # Position of this kernel tap in the *unpadded* input.
            r, c = i * stride - padding + a * dilation, j * stride - padding + b * dilation
            taps.append((x[r][c] if 0 <= r < h and 0 <= c < w else 0.0, a, b))
    return taps


def conv2d_by_hand(x: Sequence[Sequence[float]], k: Sequence[Sequence[float]], stride: int = 1,
                   padding: int = 0, dilation: int = 1) -> Matrix:
    """2-D convolution with plain loops: each output is the sum of elementwise products.

    Like ``torch.nn.functional.conv2d`` this is really cross-correlation: the kernel is
    *not* flipped. Padding adds zeros around the input; dilation spaces the kernel taps.
    """
    xm, km = as_matrix(x, "input"), as_matrix(k, "kernel")
    h_out, w_out = check_conv_args(xm, km, stride, padding, dilation)
    kh, kw = _shape(km)
    return [[sum(v * km[a][b] for v, a, b in _window(xm, kh, kw, i, j, stride, padding, dilation))
             for j in range(w_out)] for i in range(h_out)]


def window_products_text(x: Sequence[Sequence[float]], k: Sequence[Sequence[float]], i: int = 0,
                         j: int = 0, stride: int = 1, padding: int = 0, dilation: int = 1) -> str:
    """Spell out output[i][j] as its sum of products, e.g. 'out[0][0] = 1*1 + 2*2 + ... = 10'."""
    xm, km = as_matrix(x, "input"), as_matrix(k, "kernel")
    taps = _window(xm, *_shape(km), i, j, stride, padding, dilation)
    terms = " + ".join(f"{_paren(v)}*{_paren(km[a][b])}" for v, a, b in taps)
    return f"out[{i}][{j}] = {terms} = {format_number(sum(v * km[a][b] for v, a, b in taps))}"


# --------------------------------------------------------------------------- pooling
def check_pool_args(x: Matrix, kernel: int, stride: int, padding: int, ceil_mode: bool) -> tuple[int, int]:
    """Validate pooling hyper-parameters (PyTorch's rules); return the output shape."""
    for value, name, minimum in ((kernel, "kernel", 1), (stride, "stride", 1), (padding, "padding", 0)):
        check_int(value, name, minimum)
    if not isinstance(ceil_mode, bool):
        raise LessonInputError(f"ceil_mode must be true or false, got {ceil_mode!r}")
    # PyTorch refuses more padding than half the window: a window could then hold only padding.
    if 2 * padding > kernel:
        raise LessonInputError(f"padding must be at most half the kernel size, got padding={padding} with "
                               f"kernel={kernel}")
    h, w = _shape(x)
    h_out, w_out = (out_size(n, kernel, stride, padding, 1, ceil_mode) for n in (h, w))
    if h_out < 1 or w_out < 1:
        raise LessonInputError(f"kernel {kernel} is bigger than the padded input {h + 2 * padding}x"
                               f"{w + 2 * padding} (input {h}x{w}, padding {padding})")
    return h_out, w_out


def pool2d_by_hand(x: Sequence[Sequence[float]], kernel: int, stride: int | None = None, padding: int = 0,
                   ceil_mode: bool = False, mode: PoolMode = "max") -> Matrix:
    """Max or average pooling with plain loops, matching nn.MaxPool2d / nn.AvgPool2d.

    ``stride`` defaults to ``kernel`` (non-overlapping windows), as in PyTorch. For
    ``avg`` the divisor follows PyTorch's default ``count_include_pad=True``: zero padding
    cells count, but cells a ceil_mode window hangs past the padded edge do not.
    """
    if mode not in ("max", "avg"):
        raise LessonInputError(f"mode must be 'max' or 'avg', got {mode!r}")
    xm = as_matrix(x, "input")
    stride = kernel if stride is None else stride
    h_out, w_out = check_pool_args(xm, kernel, stride, padding, ceil_mode)
    h, w = _shape(xm)
    out: Matrix = []
    for i in range(h_out):
        row = []
        for j in range(w_out):
            # Window in unpadded coordinates; clip it to the padded input first (for the
            # avg divisor), then to the real input (only real cells hold values).
            r0, c0 = i * stride - padding, j * stride - padding
            r1, c1 = min(r0 + kernel, h + padding), min(c0 + kernel, w + padding)
            divisor = (r1 - r0) * (c1 - c0)
            cells = [xm[r][c] for r in range(max(r0, 0), min(r1, h)) for c in range(max(c0, 0), min(c1, w))]
            # Max pooling pads with -inf, so padding never wins; avg pads with zeros.
            row.append(max(cells) if mode == "max" else sum(cells) / divisor)
        out.append(row)
    return out


# --------------------------------------------------------------------------- display
def format_number(v: float) -> str:
    """Integers without a decimal point, other values with up to 3 decimals."""
    if abs(v - round(v)) < 1e-9:
        return str(int(round(v)))  # also turns -0.0 into "0"
    return f"{v:.3f}".rstrip("0").rstrip(".")


def _paren(v: float) -> str:
    text = format_number(v)
    return f"({text})" if text.startswith("-") else text


def format_matrix(m: Sequence[Sequence[float]], indent: str = "  ") -> str:
    """Numpy-style, right-aligned matrix text: every column has the same width."""
    cells = [[format_number(v) for v in row] for row in m]
    width = max(len(c) for row in cells for c in row)
    rows = [" ".join(c.rjust(width) for c in row) for row in cells]
    return indent + "[[" + f"]\n{indent} [".join(rows) + "]]"


def max_abs_diff(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> float:
    """Largest |a - b| over two same-shaped matrices (inf if the shapes differ)."""
    if len(a) != len(b) or any(len(ra) != len(rb) for ra, rb in zip(a, b, strict=True)):
        return math.inf
    return max((abs(u - v) for ra, rb in zip(a, b, strict=True) for u, v in zip(ra, rb, strict=True)), default=0.0)


# --------------------------------------------------------------------------- torch references
def torch_conv2d(x: Sequence[Sequence[float]], k: Sequence[Sequence[float]], stride: int = 1,
                 padding: int = 0, dilation: int = 1) -> Matrix:
    """The same convolution via ``torch.nn.functional.conv2d`` (float64, so exact for ints)."""
    import torch
    import torch.nn.functional as F

    # conv2d wants (batch, channels, H, W) for the input and (out_ch, in_ch, kH, kW) for
    # the weight; a single-channel matrix is both with two leading 1s.
    xt = torch.tensor(as_matrix(x, "input"), dtype=torch.float64)[None, None]
    kt = torch.tensor(as_matrix(k, "kernel"), dtype=torch.float64)[None, None]
    out = F.conv2d(xt, kt, stride=stride, padding=padding, dilation=dilation)
    return out[0, 0].tolist()


def torch_pool2d(x: Sequence[Sequence[float]], kernel: int, stride: int | None = None, padding: int = 0,
                 ceil_mode: bool = False, mode: PoolMode = "max") -> Matrix:
    """The same pooling via ``F.max_pool2d`` / ``F.avg_pool2d`` (float64)."""
    import torch
    import torch.nn.functional as F

    xt = torch.tensor(as_matrix(x, "input"), dtype=torch.float64)[None, None]
    pool = F.max_pool2d if mode == "max" else F.avg_pool2d
    out = pool(xt, kernel, stride=stride, padding=padding, ceil_mode=ceil_mode)
    return out[0, 0].tolist()


def integer_pool_check(x: Sequence[Sequence[float]], kernel: int, ceil_mode: bool = False) -> dict[str, Any]:
    """Pool an integer (torch.long) tensor, as the course did by accident, and report.

    Returns ``torch_version``, ``dtype``, ``max_error`` / ``avg_error`` /
    ``adaptive_error`` (the RuntimeError text of max_pool2d, avg_pool2d and
    adaptive_max_pool2d, or None if this torch build accepts Long), ``avg_long`` (the
    integer avg result when it runs) and ``avg_float`` (the float32 result, to compare).
    """
    import torch
    import torch.nn.functional as F

    rows = [[int(v) for v in row] for row in as_matrix(x, "input")]
    # torch.tensor infers int64 ("Long") from Python ints: the root of the course's error.
    xl = torch.tensor(rows)[None, None]
    report: dict[str, Any] = {"torch_version": torch.__version__, "dtype": str(xl.dtype)}

    def attempt(key: str, op: Any) -> Any:
        """op()'s result, with report[key] = None; or None, with report[key] = its RuntimeError's text."""
        try:
            out, report[key] = op(), None
            return out
        except RuntimeError as err:
            report[key] = str(err).splitlines()[0]
            return None

    attempt("max_error", lambda: F.max_pool2d(xl, kernel, ceil_mode=ceil_mode))
    avg = attempt("avg_error", lambda: F.avg_pool2d(xl, kernel, ceil_mode=ceil_mode))
    report["avg_long"] = avg[0, 0].tolist() if avg is not None else None
    attempt("adaptive_error", lambda: F.adaptive_max_pool2d(xl, 1))
    xf = torch.tensor(rows, dtype=torch.float32)[None, None]
    report["avg_float"] = F.avg_pool2d(xf, kernel, ceil_mode=ceil_mode)[0, 0].tolist()
    return report
