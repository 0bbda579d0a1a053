"""``ecg-lite COMMAND [ARGS]``: the whole tool under one name, installed by ``pip install`` (pyproject.toml).

Each command is an existing module's ``main(argv)``; this module only dispatches, and imports the
command's module when it runs (``ecg-lite predict`` never loads torch unless given a checkpoint).
``ecg-lite COMMAND --help`` shows that command's own flags (its usage line names the module).
"""

from __future__ import annotations

import importlib
import sys

# command -> (module, what it does); every module has main(argv: list[str] | None) -> int
COMMANDS: dict[str, tuple[str, str]] = {
    "inspect": ("cpsc2018.inspect", "what is in a data folder: records per source and label, unreadable files"),
    "train": ("federated.train", "train a model: central, local per site, or federated (Flower); --folds for cross-validation"),
    "evaluate": ("federated.evaluate", "score a checkpoint or ONNX file on held-out or all records"),
    "export": ("export.__main__", "ONNX fp32 export, int8 quantization, accuracy gate and report"),
    "predict": ("mobile_app.classify", "classify one record (--record) or a whole folder into a table (--data DIR --out FILE)"),
    "app": ("mobile_app.__main__", "the Kivy app window (--record, --screenshot)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: ecg-lite COMMAND [ARGS]  (ecg-lite COMMAND --help for its flags)", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    code = module.main(rest)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
