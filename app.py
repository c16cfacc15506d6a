"""Hugging Face Space entry point: the RS-M-CLIP web app on the bundled demo model and sample archive.

A Gradio Space runs this file (`rsmclip app --write-space DIR` writes a complete Space around it). Set
RSMCLIP_MODEL / RSMCLIP_INDEX to serve another model or archive index, and RSMCLIP_BACKEND (torch, onnx) /
RSMCLIP_PRECISION (fp32, int8) for the CPU inference backend.

`python app.py` listens on 127.0.0.1 (this machine only) unless told otherwise: `--host 0.0.0.0` or the
environment variable GRADIO_SERVER_NAME=0.0.0.0 (which Spaces set) opens it to the network; `--port` or
GRADIO_SERVER_PORT picks the port (default 7860). Locally, `rsmclip app` does the same with more options.
"""

import argparse
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
    parser = argparse.ArgumentParser(
        description="Serve the RS-M-CLIP web app (a Hugging Face Space's app file)."
    )
    parser.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="address to listen on (default: $GRADIO_SERVER_NAME, else 127.0.0.1: this machine only)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        help="port (default 7860)",
    )
    args = parser.parse_args()
    demo.launch(**launch_kwargs(service, server_name=args.host, server_port=args.port))
