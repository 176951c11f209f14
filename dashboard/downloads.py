"""Download buttons: every figure as PNG, SVG, PDF, HTML or tidy CSV, a page's zip, each with the view's
settings (model, objective, k, tau, seed, images) in a JSON sidecar. The formats are export.py's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import streamlit as st

from iwae_core.zoo import ZooEntry

from . import export


def view_settings(models: dict[str, ZooEntry], **settings) -> dict:
    """What an exported figure was made with: each model's variant, objective (bayes or mixture; '-' for the
    deterministic IWAE), dataset and folder, the given settings (k, tau, seed, images, ...) and the page's link
    parameters, which reopen the view."""
    return {"models": [{"model": label, "variant": e.variant,
                        "objective": e.run.train.objective if e.variant != "iwae" else "-",
                        "dataset": e.dataset, "folder": Path(e.path).name} for label, e in models.items()],
            **settings, "link": {name: st.query_params.get(name) for name in st.query_params}}


def objectives_text(models: dict[str, ZooEntry]) -> str:
    """'; objective bayes' (one for all random-weight models) or '; objectives a: bayes, b: mixture', for a title;
    '' when every model is deterministic (IWAE has no such reading)."""
    random = {label: e.run.train.objective for label, e in models.items() if e.variant != "iwae"}
    if not random:
        return ""
    if len(set(random.values())) == 1:
        return f"; objective {next(iter(random.values()))}"
    return "; objectives " + ", ".join(f"{label}: {o}" for label, o in random.items())


def final_link(settings: dict) -> dict:
    """The settings with the page's link as it stands now (call after the last control): the same dict, so
    export buttons made earlier on the page write the whole link too."""
    settings["link"] = {name: st.query_params.get(name) for name in st.query_params}
    return settings


def export_buttons(fig, name: str, table: Callable[[], str] | None = None, settings: dict | None = None) -> None:
    """Download buttons for one figure (files made only when clicked); PNG/SVG/PDF need a Chromium. `table`
    makes the tidy CSV (else the figure's traces in long form); `settings` adds a JSON of them."""
    reason = export.export_unavailable_reason()
    label = {"ab": "A/B"}.get(name, name.replace("_", " "))  # the files keep the name as it is
    with st.popover(f"Export {label}", icon=":material/download:"):
        formats = export.TEXT_FORMATS if reason else export.FORMATS
        cols = st.columns(len(formats) + (settings is not None))
        for col, fmt in zip(cols, formats, strict=False):
            data = (lambda: table().encode()) if fmt == "csv" and table is not None else \
                (lambda fmt=fmt: export.figure_bytes(fig, fmt))
            col.download_button(fmt.upper(), data=data, file_name=f"{name}.{fmt}", mime=export.MIME[fmt],
                                key=f"export:{name}:{fmt}", on_click="ignore")
        if settings is not None:
            cols[-1].download_button("JSON", data=lambda: export.settings_json(fig, settings).encode(),
                                     file_name=f"{name}.json", mime="application/json", key=f"export:{name}:json",
                                     on_click="ignore", help="The figure's title and the settings that reproduce it")
        if reason:
            st.caption(reason)


def zip_button(figs: dict, page: str, tables: dict | None = None, settings: dict | None = None) -> None:
    """One button for the whole page: every figure in every available format, tidy CSVs where given and the
    settings as a JSON sidecar per figure, in a zip."""
    reason = export.export_unavailable_reason()
    st.download_button("Download all figures (zip)", data=lambda: export.page_zip(figs, tables, settings),
                       file_name=f"{page}.zip", mime=export.MIME["zip"], key=f"export:{page}:zip", on_click="ignore",
                       icon=":material/folder_zip:",
                       help="PNG, SVG, PDF, HTML and CSV of every figure on this page, and its settings as JSON"
                            + (" (no PNG/SVG/PDF here: see README.txt in the zip)" if reason else ""))
