"""Bound vs k: L_k against the number of importance samples, and one test image's importance weights."""

import pandas as pd
import streamlit as st

import ui
from iwae_core import evaluate, explore, figures

st.set_page_config(page_title="Bound vs k · Bayesian IWAE", layout="wide")
st.title("Bound vs k")
st.caption("Mean L_k over the first test images (binarised with the evaluation seed) for k up to the chosen one; "
           "L_k rises towards log p(x) as k grows. Bands: ± 1 standard error over images. "
           "Each (model, k, τ, images, seed) is computed once and then reused.")

models = ui.pick_models("bound")
k_max = ui.k_slider("bound", default=100, label="largest k")
tau = ui.tau_slider("bound")
n_images = int(st.sidebar.number_input("Test images", 1, ui.TEST_IMAGES, 100, step=50, key="bound:images"))
seed = ui.seed_input("bound")
ui.sync_url(model=list(models), k=k_max, tau=tau, seed=seed)
if not models:
    st.info("Choose at least one model in the sidebar.")
    st.stop()

tests = {label: ui.test_set(e.dataset) for label, e in models.items()}
missing = {label: t["error"] for label, t in tests.items() if "error" in t}
for label, err in missing.items():
    st.error(f"{label}: no test images for {models[label].dataset}, so its bound cannot be computed. {err}")
if missing:
    ui.retry_data_button("bound:retry")
models = {label: e for label, e in models.items() if label not in missing}
if not models:
    st.stop()

refs = {label: ui.ref(e) for label, e in models.items()}
for r in refs.values():
    ui.load_model(r)
ks = [k for k in explore.K_GRID if k <= k_max]
work = [(label, k) for label in models for k in ks]
total = sum(k for _, k in work)
bar = st.progress(0.0, text="Computing L_k…")
curves: dict[str, list[dict]] = {label: [] for label in models}
done = 0
for label, k in work:
    text = f"L_k for {label}, k = {k} on {n_images} images…"
    bar.progress(done / total, text=text)
    step = lambda i, n, k=k, d=done, text=text: bar.progress(min(1.0, (d + k * i / n) / total), text=text)
    curves[label].append(ui.bound_point(refs[label], models[label].dataset, ui.data_key(), k, tau, n_images, seed,
                                        progress=step))
    done += k
bar.empty()

references = {}
show_paper = st.sidebar.checkbox("Show the paper's test LL", True, key="bound:paper")
for e in (models.values() if show_paper else ()):
    paper = evaluate.PAPER_TABLE.get(e.dataset, {}).get(e.variant)
    if paper:
        references[f"paper {ui.variant_label(e.variant)} ({e.dataset}) test LL"] = paper[0]
fig_bound = figures.bound_vs_k(curves, references=references, k_max=k_max)
st.plotly_chart(fig_bound, key="bound-curve")
ui.export_buttons(fig_bound, "bound_vs_k")
table = pd.DataFrame([{"model": label, **row} for label, rows in curves.items() for row in rows])
st.dataframe(table, hide_index=True, key="bound-table")

st.subheader("One test image: importance weights and posterior draws")
n_test = min(len(tests[label]["x"]) for label in models)
index = int(st.number_input("Test image", 0, n_test - 1, 0, key="bound:index"))
z_dim = min(ui.load_model(r).config.z_dim for r in refs.values())
c1, c2 = st.columns(2)
dim_a = c1.selectbox("Latent dimension (x axis)", list(range(z_dim)), 0, key="bound:dim_a")
dim_b = c2.selectbox("Latent dimension (y axis)", list(range(z_dim)), min(1, z_dim - 1), key="bound:dim_b")
weights = {label: ui.importance(r, models[label].dataset, ui.data_key(), index, k_max, tau, seed)
           for label, r in refs.items()}
st.markdown(" · ".join(f"**{label}**: L_{k_max} = {w['bound']:.2f}, ESS = {w['ess']:.1f} of {k_max}"
                       for label, w in weights.items()))
first = next(iter(models))
fig_image = figures.image_grid(tests[first]["x"][index][None], nrow=1, title=f"test image {index}")
fig_weights = figures.importance_weights(weights)
fig_post = figures.posterior_scatter(weights, dims=(dim_a, dim_b))
c_img, c_w = st.columns([1, 4])
with c_img:
    st.plotly_chart(fig_image, key="bound-image")
    ui.export_buttons(fig_image, "test_image")
with c_w:
    st.plotly_chart(fig_weights, key="bound-weights")
    ui.export_buttons(fig_weights, "importance_weights")
st.plotly_chart(fig_post, key="bound-posterior")
ui.export_buttons(fig_post, "posterior_draws")
ui.zip_button({"bound_vs_k": fig_bound, "importance_weights": fig_weights, "posterior_draws": fig_post,
               "test_image": fig_image}, "bound_vs_k")
