"""A PNG figure panel of the maps, like the papers' Figures 4-6 (matplotlib, no display)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

HEADLINE_MAPS = (
    "saxs_intensity", "a_mean_nm", "a_ratio", "gamma_deg", "phi_deg",
    "i_al", "psi_deg", "delta_psi_deg", "g_q", "a_al_nm",
)

TITLES = {
    "saxs_intensity": "SAXS intensity (q < 2 nm$^{-1}$)",
    "a_mean_nm": r"$\langle a \rangle$",
    "a_ratio": "$a_2/a_1$",
    "gamma_deg": r"$\gamma$",
    "phi_deg": r"$\varphi$",
    "i_al": r"$\langle I_{AL} \rangle$",
    "psi_deg": r"$\psi$",
    "delta_psi_deg": r"$\Delta\psi$",
    "g_q": "$g_q$",
    "a_al_nm": "$a_{AL}$",
}


def robust_range(values: np.ndarray, low: float = 2.0, high: float = 98.0) -> tuple[float, float] | None:
    """Colour range from percentiles of the finite values (None when there are none)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    vmin, vmax = np.percentile(finite, [low, high])
    if vmin == vmax:
        vmin, vmax = vmin - 0.5 * abs(vmin or 1), vmax + 0.5 * abs(vmax or 1)
    return float(vmin), float(vmax)


def panel_names(maps: dict[str, np.ndarray], names: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The maps a panel draws: ``names`` (default :data:`HEADLINE_MAPS`) that exist, else the
    first ten maps."""
    return tuple(n for n in (names or HEADLINE_MAPS) if n in maps) or tuple(maps)[:len(HEADLINE_MAPS)]


def render_map_figure(path: Path, maps: dict[str, np.ndarray], units: dict[str, str], grid,
                      title: str = "", names: tuple[str, ...] | None = None,
                      profile: tuple[str, object] | None = None) -> Path:
    """Write a panel of maps to ``path`` (PNG).

    Parameters
    ----------
    maps : dict of str to ndarray (rows, columns)
        NaN = missing (drawn blank).
    units : dict of str to str
    grid : analysis.scan_grid.ScanGrid
        Gives the axes in micrometres.
    names : tuple of str, optional
        Which maps to draw; default: the headline maps that exist.
    profile : (str, DistanceProfile), optional
        A parameter against distance to the crystal edge, drawn as mean +- 1 sigma
        (Lapkin Fig. 6b).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    names = panel_names(maps, names)
    n_panels = len(names) + (profile is not None)
    n_columns = min(3, n_panels)
    n_rows = math.ceil(n_panels / n_columns)
    figure = Figure(figsize=(4.2 * n_columns, 3.6 * n_rows + 0.6), dpi=100, layout="constrained")
    rows_um, columns_um = grid.axes_um()
    half_row = 0.5 * (grid.step_um[0] if not grid.by_frame_index else 1.0)
    half_column = 0.5 * (grid.step_um[1] if not grid.by_frame_index else 1.0)
    extent = (columns_um[0] - half_column, columns_um[-1] + half_column,
              rows_um[-1] + half_row, rows_um[0] - half_row)
    for index, name in enumerate(names):
        axes = figure.add_subplot(n_rows, n_columns, index + 1)
        data = np.asarray(maps[name], dtype=np.float64)
        limits = robust_range(data)
        cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
        image = axes.imshow(np.ma.masked_invalid(data), cmap=cmap, extent=extent, origin="upper",
                            interpolation="nearest",
                            vmin=None if limits is None else limits[0],
                            vmax=None if limits is None else limits[1])
        axes.set_title(TITLES.get(name, name), fontsize=10)
        if grid.by_frame_index:
            axes.set_xlabel("frame index (no scan description)")
        else:
            axes.set_xlabel(f"{grid.axis_names[1]} (µm)")
            axes.set_ylabel(f"{grid.axis_names[0]} (µm)")
        colorbar = figure.colorbar(image, ax=axes, shrink=0.85)
        colorbar.set_label(units.get(name, ""))
    if profile is not None:
        name, data = profile
        axes = figure.add_subplot(n_rows, n_columns, len(names) + 1)
        centres, mean, std = data.bin_centres_um, data.mean, data.std
        axes.fill_between(centres, mean - std, mean + std, alpha=0.3, label="±1σ")
        axes.plot(centres, mean, "o-", label="mean")
        axes.set_xlabel("distance to crystal edge (µm)")
        axes.set_ylabel(f"{TITLES.get(name, name)} ({units.get(name, '')})")
        axes.set_title(f"{TITLES.get(name, name)} vs distance to edge", fontsize=10)
        axes.legend(fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
