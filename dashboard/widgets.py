"""Controls whose values live in the URL, so a link reproduces the view.

Each control reads its value from the page's query parameters once, checks it, and writes it back as it
changes. A value a link may set is bounded: a link asking for an expensive or impossible value gets the
nearest allowed one and a visible notice naming the parameter and the value used, never a silent change.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable

import streamlit as st

from iwae_core.zoo import ZooEntry

from . import zoo
from .compute import K_GRID
from .zoo import VARIANT_ORDER, model_name, no_models_message

TAU_MAX = 3.0


SEED_MAX = 2**31 - 1


URL_K_MAX = 500  # the largest k a link may ask for: k = 5000 for three models costs tens of seconds of CPU


def _init(key: str, param: str, parse: Callable[[str], object], default, valid: Callable[[object], bool],
          allowed: str | Callable[[str], str]) -> None:
    """Seed a widget's state from the URL query string on first show (a shared link), else the default.

    A link's value that is not used as it stands (unreadable, out of range, off the grid, too expensive)
    leaves a notice naming the parameter, what is allowed and the value used instead (see _url_notice)."""
    if key in st.session_state and valid(st.session_state[key]):
        return
    value = default
    raw = st.query_params.get(param)
    if raw is not None:
        try:
            parsed = parse(raw)
        except (TypeError, ValueError, OverflowError):
            parsed = None
        if parsed is not None and valid(parsed):
            value = parsed
        if not _same(raw, value):
            shown = escape_markdown(raw if len(raw) <= 40 else raw[:39] + "…")
            why = escape_markdown(allowed(raw) if callable(allowed) else allowed)
            st.session_state[f"{key}:url-notice"] = (
                f"The link asked for **{param} = {shown}**, which is not allowed here ({why}); "
                f"this page uses **{param} = {escape_markdown(_url_text(value)) or 'none'}** instead.", value)
    st.session_state[key] = value


def escape_markdown(text: str) -> str:
    """Text from a link or a file, shown in markdown as it is: no link, emphasis or directive can come of it."""
    return re.sub(r"([\\`*_{}\[\]<>()#+!|~:$])", r"\\\1", text)


def _url_text(value) -> str:
    """A widget value as sync_url writes it."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _same(raw: str, value) -> bool:
    """Whether a URL parameter's text says the same as the value the widget got."""
    if isinstance(value, list):
        return raw.split(",") == [str(v) for v in value]
    if isinstance(value, (int, float)):
        try:
            return float(raw) == float(value)
        except (ValueError, OverflowError):
            return False
    return raw == str(value)


def _url_notice(key: str) -> None:
    """Show the notice _init left for a link's value, for as long as the widget keeps the value used instead."""
    notice = st.session_state.get(f"{key}:url-notice")
    if notice is None:
        return
    message, value = notice
    if st.session_state.get(key) == value:
        st.warning(message, icon=":material/link:")
    else:
        del st.session_state[f"{key}:url-notice"]


def default_models(entries: dict[str, ZooEntry], limit: int = 3) -> list[str]:
    """IWAE, IWAE-R and IWAE-Rrec of the first dataset that has them (else the first models)."""
    by_dataset: dict[str, list[str]] = {}
    for label, e in entries.items():
        by_dataset.setdefault(e.dataset, []).append(label)
    for labels in by_dataset.values():
        chosen = []
        for v in VARIANT_ORDER:
            match = [lab for lab in labels if entries[lab].variant == v]
            if match:
                chosen.append(match[0])
        if len(chosen) >= 2:
            return chosen[:limit]
    return list(entries)[:limit]


def pick_models(page: str, multi: bool = True, prefer: str | None = None) -> dict[str, ZooEntry]:
    """Sidebar model picker (several or one), seeded from ?model=a,b; stops the page when the zoo is empty.
    A single picker defaults to the first model of variant `prefer` when there is one. A page that can also
    show a run's snapshots calls snapshot_picker.pick_models, which calls this one for the zoo."""
    entries = zoo.entries()
    if not entries:
        no_models_message()
    labels = list(entries)
    key = f"{page}:model"
    broken = zoo.broken()

    def allowed(raw: str) -> str:
        unknown = [x for x in raw.split(",") if x not in entries]
        reasons = [f"{x} cannot be loaded: {broken[x].error}" if x in broken else f"{x} is not in the model zoo"
                   for x in unknown] or ["one model only"]
        return "; ".join(reasons)

    if multi:
        _init(key, "model", lambda raw: [x for x in raw.split(",") if x in entries] or None,
              default_models(entries), lambda v: isinstance(v, list) and all(x in entries for x in v), allowed)
        chosen = st.sidebar.multiselect("Models", labels, key=key, help="Shared in the URL as ?model=a,b",
                                        format_func=lambda lab: model_name(lab, entries[lab]))
    else:
        defaults = default_models(entries)
        _init(key, "model", lambda raw: next((x for x in raw.split(",") if x in entries), None),
              next((lab for lab in defaults if entries[lab].variant == prefer), defaults[0]), lambda v: v in entries,
              allowed)
        chosen = [st.sidebar.selectbox("Model", labels, key=key, help="Shared in the URL as ?model=name",
                                       format_func=lambda lab: model_name(lab, entries[lab]))]
    _url_notice(key)
    return {label: entries[label] for label in chosen}


def tau_slider(page: str, default: float = 1.0, models: dict[str, ZooEntry] | None = None) -> float:
    """Weight-noise scale tau: sigma -> tau * sigma (0 = posterior-mean weights, 1 = learned posterior).

    With `models`, says which of them tau does nothing for (deterministic networks: variant iwae), and is
    disabled when that is all of them."""
    key = f"{page}:tau"
    _init(key, "tau", lambda raw: round(round(min(max(float(raw), 0.0), TAU_MAX) / 0.05) * 0.05, 2)
          if not math.isnan(float(raw)) else None, default, lambda v: isinstance(v, float) and 0 <= v <= TAU_MAX,
          f"τ from 0 to {TAU_MAX:g} in steps of 0.05")
    fixed = [label for label, e in (models or {}).items() if e.variant == "iwae"]
    disabled = bool(models) and len(fixed) == len(models)
    tau = st.sidebar.slider("τ (weight-noise scale)", 0.0, TAU_MAX, step=0.05, key=key, disabled=disabled,
                            help="σ is replaced by τσ: 0 = posterior-mean weights, 1 = the learned posterior, "
                                 ">1 exaggerated uncertainty.")
    if disabled:
        st.sidebar.caption(f"τ does nothing here: {', '.join(fixed)} {'has' if len(fixed) == 1 else 'have'} "
                           "deterministic weights (variant IWAE).")
    elif fixed:
        st.sidebar.caption(f"τ does nothing for {', '.join(fixed)} (deterministic weights, variant IWAE).")
    _url_notice(key)
    return tau


def k_slider(page: str, default: int = 100, options: tuple[int, ...] = K_GRID, label: str = "k", param: str = "k",
             sidebar: bool = True) -> int:
    """Number of importance samples, one of `options`, in the URL as ?param=. A link's value picks the nearest
    option up to URL_K_MAX: a link never starts a computation of tens of seconds (a larger k is one slider move
    away)."""
    key = f"{page}:{param}"
    linkable = [o for o in options if o <= URL_K_MAX] or [min(options)]

    def parse(raw: str) -> int | None:
        k = float(raw)
        if math.isnan(k):
            return None
        return min(linkable, key=lambda o: abs(math.log(o) - math.log(min(max(k, 1.0), 1e300))))

    def allowed(raw: str) -> str:
        grid = ", ".join(map(str, linkable))
        try:
            too_big = float(raw) > max(linkable)
        except ValueError:
            too_big = False
        return (f"a link may ask for k up to {max(linkable)}, since larger k cost tens of seconds of server time; "
                f"choose a larger k with the slider" if too_big else f"k is one of {grid} in a link")

    _init(key, param, parse, default, lambda v: v in options, allowed)
    k = (st.sidebar if sidebar else st).select_slider(label, options=list(options), key=key,
                                                      help=f"Shared in the URL as ?{param}=")
    _url_notice(key)
    return k


def seed_input(page: str, default: int = 0) -> int:
    key = f"{page}:seed"
    _init(key, "seed", lambda raw: int(raw) if 0 <= int(raw) <= SEED_MAX else None, default,
          lambda v: isinstance(v, int) and 0 <= v <= SEED_MAX, f"a whole number from 0 to {SEED_MAX}")
    seed = int(st.sidebar.number_input("Seed", 0, SEED_MAX, step=1, key=key,
                                       help="Same seed, same latent and weight draws: shared in the URL."))
    _url_notice(key)
    return seed


def int_input(page: str, param: str, label: str, lo: int, hi: int, default: int, step: int = 1,
              key: str | None = None, sidebar: bool = True, help: str | None = None) -> int:
    """A whole number from lo to hi whose value lives in the URL as ?param=; a link's value outside that
    range (or not a whole number) gets the default and a notice."""
    key = key or f"{page}:{param}"
    default = min(max(default, lo), hi)
    _init(key, param, lambda raw: int(raw) if lo <= int(raw) <= hi else None, default,
          lambda v: isinstance(v, int) and lo <= v <= hi, f"a whole number from {lo} to {hi}")
    where = st.sidebar if sidebar else st
    value = int(where.number_input(label, lo, hi, step=step, key=key, help=help or f"Shared in the URL as ?{param}="))
    _url_notice(key)
    return value


def float_input(page: str, param: str, label: str, lo: float, hi: float, default: float, step: float | None = None,
                fmt: str | None = None, key: str | None = None, sidebar: bool = True, help: str | None = None) -> float:
    """A number from lo to hi typed into a box, whose value lives in the URL as ?param=; a link's value outside
    that range (or no finite number) gets the default and a notice."""
    key = key or f"{page}:{param}"
    default = float(min(max(default, lo), hi))

    def valid(v) -> bool:
        return isinstance(v, float) and math.isfinite(v) and lo <= v <= hi

    _init(key, param, lambda raw: float(raw) if valid(float(raw)) else None, default, valid,
          f"a number from {lo:g} to {hi:g}")
    where = st.sidebar if sidebar else st
    value = float(where.number_input(label, float(lo), float(hi), step=step, format=fmt, key=key,
                                     help=help or f"Shared in the URL as ?{param}="))
    _url_notice(key)
    return value


def int_slider(page: str, param: str, label: str, lo: int, hi: int, default: int, step: int = 1,
               key: str | None = None, help: str | None = None) -> int:
    """A sidebar slider of whole numbers lo..hi (on the step grid from lo) whose value lives in the URL as ?param=;
    a link's value off the range or the grid gets the default and a notice."""
    key = key or f"{page}:{param}"
    default = min(max(default, lo), hi)
    valid = lambda v: isinstance(v, int) and lo <= v <= hi and (v - lo) % step == 0  # noqa: E731
    _init(key, param, lambda raw: int(raw) if valid(int(raw)) else None, default, valid,
          f"a whole number from {lo} to {hi}" + (f" in steps of {step}" if step > 1 else ""))
    value = int(st.sidebar.slider(label, lo, hi, step=step, key=key, help=help or f"Shared in the URL as ?{param}="))
    _url_notice(key)
    return value


def bool_input(page: str, param: str, label: str, default: bool, key: str | None = None,
               help: str | None = None) -> bool:
    """A sidebar checkbox whose value lives in the URL as ?param=1 or 0; any other value in a link gets the
    default and a notice."""
    key = key or f"{page}:{param}"
    _init(key, param, lambda raw: {"1": True, "0": False}.get(raw), default, lambda v: isinstance(v, bool),
          "1 (on) or 0 (off)")
    value = st.sidebar.checkbox(label, key=key, help=help or f"Shared in the URL as ?{param}=1 or 0")
    _url_notice(key)
    return value


def float_slider(page: str, param: str, label: str, lo: float, hi: float, default: float, step: float,
                 key: str | None = None, help: str | None = None) -> float:
    """A sidebar slider lo..hi on the step grid whose value lives in the URL as ?param=; a link's value off the
    range or the grid gets the default and a notice."""
    key = key or f"{page}:{param}"

    def on_grid(v) -> bool:
        return isinstance(v, float) and lo <= v <= hi and abs((v - lo) / step - round((v - lo) / step)) < 1e-9

    _init(key, param, lambda raw: float(raw) if on_grid(float(raw)) else None, float(default), on_grid,
          f"from {lo:g} to {hi:g} in steps of {step:g}")
    value = float(st.sidebar.slider(label, lo, hi, step=step, key=key, help=help or f"Shared in the URL as ?{param}="))
    _url_notice(key)
    return value


def choice_input(page: str, param: str, label: str, options: list, default=None, key: str | None = None,
                 sidebar: bool = True, help: str | None = None, format_func: Callable | None = None,
                 radio: bool = False):
    """A selectbox (or radio) over `options` whose value lives in the URL as ?param= (the option's text); a link
    naming no option gets the default (the first option when None) and a notice listing the options."""
    key = key or f"{page}:{param}"
    default = default if default in options else options[0]
    by_text = {str(o): o for o in options}
    shown = ", ".join(list(by_text)[:12]) + (", …" if len(by_text) > 12 else "")
    _init(key, param, lambda raw: by_text.get(raw), default, lambda v: v in options, f"one of {shown}")
    where = st.sidebar if sidebar else st
    value = (where.radio if radio else where.selectbox)(label, options, key=key, format_func=format_func or str,
                                                        help=help or f"Shared in the URL as ?{param}=")
    _url_notice(key)
    return value


class ProgressBar:
    """st.progress that reaches the browser at most every `seconds`, and always at the end: a bar moved per
    image (300 times in a k = 5000 pass over 100 images for three models) made the browser redraw the page
    on the cores the computation was using."""

    def __init__(self, text: str, seconds: float = 0.25) -> None:
        self.bar, self.seconds, self.last = st.progress(0.0, text=text), seconds, -math.inf

    def __call__(self, fraction: float, text: str) -> None:
        now = time.monotonic()
        if fraction >= 1.0 or now - self.last >= self.seconds:
            self.bar.progress(min(1.0, fraction), text=text)
            self.last = now

    def empty(self) -> None:
        self.bar.empty()


def chart(fig, key: str) -> None:
    """Draw a plotly figure as it was built (on figures.TEMPLATE), not restyled by Streamlit's theme: the theme
    reworked every chart in the browser on each update, about 0.1 s per chart on a 2-core machine, and an export
    showed other colours and fonts than the screen."""
    st.plotly_chart(fig, key=key, theme=None)


def sync_url(**params) -> None:
    """Write the page's current settings into the URL, so the address reproduces the view."""
    for name, value in params.items():
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        elif isinstance(value, float):
            value = f"{value:g}"
        st.query_params[name] = str(value)
