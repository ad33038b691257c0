"""Human-readable counts for tables (params, MACs); no heavy imports."""


def human(n: int) -> str:
    """1,234,567 -> '1.23M' (5.40M / 12.3M / 555M / 1.82G): three significant digits."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            v = n / scale
            return f"{v:.2f}{unit}" if v < 10 else f"{v:.1f}{unit}" if v < 100 else f"{v:.0f}{unit}"
    return str(n)
