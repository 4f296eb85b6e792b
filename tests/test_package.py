"""multissl as an installed package: a light import, the API names, and a wheel that works outside the
repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "datasets", "numpy", "yaml")


def test_import_multissl_is_light():
    code = ("import sys, time; t = time.perf_counter(); import multissl; took = time.perf_counter() - t; "
            f"print(took, [m for m in {HEAVY!r} if m in sys.modules], callable(multissl.pretrain))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(" ", 1)
    assert float(out[0]) < 0.5 and out[1].strip() == "[] True"


def test_api_names_stay_functions_after_their_submodules_are_imported():
    import multissl
    import multissl.export.hf  # noqa: F401  (the import system would set multissl.export to the package)
    import multissl.probe  # noqa: F401
    from multissl import api

    assert multissl.export is api.export and multissl.probe is api.probe and multissl.pretrain is api.pretrain
    assert sys.modules["multissl.probe"].probe is not api.probe  # the module is still there, by its name
    for name in multissl.API:
        assert getattr(multissl, name).__doc__ and ">>> " in getattr(multissl, name).__doc__


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{args}: {out.stderr[-3000:]}"
    return out.stdout


def test_wheel_works_outside_the_checkout(tmp_path, kjv_rows):
    """Build the wheel, install it alone into a fresh venv, and use it from a folder of its own.

    The venv (no system site-packages, no pip) gets the wheel with ``--no-deps``; its dependencies come
    from the project venv through a .pth file naming that venv's site-packages, as one more entry at
    the end of sys.path. That entry is not a site directory, so the .pth files in it (the editable
    install of the checkout among them) are not run: ``import multissl`` can only find the wheel's copy.
    PYTHONPATH is dropped and the commands run in a temporary folder, so nothing reaches the checkout.
    """
    src = tmp_path / "src"  # a copy, so that the build writes no build/ or egg-info into the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "multissl", src / "multissl", ignore=shutil.ignore_patterns("__pycache__"))
    dist, venv, work = tmp_path / "dist", tmp_path / "venv", tmp_path / "work"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist), str(src)],
                   check=True, capture_output=True)
    [wheel] = dist.glob("multissl-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True)
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path,
                     {"PATH": os.environ["PATH"]}).strip())
    (site / "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env |= {"PATH": f"{venv / 'bin'}{os.pathsep}{env['PATH']}", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}
    work.mkdir()
    (work / "corpus.txt").write_text("\n".join(r["text"] for r in kjv_rows[::15][:2000]) + "\n")
    where = _run([str(python), "-c", "import multissl; print(multissl.__file__)"], work, env).strip()
    assert Path(where).is_relative_to(venv) and not Path(where).is_relative_to(ROOT)

    cli = str(venv / "bin" / "multissl")
    listing = _run([cli, "recipes"], work, env)
    for path in (ROOT / "multissl" / "recipes").glob("*/*.yaml"):
        assert f"\n{path.parent.name}/{path.stem} " in listing
    _run([cli, "tokenizer", "train", "--files", "corpus.txt", "--kind", "wordpiece", "--vocab-size", "500",
          "--out", "tok"], work, env)
    out = _run([cli, "pretrain", "text/tiny", "--data", "corpus.txt", "--tokenizer", "tok", "--output_dir", "run",
                "--max_steps", "5", *TINY], work, env)
    assert "run saved in run" in out and (work / "run" / "model.safetensors").is_file()

    from multissl.recipe import parse_overrides

    keys = {key.replace(".", "__"): value for key, value in parse_overrides(TINY).items()}
    code = ("import multissl; run = multissl.pretrain('text/tiny', data='corpus.txt', tokenizer='tok', "
            f"output_dir='run_py', max_steps=5, **{keys!r}); print(run)")
    assert _run([str(python), "-c", code], work, env).strip().endswith("run_py")
    assert (work / "run_py" / "model.safetensors").is_file()
    assert "max_steps: 5" in (work / "run_py" / "recipe.yaml").read_text()
