"""Samples: comparisons that mean something across models (reconstructions of the same test images), within one
model (its decoder at tau = 0 against tau = 1), and the prior-sample grid, which is not aligned across models."""

import streamlit as st

from dashboard import compute, downloads, export, figures, snapshot_picker, widgets, zoo

VIEWS = {
    "reconstructions": "Reconstructions of the same test images",
    "ab": "One model: τ = 0 against the chosen τ (A/B)",
    "prior": "Prior samples (not aligned across models)",
}

st.set_page_config(page_title="Samples · Bayesian IWAE", layout="wide")
st.title("Samples")

models = snapshot_picker.pick_models("samples")
first_dataset = models[next(iter(models))].dataset if models else None
test = compute.test_set(first_dataset) if models else {"error": "no model chosen"}
# without test images the reconstructions cannot be shown: the prior samples are the default then
view = widgets.choice_input("samples", "view", "View", list(VIEWS),
                       default="reconstructions" if "error" not in test else "prior", format_func=VIEWS.get,
                       help="Shared in the URL as ?view=reconstructions, ab or prior")
tau = widgets.tau_slider("samples", models=models)
draws = widgets.int_slider("samples", "draws", "Weight draws θ", 1, 12, 4)
n = widgets.int_slider("samples", "n", "Test images" if view == "reconstructions" else "Latent draws z", 2, 16, 8)
seed = widgets.seed_input("samples")
widgets.sync_url(**snapshot_picker.model_params("samples", models), view=view, tau=tau, draws=draws, n=n, seed=seed)
if not models:
    st.info("Choose at least one model in the sidebar.")
    st.stop()

refs = {label: zoo.ref(e) for label, e in models.items()}
for r in refs.values():
    zoo.load_model(r)
names = {label: f"{label} ({zoo.variant_label(models[label].variant)})" for label in models}
settings = f"τ = {tau:g}, seed {seed}, {draws} weight draw{'s' if draws > 1 else ''}"  # objective: see below
figs, tables = {}, {}
shown = dict(models)  # the models in the figures, for the exported settings

if view == "reconstructions":
    st.caption("Every model reconstructs the same test images: p(x|z) at z = E_q[z|x]. Each row is one draw of "
               "both networks' weights with σ scaled by τ; a deterministic network (IWAE) gives identical rows.")
    datasets = sorted({e.dataset for e in models.values()})
    if "error" in test:
        st.error(f"No {first_dataset} test images, so there is nothing to reconstruct: {test['error']} "
                 "Choose the prior samples view, which needs no data.")
        compute.retry_data_button("samples:retry")
        st.stop()
    first = widgets.int_input("samples", "image", "First test image", 0, len(test["x"]) - n, 0)
    widgets.sync_url(image=first)
    same = [label for label in models if models[label].dataset == first_dataset]
    if len(datasets) > 1:
        st.warning(f"Only the {first_dataset} models are shown (the test images of the first model's dataset): "
                   f"{', '.join(label for label in models if label not in same)} use other images.")
    grids = {f"test images {first}–{first + n - 1}": test["x"][first:first + n][None].numpy()}
    grids |= {names[label]: compute.reconstructions(refs[label], first_dataset, compute.data_key(), first, n, draws,
                                                    tau, seed)
              for label in same}
    figs["reconstructions"] = compute.figure(
        figures.sample_grids, grids,
        title=f"Reconstructions of {first_dataset} test images {first}–{first + n - 1} ({settings}"
              f"{downloads.objectives_text({m: models[m] for m in same})}); rows: weight draws")
    tables["reconstructions"] = lambda: export.images_csv(
        grids, axes=("draw", "test image"), labels={"test image": list(range(first, first + n))})
    shown = {label: models[label] for label in same}
    spread_of = {names[label]: grids[names[label]] for label in same}
    index_axis = ("test image", list(range(first, first + n)))
elif view == "ab":
    st.caption("One model decodes the same latent draws z ~ p(z) with its posterior-mean weights (τ = 0, A) and "
               "with weights drawn from q(θ) with σ scaled by the chosen τ (B): what the weight uncertainty does.")
    label = widgets.choice_input("samples", "ab", "Model for A/B", list(models), sidebar=True,
                            default=next((m for m in models if models[m].variant != "iwae"), next(iter(models))),
                            format_func=lambda m: names[m], help="Shared in the URL as ?ab=name")
    widgets.sync_url(ab=label)
    if models[label].variant == "iwae":
        st.info(f"{label} has deterministic weights (IWAE): A and B are the same images.")
    grids = {f"A: {names[label]}, τ = 0": compute.samples(refs[label], n, draws, 0.0, seed),
             f"B: {names[label]}, τ = {tau:g}": compute.samples(refs[label], n, draws, tau, seed)}
    figs["ab"] = compute.figure(figures.sample_grids, grids,
                                title=f"{label}: the same z decoded at τ = 0 (A) and τ = {tau:g} (B), "
                                      f"seed {seed}{downloads.objectives_text({label: models[label]})}; "
                                      "rows: weight draws")
    tables["ab"] = lambda: export.images_csv(grids)
    shown = {label: models[label]}
    spread_of = grids
    index_axis = ("z index", list(range(n)))
else:
    st.caption("Every model decodes the same latent draws z ~ p(z) (same seed), but each model's latent space is "
               "its own: column i of two models is NOT the same content, so compare the look of the samples, not "
               "image by image. Each row is one draw of the decoder weights; a deterministic decoder gives "
               "identical rows.")
    grids = {names[label]: compute.samples(r, n, draws, tau, seed) for label, r in refs.items()}
    figs["samples"] = compute.figure(figures.sample_grids, grids,
                                     title=f"Prior samples, not aligned across models ({settings}"
                                           f"{downloads.objectives_text(models)}); "
                                           "rows: weight draws, columns: latent draws z")
    tables["samples"] = lambda: export.images_csv(grids)
    spread_of = grids
    index_axis = ("z index", list(range(n)))

view_settings = downloads.view_settings(shown, view=view, tau=tau, seed=seed, weight_draws=draws,
                                 **({"test_images": [first, first + n - 1]} if view == "reconstructions"
                                    else {"latent_draws": n}))
main = next(iter(figs))
widgets.chart(figs[main], key=f"samples-{main}")
downloads.export_buttons(figs[main], main, tables[main], view_settings)

st.subheader("Spread across weight draws")
if draws < 2:
    st.caption("With one weight draw there is no spread: raise *Weight draws θ* in the sidebar.")
figs["spread"] = compute.figure(figures.spread_map, spread_of,
                                title=f"Per-pixel spread of p(x|z) across {draws} weight draws ({settings})")
widgets.chart(figs["spread"], key="samples-spread")
tables["spread"] = lambda: export.images_csv(
    {name: (g.std(0, ddof=1) if len(g) > 1 else g[0] * 0) for name, g in spread_of.items()},
    axes=(index_axis[0],), labels={index_axis[0]: index_axis[1]}, value_name="std across weight draws")
downloads.export_buttons(figs["spread"], "spread", tables["spread"], view_settings)
st.caption("Per-pixel standard deviation of p(x|z) across the weight draws above, one tile per column.")

downloads.zip_button(figs, "samples", tables, downloads.final_link(view_settings))
