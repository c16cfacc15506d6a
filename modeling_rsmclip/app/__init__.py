"""The web app: `rsmclip app` (and `app.py` for a Hugging Face Space).

`service.AppService` holds the model and the archive index, loaded once, and does the work of each tab with plain
Python values; `ui.build_demo(service)` lays out the Gradio page and wires it to the service; `cli` is the command.
Gradio is imported only by `ui` (extra: `pip install "rsmclip[app]"`).
"""
