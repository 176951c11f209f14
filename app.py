"""The Bayesian IWAE explorer (`streamlit run app.py`): the home page (model zoo, the paper's table beside
ours, data status) and the navigation to the views, one file each under views/.
"""

from pathlib import Path

import streamlit as st

from dashboard import tables, widgets, zoo


def home() -> None:
    """The model zoo, the paper's table beside the loaded models' numbers, and whether the data is there."""
    st.title("Bayesian IWAE explorer")
    st.markdown("Importance weighted autoencoders whose network weights are random (Gaussian), after Hernández-Lobato, "
                "Bui, Li, Hernández-Lobato and Turner (NIPS 2016 Bayesian Deep Learning workshop). **IWAE**: point-"
                "estimate weights; **IWAE-R**: random encoder and decoder weights; **IWAE-Rrec**: random encoder only.")

    entries, broken = zoo.entries(), zoo.broken()
    st.header("Model zoo")
    if broken:
        st.warning(f"{len(broken)} model folder(s) cannot be loaded and are left out of the views: "
                   + ", ".join(widgets.escape_markdown(label) for label in broken)
                   + ". The *problem* column of the table says why.")
    if entries or broken:
        st.dataframe(tables.zoo_table(entries, broken), hide_index=True, key="zoo-table",
                     column_config={"folder": st.column_config.TextColumn(width="small"),
                                    "problem": st.column_config.TextColumn(width="large")})
        st.caption("Test LL: log p(x) estimated from 5000 joint draws per test image (`iwae eval`, or Evaluate on "
                   "Train live for a finished run); “not evaluated yet” until that has run. "
                   "Valid L_k: the last validation bound seen in training. "
                   "Problem: a file of the folder that cannot be read (its numbers are missing).")
    else:
        st.info("No trained model yet (looked in "
                + ", ".join(f"`{p}`" for p in zoo.zoo_sources())
                + "). Train one on the **Train live** page, or with "
                  "`iwae train --dataset mnist --variant iwae-r --epochs 1 --out DIR`.")

    st.header("The paper's test log-likelihood beside ours")
    st.dataframe(tables.paper_table(entries), hide_index=True, key="paper-table")
    st.caption("Paper: one hidden layer of 400 units, 40 latent units, k = 25; its training budget is not stated. "
               "Ours: the best evaluated model of each dataset and variant at τ = 1.")

    if entries:
        st.header("Explore")
        chosen = st.selectbox("Model", list(entries), key="home:model")
        cols = st.columns(len(tables.PAGES))
        for col, (page, title) in zip(cols, tables.PAGES.items(), strict=True):
            with col:
                st.page_link(page, label=title, query_params={"model": chosen}, icon=":material/arrow_forward:")

    st.header("Data")
    status = tables.data_status()
    st.dataframe(status, hide_index=True, key="data-table")
    for row in status.itertuples():
        if not row.present:
            st.warning(f"{row.dataset}: not found under `{row.folder}`; expected {row.expected}. Set IWAE_DATA_DIR to "
                       "the folder holding it. Samples and Weight variance work without data; traversals start from "
                       "the prior; Bound vs k needs the test images.")


st.set_page_config(page_title="Bayesian IWAE explorer", layout="wide")
# The views' folder is not named pages/: Streamlit reads a pages/ folder beside the entry script as its older
# multipage layout, and a dashboard just started then listed the home page as "app" to a shared link's first visit.
views = [st.Page(str(path.relative_to(Path(__file__).parent)), title=tables.page_title(path),
                 url_path=tables.page_title(path).replace(" ", "_"))
         for path in sorted(Path(__file__).parent.glob("views/*.py"))]
st.navigation([st.Page(home, title="Home", icon=":material/home:", default=True), *views]).run()
