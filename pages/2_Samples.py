"""Samples: the chosen models decode the same latent draws under several decoder weight draws."""

import streamlit as st

import ui
from iwae_core import figures

st.set_page_config(page_title="Samples · Bayesian IWAE", layout="wide")
st.title("Samples")
st.caption("Every model decodes the same latent draws z ~ p(z) (same seed). Each row is one draw of the decoder "
           "weights θ ~ q(θ) with σ scaled by τ; a deterministic decoder (IWAE, IWAE-Rrec) gives identical rows.")

models = ui.pick_models("samples")
tau = ui.tau_slider("samples", models=models)
draws = st.sidebar.slider("Weight draws θ", 1, 12, 4, key="samples:draws")
n = st.sidebar.slider("Latent draws z", 2, 16, 8, key="samples:n")
seed = ui.seed_input("samples")
ui.sync_url(model=list(models), tau=tau, seed=seed)
if not models:
    st.info("Choose at least one model in the sidebar.")
    st.stop()

refs = {label: ui.ref(e) for label, e in models.items()}
for r in refs.values():
    ui.load_model(r)
grids = {f"{label} ({ui.variant_label(models[label].variant)})": ui.samples(r, n, draws, tau, seed)
         for label, r in refs.items()}

fig_samples = figures.sample_grids(grids)
st.plotly_chart(fig_samples, key="samples-grid")
ui.export_buttons(fig_samples, "samples")

st.subheader("Spread across weight draws")
if draws < 2:
    st.caption("With one weight draw there is no spread: raise *Weight draws θ* in the sidebar.")
fig_spread = figures.spread_map(grids)
st.plotly_chart(fig_spread, key="samples-spread")
ui.export_buttons(fig_spread, "spread")
st.caption("Per-pixel standard deviation of p(x|z) across the weight draws above, one tile per latent draw.")

ui.zip_button({"samples": fig_samples, "spread": fig_spread}, "samples")
