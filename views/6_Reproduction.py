"""Reproduction: the budget x seed study (results/study.csv) as curves, test LL and differences to IWAE
against training epochs, with seed bands and the paper's numbers."""

from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard import charts, downloads, export, widgets
from iwae_core import study_results
from iwae_core.evaluate import PAPER_TABLE, tau_label

st.set_page_config(page_title="Reproduction · Bayesian IWAE", layout="wide")
st.title("Reproduction")
st.caption("Does a random-weight IWAE beat IWAE, and at which training budget? Every arm trains with several "
           "seeds on one cosine schedule and is evaluated along it on the same test images; differences are "
           "paired per image against the same seed's IWAE. Dotted lines: the paper's whole-test-set numbers at "
           "S = 5000, in the colour of their variant.")

DEFAULT = Path(__file__).resolve().parent.parent / "results" / "study.csv"


def verdict(s: dict) -> str:
    """The summary's verdict, or what stands in for one: IWAE is the reference, and an arm trained before the IWAE
    of its seeds has nothing to be paired with yet."""
    return s["verdict"] or ("reference" if s["reference"] else "no IWAE of its seeds yet")


path = Path(st.sidebar.text_input("Study results", str(DEFAULT), key="repro:path",
                                  help="results/study.csv as `python -m iwae_core.study` writes it, or a study's "
                                       "or a sweep's folder (`iwae sweep`: trials grouped by their settings "
                                       "but the seed, each paired with the IWAE trial of the same seed)"))
if not path.exists():
    st.info(f"No study results at `{path}`. Run `python -m iwae_core.study --datasets mnist --seeds 0 1 2` "
            "(resumable; see results/study.md) or point the sidebar at another study.csv or a sweep's folder.")
    st.stop()
try:
    rows = study_results.collect(path) if path.is_dir() else study_results.read_csv(path)
except (OSError, ValueError, KeyError, UnicodeDecodeError, RuntimeError) as err:
    st.error(f"{path} cannot be read as study results: {err}")
    st.stop()
datasets = sorted({r["dataset"] for r in rows})
if not datasets:
    st.info(f"{path} holds no results yet.")
    st.stop()
dataset = widgets.choice_input("repro", "dataset", "Dataset", datasets)
taus = sorted({r["tau"] for r in rows if r["dataset"] == dataset}, reverse=True)
tau = float(widgets.choice_input("repro", "tau", "τ of the random arms", [tau_label(t) for t in taus], radio=True,
                                 help="IWAE has no weight noise: its τ = 1 result is used for every τ"))
widgets.sync_url(dataset=dataset, tau=tau)

chosen = [r for r in rows if r["dataset"] == dataset and (r["tau"] == tau or r["variant"] == "iwae")]
if any(r.get("precision") == "bf16-mixed" for r in chosen):  # the precision study's arms: off the paper's question
    low_precision = widgets.bool_input("repro", "bf16", "Show the bf16-mixed arms", False,
                                       help="The precision study's trials, trained with bfloat16 matrix products "
                                            "(docs/precision.md); shared in the URL as ?bf16=1")
    widgets.sync_url(bf16=int(low_precision))
    chosen = [r for r in chosen if low_precision or r.get("precision") != "bf16-mixed"]
summary = study_results.summarize(chosen)
seeds = sorted({r["seed"] for r in chosen})
images = sorted({r["n_images"] for r in chosen})
S = sorted({r["S"] for r in chosen})
per_point = sorted({s["seeds"] for s in summary})  # a study still running has fewer seeds at its late budgets
seed_text = (f"{per_point[0]} seeds" if len(per_point) == 1
             else f"{per_point[0]}–{per_point[-1]} seeds per point")
title = (f"{dataset}, τ = {tau:g}: test LL across budgets ({seed_text}, first "
         f"{'/'.join(map(str, images))} test images, S = {'/'.join(map(str, S))})")
figs = {"study": charts.study_curves(summary, chosen, PAPER_TABLE.get(dataset), title=title)}
widgets.chart(figs["study"], key="repro-study")
settings = {"study": str(path.name), "dataset": dataset, "tau": tau, "seeds": seeds, "images": images, "S": S,
            "link": {"dataset": dataset, "tau": tau_label(tau)}}
tables = {"study": lambda: export.table_csv([  # the rows behind the figure, in study.csv's own columns
    {key: r.get(key) for key in study_results.CSV_FIELDS} for r in chosen])}
downloads.export_buttons(figs["study"], "study", tables["study"], settings)
st.subheader("Per budget: mean across seeds ± seed sd, and whether the difference to IWAE holds")
table = pd.DataFrame([{"epochs": s["epochs"], "arm": charts.STUDY_ARMS.get(s["arm"], s["arm"]), "seeds": s["seeds"],
                       "test LL": s["test_ll"], "sd": s["test_ll_sd"], "− IWAE": s["diff"], "seed sd": s["diff_sd"],
                       "paired s.e.": s["paired_se"], "verdict": verdict(s)} for s in summary])
# the reference rows have no difference to themselves: a dash there rather than Streamlit's "None"; every row shown,
# so the budgets can be read down the page without scrolling inside the table
st.dataframe(table, hide_index=True, key="repro-table", placeholder="—", height="content",
             column_config={c: st.column_config.NumberColumn(format="%.3f")
                            for c in ("test LL", "sd", "− IWAE", "seed sd", "paired s.e.")})
st.caption("A difference holds when its mean across seeds is more than twice both its standard error across "
           "seeds and the paired s.e. over √seeds. Early budgets are points on one schedule, not models "
           "trained to convergence at that budget.")
downloads.zip_button(figs, "reproduction", tables, settings)
