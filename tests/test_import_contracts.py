"""The package's shape: imports flow one way, no cycles, and the command line is light to start."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = (
    "torch",
    "transformers",
    "datasets",
    "pyarrow",
    "pandas",
    "faiss",
    "rasterio",
    "gradio",
    "onnxruntime",
    "fastapi",
    "uvicorn",
    "ray",
)
SUBCOMMANDS = (
    [],
    ["demo"],
    ["convert"],
    ["export"],
    ["build-dataset"],
    ["train"],
    ["eval-retrieval"],
    ["eval-zero-shot"],
    ["model-index"],
    ["map"],
    ["map", "classify"],
    ["map", "segment"],
    ["index"],
    ["index", "build"],
    ["index", "add"],
    ["search"],
    ["app"],
    ["serve"],
)


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600, check=False
    )


def test_import_contracts_hold():
    """`lint-imports` (import-linter, contracts in pyproject.toml): layers, no reaching up to a command-line
    module, self-contained Hub files, and no import cycle inside any package."""
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint)], capture_output=True, text=True, cwd=ROOT, timeout=600, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "4 kept, 0 broken" in out.stdout


def test_every_help_imports_nothing_heavy():
    """`rsmclip --help` and every sub-command's `--help` build their parsers without torch, transformers, the
    data stack or any optional extra; the help text names each sub-command."""
    code = f"""
import contextlib, io, json, sys
from modeling_rsmclip.cli import main
texts = {{}}
for argv in {SUBCOMMANDS!r}:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        try:
            main(argv + ["--help"])
        except SystemExit as exit:
            assert exit.code == 0, (argv, exit.code)
    texts[" ".join(argv)] = buffer.getvalue()
print(json.dumps({{"heavy": [m for m in {HEAVY!r} if m in sys.modules], "texts": texts}}))
"""
    out = _python(code)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    top = result["texts"][""]
    for name in (
        "demo",
        "convert",
        "export",
        "build-dataset",
        "train",
        "eval-retrieval",
        "map",
        "index",
        "search",
        "serve",
    ):
        assert name in top
    for argv in SUBCOMMANDS[1:]:
        assert result["texts"][" ".join(argv)].startswith("usage: rsmclip " + " ".join(argv))


def test_package_import_is_light_and_registration_follows_transformers():
    """`import modeling_rsmclip` loads neither torch nor transformers; the model type is registered with the Auto
    classes (and the retrieval task with the pipelines) whichever is imported first."""
    out = _python(f"import sys, modeling_rsmclip; print([m for m in {HEAVY!r} if m in sys.modules])")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
    demo = str(ROOT / "modeling_rsmclip" / "demo_model")
    orders = {
        "package first": "import modeling_rsmclip\nfrom transformers import AutoModel, AutoProcessor",
        "transformers first": "from transformers import AutoModel, AutoProcessor\nimport modeling_rsmclip",
        "a model class first": "import modeling_rsmclip\nfrom transformers import CLIPModel\n"
        "from transformers import AutoModel, AutoProcessor",
        "a package class first": "from modeling_rsmclip import RSMCLIPModel\nfrom transformers import AutoModel, "
        "AutoProcessor",
    }
    for name, prelude in orders.items():
        code = (
            prelude
            + f"\nm = AutoModel.from_pretrained({demo!r}); p = AutoProcessor.from_pretrained({demo!r})"
            + "\nfrom transformers.pipelines import PIPELINE_REGISTRY"
            + "\nprint(type(m).__name__, type(p).__name__, 'rsmclip-retrieval' in PIPELINE_REGISTRY.get_supported_tasks())"
        )
        out = _python(code)
        assert out.returncode == 0, f"{name}: {out.stderr[-2000:]}"
        assert out.stdout.split() == ["RSMCLIPModel", "RSMCLIPProcessor", "True"], name


MAX_FUNCTION_LINES = 150


def test_no_function_in_the_package_is_longer_than_150_lines():
    """Long functions are where a package's shape erodes first: every function and method of the package (nested
    ones counted within their parent too) stays at or under 150 lines, decorators and docstring included."""
    import ast

    too_long = []
    for path in sorted((ROOT / "modeling_rsmclip").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                length = node.end_lineno - first + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert not too_long, "functions over 150 lines:\n" + "\n".join(too_long)
