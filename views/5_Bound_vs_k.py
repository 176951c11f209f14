"""Bound vs k: L_k against the number of importance samples, and one test image's importance weights."""

import pandas as pd
import streamlit as st
import torch

from dashboard import charts, compute, downloads, export, figures, widgets, zoo
from iwae_core import evaluate

st.set_page_config(page_title="Bound vs k · Bayesian IWAE", layout="wide")
st.title("Bound vs k")
st.caption("Mean L_k over the first test images (binarised with the evaluation seed) for k up to the chosen one; "
           "L_k rises towards log p(x) as k grows. Every L_k of the curve comes from one pass of k_max draws per "
           "image, split into disjoint groups of k whose L_k estimates are averaged (the same expectation as L_k, "
           "less variance; the remainder draws are unused). Bands: ± 1 standard error over images. "
           "Each (model, largest k, τ, images, seed) is computed once and then reused.")

models = widgets.pick_models("bound")
k_max = widgets.k_slider("bound", default=100, label="largest k")
tau = widgets.tau_slider("bound", models=models)
n_images = widgets.int_input("bound", "images", "Test images", 1, compute.TEST_IMAGES, 100, step=50)
seed = widgets.seed_input("bound")
widgets.sync_url(model=list(models), k=k_max, tau=tau, seed=seed, images=n_images)
if not models:
    st.info("Choose at least one model in the sidebar.")
    st.stop()

tests = {label: compute.test_set(e.dataset) for label, e in models.items()}
missing = {label: t["error"] for label, t in tests.items() if "error" in t}
for label, err in missing.items():
    st.error(f"{label}: no test images for {models[label].dataset}, so its bound cannot be computed. {err}")
if missing:
    compute.retry_data_button("bound:retry")
models = {label: e for label, e in models.items() if label not in missing}
if not models:
    st.stop()

refs = {label: zoo.ref(e) for label, e in models.items()}
for r in refs.values():
    zoo.load_model(r)
ks = [k for k in compute.K_GRID if k <= k_max]
for label, r in refs.items():
    if problem := compute.stored_curves_problem(r):
        st.warning(widgets.escape_markdown(f"{label}: its precomputed curves are not used: {problem}"),
                   icon=":material/warning:")
key_of = {label: (refs[label], models[label].dataset, compute.data_key(), k_max, tau, n_images, seed)
          for label in models}
todo = [label for label in models if not compute.bound_curve_cached(*key_of[label])]
if k_max >= compute.CONFIRM_K and todo:
    estimate = sum(compute.estimate_seconds(refs[label], k_max, n_images) for label in todo)
    st.info(f"L_k up to k = {k_max:,} on {n_images} images for {', '.join(todo)}: one pass of {k_max:,} draws "
            f"per image, about **{estimate:,.0f} s** at the speed measured on this server.", icon=":material/timer:")
    if not st.button(f"Compute up to k = {k_max:,} (about {estimate:,.0f} s)", key="bound:go", type="primary"):
        st.caption("Nothing is computed until you click; choose a smaller k to look around first.")
        todo = None
if todo is None:
    curves, per_image = {}, {}
else:
    bar = widgets.ProgressBar("Computing L_k…")
    per_image, precomputed = {}, []
    for i, label in enumerate(models):
        text = f"L_k for {label}, k up to {k_max:,} (one pass of {k_max:,} draws per image) on {n_images} images…"
        step = lambda d, n, i=i, text=text: bar((i + d / n) / len(models), text)
        curve = compute.bound_curve(*key_of[label], progress=step)
        per_image[label] = curve["per_image"]
        if curve.get("precomputed"):
            precomputed.append(label)
    bar.empty()
    if precomputed:
        st.caption(f"Read from the curves stored beside {', '.join(precomputed)} (computed the same way, with the "
                   "same weights, images and seed).")
    curves = {label: compute.curve_rows(ks, v) for label, v in per_image.items()}

colors = {label: charts.PALETTE[i % len(charts.PALETTE)] for i, label in enumerate(models)}
references = {}
show_paper = widgets.bool_input("bound", "paper", "Show the paper's test LL", True)
widgets.sync_url(paper=int(show_paper))
for label, e in (models.items() if show_paper else ()):
    paper = evaluate.PAPER_TABLE.get(e.dataset, {}).get(e.variant)
    if paper:
        references[f"paper {zoo.variant_label(e.variant)} ({e.dataset}): whole test set, k = 5000"] = (
            paper[0], label, 5000)
figs, tables = {}, {}
settings = downloads.view_settings(models, k_max=k_max, ks=ks, tau=tau, seed=seed, images=n_images,
                            estimator="L_k of each k from one pass of k_max draws per image, in groups of k")


def curve_table(rows_by_model: dict, **extra) -> str:
    return export.table_csv([{"model": label, **extra, "k": r["k"], "tau": tau, "seed": seed, "images": n_images,
                               "mean": r["mean"], "stderr": r["stderr"]} for label, rows in rows_by_model.items()
                              for r in rows])


if curves:
    fig_bound = compute.figure(charts.bound_vs_k, curves, references=references, k_max=k_max, colors=colors,
                               title=f"L_k against k, τ = {tau:g}, seed {seed}, first {n_images} test images"
                                     f"{downloads.objectives_text(models)} (band ± 1 s.e. over images)")
    widgets.chart(fig_bound, key="bound-curve")
    tables["bound_vs_k"] = lambda: curve_table(curves)
    downloads.export_buttons(fig_bound, "bound_vs_k", tables["bound_vs_k"], settings)
    figs["bound_vs_k"] = fig_bound
    table = pd.DataFrame([{"model": label, **row} for label, rows in curves.items() for row in rows])
    st.dataframe(table, hide_index=True, key="bound-table",
                 column_config={"mean": st.column_config.NumberColumn("mean L_k", format="%.3f"),
                                "stderr": st.column_config.NumberColumn("s.e. over images", format="%.3f"),
                                "n_images": st.column_config.NumberColumn("images")})

    st.subheader("Paired: each model minus a reference model on the same images")
    reference = widgets.choice_input("bound", "ref", "Reference model (paired view)", list(models), sidebar=False,
                                help="Each curve is L_k of a model minus L_k of this one on the same test images, "
                                     "so the image-to-image spread cancels. Shared in the URL as ?ref=name")
    widgets.sync_url(ref=reference)
    same_data = [label for label in models if models[label].dataset == models[reference].dataset]
    paired = {f"{label} − {reference}": [
        {"k": k, **evaluate.summarize(torch.as_tensor(per_image[label][j] - per_image[reference][j]))}
        for j, k in enumerate(ks)] for label in same_data if label != reference}
    if paired:
        fig_paired = compute.figure(
            charts.bound_vs_k, paired, k_max=k_max, zero_line=True, y_title=f"mean L_k − L_k of {reference} (nats)",
            colors={f"{label} − {reference}": colors[label] for label in same_data},
            title=f"L_k minus {reference}'s on the same {n_images} images, τ = {tau:g}, seed {seed}"
                  f"{downloads.objectives_text(models)} (band ± 1 paired s.e.)")
        widgets.chart(fig_paired, key="bound-paired")
        tables["bound_vs_k_paired"] = lambda: curve_table(
            {label: paired[f"{label} − {reference}"] for label in same_data if label != reference}, reference=reference)
        settings["reference"] = reference
        downloads.export_buttons(fig_paired, "bound_vs_k_paired", tables["bound_vs_k_paired"], settings)
        figs["bound_vs_k_paired"] = fig_paired
    else:
        st.caption("Choose at least two models of the same dataset for paired differences.")
    others = [label for label in models if models[label].dataset != models[reference].dataset]
    if others:
        st.caption(f"Not paired (other test images than {reference}): {', '.join(others)}.")

st.subheader("One test image: importance weights and posterior draws")
n_test = min(len(tests[label]["x"]) for label in models)
c_index, c_k = st.columns(2)
with c_index:
    index = widgets.int_input("bound", "image", "Test image", 0, n_test - 1, 0, key="bound:index", sidebar=False)
with c_k:  # its own k: moving the curve's largest k does not redraw these figures
    k_image = widgets.k_slider("bound", default=100, label="k for this image", param="image_k", sidebar=False)
z_dim = min(zoo.load_model(r).config.z_dim for r in refs.values())
c1, c2 = st.columns(2)
with c1:
    dim_a = widgets.choice_input("bound", "x", "Latent dimension (x axis)", list(range(z_dim)), 0, key="bound:dim_a",
                            sidebar=False)
with c2:
    dim_b = widgets.choice_input("bound", "y", "Latent dimension (y axis)", list(range(z_dim)), min(1, z_dim - 1),
                            key="bound:dim_b", sidebar=False)
widgets.sync_url(image=index, image_k=k_image, x=dim_a, y=dim_b)
weights = {label: compute.importance(r, models[label].dataset, compute.data_key(), index, k_image, tau, seed)
           for label, r in refs.items()}
st.markdown(" · ".join(f"**{label}**: L_{k_image} = {w['bound']:.2f}, ESS = {w['ess']:.1f} of {k_image}"
                       for label, w in weights.items()))
first = next(iter(models))
fig_image = compute.figure(figures.image_grid, tests[first]["x"][index][None].numpy(), nrow=1,
                           title=f"test image {index}")
fig_weights = compute.figure(charts.importance_weights, weights)
fig_post = compute.figure(charts.posterior_scatter, weights, dims=(dim_a, dim_b))
settings |= {"test_image": index, "k_importance": k_image}
tables["test_image"] = lambda: export.images_csv({"test image": tests[first]["x"][index][None]},
                                                  axes=("test image",), labels={"test image": [index]})
tables["importance_weights"] = lambda: export.table_csv([
    {"model": label, "test image": index, "k": k_image, "tau": tau, "seed": seed, "draw": d, "log weight": float(lw),
     "normalised weight": float(nw)}
    for label, w in weights.items() for d, (lw, nw) in enumerate(zip(w["log_w"], w["weights"], strict=True))])
tables["posterior_draws"] = lambda: export.table_csv([
    {"model": label, "test image": index, "k": k_image, "tau": tau, "seed": seed, "draw": d,
     **{f"z{j}": float(v) for j, v in enumerate(z[:z_dim])}}
    for label, w in weights.items() for d, z in enumerate(w["z"])])
# Not in st.columns: there, with the shipped models, Streamlit redrew both charts on every k move though neither
# changed (two full Plotly redraws in the browser); outside a column block it keeps them.
widgets.chart(fig_image, key="bound-image")
downloads.export_buttons(fig_image, "test_image", tables["test_image"], settings)
widgets.chart(fig_weights, key="bound-weights")
downloads.export_buttons(fig_weights, "importance_weights", tables["importance_weights"], settings)
widgets.chart(fig_post, key="bound-posterior")
downloads.export_buttons(fig_post, "posterior_draws", tables["posterior_draws"], settings)
downloads.zip_button({**figs, "importance_weights": fig_weights, "posterior_draws": fig_post, "test_image": fig_image},
              "bound_vs_k", tables, downloads.final_link(settings))
