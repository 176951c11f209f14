"""The snapshot picker: one snapshot of a Train live run as the page's model, stepped through with Previous,
Play / Pause and Next, and a view at the latest step that follows a training run.

A page that can show snapshots picks with pick_models ("Models from": the zoo or a run's snapshots, ?source=,
then widgets.pick_models or pick_snapshot); model_params names whichever it picked in the URL. This picker is
built on widgets.py's controls, so widgets.py does not import it back. Like those controls, the run and step live
in the URL (?run=, ?step=), so a link reopens the same snapshot; a link's step that was thinned out gets the
nearest and a notice.
"""

from __future__ import annotations

import time

import streamlit as st

from iwae_core.runs import is_locked
from iwae_core.zoo import ZooEntry

from . import widgets, zoo
from .widgets import _init, _url_notice, choice_input, escape_markdown

SOURCES = {"zoo": "Model zoo", "snapshots": "A run's snapshots"}
PLAY_SECONDS = 1.5  # between two snapshots while playing
FOLLOW_SECONDS = 5.0  # how often a view of a training run looks for its next snapshot


def model_source(page: str) -> str:
    """Where the page's models come from (?source=zoo or snapshots); the snapshots when the zoo is empty and a run
    has some."""
    default = "snapshots" if not zoo.entries() and zoo.snapshot_runs() else "zoo"
    return choice_input(page, "source", "Models from", list(SOURCES), default=default, format_func=SOURCES.get,
                        radio=True, help="The trained models, or the snapshots a Train live run keeps as it trains "
                                         "(shared in the URL as ?source=zoo or snapshots)")


def pick_models(page: str, **zoo_picker) -> dict[str, ZooEntry]:
    """The page's models: from the zoo (widgets.pick_models with zoo_picker's options) or one snapshot of a
    training run (pick_snapshot), as model_source says."""
    return pick_snapshot(page) if model_source(page) == "snapshots" else widgets.pick_models(page, **zoo_picker)


def model_params(page: str, models: dict[str, ZooEntry]) -> dict:
    """The URL parameters naming the page's models, for sync_url: ?model=a,b from the zoo, or
    ?source=snapshots&run=NAME&step=N for a run's snapshot (the other source's parameters are dropped)."""
    state = st.session_state
    if state.get(f"{page}:source") == "snapshots" and f"{page}:step" in state:
        if "model" in st.query_params:
            del st.query_params["model"]
        return {"source": "snapshots", "run": state[f"{page}:run"], "step": state[f"{page}:step"]}
    for name in ("source", "run", "step"):
        if name in st.query_params:
            del st.query_params[name]
    return {"model": list(models)}


def _nearest(steps: list[int], step: int) -> int:
    return min(steps, key=lambda s: (abs(s - step), s))


def _steps_text(steps: list[int]) -> str:
    shown = [f"{s:,}" for s in steps]
    return ", ".join(shown if len(shown) <= 8 else [*shown[:4], "…", *shown[-3:]])


def _toggle_play(key: str, first: int, last: int) -> None:
    state = st.session_state
    state[f"{key}:playing"] = not state.get(f"{key}:playing", False)
    if state[f"{key}:playing"]:
        if state.get(key) == last:  # Play at the end starts from the beginning
            state[key] = first
        state[f"{key}:frame"] = time.monotonic()


def _set_step(key: str, step: int) -> None:
    st.session_state[key] = step


def _frame_due(key: str) -> bool:
    """Whether the next frame is due while playing (a little early rather than a whole timer period late)."""
    return time.monotonic() - st.session_state.get(f"{key}:frame", 0.0) >= 0.9 * PLAY_SECONDS


def _settle_step(key: str, run: str, steps: list[int], training: bool) -> None:
    """The step to show before the slider is drawn: the latest of a newly chosen run; the newest snapshot when the
    view showed the latest (it follows a training run); the nearest when the one shown was thinned out; and while
    playing, the next snapshot once PLAY_SECONDS have passed (at the latest of a run that no longer trains,
    playing stops)."""
    state = st.session_state
    shown = state.get(key)
    if state.get(f"{key}:run") not in (None, run):
        state[key] = steps[-1]
    elif shown is not None and shown == state.get(f"{key}:latest"):
        state[key] = steps[-1]
    elif shown is not None and shown not in steps:
        state[key] = _nearest(steps, shown)
        state[f"{key}:thinned"] = shown
    if state.get(f"{key}:playing") and key in state:
        now = time.monotonic()
        later = [s for s in steps if s > state[key]]
        if later and _frame_due(key):
            state[key], state[f"{key}:frame"] = later[0], now
        elif not later and not training:
            state[f"{key}:playing"] = False
    state[f"{key}:run"], state[f"{key}:latest"] = run, steps[-1]


def _clock(key: str, run_path: str, training: bool, interval: float) -> None:
    """The timer of a snapshot view (a fragment run every `interval` s): reruns the page when there is something
    new to show (the next frame while playing; a new snapshot, or the run's end, while following), so the page
    itself never waits."""
    state = st.session_state
    if time.monotonic() - state.get(f"{key}:drawn", 0.0) < 0.5 * interval:
        return  # the page's own run, just drawn
    steps = list(zoo.snapshot_files(run_path))
    training_now = is_locked(run_path)
    if state.get(f"{key}:playing"):
        due = _frame_due(key) and (any(s > state.get(key, 0) for s in steps) or not training_now)
    else:
        due = steps[-1:] != [state.get(f"{key}:latest")] or training_now != training
    if due:
        st.rerun()


def pick_snapshot(page: str) -> dict[str, ZooEntry]:
    """One snapshot of a Train live run (iwae_core.runs.snapshots): the run (?run=, by default the newest training
    one) and the step (?step=, by default the latest; a link's step that was thinned out gets the nearest and a
    notice), with Previous, Play / Pause and Next. A view at the latest step moves on to each new snapshot of a
    training run; Play steps through the snapshots, one every PLAY_SECONDS. A timer fragment reruns the page when
    there is something new, so nothing blocks. A snapshot that cannot be read stops the page with the reason."""
    found = zoo.snapshot_runs()
    if not found:
        st.info("No run has snapshots yet. Start one on the **Train live** page: a run keeps snapshots of its model "
                "as it trains (when it starts, at the end of every epoch, every half minute, and at the end), "
                "and they can be shown here while it trains.")
        st.stop()
    names = list(found)
    name = choice_input(page, "run", "Run", names, default=next((n for n in names if found[n].active), names[0]),
                        format_func=lambda n: f"{n} ({found[n].status})",
                        help="A run of the Train live page that has snapshots; shared in the URL as ?run=")
    info = found[name]
    files = zoo.snapshot_files(info.path)
    if not files:  # gone since the runs were listed (the run was deleted)
        st.info(f"Run {escape_markdown(name)} has no snapshots any more.")
        st.stop()
    steps = list(files)
    key, state = f"{page}:step", st.session_state
    training = is_locked(info.path)
    _settle_step(key, name, steps, training)
    _init(key, "step", lambda raw: _nearest(steps, int(raw)), steps[-1], lambda v: v in steps,
          f"run {name} has snapshots of steps {_steps_text(steps)}; the nearest is used")
    step = st.sidebar.select_slider("Snapshot at step", options=steps, key=key, format_func=lambda s: f"{s:,}",
                                    help="The run's snapshots (at most 30, thinned evenly as it trains); at the "
                                         "latest, the view follows a training run. Shared in the URL as ?step=")
    _url_notice(key)
    thinned = state.pop(f"{key}:thinned", None)
    if thinned is not None:
        st.sidebar.caption(f"The snapshot of step {thinned:,} was thinned out as the run went on: showing the "
                           f"nearest, step {step:,}.")
    i, playing = steps.index(step), state.get(f"{key}:playing", False)
    back, play, forward = st.sidebar.columns(3)
    back.button("", icon=":material/skip_previous:", key=f"{key}:previous", help="Previous snapshot",
                disabled=i == 0, on_click=_set_step, args=(key, steps[max(i - 1, 0)]))
    play.button("", icon=":material/pause:" if playing else ":material/play_arrow:", key=f"{key}:play",
                help="Pause" if playing else "Play: step through the snapshots", disabled=len(steps) < 2,
                on_click=_toggle_play, args=(key, steps[0], steps[-1]))
    forward.button("", icon=":material/skip_next:", key=f"{key}:next", help="Next snapshot",
                   disabled=i == len(steps) - 1, on_click=_set_step, args=(key, steps[min(i + 1, len(steps) - 1)]))
    where = "the latest" if step == steps[-1] else f"{i + 1} of {len(steps)}"
    st.sidebar.caption(f"Run **{escape_markdown(name)}** ({info.status}{', training' if training else ''}): "
                       f"snapshot {where}, step {step:,} of {steps[-1]:,}"
                       + (" · playing" if playing else " · following the run" if training and step == steps[-1]
                          else ""))
    state[f"{key}:drawn"] = time.monotonic()
    if playing or training:
        with st.sidebar:
            st.fragment(run_every=PLAY_SECONDS if playing else FOLLOW_SECONDS)(_clock)(
                key, str(info.path), training, PLAY_SECONDS if playing else FOLLOW_SECONDS)
    problem = zoo.snapshot_problem(files[step], info.run)
    if problem:
        st.warning(f"This snapshot cannot be shown: {escape_markdown(problem)}", icon=":material/error:")
        st.stop()
    entry = zoo.snapshot_entry(info, step, files[step])
    return {entry.name: entry}
