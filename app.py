"""Hugging Face Space entry point: the RS-M-CLIP web app on the bundled demo model and sample archive.

A Gradio Space runs this file. Set RSMCLIP_MODEL / RSMCLIP_INDEX to serve another model or archive index, and
RSMCLIP_BACKEND (torch, onnx) / RSMCLIP_PRECISION (fp32, int8) for the CPU inference backend.
Locally, `rsmclip app` does the same with command-line options.
"""

import os

from modeling_rsmclip.app.service import AppService
from modeling_rsmclip.app.ui import build_demo, launch_kwargs

service = AppService.load(
    os.environ.get("RSMCLIP_MODEL"),
    os.environ.get("RSMCLIP_INDEX"),
    backend=os.environ.get("RSMCLIP_BACKEND", "torch"),
    precision=os.environ.get("RSMCLIP_PRECISION", "fp32"),
)
demo = build_demo(service)

if __name__ == "__main__":
    demo.launch(**launch_kwargs(service, server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0")))
