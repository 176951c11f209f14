"""Weight variance: where the random networks are unsure, as 28x28 maps of sigma and |mu|/sigma per unit."""

import math

import numpy as np
import streamlit as st

from dashboard import charts, compute, downloads, export, figures, snapshot_picker, widgets, zoo

st.set_page_config(page_title="Weight variance · Bayesian IWAE", layout="wide")
st.title("Weight variance")
st.caption("First encoder layer: each hidden unit's 784 incoming weights; last decoder layer: each hidden unit's "
           "784 outgoing weights, both drawn as 28×28 tiles (one tile per unit). σ is the posterior standard "
           "deviation of a weight, |μ|/σ its signal-to-noise ratio (log10 colour scales).")

label, entry = next(iter(snapshot_picker.pick_models("weights", multi=False, prefer="iwae-r").items()))
model_ref = zoo.ref(entry)
model = zoo.load_model(model_ref)
maps = compute.weight_maps(model_ref)
hidden = {net: len(maps[net]["abs_mu"]) for net in maps}
n_max = min(hidden.values())
count = widgets.int_slider("weights", "units", "Units shown", 1, min(n_max, 144), min(64, n_max)) if n_max > 1 else 1
start = widgets.int_slider("weights", "first", "First unit", 0, n_max - count, 0) if n_max > count else 0
ncol = widgets.int_slider("weights", "cols", "Tiles per row", 2, 16, 8)
widgets.sync_url(**snapshot_picker.model_params("weights", {label: entry}), units=count, first=start, cols=ncol)
units = slice(start, start + count)
titles = {"encoder": f"first encoder layer (units {start}–{start + count - 1})",
          "decoder": f"last decoder layer (units {start}–{start + count - 1})"}
st.markdown(f"**{label}**: {zoo.variant_label(entry.variant)} on {entry.dataset}, prior std "
            f"{model.config.prior_std:g}; encoder {'random' if model.config.random_encoder else 'deterministic'}, "
            f"decoder {'random' if model.config.random_decoder else 'deterministic'}.")

figs, tables = {}, {}
objective = downloads.objectives_text({label: entry})
settings = downloads.view_settings({label: entry}, units=[start, start + count - 1], tiles_per_row=ncol)


def weights_table(maps_shown: dict, value_name: str):
    return lambda: export.images_csv(maps_shown, axes=("unit",), labels={"unit": list(range(start, start + count))},
                                      value_name=value_name, group="layer")


sigma = {titles[net]: maps[net]["sigma"][units] for net in maps if maps[net]["sigma"] is not None}
if sigma:
    # one colour scale for every model and unit: log10 sigma from the smallest initial sigma of the zoo's random
    # networks to the prior std, so a map whose sigma barely moved looks flat instead of like structure. Where
    # this model's sigma shrank below that (a random encoder's does: no KL holds it up), the scale starts at its
    # 0.5th percentile instead, else the shrinkage would be clipped to the bottom colour and look flat too.
    inits = [e.run.model.init_sigma for e in zoo.entries().values() if e.variant != "iwae"] + [model.config.init_sigma]
    shrunk = max(min(float(np.quantile(np.asarray(maps[net]["sigma"]), 0.005)) for net in maps
                     if maps[net]["sigma"] is not None), 1e-12)  # the tiles' own floor (figures.weight_tiles)
    floor_text = "smallest initial σ" if shrunk >= min(inits) else "0.5th percentile of this model's σ"
    lo, hi = math.log10(min(min(inits), shrunk)), math.log10(model.config.prior_std)
    zrange = (lo, hi) if hi > lo else None
    range_text = (f"from {lo:.2f} ({floor_text}, {10 ** lo:.2g})<br>to {hi:.2f} (prior std)" if zrange else None)
    for net in maps:
        s = maps[net]["sigma"]
        if s is None:
            continue
        moved = np.abs(np.log10(np.maximum(np.asarray(s), 1e-30) / model.config.init_sigma))
        if np.quantile(moved, 0.99) < 0.05:
            st.warning(f"The {net}'s σ has not moved from its initial value {model.config.init_sigma:g}: 99% of its "
                       f"weights are within {100 * (10 ** float(np.quantile(moved, 0.99)) - 1):.1f}% of it (what "
                       "little pattern there is, is not learned uncertainty).", icon=":material/info:")
    snr = {titles[net]: maps[net]["snr"][units] for net in maps if maps[net]["snr"] is not None}
    figs["sigma_maps"] = figures.weight_tiles(sigma, ncol=ncol, value_label="σ", colorscale="viridis",
                                              title=f"Posterior weight σ of {label}{objective}", zrange=zrange,
                                              range_text=range_text, first_unit=start)
    figs["snr_maps"] = figures.weight_tiles(snr, ncol=ncol, value_label="|μ|/σ", colorscale="cividis",
                                            title=f"Signal-to-noise |μ|/σ of {label}{objective}", shared_scale=True,
                                            first_unit=start)
    if zrange:
        settings["sigma_colour_scale_log10"] = list(zrange)
    tables["sigma_maps"], tables["snr_maps"] = weights_table(sigma, "sigma"), weights_table(snr, "|mu|/sigma")
    widgets.chart(figs["sigma_maps"], key="weights-sigma")
    downloads.export_buttons(figs["sigma_maps"], "sigma_maps", tables["sigma_maps"], settings)
    widgets.chart(figs["snr_maps"], key="weights-snr")
    downloads.export_buttons(figs["snr_maps"], "snr_maps", tables["snr_maps"], settings)
deterministic = [net for net in maps if maps[net]["sigma"] is None]
if deterministic:
    nets = " and ".join(deterministic)
    st.info(f"The {nets} of {label} {'have' if len(deterministic) > 1 else 'has'} point-estimate weights (σ = 0): "
            f"no σ map, |μ| is shown instead.")
    mu = {titles[net]: maps[net]["abs_mu"][units] for net in deterministic}
    figs["mu_maps"] = figures.weight_tiles(mu, ncol=ncol, value_label="|μ|", colorscale="viridis",
                                           title=f"Deterministic weights |μ| of {label}", first_unit=start)
    tables["mu_maps"] = weights_table(mu, "|mu|")
    widgets.chart(figs["mu_maps"], key="weights-mu")
    downloads.export_buttons(figs["mu_maps"], "mu_maps", tables["mu_maps"], settings)

sigmas = compute.layer_sigmas(model_ref)
if sigmas:
    st.subheader("σ per layer against the prior")
    figs["sigma_histograms"] = charts.sigma_histograms(sigmas, prior_std=model.config.prior_std)
    widgets.chart(figs["sigma_histograms"], key="weights-hist")
    downloads.export_buttons(figs["sigma_histograms"], "sigma_histograms", settings=settings)
st.subheader("Per-layer summary")
number = st.column_config.NumberColumn
st.dataframe(compute.weight_table(model_ref), hide_index=True, key="weights-table", placeholder="—",
             column_config={"shape": st.column_config.ListColumn("shape [out, in]"),
                            "mean_abs_mu": number("mean |μ|", format="%.4f"),
                            "mean_sigma": number("mean σ", format="%.3e"),
                            "median_sigma": number("median σ", format="%.3e"),
                            "mean_snr": number("mean |μ|/σ", format="%.2f"),
                            "kl": number("KL(q‖p) (nats)", format="%.1f",
                                         help="KL of the layer's weights and biases to the prior, in closed form")})
downloads.zip_button(figs, "weight_variance", tables, downloads.final_link(settings))
