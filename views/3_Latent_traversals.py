"""Latent traversals: move one latent unit at a time, from a test image's posterior mean or a prior draw."""

import numpy as np
import streamlit as st

from dashboard import charts, compute, downloads, export, figures, widgets, zoo

st.set_page_config(page_title="Latent traversals · Bayesian IWAE", layout="wide")
st.title("Latent traversals")
st.caption("Each row sets one latent unit to the values on top, the others held at the starting point; "
           "units are ordered by activity Var_x E_q[z_j|x] (Burda et al.), most active first.")

label, entry = next(iter(widgets.pick_models("traversals", multi=False).items()))
model_ref = zoo.ref(entry)
model = zoo.load_model(model_ref)
test = compute.test_set(entry.dataset)
has_data = "error" not in test

SOURCES = {"image": "Test image", "prior": "Prior draw"}
sources = ["image", "prior"] if has_data else ["prior"]
source = widgets.choice_input("traversals", "source", "Start from", sources, radio=True, format_func=SOURCES.get,
                         help="Shared in the URL as ?source=image or prior")
index = None
if source == "image":
    index = widgets.int_input("traversals", "image", "Test image", 0, len(test["x"]) - 1, 0, key="traversals:index")
tau = widgets.tau_slider("traversals", default=0.0, models={label: entry})
seed = widgets.seed_input("traversals")
span = widgets.float_slider("traversals", "span", "Range (± around the start)", 0.5, 5.0, 3.0, 0.5)
steps = widgets.int_slider("traversals", "steps", "Steps", 3, 15, 9, step=2)
widgets.sync_url(model=label, source=source, tau=tau, seed=seed, span=span, steps=steps)
if index is not None:
    widgets.sync_url(image=index)

if not has_data:
    st.warning(f"No {entry.dataset} test images, so traversals start from a prior draw and every unit is shown "
               f"(active units need data). {test['error']}")
    compute.retry_data_button("traversals:retry")

act = compute.activity(model_ref, entry.dataset, compute.data_key()) if has_data else None
if act:
    order = [int(j) for j in np.argsort(act["activity"])[::-1]]
    active = [j for j in order if act["activity"][j] > act["threshold"]]
    only_active = widgets.bool_input("traversals", "active", "Active units only", True, key="traversals:only_active")
    widgets.sync_url(active=int(only_active))
    candidates = active if only_active and active else order
else:
    candidates = list(range(model.config.z_dim))
n_units = widgets.int_slider("traversals", "units", "Units shown", 1, len(candidates), min(8, len(candidates))) \
    if len(candidates) > 1 else 1
widgets.sync_url(units=n_units)
units = candidates[:n_units]

z0 = compute.start_point(model_ref, entry.dataset, compute.data_key(), index, tau, seed)
offsets = tuple(float(o) for o in np.linspace(-span, span, steps))
start = tuple(float(v) for v in z0)
images = compute.traversal(model_ref, start, tuple(units), offsets, tau, seed)  # one weight draw for every unit

settings = downloads.view_settings({label: entry}, start="prior draw" if index is None else f"test image {index}",
                                   tau=tau, seed=seed, units=units, offsets=list(offsets))
tables = {"traversals": lambda: export.images_csv({label: images}, axes=("unit", "offset"),
                                                   labels={"unit": units, "offset": list(offsets)})}
col_img, col_info = st.columns([1, 3])
with col_img:
    if index is not None:
        pair = compute.reconstruction(model_ref, entry.dataset, compute.data_key(), index, tau, seed)
        fig_start = compute.figure(figures.image_grid, pair, nrow=2, title=f"test image {index} and reconstruction")
    else:
        fig_start = compute.figure(figures.image_grid, compute.traversal(model_ref, start, (0,), (0.0,), tau, seed)[0],
                                   nrow=1, title=f"prior draw (seed {seed})")
    widgets.chart(fig_start, key="traversals-start")
    downloads.export_buttons(fig_start, "start", settings=settings)
with col_info:
    st.markdown(f"**{label}** ({zoo.variant_label(entry.variant)}, {entry.dataset}); starting point: "
                + (f"E_q[z|x] of test image {index}" if index is not None else f"z ~ p(z), seed {seed}")
                + f"; τ = {tau:g}. Columns add the offsets on top to the unit's starting value.")
    if act:
        st.markdown(f"Active units: **{len(active)} of {model.config.z_dim}** "
                    f"(activity > {act['threshold']:g} on {compute.ACTIVITY_IMAGES} test images).")

fig_trav = compute.figure(figures.traversal_grid, images, units, offsets,
                          title=f"Latent traversals of {label} from "
                                + ("a prior draw" if index is None else f"test image {index}")
                                + f", τ = {tau:g}, seed {seed}{downloads.objectives_text({label: entry})} "
                                  "(columns: offset from the starting value)")
widgets.chart(fig_trav, key="traversals-grid")
downloads.export_buttons(fig_trav, "traversals", tables["traversals"], settings)
figs = {"traversals": fig_trav, "start": fig_start}
if act:
    fig_act = compute.figure(charts.activity_bar, act["activity"], act["threshold"])
    widgets.chart(fig_act, key="traversals-activity")
    tables["activity"] = lambda: export.table_csv([
        {"model": label, "unit": j, "activity": float(a), "threshold": act["threshold"],
         "active": bool(a > act["threshold"])} for j, a in enumerate(act["activity"])])
    downloads.export_buttons(fig_act, "activity", tables["activity"], settings)
    figs["activity"] = fig_act
downloads.zip_button(figs, "traversals", tables, downloads.final_link(settings))
