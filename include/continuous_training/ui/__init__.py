"""The project's pages in the Airflow UI (mounted by ``plugins/continuous_training_plugin.py``).

:mod:`.app` is the FastAPI app and its routes, :mod:`.auth` who may see what (Airflow's own session
and permissions), :mod:`.views` what each page shows and where it is read from, :mod:`.charts` the
Plotly charts. Nothing here writes, and nothing heavy is imported until a page is asked for.
"""
