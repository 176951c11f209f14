"""Train live: train a small IWAE in a background process and watch its bound, KL and samples as it learns.

Runs live on disk (iwae_core.runs), not in the session, so a reload or a second tab finds them again.
"""

import pandas as pd
import streamlit as st

from dashboard import charts, widgets
from iwae_core import folders, runs
from iwae_core.config import (
    DATASETS,
    MAX_K,
    OBJECTIVES,
    PRECISIONS,
    VARIANTS,
    ModelConfig,
    RunConfig,
    TrainConfig,
    to_dict,
)
from iwae_core.data import locate

REFRESH_SECONDS = 1.5
VARIANT_LABELS = {"iwae": "IWAE (deterministic weights)", "iwae-r": "IWAE-R (random encoder and decoder)",
                  "iwae-rrec": "IWAE-Rrec (random encoder only)"}
OBJECTIVE_LABELS = {"bayes": "bayes (weights per image, minus KL)", "mixture": "mixture (weights per sample, no KL)"}

st.set_page_config(page_title="Train live", layout="wide")
st.title("Train live")
st.caption("Each run trains in its own process and writes its progress to disk: this page only reads it, so it "
           "stays responsive, and a reload or another tab finds the run again. Finished runs join the model zoo.")

runs.dispatch()  # start queued runs whose slot has freed up (say, after a worker crashed)

form_col, run_col = st.columns([1, 3], gap="medium")


def form_int(param: str, label: str, lo: int, hi: int, default: int, key: str, help: str | None = None) -> int:
    """A whole-number field of the form, kept in the URL as ?param= (a reload or a link reopens the form)."""
    shared = f"Shared in the URL as ?{param}="
    return widgets.int_input("tl", param, label, lo, hi, default, key=key, sidebar=False,
                             help=f"{help} {shared}" if help else shared)


with form_col:
    # the form's fields live in the URL like every page's controls, so a reload or a shared link reopens it as it was
    with st.container(border=True):
        st.subheader("New run")
        dataset = widgets.choice_input("tl", "dataset", "Dataset", list(DATASETS), key="tl_dataset", sidebar=False)
        variant = widgets.choice_input("tl", "variant", "Variant", list(VARIANTS), key="tl_variant", sidebar=False,
                                       format_func=VARIANT_LABELS.get)
        k = form_int("k", "Importance samples k", 1, 5000, 5, "tl_k")
        hidden = form_int("hidden", "Hidden units (one layer)", 1, 2000, 200, "tl_hidden")
        z_dim = form_int("z", "Latent size", 1, 200, 20, "tl_z")
        lr = widgets.float_input("tl", "lr", "Learning rate", 1e-6, 10.0, 1e-3, step=1e-4, fmt="%.1e", key="tl_lr",
                                 sidebar=False)
        epochs = form_int("epochs", "Epochs", 1, 5000, 5, "tl_epochs")
        batch_size = form_int("batch", "Batch size", 1, 2000, 100, "tl_batch")
        device = widgets.choice_input("tl", "device", "Device", runs.available_devices(), key="tl_device",
                                      sidebar=False)
        with st.expander("More"):
            train_images = form_int("images", "Training images (0 = all)", 0, 100_000, 0, "tl_images",
                                    help="Train on the first N training images only, for a quick run.")
            objective = widgets.choice_input(
                "tl", "objective", "Objective (random weights)", list(OBJECTIVES), key="tl_objective", sidebar=False,
                format_func=OBJECTIVE_LABELS.get,
                help="bayes: weights drawn once per image, minus the weights' KL / N (a bound on log p(x) under the "
                     "prior); mixture: each importance sample draws its own weights, no KL term. Nothing changes "
                     "for IWAE (deterministic weights). Shared in the URL as ?objective=")
            init_sigma = widgets.float_input("tl", "sigma", "Initial σ of the random weights", 1e-6, 1.0, 1e-3,
                                             step=1e-4, fmt="%.1e", key="tl_sigma", sidebar=False,
                                             help="Every random weight starts at this spread (IWAE has none). "
                                                  "Shared in the URL as ?sigma=")
            seed = form_int("seed", "Seed", 0, 2**31 - 1, 0, "tl_seed")
            precision = widgets.choice_input(
                "tl", "precision", "Matrix products", list(PRECISIONS), key="tl_precision", sidebar=False,
                help="float32, or bf16-mixed: bfloat16 inputs with float32 accumulation, about twice as fast on a "
                     "CPU or GPU that multiplies bfloat16 natively (parameters, Adam, draws and the bound stay "
                     "float32); auto picks bf16-mixed where that holds. See docs/precision.md for what it changes. "
                     "Shared in the URL as ?precision=")
            threads = form_int("threads", "CPU threads", 1, 64, 1, "tl_threads",
                               help="Threads of this run's process; one keeps several runs from fighting over the "
                                    "cores.")
        widgets.sync_url(dataset=dataset, variant=variant, k=k, hidden=hidden, z=z_dim, lr=lr, epochs=epochs,
                         batch=batch_size, device=device, images=train_images, objective=objective, sigma=init_sigma,
                         seed=seed, threads=threads, precision=precision)
        submitted = st.button("Start training", key="tl_start", type="primary")
    if submitted:
        try:
            # the mixture objective draws the weights per importance sample and has no KL term (as iwae train's)
            mixture = objective == "mixture"
            per_sample = {"encoder_granularity": "sample", "decoder_granularity": "sample"} if mixture else {}
            run = RunConfig(
                model=ModelConfig.for_variant(variant, hidden=(int(hidden),), z_dim=int(z_dim),
                                              init_sigma=float(init_sigma), **per_sample),
                train=TrainConfig(dataset=dataset, k=int(k), lr=float(lr), epochs=int(epochs),
                                  batch_size=int(batch_size), device=device, seed=int(seed), threads=int(threads),
                                  objective=objective, beta=0.0 if mixture else 1.0, precision=precision))
            started = runs.start_run(run, train_images=int(train_images) or None)
        except (runs.RunError, ValueError, RuntimeError) as err:
            st.error(f"Not started: {err}")
        else:
            st.session_state["tl_run"] = started.name
            st.query_params["run"] = started.name
            if started.status == "queued":
                st.info(f"Queued {started.name}: {started.message}")
            else:
                st.success(f"Started {started.name}")
    try:
        budget = f" A run's training step may use about {runs.step_memory_limit() / 2**30:.1f} GB (IWAE_MAX_STEP_GB)."
    except runs.RunError as err:
        budget = f" {err}."
    limit = runs.max_runs()
    st.caption(f"At most {limit} {'run trains' if limit == 1 else 'runs train'} at once (IWAE_MAX_RUNS); more "
               f"wait in a queue. Runs are kept in {runs.runs_dir()}.{budget}")


def count(n) -> str:
    return f"{n:,}" if isinstance(n, int) else "?"


def evaluation_panel(info: runs.RunInfo) -> None:
    """A finished run's test log-likelihood: what metrics.json holds, the evaluation job's progress, and the
    controls to start (S draws per image, first N test images) or cancel one, run by a detached process."""
    st.markdown("**Test log-likelihood**")
    ev = info.evaluation
    status = ev.get("status")
    busy = status in runs.EVALUATION_BUSY
    try:
        test = folders.read_metrics(info.path / "metrics.json").get("test") or {}
    except folders.FileError as err:
        test = {}
        st.warning(f"metrics.json cannot be read: {err}")
    at_one = (test.get("by_tau") or {}).get("1") or {}
    if at_one.get("mean") is not None:
        stderr = f" ± {at_one['stderr']:.2f}" if at_one.get("stderr") is not None else ""
        st.markdown(f"log p(x) ≈ **{at_one['mean']:.2f}{stderr}** nats (τ = 1) on {count(test.get('n_images'))} "
                    f"test images with S = {count(test.get('S'))} joint draws each (metrics.json).")
    elif not busy:
        st.caption("Not evaluated yet: its row of the model zoo says so until it is.")
    if busy:
        done, total = ev.get("done") or 0, ev.get("total")
        text = (f"evaluating: {done:,} of {total:,} image passes · S = {count(ev.get('S'))} on "
                f"{count(ev.get('images'))} test images" if total else f"evaluation {status}: {ev.get('message', '')}")
        st.progress(min(1.0, done / total) if total else 0.0, text=text)
        if status == "unresponsive":
            st.warning(widgets.escape_markdown(f"The evaluation is hung: {ev.get('message', '')}."))
        label = "Force-stop the evaluation" if status == "unresponsive" else "Cancel evaluation"
        if st.button(label, key="tl_eval_cancel", disabled=status == "stopping"):
            runs.cancel_evaluation(info.path)
            st.rerun()
        return
    if status == "failed" or status == "interrupted":
        st.error(widgets.escape_markdown(f"The last evaluation {status}: {ev.get('message', '')}"))
    elif status == "cancelled":
        st.info(widgets.escape_markdown(f"The last evaluation was cancelled ({ev.get('message', '')})."))
    found, where = locate(info.run.train.dataset, info.options.get("data_dir"))
    if not found:
        st.warning(widgets.escape_markdown(f"No {info.run.train.dataset} test images in {where}: set IWAE_DATA_DIR "
                                           "to the folder holding them to evaluate this run."))
    s_col, n_col = st.columns(2)
    S = s_col.number_input("S (joint draws per image)", 1, MAX_K, 1000, key="tl_eval_S",
                           help="The zoo's shipped models use S = 5000; the cost grows with S × images.")
    images = n_col.number_input("Test images (the first N)", 1, 10_000, 1000, key="tl_eval_images")
    if st.button("Evaluate", key="tl_evaluate", disabled=not found,
                 help="Runs in a process of its own (it takes a training slot); the result goes to metrics.json "
                      "and the model zoo."):
        try:
            runs.start_evaluation(info.path, S=int(S), images=int(images))
        except runs.RunError as err:
            st.error(widgets.escape_markdown(f"Not evaluated: {err}"))
        else:
            st.rerun()


with run_col:
    all_runs, broken_runs = runs.scan_runs()
    if broken_runs:
        with st.expander(f"{len(broken_runs)} run folder(s) cannot be read and are left out", expanded=True,
                         icon=":material/warning:"):
            for b in broken_runs:
                st.markdown(f"- **{widgets.escape_markdown(b.name)}**: {widgets.escape_markdown(b.error)}")
    if not all_runs:
        st.info("No runs yet: choose the settings on the left and press Start training.")
        st.stop()
    names = [r.name for r in all_runs]
    linked = st.query_params.get("run") if "tl_run" not in st.session_state else None
    wanted = st.session_state.get("tl_run") or linked
    if wanted not in names:
        wanted = names[0]
        if linked is not None:  # a link naming a run that is not here: say so, and which run is shown
            unreadable = next((b.error for b in broken_runs if b.name == linked), None)
            why = f"which cannot be read ({unreadable})" if unreadable else "which is not a run here"
            st.warning(widgets.escape_markdown(f"The link asked for run = {linked[:60]}, {why}; showing run = {wanted} "
                                          "instead."), icon=":material/link:")
    st.session_state["tl_run"] = wanted
    choice = st.selectbox("Run", names, key="tl_run",
                          format_func=lambda n: f"{n}  ({next(r.status for r in all_runs if r.name == n)})")
    st.query_params["run"] = choice
    statuses = {r.name: (r.status, r.evaluation.get("status")) for r in all_runs}
    watching = any(r.active or r.status == "queued" or r.evaluation.get("status") in runs.EVALUATION_BUSY
                   for r in all_runs)

    @st.fragment(run_every=REFRESH_SECONDS if watching else None)
    def live_view(name: str) -> None:
        """Re-read the runs from disk every refresh; when a status changes, redraw the whole page once."""
        now = runs.list_runs()
        if {r.name: (r.status, r.evaluation.get("status")) for r in now} != statuses:
            st.rerun()
        info = next(r for r in now if r.name == name)
        path = info.path
        p = info.progress
        st.markdown(f"**{info.name}** · status **{info.status}** · {info.message}")
        total = p.get("total_steps")
        epochs = p.get("epochs") or info.run.train.epochs
        # the speed and what is left only while the worker trains: after a stop they would be stale
        speed = p.get("steps_per_second") if info.status == "running" else None
        rate = f" · {speed:.0f} steps/s" if speed else ""
        if speed and total:
            left = max(0, total - (p.get("step") or 0)) / speed
            rate += f" · about {left / 60:.0f} min left" if left >= 90 else f" · about {left:.0f} s left"
        st.progress(info.fraction, text=(f"step {p.get('step') or 0:,} of {total:,} · epoch "
                                         f"{min((p.get('epoch') or 0) + 1, epochs)} of {epochs}{rate}"
                                         if total else "waiting to start"))
        with st.expander("Settings of this run"):
            settings = {"model": to_dict(info.run.model), "train": to_dict(info.run.train),
                        "training images": info.options.get("train_images") or "all",
                        "created": info.options.get("created")}
            st.json(settings, expanded=2)
        curves, grid = st.columns([3, 2])
        with curves:
            if p.get("points"):
                fig = charts.training_curves(info.curve_rows())
                fig.update_layout(title=None, width=None, uirevision=info.name)  # keep zoom across refreshes
                widgets.chart(fig, key=f"tl_curves_{info.name}")
            else:
                st.caption("The bound and KL curves appear after the first training steps.")
        with grid:
            if info.samples:
                try:
                    png = folders.read_png(info.samples)
                except folders.FileError as err:
                    st.warning(f"No sample grid: {err}")
                else:
                    st.image(png, width="stretch", caption=f"p(x|z) means of 64 fixed z, one fixed weight draw "
                                                           f"(step {p.get('samples_step')})")
        stop_col, resume_col, delete_col = st.columns(3)
        if stop_col.button("Kill worker" if info.status == "unresponsive" else "Stop", key="tl_stop",
                           disabled=not (info.active or info.status == "queued"),
                           help="Stops after the current step and keeps a checkpoint; Resume continues."):
            runs.stop_run(path, force=info.status == "unresponsive")
            st.rerun()
        if resume_col.button("Resume", key="tl_resume", disabled=not info.resumable):
            try:
                runs.resume_run(path)
            except runs.RunError as err:
                st.error(str(err))
            else:
                st.rerun()
        busy = info.active or info.status == "queued" or info.evaluation.get("status") in runs.EVALUATION_BUSY
        if delete_col.button("Delete", key="tl_delete", disabled=busy,
                             help="Stop the run or cancel its evaluation first." if busy else None):
            st.session_state["tl_confirm_delete"] = info.name
        if st.session_state.get("tl_confirm_delete") == info.name and not busy:
            st.warning(widgets.escape_markdown(f"Delete {info.name} and everything in its folder (weights, history, "
                                          "checkpoint)? This cannot be undone."), icon=":material/delete:")
            yes, no = st.columns(2)
            if yes.button(f"Yes, delete {info.name}", key="tl_delete_yes", type="primary"):
                del st.session_state["tl_confirm_delete"]
                try:
                    runs.delete_run(path)
                except runs.RunError as err:  # a worker took the run meanwhile
                    st.error(f"Not deleted: {err}")
                else:
                    st.rerun()
            if no.button("Cancel", key="tl_delete_no"):
                del st.session_state["tl_confirm_delete"]
                st.rerun()
        if info.status == "finished":
            st.success(f"Finished: {info.name} is in the model zoo; pick it on the other pages.")
            evaluation_panel(info)
        elif info.status == "failed":
            st.error(info.message)
        st.caption("All runs")
        rows = []
        for r in now:
            row = r.summary()
            step, total = row.pop("step"), row.pop("of")
            # the total is unknown until a worker has started: say so instead of "of: None"
            steps = f"{step or 0:,} of {total:,}" if total else "not started"
            rows.append({**{key: row.pop(key) for key in ("run", "status", "dataset", "variant", "k")},
                         "steps": steps, **row})
        table = pd.DataFrame(rows)
        st.dataframe(table, hide_index=True, height=min(38 + 35 * len(now), 250),
                     column_config={"progress": st.column_config.ProgressColumn(
                         "progress", min_value=0, max_value=100, format="%.0f%%")})

    live_view(choice)
