"""Run the stage with the project's interpreter when the `python` on PATH lacks the project.

DVC (3.x) runs a stage's `cmd` through the shell with the caller's PATH; it does
not put its own interpreter first. So `.venv/bin/dvc repro` from a shell whose
`python` is a system Python without torch would fail every stage with
"No module named ser". Imported first by every stage script: if `ser` or its
dependencies are missing here and `.venv/bin/python` exists, the script is
re-run with it (one line on stderr says so); otherwise it stops with what to do.
Kept to plain Python 3 syntax: any `python` must be able to read it.
"""
import importlib.util
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_NEEDED = ("ser", "numpy", "torch", "yaml", "soundfile")


def _missing():
    if _ROOT not in sys.path:  # `ser` from this checkout, installed or not
        sys.path.insert(1, _ROOT)
    return [m for m in _NEEDED if importlib.util.find_spec(m) is None]


_lacking = _missing()
if _lacking:
    _venv_python = os.path.join(_ROOT, ".venv", "bin", "python")
    _in_venv = os.path.realpath(sys.prefix) == os.path.realpath(os.path.join(_ROOT, ".venv"))
    if os.path.exists(_venv_python) and not _in_venv and not os.environ.get("SER_VENV_REEXEC"):
        sys.stderr.write("%s: `%s` lacks %s; re-running with %s\n"
                         % (os.path.basename(sys.argv[0]), sys.executable, ", ".join(_lacking), _venv_python))
        sys.stderr.flush()
        os.environ["SER_VENV_REEXEC"] = "1"  # never loop
        os.execv(_venv_python, [_venv_python] + sys.argv)
    sys.exit("%s: the Python running it (%s) lacks %s. Run `make repro` (it sets up .venv and runs dvc "
             "with it), or activate the venv first: `. .venv/bin/activate && dvc repro`."
             % (os.path.basename(sys.argv[0]), sys.executable, ", ".join(_lacking)))
